//! Pod → outside with masquerade (issue 5): a server in an `ext` namespace
//! behind the node's uplink (the node's default route), reached by a pod
//! whose flows are source-NATed to the node's uplink address.
//!
//! Rows: **limit** = the client namespace joined to `ext` by a veth (no
//! node); **cni-ebpf** = our plugin with `ipMasq` (BPF SNAT, node
//! `ip_forward=0`); **bridge** = reference `bridge` + `host-local` with
//! `ipMasq` (iptables MASQUERADE, node `ip_forward=1`).
//!
//! With `--ipv6` the pods are IPv6-only and reach the server at its IPv6
//! address: our plugin's IPv6 SNAT to the node's uplink address, bridge's
//! `ipMasq` through ip6tables MASQUERADE (node IPv6 forwarding on).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use cni_ebpf_tests::{Family, Netns, ext, uplink};
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

/// `limit`: client and ext joined by a veth, `10.210.0.1` ↔ `10.210.0.2`
/// (`fd00:210::1` ↔ `fd00:210::2` over IPv6); the server's address.
fn direct(family: Family) -> (Netns, Netns, IpAddr) {
    let client = Netns::with_loopback("bench-limit");
    let server = Netns::with_loopback("ext");
    match family {
        Family::V4 => {
            topology::join_by_veth(&client, &server, "10.210.0.1/24", "10.210.0.2/24");
            (client, server, Ipv4Addr::new(10, 210, 0, 2).into())
        }
        Family::V6 => {
            topology::join_by_veth(&client, &server, "fd00:210::1/64", "fd00:210::2/64");
            (
                client,
                server,
                Ipv6Addr::new(0xfd00, 0x210, 0, 0, 0, 0, 0, 2).into(),
            )
        }
    }
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

pub fn run(plan: &Plan, family: Family) -> Result<Vec<Metric>> {
    let (limit_client, limit_server, limit_ip) = direct(family);
    let (ours_subnet, bridge_subnet) = match family {
        Family::V4 => ("10.211.0.0/24", "10.212.0.0/24"),
        Family::V6 => ("fd00:211::/64", "fd00:212::/64"),
    };

    let ours = PluginNode::cni_ebpf(ours_subnet);
    let ours_ext = uplink::add_uplink_with_default_route(ours.netns());
    let ours_pod = ChainedPod::new(
        &ours,
        &Chain::new(&ours, json!({ "ipMasq": true })),
        "bench-cni-ebpf",
    )?;

    let bridge = PluginNode::reference("bridge", bridge_subnet)?;
    let bridge_ext = uplink::add_uplink_with_default_route(bridge.netns());
    let bridge_pod = ChainedPod::new(&bridge, &Chain::new(&bridge, json!({})), "bench-bridge")?;

    let paths = [
        Path {
            row: LIMIT,
            client: &limit_client,
            server: &limit_server,
            server_ip: limit_ip,
            connect_ip: limit_ip,
            mapped: None,
        },
        Path {
            row: OURS,
            client: &ours_pod.netns,
            server: &ours_ext.netns,
            server_ip: ours_ext.ext_addr(family),
            connect_ip: ours_ext.ext_addr(family),
            mapped: None,
        },
        Path {
            row: BRIDGE,
            client: &bridge_pod.netns,
            server: &bridge_ext.netns,
            server_ip: bridge_ext.ext_addr(family),
            connect_ip: bridge_ext.ext_addr(family),
            mapped: None,
        },
    ];
    if family == Family::V6 {
        for path in &paths[1..] {
            topology::wait_for_dad(path.row.name(), &[path.client]);
        }
        topology::wait_for_dad(BRIDGE.name(), &[bridge.netns()]);
    }
    for path in &paths {
        // A fresh IPv6 neighbour may take a second to resolve: a few tries.
        let reached =
            (0..3).any(|_| cni_ebpf_tests::traffic::ping(path.client, path.connect_ip, 2));
        if !reached {
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
