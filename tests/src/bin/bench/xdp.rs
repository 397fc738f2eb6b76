//! XDP on the uplink (`uplinkXdp`) against the tc program alone, measured
//! from outside the node: a client in `ext` through a published host port
//! to a pod, a pod's masqueraded flows to a server in `ext` (their replies
//! are what the uplink translates), and a UDP flood from `ext` to a
//! published port nobody listens on in the pod (packets per second the node
//! passes into the pod, where its stack drops them).
//!
//! Every row has its own node; the two kinds differ only in `uplinkXdp`.
//! In all of them `ext`'s veth computes its checksums in full, as a NIC does
//! (an XDP frame cannot carry a veth's partial checksum, see
//! `ext::full_checksums`), so tc rows pay the same sender cost.

use std::{
    net::{SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use cni_ebpf_tests::{Ext, Netns, ext, hostports::TestCgroup};
use serde_json::json;

use crate::{
    Plan,
    chain::{Chain, ChainedPod},
    cni::PluginNode,
    flows::{self, Path},
    masquerade::AgentGc,
    metric::{Better, Metric},
    progress, stop,
    topology::Contender,
};

pub const SCENARIO: &str = "xdp";
pub const HEADING: &str = "outside → node through the uplink: XDP (uplinkXdp) against tc alone";

const HP_TC: Contender = Contender::Named("host port, tc");
const HP_XDP: Contender = Contender::Named("host port, XDP");
const MASQ_TC: Contender = Contender::Named("masquerade, tc");
const MASQ_XDP: Contender = Contender::Named("masquerade, XDP");
const FLOOD_TC: Contender = Contender::Named("UDP flood, tc");
const FLOOD_XDP: Contender = Contender::Named("UDP flood, XDP");

const HOST_PORT: u16 = 30000;
const CONTAINER_PORT: u16 = 8000;
/// Published UDP port whose pod port nobody listens on.
const FLOOD_HOST_PORT: u16 = 30001;
const FLOOD_POD_PORT: u16 = 9;

/// One node: our plugin, its uplink to `ext`, a cgroup of its own for the
/// host-port socket hooks (never the machine's root cgroup).
struct XdpNode {
    // Field order is drop order.
    plugin: PluginNode,
    ext: Ext,
    cgroup: TestCgroup,
    xdp: bool,
}

impl XdpNode {
    fn new(subnet: &str, xdp: bool) -> Self {
        let plugin = PluginNode::cni_ebpf(subnet);
        let ext = ext::uplink_with_default_route(plugin.ebpf_node().expect("our node"));
        ext::full_checksums(&ext.netns, "eth0");
        Self {
            plugin,
            ext,
            cgroup: TestCgroup::new(),
            xdp,
        }
    }

    /// A pod publishing the measured TCP port and the flood's UDP port, its
    /// flows masqueraded.
    fn chain(&self) -> Chain {
        Chain::new(
            &self.plugin,
            json!({
                "ipMasq": true,
                "uplinkXdp": self.xdp,
                "capabilities": { "portMappings": true },
                "cgroupRoot": self.cgroup.path(),
                "runtimeConfig": { "portMappings": [
                    { "hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": "tcp" },
                    { "hostPort": FLOOD_HOST_PORT, "containerPort": FLOOD_POD_PORT, "protocol": "udp" },
                ] },
            }),
        )
    }
}

pub fn run(plan: &Plan) -> Result<Vec<Metric>> {
    let tc = XdpNode::new("10.231.0.0/24", false);
    let xdp = XdpNode::new("10.232.0.0/24", true);
    let tc_pod = ChainedPod::new(&tc.plugin, &tc.chain(), "bench-xdp")?;
    let xdp_pod = ChainedPod::new(&xdp.plugin, &xdp.chain(), "bench-xdp")?;

    let hp_paths = [
        host_port(HP_TC, &tc, &tc_pod),
        host_port(HP_XDP, &xdp, &xdp_pod),
    ];
    let masq_paths = [masq(MASQ_TC, &tc, &tc_pod), masq(MASQ_XDP, &xdp, &xdp_pod)];
    for path in hp_paths.iter().chain(&masq_paths) {
        flows::check_reaches(path, flows::CRR_PORT)?;
    }
    let gc = AgentGc {
        nodes: vec![
            (HP_TC, &tc.plugin),
            (HP_XDP, &xdp.plugin),
            (MASQ_TC, &tc.plugin),
            (MASQ_XDP, &xdp.plugin),
        ],
    };
    let xdp_before = delivered_by_xdp(&xdp);
    let mut metrics = flows::measure(SCENARIO, "hostport", &hp_paths, HP_TC, plan, &gc)?;
    metrics.extend(flows::measure(
        SCENARIO,
        "masq",
        &masq_paths,
        MASQ_TC,
        plan,
        &gc,
    )?);
    let xdp_after = delivered_by_xdp(&xdp);
    eprintln!(
        "[{SCENARIO}] XDP delivered {} packets on its node, the tc node {}",
        xdp_after.saturating_sub(xdp_before),
        delivered_by_xdp(&tc)
    );
    metrics.extend(flood(plan, [(&tc, &tc_pod), (&xdp, &xdp_pod)])?);
    Ok(metrics)
}

/// ext → node address:[`HOST_PORT`] → the pod.
fn host_port<'a>(row: Contender, node: &'a XdpNode, pod: &'a ChainedPod<'_>) -> Path<'a> {
    Path {
        row,
        client: &node.ext.netns,
        server: &pod.netns,
        server_ip: pod.ip().into(),
        connect_ip: node.ext.node_ip.into(),
        mapped: Some((HOST_PORT, CONTAINER_PORT)),
    }
}

/// The pod → a server in ext, masqueraded.
fn masq<'a>(row: Contender, node: &'a XdpNode, pod: &'a ChainedPod<'_>) -> Path<'a> {
    Path {
        row,
        client: &pod.netns,
        server: &node.ext.netns,
        server_ip: node.ext.ext_ip.into(),
        connect_ip: node.ext.ext_ip.into(),
        mapped: None,
    }
}

fn delivered_by_xdp(node: &XdpNode) -> u64 {
    node.plugin
        .ebpf_node()
        .map_or(0, |n| n.verdict_packets("xdp-delivered"))
}

/// Floods each node's published UDP port from `ext` for a run, rounds
/// interleaved; packets per second sent and arriving in the pod.
fn flood(plan: &Plan, rows: [(&XdpNode, &ChainedPod<'_>); 2]) -> Result<Vec<Metric>> {
    let names = [FLOOD_TC, FLOOD_XDP];
    let metric = |id: &str, title: &str| {
        Metric::new(
            SCENARIO,
            id,
            title,
            "packets/s",
            0,
            Better::Higher,
            FLOOD_TC,
            plan.rounds,
        )
        .with_rows(&names)
    };
    let mut sent = metric(
        "flood.sent",
        "UDP flood from ext to a published port with no listener: sent (one sender, 18-byte payloads)",
    );
    let mut arrived = metric(
        "flood.arrived",
        "UDP flood: arriving in the pod, dropped there by its stack (Udp NoPorts)",
    );
    for round in plan.round_indices() {
        for ((node, pod), name) in rows.iter().zip(names) {
            stop::check()?;
            let result = flood_once(node, pod, plan);
            let shown = result
                .as_ref()
                .map(|(_, arrived)| *arrived)
                .map_err(|e| anyhow!("{e:#}"));
            progress(SCENARIO, round, name, "flood arrived", &shown, "packets/s");
            if let (Some(round), Ok((s, a))) = (round, result) {
                sent.record(name, round, Some(s));
                arrived.record(name, round, Some(a));
            }
        }
    }
    Ok(vec![sent, arrived])
}

/// (sent, arrived) packets per second of one flood of `plan.run_time`.
fn flood_once(node: &XdpNode, pod: &ChainedPod<'_>, plan: &Plan) -> Result<(f64, f64)> {
    let target = SocketAddrV4::new(node.ext.node_ip, FLOOD_HOST_PORT);
    let before = rx_packets(&pod.netns)?;
    let run_time = plan.run_time;
    let cpu = plan.cpus.client;
    let (count, elapsed) = node.ext.netns.run(move || -> Result<(u64, Duration)> {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(target)?;
        let payload = [0x5au8; 18];
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed() < run_time {
            for _ in 0..256 {
                if socket.send(&payload).is_ok() {
                    count += 1;
                }
            }
        }
        Ok((count, start.elapsed()))
    })?;
    // What is still queued arrives within a moment.
    std::thread::sleep(Duration::from_millis(200));
    let arrived = rx_packets(&pod.netns)?.saturating_sub(before);
    let seconds = elapsed.as_secs_f64();
    Ok((count as f64 / seconds, arrived as f64 / seconds))
}

/// UDP datagrams the pod's stack found no socket for (`Udp: NoPorts`):
/// the flood as it arrived. Read through `/proc/thread-self`, the
/// namespace of this thread (`/proc/net` is the process's).
fn rx_packets(ns: &Netns) -> Result<u64> {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))?;
    let mut udp = text.lines().filter(|line| line.starts_with("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    let (Some(names), Some(values)) = (names, values) else {
        return Err(anyhow!("no Udp lines in the pod's /proc/net/snmp"));
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "NoPorts")
        .and_then(|(_, value)| value.parse().ok())
        .context("no Udp NoPorts in the pod's /proc/net/snmp")
}
