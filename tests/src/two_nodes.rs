//! Two nodes joined by an underlay veth, each with its pod CIDR and a
//! route to the other's pods.

use std::{net::Ipv4Addr, sync::Arc};

use serde_json::{Value, json};

use crate::{
    Bpffs, Node,
    conf::with_keys,
    veth::{self, VethEnd},
};

/// The cluster CIDR both nodes of [`TwoNodes`] carve their pod CIDRs from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// One node of a [`TwoNodes`] topology: its underlay address and pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSide {
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: &'static str,
}

/// Node A's side.
pub const SIDE_A: NodeSide = NodeSide {
    underlay_ip: Ipv4Addr::new(10, 99, 0, 1),
    pod_cidr: "10.244.1.0/24",
};
/// Node B's side.
pub const SIDE_B: NodeSide = NodeSide {
    underlay_ip: Ipv4Addr::new(10, 99, 0, 2),
    pod_cidr: "10.244.2.0/24",
};

/// The name of the underlay veth in both nodes.
pub const UNDERLAY: &str = "underlay";

/// Two nodes joined by an underlay veth (`10.99.0.1/24` and `10.99.0.2/24`),
/// each with its own bpffs directory (one shared mount) and pod CIDR.
pub struct TwoNodes {
    pub a: Node,
    pub b: Node,
}

impl TwoNodes {
    pub fn new() -> Self {
        let bpffs = Arc::new(Bpffs::new());
        let a = Node::with_bpffs(bpffs.clone());
        let b = Node::with_bpffs(bpffs);
        veth::add_veth(
            VethEnd::new(a.netns(), UNDERLAY, &format!("{}/24", SIDE_A.underlay_ip)),
            VethEnd::new(b.netns(), UNDERLAY, &format!("{}/24", SIDE_B.underlay_ip)),
            None,
        );
        Self { a, b }
    }

    /// Node A's config: its pod CIDR, masquerade on except inside the
    /// cluster, the underlay as uplink and a route to B's pods via B.
    pub fn conf_a(&self) -> Value {
        node_conf(&self.a, SIDE_A, SIDE_B)
    }

    /// Node B's config, as [`TwoNodes::conf_a`] the other way round.
    pub fn conf_b(&self) -> Value {
        node_conf(&self.b, SIDE_B, SIDE_A)
    }
}

impl Default for TwoNodes {
    fn default() -> Self {
        Self::new()
    }
}

fn node_conf(node: &Node, own: NodeSide, other: NodeSide) -> Value {
    with_keys(
        node.conf().subnet(own.pod_cidr).build(),
        json!({
            "ipMasq": true,
            "nonMasqueradeCIDRs": [CLUSTER_CIDR],
            "uplink": UNDERLAY,
            "nodeRoutes": [{ "dst": other.pod_cidr, "gw": other.underlay_ip.to_string() }],
        }),
    )
}
