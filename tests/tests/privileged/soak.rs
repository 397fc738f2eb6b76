//! Churn and soak, not in the default run (`#[ignore]`): `cargo xtask test
//! --long` runs them. 1000 ADD/DEL cycles, 32 at a time, on a node whose
//! agent reconciles every second, while two other pods ping each other
//! every 10 ms: every call must succeed, no ping may be lost, and the node
//! must end as it began (no veth, endpoint, counters, reservation, record,
//! route or link pin of a churned pod). Prints the figures the README
//! quotes: wall time, call latencies, the agent's RSS at start and end.
//!
//! `CNI_EBPF_SOAK_CYCLES` and `CNI_EBPF_SOAK_PARALLEL` change the size.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use cni_ebpf_tests::{Node, agent::Agent, process::KillOnDrop, spec::Sandbox};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::{Value, json};

use crate::faults::Leftovers;

/// The whole soak stops (and fails) past this.
const BUDGET: Duration = Duration::from_secs(900);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `ping` ending on SIGINT: (sent, received) from its summary.
fn stop_ping(mut ping: KillOnDrop) -> (u64, u64) {
    kill(Pid::from_raw(ping.0.id() as i32), Signal::SIGINT).expect("SIGINT to ping");
    let mut out = String::new();
    use std::io::Read as _;
    ping.0
        .stdout
        .take()
        .expect("ping stdout")
        .read_to_string(&mut out)
        .expect("ping output");
    let _ = ping.0.wait();
    let line = out
        .lines()
        .find(|line| line.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {out}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
#[ignore = "soak: run by `cargo xtask test --long`"]
fn churn_of_add_and_del_beside_live_traffic_loses_and_leaks_nothing() {
    let cycles = env_u64("CNI_EBPF_SOAK_CYCLES", 1000);
    let parallel = env_u64("CNI_EBPF_SOAK_PARALLEL", 32);
    let node = Node::new();
    let mut conf: Value = node.conf().cni_version("1.1.0").build();
    conf["attachMode"] = json!("clsact");

    let mut a = Sandbox::new(&node);
    a.add_ok(&conf);
    let mut b = Sandbox::new(&node);
    b.add_ok(&conf);
    let agent = Agent::start(&node, &["--gc-interval", "1"]);
    thread::sleep(Duration::from_secs(2));
    let rss_start = rss_kib(agent.pid());
    let baseline = Leftovers::of(&node);

    let mut ping = a.netns().command("ping");
    ping.args(["-n", "-q", "-i", "0.01"])
        .arg(b.ip().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let ping = KillOnDrop(ping.spawn().expect("ping"));

    let started = Instant::now();
    let next = AtomicU64::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let latencies: Mutex<(Vec<Duration>, Vec<Duration>)> = Mutex::new((Vec::new(), Vec::new()));
    thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < cycles {
                    if started.elapsed() > BUDGET {
                        failures.lock().unwrap().push("time budget spent".into());
                        return;
                    }
                    let mut pod = Sandbox::new(&node);
                    let add = pod.add(&conf);
                    if !add.success() {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("ADD: {}", add.describe()));
                        continue;
                    }
                    let del = pod.del();
                    if !del.success() {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("DEL: {}", del.describe()));
                    }
                    let mut lat = latencies.lock().unwrap();
                    lat.0.push(add.elapsed);
                    lat.1.push(del.elapsed);
                }
            });
        }
    });
    let wall = started.elapsed();
    thread::sleep(Duration::from_millis(500));
    let (sent, received) = stop_ping(ping);
    // Let the agent's next reconcile run before reading its memory.
    thread::sleep(Duration::from_secs(2));
    let rss_end = rss_kib(agent.pid());
    let left = Leftovers::of(&node);

    let failures = failures.into_inner().unwrap();
    let (mut adds, mut dels) = latencies.into_inner().unwrap();
    adds.sort();
    dels.sort();
    eprintln!(
        "[soak] {cycles} ADD/DEL cycles, {parallel} in parallel: {:.1} s ({:.1} cycles/s); \
         ADD p50 {:?} p99 {:?}, DEL p50 {:?} p99 {:?}; {} failed calls; \
         ping every 10 ms beside it: {received}/{sent} answered; \
         agent RSS {rss_start} KiB at start, {rss_end} KiB at end",
        wall.as_secs_f64(),
        cycles as f64 / wall.as_secs_f64(),
        percentile(&adds, 0.5),
        percentile(&adds, 0.99),
        percentile(&dels, 0.5),
        percentile(&dels, 0.99),
        failures.len(),
    );
    assert!(failures.is_empty(), "failed calls: {failures:#?}");
    assert_eq!(left, baseline, "churn left something behind");
    assert!(
        sent > 0 && received == sent,
        "traffic interrupted: {received}/{sent}"
    );
    a.check().expect_success("CHECK of a");
    b.check().expect_success("CHECK of b");
    drop(agent);
}

/// The NAT table under a flood of new flows for minutes
/// (`CNI_EBPF_NAT_FLOOD_SECONDS`, 120) with the agent expiring idle UDP
/// flows after 2 s every second: each flow is a fresh socket of the pod
/// asking a UDP echo server outside the node; every answer must come back
/// to the socket that asked (the payload says so), seen as the node's
/// address, and none may be lost; the agent's memory must stay flat.
#[test]
#[ignore = "soak: run by `cargo xtask test --long`"]
fn nat_table_under_a_flood_of_new_flows_with_gc_never_mistranslates() {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

    use cni_ebpf_tests::ext::{UdpEcho, masquerade_conf, udp_request, uplink_with_default_route};

    let seconds = env_u64("CNI_EBPF_NAT_FLOOD_SECONDS", 120);
    let node = Node::new();
    let ext = uplink_with_default_route(&node);
    let pod = node.add_pod_with(masquerade_conf(&node));
    let echo = UdpEcho::start(&ext.netns, SocketAddrV4::new(ext.ext_ip, 0), false)
        .expect("UDP echo outside the node");
    let agent = Agent::start(&node, &["--gc-interval", "1", "--udp-timeout", "2"]);
    let rss_start = rss_kib(agent.pid());
    let server = echo.addr();
    let node_ip = ext.node_ip;

    let started = Instant::now();
    let (flows, lost, wrong) = pod.netns().run(move || {
        let (mut flows, mut lost, mut wrong) = (0u64, 0u64, Vec::new());
        while started.elapsed() < Duration::from_secs(seconds) {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
            socket.connect(server).expect("connect");
            let payload = format!("flow {flows}");
            match udp_request(&socket, payload.as_bytes(), Duration::from_secs(1)) {
                Ok((seen, back)) => {
                    let seen_ok = matches!(seen, SocketAddr::V4(v4) if *v4.ip() == node_ip);
                    if !seen_ok || back != payload.as_bytes() {
                        wrong.push(format!(
                            "{payload}: seen as {seen}, answer {:?}",
                            String::from_utf8_lossy(&back)
                        ));
                    }
                }
                Err(_) => lost += 1,
            }
            flows += 1;
        }
        (flows, lost, wrong)
    });
    let elapsed = started.elapsed();
    thread::sleep(Duration::from_secs(4));
    let metrics = agent.scrape();
    let expired = metrics.value("cni_ebpf_gc_expired_total", &[]);
    let rss_end = rss_kib(agent.pid());
    let drops = node.dropped_packets(&["nat-table-full", "nat-ports-exhausted"], "from-pod");
    eprintln!(
        "[soak] NAT flood: {flows} new UDP flows in {:.0} s ({:.0}/s), {lost} unanswered, \
         {} mistranslated, {drops} NAT drops counted; GC expired {expired}; \
         agent RSS {rss_start} KiB at start, {rss_end} KiB at end",
        elapsed.as_secs_f64(),
        flows as f64 / elapsed.as_secs_f64(),
        wrong.len(),
    );
    assert!(
        wrong.is_empty(),
        "mistranslated answers: {:#?}",
        &wrong[..wrong.len().min(10)]
    );
    assert!(
        lost <= drops,
        "{lost} flows unanswered, {drops} drops counted"
    );
    assert!(expired > 0.0, "GC expired nothing");
    drop(agent);
}
