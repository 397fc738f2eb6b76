//! Bandwidth limits (the `bandwidth` capability and the static fields of
//! the reference bandwidth plugin): TCP senders on the node are paced just
//! under the limit and fill it without loss, a UDP flood is cut to the limit
//! by the datapath's policer and what it drops is counted as `rate-limited`,
//! only the limited direction is limited, and DEL, CHECK, GC and validation
//! handle the limits.

use std::{net::IpAddr, thread, time::Duration};

use cni_ebpf_tests::{
    CniRequest, Family, Netns, Node, Pod,
    agent::Agent,
    ext::{self, assert_node_untouched, with_keys},
    hostports::{delete_map_entry, dump_map},
    node::DEFAULT_NETWORK,
    spec::{Footprint, Sandbox},
    traffic,
};
use serde_json::{Value, json};

/// The limit of the limited direction, bits per second.
pub(crate) const LIMIT_BITS: u64 = 20_000_000;
/// Its burst, bits.
const BURST_BITS: u64 = 2_000_000;
/// Goodput may exceed the limit by the burst spread over a short run.
pub(crate) const MARGIN: f64 = 1.10;
/// Paced TCP fills at least this share of the limit (frames count against
/// it, so full segments carry at most 1448/1514 of it as payload; the
/// policer alone gave 63–71 %).
const PACED_SHARE: f64 = 0.85;
/// A UDP flood: many times the limit, in datagrams that need no
/// fragmenting.
const UDP_FLOOD: [&str; 5] = ["-u", "-b", "200M", "-l", "1400"];
/// Unlimited goodput is at least this many times the limit (veth moves
/// gigabits here).
const UNLIMITED_FACTOR: f64 = 5.0;
const IPERF_SECONDS: &str = "3";
const IPERF_PORT: &str = "5201";

/// `node`'s default config with `keys` set on it.
fn conf_with(node: &Node, keys: Value) -> Value {
    with_keys(node.conf().build(), keys)
}

/// As a runtime passes the `bandwidth` capability.
fn runtime_bandwidth(node: &Node, bandwidth: Value) -> Value {
    conf_with(
        node,
        json!({
            "capabilities": { "bandwidth": true },
            "runtimeConfig": { "bandwidth": bandwidth },
        }),
    )
}

/// What one iperf3 run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Goodput {
    /// What the receiver got, bits per second.
    pub(crate) received_bps: f64,
    retransmits: u64,
}

/// One iperf3 run from `client` to a server in `server` on `server_ip`: TCP,
/// or what `extra` asks for.
fn iperf3_with(
    server: &Netns,
    server_ip: impl Into<IpAddr>,
    client: &Netns,
    extra: &[&str],
) -> Goodput {
    let server_ip: IpAddr = server_ip.into();
    let ip = server_ip.to_string();
    let _server = traffic::iperf3_server(server, server_ip, IPERF_PORT);
    // The server listens a moment after it starts.
    for attempt in 0..50 {
        let mut args = vec![
            "-c",
            &ip,
            "-p",
            IPERF_PORT,
            "-t",
            IPERF_SECONDS,
            "-J",
            "--connect-timeout",
            "3000",
        ];
        args.extend_from_slice(extra);
        let output = client.exec("iperf3", &args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "iperf3 -c {ip}: {e}: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        if let Some(error) = report["error"].as_str() {
            if error.contains("refused") && attempt < 49 {
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            panic!("iperf3 {} -> {ip}: {error}", client.name());
        }
        let end = &report["end"];
        return Goodput {
            received_bps: end["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or_else(|| panic!("iperf3 report without sum_received: {report}")),
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        };
    }
    unreachable!("the loop returns or panics")
}

/// One iperf3 TCP run from `client` to a server in `server` on `server_ip`.
fn iperf3(server: &Netns, server_ip: impl Into<IpAddr>, client: &Netns) -> Goodput {
    iperf3_with(server, server_ip, client, &[])
}

/// A UDP flood from `client` to a server in `server` on `server_ip`.
pub(crate) fn udp_flood(server: &Netns, server_ip: impl Into<IpAddr>, client: &Netns) -> Goodput {
    iperf3_with(server, server_ip, client, &UDP_FLOOD)
}

/// [`assert_limited`], and the paced TCP sender filled the limit.
fn assert_paced(goodput: Goodput, what: &str) {
    assert_limited(goodput, what);
    let ratio = goodput.received_bps / LIMIT_BITS as f64;
    assert!(
        ratio >= PACED_SHARE,
        "{what}: {:.1}% of the limit: TCP was not paced to it",
        ratio * 100.0
    );
}

/// Panics unless `goodput` is above zero and at most the limit plus the
/// margin; prints the ratio.
fn assert_limited(goodput: Goodput, what: &str) {
    let ratio = goodput.received_bps / LIMIT_BITS as f64;
    eprintln!(
        "bandwidth {what}: {:.2} Mbit/s under a {} Mbit/s limit = {:.1}% ({} retransmits)",
        goodput.received_bps / 1e6,
        LIMIT_BITS / 1_000_000,
        ratio * 100.0,
        goodput.retransmits
    );
    assert!(goodput.received_bps > 0.0, "{what}: nothing got through");
    assert!(
        ratio <= MARGIN,
        "{what}: {:.2} Mbit/s is over the {} Mbit/s limit (+{:.0}%)",
        goodput.received_bps / 1e6,
        LIMIT_BITS / 1_000_000,
        (MARGIN - 1.0) * 100.0
    );
}

/// Panics unless `goodput` is far above the limit.
fn assert_unlimited(goodput: Goodput, what: &str) {
    eprintln!(
        "bandwidth {what}: {:.0} Mbit/s unlimited",
        goodput.received_bps / 1e6
    );
    assert!(
        goodput.received_bps > UNLIMITED_FACTOR * LIMIT_BITS as f64,
        "{what}: only {:.2} Mbit/s",
        goodput.received_bps / 1e6
    );
}

fn rate_limited(node: &Node, direction: &str) -> u64 {
    node.dropped_packets(&["rate-limited"], direction)
}

#[test]
fn egress_limit_holds_to_pods_and_to_the_node() {
    let node = Node::new();
    // Gives the node an address for the pod to talk to.
    let uplink = node.add_uplink();
    let limited = node.add_pod_with(runtime_bandwidth(
        &node,
        json!({ "egressRate": LIMIT_BITS, "egressBurst": BURST_BITS }),
    ));
    let other = node.add_pod();

    let goodput = iperf3(other.netns(), other.ip(), limited.netns());
    assert_paced(goodput, "egress pod -> pod, TCP");
    let before = rate_limited(&node, "from-pod");
    let flood = udp_flood(other.netns(), other.ip(), limited.netns());
    assert_limited(flood, "egress pod -> pod, UDP flood");
    assert!(
        rate_limited(&node, "from-pod") > before,
        "no rate-limited drop counted from the pod"
    );
    // What the pod sends to the node's own stack is limited too.
    assert_paced(
        iperf3(node.netns(), uplink.node_ip, limited.netns()),
        "egress pod -> node, TCP",
    );
    let before = rate_limited(&node, "from-pod");
    assert_limited(
        udp_flood(node.netns(), uplink.node_ip, limited.netns()),
        "egress pod -> node, UDP flood",
    );
    assert!(
        rate_limited(&node, "from-pod") > before,
        "no rate-limited drop counted from the pod to the node"
    );
    // What the limited pod receives is not limited.
    let to_pod = rate_limited(&node, "to-pod");
    assert_unlimited(
        iperf3(limited.netns(), limited.ip(), other.netns()),
        "into the egress-limited pod",
    );
    assert_eq!(rate_limited(&node, "to-pod"), to_pod);
    assert_node_untouched(&node);
}

#[test]
fn egress_limit_holds_to_the_outside_through_masquerade() {
    for family in Family::ALL {
        let node = Node::new();
        let ext = ext::uplink_with_default_route(&node);
        let limited = node.add_pod_with(with_keys(
            ext::masquerading(node.conf().family(family).build()),
            json!({ "egressRate": LIMIT_BITS, "egressBurst": BURST_BITS }),
        ));
        let ext_ip = ext.ext_addr(family);
        assert_paced(
            iperf3(&ext.netns, ext_ip, limited.netns()),
            &format!("egress pod -> outside, TCP, {family:?}"),
        );
        let before = rate_limited(&node, "from-pod");
        assert_limited(
            udp_flood(&ext.netns, ext_ip, limited.netns()),
            &format!("egress pod -> outside, UDP flood, {family:?}"),
        );
        assert!(
            rate_limited(&node, "from-pod") > before,
            "{family:?}: no rate-limited drop counted from the pod to the outside"
        );
    }
}

#[test]
fn ingress_limit_holds_from_the_outside() {
    for family in Family::ALL {
        let node = Node::new();
        let ext = ext::uplink_with_default_route(&node);
        let limited = node.add_pod_with(with_keys(
            ext::masquerading(node.conf().family(family).build()),
            json!({ "ingressRate": LIMIT_BITS, "ingressBurst": BURST_BITS }),
        ));
        let ext_ip = ext.ext_addr(family);
        // The sender is off the node: not paced, only policed.
        assert_limited(
            iperf3_with(&ext.netns, ext_ip, limited.netns(), &["-R"]),
            &format!("ingress outside -> pod (replies through masquerade), TCP, {family:?}"),
        );
        let before = rate_limited(&node, "to-pod");
        let mut flood = UDP_FLOOD.to_vec();
        flood.push("-R");
        assert_limited(
            iperf3_with(&ext.netns, ext_ip, limited.netns(), &flood),
            &format!("ingress outside -> pod, UDP flood, {family:?}"),
        );
        assert!(
            rate_limited(&node, "to-pod") > before,
            "{family:?}: no rate-limited drop counted to the pod from the outside"
        );
    }
}

#[test]
fn several_flows_share_the_limit() {
    let node = Node::new();
    let limited = node.add_pod_with(runtime_bandwidth(&node, both_limits()));
    let other = node.add_pod();
    assert_limited(
        iperf3_with(other.netns(), other.ip(), limited.netns(), &["-P", "4"]),
        "egress pod -> pod, 4 TCP flows",
    );
    assert_limited(
        iperf3_with(limited.netns(), limited.ip(), other.netns(), &["-P", "4"]),
        "ingress pod -> pod, 4 TCP flows",
    );
    assert_node_untouched(&node);
}

#[test]
fn ingress_limit_holds_from_pods_and_from_the_node() {
    let node = Node::new();
    // Gives the node an address to talk to pods from.
    let _uplink = node.add_uplink();
    // The static fields, as a conflist without the capability sets them.
    let limited = node.add_pod_with(conf_with(
        &node,
        json!({ "ingressRate": LIMIT_BITS, "ingressBurst": BURST_BITS }),
    ));
    let other = node.add_pod();

    assert_paced(
        iperf3(limited.netns(), limited.ip(), other.netns()),
        "ingress pod -> pod, TCP",
    );
    let before = rate_limited(&node, "to-pod");
    assert_limited(
        udp_flood(limited.netns(), limited.ip(), other.netns()),
        "ingress pod -> pod, UDP flood",
    );
    let after_pod = rate_limited(&node, "to-pod");
    assert!(
        after_pod > before,
        "no rate-limited drop counted to the pod"
    );

    // The node's own traffic goes through its stack and the host veth.
    assert_paced(
        iperf3(limited.netns(), limited.ip(), node.netns()),
        "ingress node -> pod, TCP",
    );
    assert_limited(
        udp_flood(limited.netns(), limited.ip(), node.netns()),
        "ingress node -> pod, UDP flood",
    );
    assert!(
        rate_limited(&node, "to-pod") > after_pod,
        "no rate-limited drop counted for node -> pod"
    );

    // What the limited pod sends is not limited.
    let from_pod = rate_limited(&node, "from-pod");
    assert_unlimited(
        iperf3(other.netns(), other.ip(), limited.netns()),
        "from the ingress-limited pod",
    );
    assert_eq!(rate_limited(&node, "from-pod"), from_pod);
    assert_node_untouched(&node);
}

#[test]
fn the_agent_reattaches_a_lost_ingress_limit() {
    let node = Node::new();
    // Gives the node an address to talk to pods from.
    let _uplink = node.add_uplink();
    let limited = node.add_pod_with(conf_with(
        &node,
        json!({ "ingressRate": LIMIT_BITS, "ingressBurst": BURST_BITS }),
    ));
    // What the node's stack delivers is limited by `to_pod` on the host
    // veth's egress; without it a flood from the node gets through.
    let veth = limited.host_ifname();
    node.netns()
        .exec_ok("tc", &["filter", "del", "dev", &veth, "egress"]);
    let unlimited = udp_flood(limited.netns(), limited.ip(), node.netns());
    assert!(
        unlimited.received_bps > 2.0 * LIMIT_BITS as f64,
        "{:.2} Mbit/s without to_pod: the test proves nothing",
        unlimited.received_bps / 1e6
    );

    let agent = Agent::start(&node, &["--gc-interval", "1"]);
    agent
        .wait_for_line(Duration::from_secs(10), |l| {
            l.contains("reattached") && l.contains(&format!("({veth})"))
        })
        .unwrap_or_else(|| {
            panic!(
                "the agent did not reattach to_pod on {veth}:\n{}",
                agent.stderr().join("\n")
            )
        });
    assert_limited(
        udp_flood(limited.netns(), limited.ip(), node.netns()),
        "ingress node -> pod after the agent reattached the limit, UDP flood",
    );
}

#[test]
fn without_limits_nothing_is_limited() {
    let node = Node::new();
    let _uplink = node.add_uplink();
    let a = node.add_pod();
    let b = node.add_pod();
    // A zero rate and burst is "no limit", as in the reference plugin.
    let c = node.add_pod_with(runtime_bandwidth(
        &node,
        json!({ "ingressRate": 0, "ingressBurst": 0, "egressRate": 0, "egressBurst": 0 }),
    ));

    assert_unlimited(iperf3(b.netns(), b.ip(), a.netns()), "pod -> pod");
    assert_unlimited(iperf3(a.netns(), a.ip(), node.netns()), "node -> pod");
    assert_unlimited(
        iperf3(c.netns(), c.ip(), a.netns()),
        "into a zero-limit pod",
    );
    assert_eq!(rate_limit_owners(&node), Vec::<u64>::new());
    for direction in ["from-pod", "to-pod"] {
        assert_eq!(rate_limited(&node, direction), 0, "{direction}");
    }
    assert_node_untouched(&node);
}

/// Owners of the entries of `RATE_LIMITS`.
fn rate_limit_owners(node: &Node) -> Vec<u64> {
    let mut owners: Vec<u64> = dump_map(node, "RATE_LIMITS")
        .into_iter()
        .map(|(key, _)| u64::from_ne_bytes(key[..8].try_into().expect("an 8-byte key")))
        .collect();
    owners.sort();
    owners
}

/// The one owner `RATE_LIMITS` gained between `before` and now.
fn new_owner(node: &Node, before: &[u64]) -> u64 {
    let added: Vec<u64> = rate_limit_owners(node)
        .into_iter()
        .filter(|o| !before.contains(o))
        .collect();
    assert_eq!(added.len(), 1, "new RATE_LIMITS entries: {added:?}");
    added[0]
}

fn both_limits() -> Value {
    json!({
        "ingressRate": LIMIT_BITS, "ingressBurst": BURST_BITS,
        "egressRate": LIMIT_BITS, "egressBurst": BURST_BITS,
    })
}

#[test]
fn del_check_and_gc_handle_the_limits() {
    let node = Node::new();
    let mut deleted = node.add_pod_with(runtime_bandwidth(&node, both_limits()));
    let deleted_owner = new_owner(&node, &[]);
    let checked = node.add_pod_with(runtime_bandwidth(&node, both_limits()));
    let checked_owner = new_owner(&node, &[deleted_owner]);
    let collected = node.add_pod_with(runtime_bandwidth(&node, both_limits()));
    let collected_owner = new_owner(&node, &[deleted_owner, checked_owner]);

    // DEL removes the pod's entry and no other.
    deleted.check("1.0.0").expect_success("CHECK before DEL");
    deleted.del().expect_success("DEL");
    let mut left = vec![checked_owner, collected_owner];
    left.sort();
    assert_eq!(rate_limit_owners(&node), left);

    // CHECK finds the pacing hook gone (unpinning its link detaches it),
    // and the next limited pod attaches it again.
    checked
        .check("1.0.0")
        .expect_success("CHECK with the limits");
    let pacing_pin = node.bpffs_root().join("cgroup/pace_tcp");
    assert!(
        pacing_pin.exists(),
        "no pinned pacing link at {pacing_pin:?}"
    );
    std::fs::remove_file(&pacing_pin).expect("unpinning the pacing link");
    let msg = checked
        .check("1.0.0")
        .expect_error("CHECK without the pacing hook", 112);
    assert!(msg.contains("pacing"), "{msg}");
    let reattached = node.add_pod_with(runtime_bandwidth(&node, both_limits()));
    assert!(pacing_pin.exists(), "ADD did not attach pacing again");
    checked
        .check("1.0.0")
        .expect_success("CHECK with pacing attached again");
    drop(reattached);
    assert_eq!(rate_limit_owners(&node).len(), 2);

    // CHECK finds the entry gone.
    delete_map_entry(&node, "RATE_LIMITS", &checked_owner.to_ne_bytes());
    assert_eq!(rate_limit_owners(&node), vec![collected_owner]);
    let msg = checked
        .check("1.0.0")
        .expect_error("CHECK after the limits were removed", 112);
    assert!(msg.contains("bandwidth"), "{msg}");

    // GC removes the limits of attachments it collects.
    let mut gc = node.conf().cni_version("1.1.0").build();
    gc["cni.dev/valid-attachments"] =
        json!([{ "containerID": checked.container_id(), "ifname": "eth0" }]);
    let stdin = gc.to_string();
    node.cni(&CniRequest {
        command: "GC",
        container_id: "",
        netns: None,
        ifname: "",
        args: None,
        stdin: stdin.as_bytes(),
    })
    .expect_success("GC");
    assert_eq!(rate_limit_owners(&node), Vec::<u64>::new());
    drop(collected);
    assert_node_untouched(&node);
}

#[test]
fn invalid_limits_are_refused_naming_the_field() {
    let node = Node::new();
    // Loads the datapath, so that the footprint can be read.
    let _pod: Pod<'_> = node.add_pod();
    let cases = [
        (json!({ "ingressRate": 1_000_000 }), "\"ingressBurst\""),
        (json!({ "egressBurst": 1_000_000 }), "\"egressRate\""),
        (
            json!({ "egressRate": -5, "egressBurst": 1000 }),
            "\"egressRate\"",
        ),
        (
            json!({ "ingressRate": 1_000_000, "ingressBurst": 1500.5 }),
            "\"ingressBurst\"",
        ),
        (
            json!({ "runtimeConfig": { "bandwidth": { "ingressRate": "fast", "ingressBurst": 1 } } }),
            "runtimeConfig.bandwidth.ingressRate",
        ),
        (
            json!({ "runtimeConfig": { "bandwidth": { "egressRate": 1_000_000 } } }),
            "runtimeConfig.bandwidth.egressBurst",
        ),
        (
            json!({ "runtimeConfig": { "bandwidth": { "egressRate": 10, "egressBurst": -1 } } }),
            "runtimeConfig.bandwidth.egressBurst",
        ),
    ];
    let footprint = Footprint::of(&node, DEFAULT_NETWORK);
    let owners = rate_limit_owners(&node);
    for (keys, field) in cases {
        let conf = conf_with(&node, keys.clone());
        let mut sandbox = Sandbox::new(&node);
        let msg = sandbox
            .add(&conf)
            .expect_error(&format!("ADD with {keys}"), 7);
        assert!(msg.contains(field), "{keys}: {msg:?} does not name {field}");
        assert_eq!(Footprint::of(&node, DEFAULT_NETWORK), footprint, "{keys}");
        assert_eq!(rate_limit_owners(&node), owners, "{keys}");
    }
}
