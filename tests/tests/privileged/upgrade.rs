//! Upgrading the programs under running traffic: `cni-ebpfd load --replace`
//! three times while an iperf3 stream runs between two pods and 50 TCP
//! connections stay open (pod to pod, and to a server outside the node
//! through masquerade). Nothing may reset, every connection must exchange
//! data after every replacement, the stream must never stall for a second,
//! and every attachment (clsact filter, tcx link, uplink, cgroup socket
//! hooks) must really run new programs each time.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use cni_ebpf_tests::{
    Node, Pod,
    echo::{EchoClient, EchoServer},
    ext::with_keys,
    hostports::{HostPort, HostPortNode},
    netns::Netns,
    process::KillOnDrop,
    tc_hooks, traffic,
};
use serde_json::{Value, json};

const REPLACEMENTS: usize = 3;
const CONNECTIONS: usize = 50;
const IPERF_PORT: &str = "5201";
/// Long enough for three replacements with a pause around each.
const IPERF_SECONDS: &str = "9";

/// One attachment as `cni-ebpfd status --json` lists it: where (stable
/// across replacements: a filter's priority and handle change) -> program id.
pub(crate) fn attachments(node: &Node) -> BTreeMap<String, u32> {
    let status: Value = serde_json::from_str(&node.agent("status", &["--json"])).unwrap();
    status["attachments"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json without attachments: {status}"))
        .iter()
        .map(|a| {
            let point = &a["point"];
            let key = match point["kind"].as_str() {
                Some("filter") => format!(
                    "{} {} {}",
                    point["ifname"].as_str().unwrap(),
                    point["hook"].as_str().unwrap(),
                    a["program"].as_str().unwrap()
                ),
                _ => format!("link {}", point["pin"].as_str().unwrap()),
            };
            (key, a["programId"].as_u64().unwrap() as u32)
        })
        .collect()
}

/// Program ids of the BPF filters on ingress of `dev`, as `tc` reports
/// them: a check that does not go through cni-ebpfd.
pub(crate) fn tc_filter_ids(node: &Node, dev: &str) -> Vec<u64> {
    tc_hooks::filter_ids(node.netns(), dev, tc_hooks::Hook::Ingress)
}

/// The program id of the link pinned at `pin`, as bpftool reports it.
fn pinned_link_program(node: &Node, pin: &str) -> u64 {
    let out = node
        .netns()
        .exec_ok("bpftool", &["-j", "link", "show", "pinned", pin]);
    let link: Value = serde_json::from_str(&out).unwrap();
    link["prog_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("bpftool link show pinned {pin}: {link}"))
}

/// An iperf3 client run in `client` against a one-shot server in `server`,
/// reporting every 100 ms.
pub(crate) fn iperf3_stream(
    server_ns: &Netns,
    server_ip: Ipv4Addr,
    client: &Netns,
    seconds: &str,
) -> (KillOnDrop, Child) {
    let ip = server_ip.to_string();
    let server = traffic::iperf3_server(server_ns, server_ip, IPERF_PORT);
    // The server listens a moment after it starts; a probe connection would
    // use up the one-shot server, so wait for its socket instead.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server_ns_listens(server_ns, IPERF_PORT) {
        assert!(
            Instant::now() < deadline,
            "the iperf3 server never listened"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let mut command = client.command("iperf3");
    command
        .args([
            "-c",
            &ip,
            "-p",
            IPERF_PORT,
            "-t",
            seconds,
            "-i",
            "0.1",
            "-b",
            "2G",
            "-J",
            "--connect-timeout",
            "3000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let client = command.spawn().expect("spawning the iperf3 client");
    (server, client)
}

/// Whether something listens on TCP `port` in `ns`.
fn server_ns_listens(ns: &Netns, port: &str) -> bool {
    let out = ns.exec_ok("ss", &["-Htln", &format!("sport = :{port}")]);
    !out.trim().is_empty()
}

/// The longest run of consecutive zero-byte intervals, in seconds, and the
/// number of intervals.
pub(crate) fn longest_stall(report: &Value) -> (f64, usize) {
    let intervals = report["intervals"]
        .as_array()
        .unwrap_or_else(|| panic!("iperf3 report without intervals: {report}"));
    let mut longest: f64 = 0.0;
    let mut current = 0.0;
    for interval in intervals {
        let sum = &interval["sum"];
        if sum["bytes"].as_u64().unwrap_or(0) == 0 {
            current += sum["seconds"].as_f64().unwrap_or(0.0);
            longest = longest.max(current);
        } else {
            current = 0.0;
        }
    }
    (longest, intervals.len())
}

fn masquerade(conf: Value, mode: &str) -> Value {
    with_keys(conf, json!({ "ipMasq": true, "attachMode": mode }))
}

#[test]
fn replacing_the_programs_three_times_keeps_traffic_and_connections() {
    let hp = HostPortNode::new();
    let node = &hp.node;
    // The first pod decides how the uplink is attached: clsact. The second
    // is attached with tcx and publishes a port, so the socket hooks are
    // attached to the test's cgroup with links.
    let a: Pod<'_> = node.add_pod_with(masquerade(hp.conf(&[]), "clsact"));
    let b: Pod<'_> = node.add_pod_with(masquerade(hp.conf(&[HostPort::tcp(18080, 8080)]), "tcx"));

    let to_b = EchoServer::start(b.netns(), SocketAddrV4::new(b.ip(), 0)).unwrap();
    let outside = EchoServer::start(&hp.ext.netns, SocketAddrV4::new(hp.ext.ext_ip, 0)).unwrap();
    let mut conns: Vec<(String, EchoClient)> = Vec::new();
    for i in 0..CONNECTIONS {
        let (what, from, server) = match i % 3 {
            0 => ("a -> b", a.netns(), to_b.addr()),
            1 => ("a -> outside", a.netns(), outside.addr()),
            _ => ("b -> outside", b.netns(), outside.addr()),
        };
        let mut conn = EchoClient::connect(from, server, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connection {i} ({what}): {e}"));
        conn.round_trip(1024)
            .unwrap_or_else(|e| panic!("connection {i} ({what}) before any replacement: {e}"));
        conns.push((format!("{i} ({what})"), conn));
    }

    let mut before = attachments(node);
    let a_veth = a.host_ifname();
    let b_link = node
        .bpffs_root()
        .join("links")
        .join(b.host_ifname())
        .to_string_lossy()
        .into_owned();
    for expected in [
        format!("{a_veth} ingress from_pod"),
        "uplink ingress from_uplink".to_string(),
        format!("link {b_link}"),
    ] {
        assert!(
            before.contains_key(&expected),
            "{expected} missing from {before:?}"
        );
    }
    // connect, sendmsg and recvmsg for each family.
    let cgroup_links = before.keys().filter(|k| k.contains("/cgroup/")).count();
    assert_eq!(cgroup_links, 6, "socket hook links: {before:?}");

    let (_server, iperf) = iperf3_stream(b.netns(), b.ip(), a.netns(), IPERF_SECONDS);
    thread::sleep(Duration::from_millis(1500));
    for round in 1..=REPLACEMENTS {
        let started = Instant::now();
        let out: Value =
            serde_json::from_str(&node.agent("load", &["--replace", "--json"])).unwrap();
        let took = started.elapsed();
        let new_ids: Vec<u64> = out["programs"]
            .as_object()
            .unwrap_or_else(|| panic!("load --replace --json without programs: {out}"))
            .values()
            .map(|id| id.as_u64().unwrap())
            .collect();
        let after = attachments(node);
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "replacement {round} changed the set of attachments"
        );
        for (point, id) in &after {
            assert_ne!(
                before[point], *id,
                "replacement {round}: {point} still runs program {id}"
            );
            assert!(
                new_ids.contains(&u64::from(*id)),
                "replacement {round}: {point} runs {id}, not one of the new programs {new_ids:?}"
            );
        }
        // The same, seen by tc and bpftool rather than cni-ebpfd.
        let filters = tc_filter_ids(node, &a_veth);
        assert_eq!(
            filters,
            vec![u64::from(after[&format!("{a_veth} ingress from_pod")])],
            "replacement {round}: filters on {a_veth}"
        );
        assert_eq!(
            pinned_link_program(node, &b_link),
            u64::from(after[&format!("link {b_link}")]),
            "replacement {round}: tcx link of b"
        );
        for (what, conn) in &mut conns {
            conn.round_trip(4096)
                .unwrap_or_else(|e| panic!("replacement {round}: connection {what}: {e}"));
        }
        eprintln!(
            "upgrade: replacement {round} took {:.0} ms, moved {} attachments",
            took.as_secs_f64() * 1e3,
            out["swapped"].as_array().map_or(0, Vec::len)
        );
        before = after;
        thread::sleep(Duration::from_millis(1000));
    }

    let output = iperf.wait_with_output().expect("waiting for iperf3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 report: {e}: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        report["error"].is_null() && output.status.success(),
        "iperf3 failed: {}",
        report["error"]
    );
    let (stall, intervals) = longest_stall(&report);
    let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
    eprintln!(
        "upgrade: iperf3 {intervals} intervals, {:.2} GB, longest stall {stall:.1} s, {} retransmits",
        sent as f64 / 1e9,
        report["end"]["sum_sent"]["retransmits"]
    );
    assert!(intervals >= 50, "iperf3 reported {intervals} intervals");
    assert!(
        stall < 1.0,
        "the stream stalled for {stall:.1} s during the replacements"
    );

    // The plugin still recognises its attachments and makes new ones.
    a.check("1.0.0")
        .expect_success("CHECK of a after the upgrades");
    b.check("1.0.0")
        .expect_success("CHECK of b after the upgrades");
    let c = node.add_pod_with(masquerade(hp.conf(&[]), "clsact"));
    assert!(
        cni_ebpf_tests::traffic::ping(a.netns(), c.ip().into(), 1),
        "a new pod is not reachable after the upgrades"
    );
    for (what, conn) in &mut conns {
        conn.round_trip(1024)
            .unwrap_or_else(|e| panic!("after the upgrades: connection {what}: {e}"));
    }
}

#[test]
fn agent_moves_attachments_of_an_earlier_generation_onto_its_own_at_start() {
    let hp = HostPortNode::new();
    let node = &hp.node;
    let a = node.add_pod_with(masquerade(hp.conf(&[]), "clsact"));
    let b = node.add_pod_with(masquerade(hp.conf(&[HostPort::tcp(18080, 8080)]), "tcx"));
    let old = attachments(node);

    // What a node looks like after a new binary loaded its programs (the
    // plugin's first ADD, or `cni-ebpfd load`) while pods still run the
    // programs of before: move this build's pins aside, load again.
    let programs = node.bpffs_root().join("programs");
    let build = std::fs::read_dir(&programs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    std::fs::rename(programs.join(&build), programs.join("old")).unwrap();
    node.agent("load", &[]);
    assert!(
        !programs.join("old").exists(),
        "load left the earlier programs pinned"
    );
    assert_eq!(attachments(node), old, "load alone moved attachments");

    let conn_server = EchoServer::start(b.netns(), SocketAddrV4::new(b.ip(), 0)).unwrap();
    let mut conn =
        EchoClient::connect(a.netns(), conn_server.addr(), Duration::from_secs(5)).expect("a -> b");
    conn.round_trip(1024).unwrap();

    let agent = cni_ebpf_tests::agent::Agent::start(node, &[]);
    let line = agent
        .wait_for_line(Duration::from_secs(10), |l| l.contains("moved onto it"))
        .unwrap();
    assert!(
        line.contains(&format!("; {} attachment(s) moved onto it", old.len())),
        "{line}"
    );
    let now = attachments(node);
    assert_eq!(
        now.keys().collect::<Vec<_>>(),
        old.keys().collect::<Vec<_>>()
    );
    for (point, id) in &now {
        assert_ne!(old[point], *id, "{point} still runs the earlier program");
    }
    let status: Value = serde_json::from_str(&node.agent("status", &["--json"])).unwrap();
    assert_eq!(
        status["attachmentsOnThisBuild"].as_u64(),
        Some(old.len() as u64),
        "{status}"
    );
    assert!(agent.scrape().value("cni_ebpf_upgrade_swapped_total", &[]) >= old.len() as f64);
    conn.round_trip(1024)
        .expect("the connection across the adoption");
    a.check("1.0.0").expect_success("CHECK of a");
    b.check("1.0.0").expect_success("CHECK of b");
}

#[test]
fn pods_added_during_replacements_end_on_the_new_programs() {
    const PODS: usize = 6;
    let hp = HostPortNode::new();
    let node = &hp.node;
    let first = node.add_pod_with(masquerade(hp.conf(&[]), "clsact"));
    let _agent = cni_ebpf_tests::agent::Agent::start(node, &["--gc-interval", "1"]);

    // ADDs race the replacements: one may open the programs just before
    // they are exchanged and attach them just after; the agent's next tick
    // moves it.
    let pods: Vec<Pod<'_>> = thread::scope(|scope| {
        let adds = scope.spawn(|| {
            (0..PODS)
                .map(|i| {
                    let mode = if i % 2 == 0 { "clsact" } else { "tcx" };
                    let pod = node.add_pod_with(masquerade(hp.conf(&[]), mode));
                    thread::sleep(Duration::from_millis(150));
                    pod
                })
                .collect()
        });
        for _ in 0..REPLACEMENTS {
            node.agent("load", &["--replace"]);
        }
        adds.join().expect("the ADD thread panicked")
    });

    let settled = cni_ebpf_tests::ext::wait_until(Duration::from_secs(10), || {
        let status: Value = serde_json::from_str(&node.agent("status", &["--json"])).unwrap();
        status["attachmentsOnThisBuild"] == status["attachments"].as_array().unwrap().len()
    });
    assert!(
        settled,
        "attachments left on replaced programs: {}",
        node.agent("status", &[])
    );
    let programs = node.bpffs_root().join("programs");
    assert_eq!(
        std::fs::read_dir(&programs).unwrap().count(),
        1,
        "one generation stays pinned"
    );
    for pod in &pods {
        pod.check("1.0.0")
            .expect_success("CHECK of a pod added during the upgrades");
        assert!(
            cni_ebpf_tests::traffic::ping(first.netns(), pod.ip().into(), 1),
            "{} unreachable",
            pod.ip()
        );
    }
}
