//! Pod → outside with masquerade (issue 5): a server in an `ext` namespace
//! behind the node's uplink (the node's default route), reached by a pod
//! whose flows are source-NATed to the node's uplink address.
//!
//! Rows: **limit** = the client namespace joined to `ext` by a veth (no
//! node); **cni-ebpf** = our plugin with `ipMasq` (BPF SNAT, node
//! `ip_forward=0`); **bridge** = reference `bridge` + `host-local` with
//! `ipMasq` (iptables MASQUERADE, node `ip_forward=1`).

use std::net::Ipv4Addr;

use anyhow::Result;
use cni_ebpf_tests::{Ext, Netns, ext};
use serde_json::json;

use crate::{
    Plan,
    chain::{Chain, ChainedPod},
    cni::PluginNode,
    flows::{self, Hooks, Path},
    metric::Metric,
    topology::{self, Contender},
};

pub const SCENARIO: &str = "masq";
pub const HEADING: &str = "pod → outside through the node's uplink with masquerade";

const LIMIT: Contender = Contender::Limit;
const OURS: Contender = Contender::CniEbpf;
const BRIDGE: Contender = Contender::Bridge;

/// An `ext` namespace behind `node`'s new `uplink` veth (`10.250.0.1` on
/// the node, `10.250.0.2` in ext), the node's default route via ext.
pub fn add_uplink(node: &Netns) -> Ext {
    let ext = Netns::with_loopback("ext");
    let node_ip = Ipv4Addr::new(10, 250, 0, 1);
    let ext_ip = Ipv4Addr::new(10, 250, 0, 2);
    let ext_path = ext.path().to_string_lossy().into_owned();
    node.ip(&[
        "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", &ext_path,
    ]);
    node.ip(&["addr", "add", &format!("{node_ip}/24"), "dev", "uplink"]);
    node.ip(&["link", "set", "uplink", "up"]);
    ext.ip(&["addr", "add", &format!("{ext_ip}/24"), "dev", "eth0"]);
    ext.ip(&["link", "set", "eth0", "up"]);
    node.ip(&[
        "route",
        "add",
        "default",
        "via",
        &ext_ip.to_string(),
        "dev",
        "uplink",
    ]);
    Ext {
        netns: ext,
        node_ip,
        ext_ip,
        // Not configured here: the masquerade bench is IPv4 only.
        node_ip6: std::net::Ipv6Addr::UNSPECIFIED,
        ext_ip6: std::net::Ipv6Addr::UNSPECIFIED,
    }
}

/// `limit`: client and ext joined by a veth, `10.210.0.1` ↔ `10.210.0.2`.
fn direct() -> (Netns, Netns) {
    let client = Netns::with_loopback("bench-limit");
    let server = Netns::with_loopback("ext");
    topology::join_by_veth(&client, &server, "10.210.0.1/24", "10.210.0.2/24");
    (client, server)
}

/// Expires closed NAT and host-port flows on our nodes before each CRR run
/// of their rows, as the node agent does periodically (`cni-ebpfd gc` with
/// its default timeouts), so tens of thousands of short connections a run
/// never fill the tables.
pub struct AgentGc<'a> {
    pub nodes: Vec<(Contender, &'a PluginNode)>,
}

impl Hooks for AgentGc<'_> {
    fn before_crr(&self, row: Contender) {
        for (_, node) in self.nodes.iter().filter(|(r, _)| *r == row) {
            if let Some(node) = node.ebpf_node() {
                let outcome = ext::nat_gc(node, &[]);
                if outcome.live > 100_000 {
                    eprintln!("[bench] {}: {} live flows", row.name(), outcome.live);
                }
            }
        }
    }
}

pub fn run(plan: &Plan) -> Result<Vec<Metric>> {
    let (limit_client, limit_server) = direct();

    let ours = PluginNode::cni_ebpf("10.211.0.0/24");
    let ours_ext = ext::uplink_with_default_route(ours.ebpf_node().expect("our node"));
    let ours_pod = ChainedPod::new(
        &ours,
        &Chain::new(&ours, json!({ "ipMasq": true })),
        "bench-cni-ebpf",
    )?;

    let bridge = PluginNode::reference("bridge", "10.212.0.0/24")?;
    let bridge_ext = add_uplink(bridge.netns());
    let bridge_pod = ChainedPod::new(&bridge, &Chain::new(&bridge, json!({})), "bench-bridge")?;

    let paths = [
        Path {
            row: LIMIT,
            client: &limit_client,
            server: &limit_server,
            server_ip: Ipv4Addr::new(10, 210, 0, 2),
            connect_ip: Ipv4Addr::new(10, 210, 0, 2),
            mapped: None,
        },
        Path {
            row: OURS,
            client: &ours_pod.netns,
            server: &ours_ext.netns,
            server_ip: ours_ext.ext_ip,
            connect_ip: ours_ext.ext_ip,
            mapped: None,
        },
        Path {
            row: BRIDGE,
            client: &bridge_pod.netns,
            server: &bridge_ext.netns,
            server_ip: bridge_ext.ext_ip,
            connect_ip: bridge_ext.ext_ip,
            mapped: None,
        },
    ];
    for path in &paths {
        if !cni_ebpf_tests::traffic::ping(path.client, path.connect_ip.into(), 2) {
            anyhow::bail!(
                "{}: the client does not reach {}",
                path.row.name(),
                path.connect_ip
            );
        }
    }
    let gc = AgentGc {
        nodes: vec![(OURS, &ours)],
    };
    flows::measure(SCENARIO, "", &paths, BRIDGE, plan, &gc)
}
