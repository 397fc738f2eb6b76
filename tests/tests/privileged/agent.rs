//! The node agent (`cni-ebpfd run`) and the inspection CLI: repairs of
//! state the plugin lost track of, programs detached behind its back, the
//! programs' log records, Prometheus metrics and the CLI's tables and JSON.
//! (Expiry of NAT flows is in `masquerade.rs`; upgrades in `upgrade.rs`.)

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use cni_ebpf_tests::{
    Node, Pod,
    agent::Agent,
    ext::{self, PeerClient, PeerServer, with_keys},
    hostports::{HostPort, HostPortNode},
    traffic::{self, UdpReceiver},
};
use serde_json::{Value, json};

/// How long the agent may take to notice something (its tick is 1 s here).
const NOTICE: Duration = Duration::from_secs(10);

fn masquerade(conf: Value) -> Value {
    with_keys(conf, json!({ "ipMasq": true }))
}

fn json(node: &Node, subcommand: &str) -> Value {
    let out = node.agent(subcommand, &["--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{subcommand} --json: {e}: {out}"))
}

/// `ip -j link show dev <name>` in `ns`, first entry.
fn link(ns: &cni_ebpf_tests::Netns, name: &str) -> Value {
    let out = ns.ip(&["-j", "link", "show", "dev", name]);
    let links: Vec<Value> = serde_json::from_str(&out).unwrap();
    links[0].clone()
}

/// Sends `count` UDP datagrams from `pod` with a source address that is not
/// its own nor any pod's; they must be dropped as `unknown-source`.
fn send_spoofed(pod: &Pod<'_>, peer: &Pod<'_>, count: u32) {
    // Known gateway MAC first, so no ARP goes out from the foreign address.
    pod.netns()
        .set_sysctl("net.ipv4.conf.eth0.arp_announce", "2");
    assert!(traffic::ping(pod.netns(), IpAddr::V4(peer.ip()), 1));
    let [a, b, c, _] = pod.ip().octets();
    let spoofed = Ipv4Addr::new(a, b, c, 250);
    let _ = pod.netns().exec(
        "ip",
        &["addr", "add", &format!("{spoofed}/32"), "dev", "eth0"],
    );
    let receiver =
        UdpReceiver::start(peer.netns(), SocketAddr::new(IpAddr::V4(peer.ip()), 0)).unwrap();
    traffic::udp_send(
        pod.netns(),
        SocketAddr::new(IpAddr::V4(spoofed), 0),
        receiver.addr(),
        b"spoofed",
        count,
    )
    .unwrap();
}

#[test]
fn agent_removes_the_state_of_a_pod_interface_that_vanished() {
    let node = Node::new();
    let tcx = with_keys(node.conf().build(), json!({ "attachMode": "tcx" }));
    let mut gone = node.add_pod_with(tcx);
    let kept = node.add_pod();
    let host_ifname = gone.host_ifname();
    let pin = node.bpffs_root().join("links").join(&host_ifname);
    assert!(pin.exists(), "tcx link pin {} missing", pin.display());
    let ifindex = link(node.netns(), &host_ifname)["ifindex"]
        .as_u64()
        .unwrap();

    // The interface disappears without the plugin hearing of it.
    node.netns().ip(&["link", "del", &host_ifname]);
    assert!(node.endpoint_ips().contains(&gone.ip().to_string()));

    let agent = Agent::start(&node, &["--gc-interval", "1"]);
    let line = agent
        .wait_for_line(NOTICE, |l| l.contains("reconciled:"))
        .expect("no reconcile report");
    assert!(
        line.contains("removed 1 stale endpoint address(es) and 1 stale link pin(s)"),
        "{line}"
    );
    assert_eq!(
        node.endpoint_ips(),
        BTreeSet::from([kept.ip().to_string()]),
        "endpoints after reconcile"
    );
    assert!(!pin.exists(), "link pin {} left", pin.display());
    let metrics = agent.scrape();
    assert!(
        metrics
            .find(
                "cni_ebpf_endpoint_packets_total",
                &[("ifindex", &ifindex.to_string())]
            )
            .is_empty(),
        "counters of the vanished interface are still exported"
    );
    assert_eq!(metrics.value("cni_ebpf_reconcile_removed_total", &[]), 2.0);
    drop(agent);
    // The runtime's DEL still succeeds, and the pod that stayed works.
    gone.del()
        .expect_success("DEL after the interface vanished");
    let newcomer = node.add_pod();
    assert!(traffic::ping(kept.netns(), IpAddr::V4(newcomer.ip()), 1));
}

#[test]
fn agent_unpublishes_the_host_ports_of_a_pod_interface_that_vanished() {
    let hp = HostPortNode::new();
    let gone = hp.add_pod(&[HostPort::tcp(30090, 80)]);
    let host_ifname = gone.host_ifname();
    hp.node.netns().ip(&["link", "del", &host_ifname]);
    // The port stays taken until something notices.
    let refused = Pod::add(&hp.node, hp.conf(&[HostPort::tcp(30090, 80)]))
        .err()
        .expect("a second pod got a port the first still holds");
    refused.expect_error("ADD of a port still held", 111);

    let agent = Agent::start(&hp.node, &["--gc-interval", "1"]);
    agent
        .wait_for_line(NOTICE, |l| l.contains("reconciled:"))
        .expect("no reconcile report");
    let portmaps = hp.node.agent("portmaps", &["--json"]);
    assert!(!portmaps.contains("30090"), "{portmaps}");
    drop(agent);
    let _newcomer = hp.add_pod(&[HostPort::tcp(30090, 80)]);
}

#[test]
fn agent_reattaches_programs_detached_behind_its_back() {
    let hp = HostPortNode::new();
    let node = &hp.node;
    let a = node.add_pod_with(masquerade(hp.conf(&[])));
    let b = node.add_pod_with(masquerade(hp.conf(&[])));
    let ext_ip = IpAddr::V4(hp.ext.ext_ip);
    assert!(traffic::ping(a.netns(), ext_ip, 1), "baseline to outside");

    // The uplink loses its program before the agent starts: replies from
    // outside are no longer translated back.
    node.netns()
        .exec_ok("tc", &["filter", "del", "dev", "uplink", "ingress"]);
    assert!(
        !traffic::ping(a.netns(), ext_ip, 2),
        "outside reachable without from_uplink: the test proves nothing"
    );
    let agent = Agent::start(node, &["--gc-interval", "1"]);
    let line = agent
        .wait_for_line(NOTICE, |l| l.contains("reconciled:"))
        .expect("no reconcile report");
    assert!(line.contains("reattached 1 program(s) (uplink)"), "{line}");
    assert!(
        traffic::ping(a.netns(), ext_ip, 1),
        "outside after reattach"
    );

    // A pod's veth loses its program while the agent runs.
    let veth = a.host_ifname();
    node.netns()
        .exec_ok("tc", &["filter", "del", "dev", &veth, "ingress"]);
    assert!(
        !traffic::ping(a.netns(), IpAddr::V4(b.ip()), 2),
        "b reachable without from_pod on a: the test proves nothing"
    );
    agent
        .wait_for_line(NOTICE, |l| l.contains(&format!("({veth})")))
        .unwrap_or_else(|| {
            panic!(
                "the agent did not reattach {veth}:\n{}",
                agent.stderr().join("\n")
            )
        });
    assert!(
        traffic::ping(a.netns(), IpAddr::V4(b.ip()), 1),
        "a -> b after reattach"
    );
    a.check("1.0.0").expect_success("CHECK after reattach");
    assert_eq!(
        agent
            .scrape()
            .value("cni_ebpf_reconcile_reattached_total", &[]),
        2.0
    );
}

#[test]
fn agent_streams_the_datapath_log_records_at_the_chosen_level() {
    let node = Node::new();
    let a = node.add_pod();
    let b = node.add_pod();
    let ifindex = link(node.netns(), &a.host_ifname())["ifindex"]
        .as_u64()
        .unwrap();
    let expected = format!("drop unknown-source from-pod ifindex {ifindex} source");

    // At error level the drop (a warning) is read and not printed.
    let quiet = Agent::start(&node, &["--log-level", "error"]);
    quiet
        .wait_for_line(NOTICE, |l| l.contains("streaming datapath logs"))
        .expect("the agent did not stream logs");
    send_spoofed(&a, &b, 3);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !quiet.stderr().iter().any(|l| l.contains("unknown-source")),
        "printed below its level: {:?}",
        quiet.stderr()
    );
    drop(quiet);

    let agent = Agent::start(&node, &["--log-level", "debug"]);
    agent
        .wait_for_line(NOTICE, |l| l.contains("streaming datapath logs"))
        .expect("the agent did not stream logs");
    send_spoofed(&a, &b, 3);
    let line = agent
        .wait_for_line(NOTICE, |l| l.contains(&expected))
        .unwrap_or_else(|| panic!("no log line {expected:?}:\n{}", agent.stderr().join("\n")));
    let [x, y, z, _] = a.ip().octets();
    assert!(
        line.contains("datapath warn:") && line.contains(&format!("{x}.{y}.{z}.250")),
        "{line}"
    );
}

#[test]
fn metrics_report_traffic_drops_fill_levels_nat_and_gc() {
    let hp = HostPortNode::new();
    let node = &hp.node;
    let a = node.add_pod_with(masquerade(hp.conf(&[])));
    let b = node.add_pod_with(masquerade(hp.conf(&[])));
    let agent = Agent::start(node, &["--gc-interval", "1"]);

    const BYTES: u64 = 20_000_000;
    let transfer =
        traffic::tcp_transfer(b.netns(), a.netns(), IpAddr::V4(b.ip()), 0, BYTES).unwrap();
    assert!(transfer.intact(), "{transfer:?}");
    send_spoofed(&a, &b, 5);
    let server = PeerServer::start(&hp.ext.netns, SocketAddrV4::new(hp.ext.ext_ip, 0)).unwrap();
    let outside = a
        .netns()
        .run(|| PeerClient::connect(server.addr(), Duration::from_secs(5)))
        .unwrap();
    assert_eq!(outside.seen_as.ip(), IpAddr::V4(hp.ext.node_ip));

    let first = agent.scrape();
    let bytes = |ip: Ipv4Addr, direction: &str| {
        first.value(
            "cni_ebpf_endpoint_bytes_total",
            &[("ip", &ip.to_string()), ("direction", direction)],
        )
    };
    let packets = |ip: Ipv4Addr, direction: &str| {
        first.value(
            "cni_ebpf_endpoint_packets_total",
            &[("ip", &ip.to_string()), ("direction", direction)],
        )
    };
    // The stream's payload plus headers (GSO packets count whole), and the
    // few pings and handshakes around it.
    let range = BYTES as f64..BYTES as f64 * 1.15;
    assert!(
        range.contains(&bytes(a.ip(), "from-pod")),
        "a from-pod {}",
        bytes(a.ip(), "from-pod")
    );
    assert!(
        range.contains(&bytes(b.ip(), "to-pod")),
        "b to-pod {}",
        bytes(b.ip(), "to-pod")
    );
    for (ip, direction) in [
        (a.ip(), "from-pod"),
        (a.ip(), "to-pod"),
        (b.ip(), "from-pod"),
        (b.ip(), "to-pod"),
    ] {
        assert!(packets(ip, direction) > 0.0, "{ip} {direction}: no packets");
        assert!(bytes(ip, direction) > 0.0, "{ip} {direction}: no bytes");
    }
    // The acknowledgements b sends back are far fewer bytes.
    assert!(bytes(b.ip(), "from-pod") < BYTES as f64 / 10.0);

    assert!(
        first.value(
            "cni_ebpf_drops_total",
            &[("reason", "unknown-source"), ("direction", "from-pod")]
        ) >= 5.0
    );
    assert_eq!(
        first.value(
            "cni_ebpf_drops_total",
            &[("reason", "nat-table-full"), ("direction", "from-pod")]
        ),
        0.0
    );
    assert_eq!(
        first.value("cni_ebpf_map_entries", &[("map", "ENDPOINTS")]),
        2.0
    );
    assert_eq!(
        first.value("cni_ebpf_map_capacity", &[("map", "ENDPOINTS")]),
        65536.0
    );
    assert!(first.value("cni_ebpf_map_entries", &[("map", "NAT")]) >= 1.0);
    assert!(first.value("cni_ebpf_map_capacity", &[("map", "NAT")]) > 0.0);
    assert_eq!(
        first.value("cni_ebpf_map_entries", &[("map", "HOST_PORTS")]),
        0.0
    );
    assert!(first.value("cni_ebpf_verdicts_total", &[("verdict", "nat-new-flow")]) >= 1.0);
    assert!(first.value("cni_ebpf_verdicts_total", &[("verdict", "local-delivery")]) > 0.0);

    let runs = first.value("cni_ebpf_gc_runs_total", &[]);
    assert!(ext::wait_until(NOTICE, || {
        agent.scrape().value("cni_ebpf_gc_runs_total", &[]) >= runs + 2.0
    }));
    assert_eq!(agent.scrape().value("cni_ebpf_gc_errors_total", &[]), 0.0);
    drop(outside);
}

#[test]
fn cli_tables_and_json_reflect_the_pods_on_the_node() {
    let hp = HostPortNode::new();
    let node = &hp.node;
    let a = node.add_pod_with(masquerade(hp.conf(&[])));
    let b = node.add_pod_with(masquerade(hp.conf(&[HostPort::tcp(18080, 8080)])));
    let pods = [&a, &b];

    // endpoints
    let endpoints = json(node, "endpoints");
    let rows = endpoints.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{endpoints}");
    for pod in pods {
        let row = rows
            .iter()
            .find(|r| r["ip"] == pod.ip().to_string())
            .unwrap_or_else(|| panic!("{} missing: {endpoints}", pod.ip()));
        let host = link(node.netns(), &pod.host_ifname());
        let eth0 = link(pod.netns(), "eth0");
        assert_eq!(row["ifindex"], host["ifindex"], "{row}");
        assert_eq!(row["hostMac"], host["address"], "{row}");
        assert_eq!(row["podMac"], eth0["address"], "{row}");
    }
    let table = node.agent("endpoints", &[]);
    assert!(table.starts_with("ADDRESS"), "{table}");
    for pod in pods {
        assert!(
            table.lines().any(|l| l.starts_with(&pod.ip().to_string())),
            "{table}"
        );
    }
    assert!(
        table.trim_end().ends_with("2 endpoint address(es)"),
        "{table}"
    );

    // portmaps
    let ports = json(node, "portmaps");
    assert_eq!(
        ports,
        json!([{
            "protocol": "tcp", "hostIP": null, "hostPort": 18080,
            "podIP": b.ip().to_string(), "containerPort": 8080,
            "owner": ports[0]["owner"],
        }])
    );
    let table = node.agent("portmaps", &[]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        ["tcp", "*", "18080", &b.ip().to_string(), "8080"],
        "{table}"
    );
    assert!(table.trim_end().ends_with("1 host port(s)"), "{table}");

    // status
    let status = json(node, "status");
    assert_eq!(status["endpoints"], 2, "{status}");
    assert_eq!(status["uplink"], "uplink", "{status}");
    assert_eq!(status["masquerade"], hp.ext.node_ip.to_string(), "{status}");
    assert_eq!(status["hostPorts"], 1, "{status}");
    assert_eq!(
        status["pinnedBuilds"],
        json!([status["thisBuild"]]),
        "{status}"
    );
    // `ipMasq` covers IPv6 too, to the uplink's IPv6 address.
    assert_eq!(
        status["masqueradeV6"],
        hp.ext.node_ip6.to_string(),
        "{status}"
    );
    // a's and b's filters, the uplink's, six socket hooks (three per
    // family): all current.
    assert_eq!(
        status["attachments"].as_array().unwrap().len(),
        9,
        "{status}"
    );
    assert_eq!(status["attachmentsOnThisBuild"], 9, "{status}");
    let table = node.agent("status", &[]);
    assert!(table.contains("endpoints       2 address(es)"), "{table}");
    assert!(table.contains("uplink          uplink"), "{table}");
    assert!(table.contains("host ports      1 of"), "{table}");

    // drops and stats: every reason and verdict, counts that move
    send_spoofed(&a, &b, 4);
    let drops = json(node, "drops");
    assert_eq!(
        drops.as_array().unwrap().len(),
        26,
        "13 reasons x 2 directions"
    );
    let spoofed = drops
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["reason"] == "unknown-source" && d["direction"] == "from-pod")
        .unwrap();
    assert!(spoofed["packets"].as_u64().unwrap() >= 4, "{spoofed}");
    let table = node.agent("drops", &[]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("unknown-source") && l.contains("from-pod")),
        "{table}"
    );
    assert_eq!(
        table.lines().count(),
        1 + drops
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["packets"] != 0)
            .count(),
        "the table lists the non-zero rows: {table}"
    );
    let stats = json(node, "stats");
    let delivered = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["verdict"] == "local-delivery")
        .unwrap();
    assert!(delivered["packets"].as_u64().unwrap() > 0, "{stats}");
    let table = node.agent("stats", &[]);
    assert!(
        table.lines().any(|l| l.starts_with("local-delivery")),
        "{table}"
    );

    // nat: one open connection to the outside
    let server = PeerServer::start(&hp.ext.netns, SocketAddrV4::new(hp.ext.ext_ip, 0)).unwrap();
    let client = a
        .netns()
        .run(|| PeerClient::connect(server.addr(), Duration::from_secs(5)))
        .unwrap();
    let local = client.stream.local_addr().unwrap();
    let nat = json(node, "nat");
    let flows = nat["flows"].as_array().unwrap();
    let flow = flows
        .iter()
        .find(|f| f["pod"] == local.to_string())
        .unwrap_or_else(|| panic!("no flow for {local}: {nat}"));
    assert_eq!(flow["proto"], "tcp");
    assert_eq!(flow["remote"], server.addr().to_string());
    assert_eq!(flow["translated"], client.seen_as.to_string());
    assert_eq!(flow["state"], "established");
    assert_eq!(nat["count"], flows.len());
    let table = node.agent("nat", &[]);
    assert!(
        table.lines().any(|l| l.starts_with("tcp")
            && l.contains(&local.to_string())
            && l.contains(&client.seen_as.to_string())
            && l.contains("established")),
        "{table}"
    );
    drop(client);
}

/// The id of the XDP program `dev` runs in `ns`, if any (`ip -j link`).
fn xdp_program_id(ns: &cni_ebpf_tests::Netns, dev: &str) -> Option<u64> {
    link(ns, dev)["xdp"]["prog"]["id"].as_u64()
}

#[test]
fn agent_reattaches_xdp_detached_from_the_uplink_behind_its_back() {
    let hp = HostPortNode::new();
    let node = &hp.node;
    // A NIC's whole checksums, as XDP needs them (see `ext::full_checksums`).
    ext::full_checksums(&hp.ext.netns, "eth0");
    let conf = with_keys(masquerade(hp.conf(&[])), json!({ "uplinkXdp": true }));
    let pod = node.add_pod_with(conf);
    let echo = ext::UdpEcho::start(&hp.ext.netns, SocketAddrV4::new(hp.ext.ext_ip, 0), false)
        .expect("starting the UDP echo");
    let socket = pod
        .netns()
        .run(|| {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.connect(echo.addr())?;
            Ok::<_, std::io::Error>(socket)
        })
        .expect("pod UDP socket");
    // Whether a UDP request is answered, and whether XDP delivered the answer.
    let request = |payload: &[u8]| {
        let before = node.verdict_packets("xdp-delivered");
        let answered = ext::udp_request(&socket, payload, Duration::from_secs(2))
            .is_ok_and(|(_, echoed)| echoed == payload);
        (answered, node.verdict_packets("xdp-delivered") > before)
    };
    assert_eq!(
        request(b"baseline"),
        (true, true),
        "XDP delivers the answer"
    );

    // The link is detached behind the plugin's back: its pin stays, the
    // device runs no XDP, and tc alone carries the replies.
    let pin = node.bpffs_root().join("uplink-xdp").join("uplink");
    let pin_arg = pin.to_str().unwrap();
    assert!(xdp_program_id(node.netns(), "uplink").is_some());
    node.netns()
        .exec_ok("bpftool", &["link", "detach", "pinned", pin_arg]);
    assert_eq!(xdp_program_id(node.netns(), "uplink"), None);
    assert_eq!(request(b"tc only"), (true, false), "without XDP");

    let agent = Agent::start(node, &["--gc-interval", "1"]);
    agent
        .wait_for_line(NOTICE, |l| l.contains("(uplink xdp)"))
        .unwrap_or_else(|| {
            panic!(
                "the agent did not reattach XDP to the uplink:\n{}",
                agent.stderr().join("\n")
            )
        });
    assert!(xdp_program_id(node.netns(), "uplink").is_some());
    assert_eq!(
        request(b"xdp again"),
        (true, true),
        "after the agent's repair"
    );
    // Once repaired, the next passes leave it alone.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent
            .scrape()
            .value("cni_ebpf_reconcile_reattached_total", &[]),
        1.0
    );
    drop(agent);
    pod.check("1.0.0").expect_success("CHECK after the repair");
}

/// `attachMode: auto` (the default): ADD attaches through clsact, and the
/// agent moves the pod onto tcx links a pass later, make-before-break:
/// a ping every 2 ms across the moves loses nothing. `to_pod` (a pod with
/// an ingress limit) moves too, a pod that asked for clsact stays, CHECK
/// passes either way, `cni-ebpfd promote` moves a pod at once, and DEL
/// leaves no link pin.
#[test]
fn auto_pods_move_onto_tcx_without_losing_a_packet() {
    use cni_ebpf_tests::tc_hooks::{Hook, filters, tcx_programs};
    let node = Node::new();
    let ns = node.netns();
    let mut a = node.add_pod();
    let mut limited = node.add_pod_with(with_keys(
        node.conf().build(),
        json!({ "ingressRate": 100_000_000, "ingressBurst": 1_000_000 }),
    ));
    let mut stays = node.add_pod_with(with_keys(
        node.conf().build(),
        json!({ "attachMode": "clsact" }),
    ));
    let names = |pairs: Vec<(u64, String)>| -> Vec<String> {
        pairs.into_iter().map(|(_, name)| name).collect()
    };
    let on_clsact = |veth: &str, hook, program: &str| {
        names(filters(ns, veth, hook)) == [program] && tcx_programs(ns, veth, hook).is_empty()
    };
    let on_tcx = |veth: &str, hook, program: &str| {
        filters(ns, veth, hook).is_empty() && tcx_programs(ns, veth, hook) == [program]
    };
    let (a_veth, limited_veth, stays_veth) =
        (a.host_ifname(), limited.host_ifname(), stays.host_ifname());
    for veth in [&a_veth, &limited_veth, &stays_veth] {
        assert!(
            on_clsact(veth, Hook::Ingress, "from_pod"),
            "{veth} after ADD: filters {:?}, tcx {:?}",
            filters(ns, veth, Hook::Ingress),
            tcx_programs(ns, veth, Hook::Ingress)
        );
    }
    assert!(on_clsact(&limited_veth, Hook::Egress, "to_pod"));

    let moved = |agent: &Agent| {
        agent
            .stderr()
            .iter()
            .filter(|l| l.contains("moved onto tcx:"))
            .flat_map(|l| {
                l.rsplit("moved onto tcx: ")
                    .next()
                    .unwrap_or_default()
                    .split(", ")
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect::<BTreeSet<String>>()
    };
    let (sent, answered, agent) = std::thread::scope(|scope| {
        // 2 500 pings 2 ms apart from a to each of the others, across the moves.
        let pings = [limited.ip(), stays.ip()].map(|ip| {
            let from = a.netns();
            scope.spawn(move || traffic::ping_every(from, None, IpAddr::V4(ip), 2_500, "0.002"))
        });
        std::thread::sleep(Duration::from_millis(300));
        let agent = Agent::start(&node, &["--tcx-moves", "4", "--gc-interval", "1"]);
        let deadline = std::time::Instant::now() + NOTICE;
        while moved(&agent).len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let [(s1, r1), (s2, r2)] = pings.map(|p| p.join().unwrap());
        (s1 + s2, r1 + r2, agent)
    });
    assert_eq!(
        moved(&agent),
        BTreeSet::from([a_veth.clone(), limited_veth.clone()]),
        "{}",
        agent.stderr().join("\n")
    );
    assert_eq!((sent, answered), (5_000, 5_000), "pings across the moves");
    assert!(on_tcx(&a_veth, Hook::Ingress, "from_pod"));
    assert!(on_tcx(&limited_veth, Hook::Ingress, "from_pod"));
    assert!(on_tcx(&limited_veth, Hook::Egress, "to_pod"));
    assert!(on_clsact(&stays_veth, Hook::Ingress, "from_pod"));
    let attach: BTreeSet<(String, String, bool)> = json(&node, "endpoints")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["ip"].as_str().unwrap().to_string(),
                e["attach"].as_str().unwrap_or("none").to_string(),
                e["tcxLater"].as_bool().unwrap(),
            )
        })
        .collect();
    let row = |pod: &Pod<'_>, attach: &str, later: bool| {
        (pod.ip().to_string(), attach.to_string(), later)
    };
    assert_eq!(
        attach,
        BTreeSet::from([
            row(&a, "tcx", true),
            row(&limited, "tcx", true),
            row(&stays, "clsact", false),
        ]),
        "cni-ebpfd endpoints"
    );
    let metrics = agent.scrape();
    assert_eq!(metrics.value("cni_ebpf_tcx_moved_total", &[]), 2.0);
    assert_eq!(metrics.value("cni_ebpf_tcx_waiting", &[]), 0.0);
    drop(agent);
    for pod in [&a, &limited, &stays] {
        pod.check("1.0.0").expect_success("CHECK after the moves");
    }

    // The one-shot command moves a pod at once, however young.
    let mut young = node.add_pod();
    let young_veth = young.host_ifname();
    assert!(on_clsact(&young_veth, Hook::Ingress, "from_pod"));
    let said: Value = serde_json::from_str(&node.agent("promote", &["--json"])).unwrap();
    assert_eq!(said["moved"], json!([young_veth]), "{said}");
    assert!(on_tcx(&young_veth, Hook::Ingress, "from_pod"));
    assert!(traffic::ping(young.netns(), IpAddr::V4(a.ip()), 1));
    let again: Value = serde_json::from_str(&node.agent("promote", &["--json"])).unwrap();
    assert_eq!(again["moved"], json!([]), "{again}");

    for pod in [&mut a, &mut limited, &mut stays, &mut young] {
        pod.del().expect_success("DEL of a moved pod");
    }
    assert!(
        cni_ebpf_tests::spec::link_pins(&node).is_empty(),
        "link pins left: {:?}",
        cni_ebpf_tests::spec::link_pins(&node)
    );
}
