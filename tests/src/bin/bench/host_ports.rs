//! Published host ports (issue 6): a client in `ext` connects to the
//! node's uplink address and a host port, translated to a pod's port.
//!
//! Each row has its own node with one server pod that publishes every
//! mapping of the node: the measured ones are the first and the last of its
//! list (both to the server's port), the others fill the table in between
//! (one pod with N mappings). Rows: **direct** = ext reaches the pod's own
//! address through our `×1` node (route in ext to the pod CIDR via the
//! node; the uplink program delivers to the pod); **cni-ebpf ×N** = our
//! plugin with `portMappings` (hash lookup on the uplink), N = 1, 100, 1000;
//! **portmap ×N** = reference `bridge` + `host-local` + `portmap` (iptables
//! DNAT chain, `ip_forward=1`), N = 1, 200.
//!
//! Also ADD and DEL of a pod publishing one port, timed as the whole chain a
//! runtime runs (ours: one plugin; reference: bridge then portmap, DEL in
//! reverse).

use anyhow::{Result, anyhow, bail};
use cni_ebpf_tests::{Ext, Netns, hostports::TestCgroup, uplink};
use serde_json::{Value, json};

use crate::{
    Plan,
    chain::{Chain, ChainPod, ChainedPod},
    cni::PluginNode,
    flows::{self, Path},
    masquerade::AgentGc,
    metric::{Better, Metric},
    progress, stats, stop,
    topology::Contender,
};

pub const SCENARIO: &str = "hostport";
pub const HEADING: &str = "ext → node address:hostPort → pod (published ports)";

/// The server pod's port behind the first mapping; every measure's server
/// listens there.
const CONTAINER_PORT: u16 = 8000;
/// Behind the last mapping, and the port `direct` reaches: one pod port per
/// way in, so that no two ways in share a reply tuple (pod port, client
/// address and port) when the client reuses its ports.
const LAST_CONTAINER_PORT: u16 = 8001;
/// The first mapping's host port; mapping `i` is `HOST_PORT_BASE + i`.
const HOST_PORT_BASE: u16 = 30000;
/// The host port of the ADD/DEL timing pod.
const TIMING_HOST_PORT: u16 = 40000;

const DIRECT: Contender = Contender::Named("direct");
const OURS_1: Contender = Contender::Named("cni-ebpf ×1");
const OURS_100_FIRST: Contender = Contender::Named("cni-ebpf ×100 first");
const OURS_100_LAST: Contender = Contender::Named("cni-ebpf ×100 last");
const OURS_1000_FIRST: Contender = Contender::Named("cni-ebpf ×1000 first");
const OURS_1000_LAST: Contender = Contender::Named("cni-ebpf ×1000 last");
const PORTMAP_1: Contender = Contender::Named("portmap ×1");
const PORTMAP_200_FIRST: Contender = Contender::Named("portmap ×200 first");
const PORTMAP_200_LAST: Contender = Contender::Named("portmap ×200 last");
const TIMING_OURS: Contender = Contender::Named("cni-ebpf");
const TIMING_PORTMAP: Contender = Contender::Named("bridge+portmap");

/// `portMappings` entries.
fn mapping(host_port: u16, container_port: u16) -> Value {
    json!({ "hostPort": host_port, "containerPort": container_port, "protocol": "tcp" })
}

/// `count` mappings: the first to [`CONTAINER_PORT`], the last to
/// [`LAST_CONTAINER_PORT`], the ones between to ports nobody listens on.
fn mappings(count: u16) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let container = if i == 0 {
                CONTAINER_PORT
            } else if i == count - 1 {
                LAST_CONTAINER_PORT
            } else {
                10_000 + i
            };
            mapping(HOST_PORT_BASE + i, container)
        })
        .collect()
}

/// A node of one row: ours with a cgroup of its own for the socket hooks
/// (never the machine's root cgroup), or the reference bridge.
struct HpNode {
    // Field order is drop order: the plugin node (its pinned hooks) goes
    // before its cgroup.
    plugin: PluginNode,
    ext: Ext,
    cgroup: Option<TestCgroup>,
}

impl HpNode {
    fn ours(subnet: &str) -> Self {
        let plugin = PluginNode::cni_ebpf(subnet);
        let ext = uplink::add_uplink_with_default_route(plugin.netns());
        Self {
            plugin,
            ext,
            cgroup: Some(TestCgroup::new()),
        }
    }

    fn reference(subnet: &str) -> Result<Self> {
        let plugin = PluginNode::reference("bridge", subnet)?;
        let ext = uplink::add_uplink_with_default_route(plugin.netns());
        Ok(Self {
            plugin,
            ext,
            cgroup: None,
        })
    }

    /// The chain of a pod publishing `list`.
    fn chain(&self, list: Vec<Value>) -> Chain {
        let runtime = json!({ "portMappings": list });
        match &self.cgroup {
            Some(cgroup) => Chain::new(
                &self.plugin,
                json!({
                    "capabilities": { "portMappings": true },
                    "cgroupRoot": cgroup.path(),
                    "runtimeConfig": runtime,
                }),
            ),
            None => Chain::new(&self.plugin, json!({})).then(json!({
                "type": "portmap",
                "capabilities": { "portMappings": true },
                "snat": true,
                "runtimeConfig": runtime,
            })),
        }
    }
}

pub fn run(plan: &Plan) -> Result<Vec<Metric>> {
    let ours_1 = HpNode::ours("10.221.0.0/24");
    let ours_100 = HpNode::ours("10.222.0.0/24");
    let ours_1000 = HpNode::ours("10.223.0.0/24");
    let portmap_1 = HpNode::reference("10.224.0.0/24")?;
    let portmap_200 = HpNode::reference("10.225.0.0/24")?;
    let nodes: [(&HpNode, u16); 5] = [
        (&ours_1, 1),
        (&ours_100, 100),
        (&ours_1000, 1000),
        (&portmap_1, 1),
        (&portmap_200, 200),
    ];
    let mut servers = Vec::new();
    for (node, count) in nodes {
        stop::check()?;
        let pod = ChainedPod::new(&node.plugin, &node.chain(mappings(count)), "bench-hp")?;
        eprintln!(
            "[{SCENARIO}] {count} mappings published, ADD {:.1} ms",
            pod.attachment.add_time().as_secs_f64() * 1e3
        );
        servers.push(pod);
    }
    // direct: ext routes the pod CIDR via our ×1 node.
    ours_1.ext.netns.ip(&[
        "route",
        "add",
        "10.221.0.0/24",
        "via",
        &ours_1.ext.node_ip.to_string(),
    ]);

    // (row, node, host port: None for the pod's own address, pod port)
    let rows: [(Contender, usize, Option<u16>); 9] = [
        (DIRECT, 0, None),
        (OURS_1, 0, Some(HOST_PORT_BASE)),
        (OURS_100_FIRST, 1, Some(HOST_PORT_BASE)),
        (OURS_100_LAST, 1, Some(HOST_PORT_BASE + 99)),
        (OURS_1000_FIRST, 2, Some(HOST_PORT_BASE)),
        (OURS_1000_LAST, 2, Some(HOST_PORT_BASE + 999)),
        (PORTMAP_1, 3, Some(HOST_PORT_BASE)),
        (PORTMAP_200_FIRST, 4, Some(HOST_PORT_BASE)),
        (PORTMAP_200_LAST, 4, Some(HOST_PORT_BASE + 199)),
    ];
    let paths: Vec<Path<'_>> = rows
        .iter()
        .map(|(row, index, host_port)| {
            let (node, _) = nodes[*index];
            let server = &servers[*index];
            Path {
                row: *row,
                client: &node.ext.netns,
                server: &server.netns,
                server_ip: server.ip().into(),
                connect_ip: if host_port.is_some() {
                    node.ext.node_ip.into()
                } else {
                    server.ip().into()
                },
                mapped: Some(match *host_port {
                    None => (LAST_CONTAINER_PORT, LAST_CONTAINER_PORT),
                    Some(port) if port == HOST_PORT_BASE => (port, CONTAINER_PORT),
                    Some(port) => (port, LAST_CONTAINER_PORT),
                }),
            }
        })
        .collect();
    for path in &paths {
        flows::check_reaches(path, flows::CRR_PORT)?;
    }
    let gc = AgentGc {
        nodes: rows
            .iter()
            .filter(|(_, index, _)| *index < 3)
            .map(|(row, index, _)| (*row, &nodes[*index].0.plugin))
            .collect(),
    };
    let mut metrics = flows::measure(SCENARIO, "", &paths, OURS_1, plan, &gc)?;
    drop(paths);
    metrics.extend(timing(&ours_1, &portmap_1, plan)?);
    Ok(metrics)
}

/// ADD and DEL of a pod publishing one port, pooled like the `plugin`
/// scenario, one reused pod namespace per chain.
fn timing(ours: &HpNode, portmap: &HpNode, plan: &Plan) -> Result<Vec<Metric>> {
    let rows = [TIMING_OURS, TIMING_PORTMAP];
    let metric = |id: &str, title: &str| {
        Metric::new(
            SCENARIO,
            id,
            title,
            "ms",
            2,
            Better::Lower,
            TIMING_PORTMAP,
            plan.rounds,
        )
        .with_rows(&rows)
    };
    let mut add = metric(
        "add",
        "ADD of a pod publishing one port, whole chain, spawn to exit",
    );
    let mut del = metric(
        "del",
        "DEL of a pod publishing one port, whole chain, spawn to exit",
    );
    let chains = [
        (
            TIMING_OURS,
            ours,
            ours.chain(vec![mapping(TIMING_HOST_PORT, CONTAINER_PORT)]),
        ),
        (
            TIMING_PORTMAP,
            portmap,
            portmap.chain(vec![mapping(TIMING_HOST_PORT, CONTAINER_PORT)]),
        ),
    ];
    let pods: Vec<Netns> = chains
        .iter()
        .map(|_| Netns::with_loopback("bench-hp-timing"))
        .collect();
    for round in plan.round_indices() {
        for ((row, node, chain), pod) in chains.iter().zip(&pods) {
            stop::check()?;
            let mut adds = Vec::new();
            let mut dels = Vec::new();
            for _ in 0..plan.plugin_cycles {
                stop::check()?;
                let attached = ChainPod::add(&node.plugin, chain, pod)?;
                adds.push(attached.add_time().as_secs_f64() * 1e3);
                dels.push(attached.del()?.as_secs_f64() * 1e3);
            }
            let shown = stats::median(&adds).ok_or_else(|| anyhow!("no cycles"));
            progress(SCENARIO, round, *row, "ADD p50", &shown, "ms");
            let Some(round) = round else { continue };
            add.record(*row, round, stats::median(&adds));
            del.record(*row, round, stats::median(&dels));
            add.pool(*row, &adds);
            del.pool(*row, &dels);
        }
    }
    if add.pooled.is_empty() {
        bail!("no ADD/DEL cycle ran");
    }
    Ok(vec![add, del])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_mappings_reach_the_servers() {
        let list = mappings(100);
        assert_eq!(list.len(), 100);
        assert_eq!(list[0], mapping(HOST_PORT_BASE, CONTAINER_PORT));
        assert_eq!(list[99], mapping(HOST_PORT_BASE + 99, LAST_CONTAINER_PORT));
        assert_eq!(list[50]["containerPort"], 10_050);
        assert_eq!(mappings(1), vec![mapping(HOST_PORT_BASE, CONTAINER_PORT)]);
    }
}
