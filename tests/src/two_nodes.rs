//! Two nodes joined by an underlay veth, each with its pod CIDR and a
//! route to the other's pods.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use serde_json::{Value, json};

use crate::{
    Bpffs, Family, Node,
    conf::with_keys,
    veth::{self, VethEnd},
};

/// The cluster CIDR both nodes of [`TwoNodes`] carve their pod CIDRs from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The IPv6 cluster CIDR of two-node tests.
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/48";

/// One node of a [`TwoNodes`] topology: its underlay address and pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSide {
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: &'static str,
    pub underlay_ip6: Ipv6Addr,
    pub pod_cidr6: &'static str,
}

impl NodeSide {
    pub fn pod_cidr_of(self, family: Family) -> &'static str {
        match family {
            Family::V4 => self.pod_cidr,
            Family::V6 => self.pod_cidr6,
        }
    }

    pub fn underlay_of(self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.underlay_ip.into(),
            Family::V6 => self.underlay_ip6.into(),
        }
    }
}

/// Node A's side.
pub const SIDE_A: NodeSide = NodeSide {
    underlay_ip: Ipv4Addr::new(10, 99, 0, 1),
    pod_cidr: "10.244.1.0/24",
    underlay_ip6: Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1),
    pod_cidr6: "fd00:10:244:1::/64",
};
/// Node B's side.
pub const SIDE_B: NodeSide = NodeSide {
    underlay_ip: Ipv4Addr::new(10, 99, 0, 2),
    pod_cidr: "10.244.2.0/24",
    underlay_ip6: Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2),
    pod_cidr6: "fd00:10:244:2::/64",
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
        for (node, side) in [(&a, SIDE_A), (&b, SIDE_B)] {
            node.netns().ip(&[
                "addr",
                "add",
                &format!("{}/64", side.underlay_ip6),
                "dev",
                UNDERLAY,
                "nodad",
            ]);
            if crate::node::uplink_xdp_requested() {
                crate::uplink::full_checksums(node.netns(), UNDERLAY);
            }
        }
        Self { a, b }
    }

    /// Node A's config for pods of `families` (one, or both for dual
    /// stack), as [`TwoNodes::conf_a`] for each.
    pub fn conf_a_of(&self, families: &[Family]) -> Value {
        node_conf_of(&self.a, SIDE_A, SIDE_B, families)
    }

    /// Node B's config for pods of `families`.
    pub fn conf_b_of(&self, families: &[Family]) -> Value {
        node_conf_of(&self.b, SIDE_B, SIDE_A, families)
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

fn node_conf_of(node: &Node, own: NodeSide, other: NodeSide, families: &[Family]) -> Value {
    let mut builder = node.conf().subnet(own.pod_cidr_of(families[0]));
    if let Some(second) = families.get(1) {
        builder = builder.second_subnet(own.pod_cidr_of(*second));
    }
    let routes: Vec<Value> = families
        .iter()
        .map(|f| json!({ "dst": other.pod_cidr_of(*f), "gw": other.underlay_of(*f).to_string() }))
        .collect();
    with_keys(
        builder.build(),
        json!({
            "ipMasq": true,
            "nonMasqueradeCIDRs": [CLUSTER_CIDR, CLUSTER_CIDR_V6],
            "uplink": UNDERLAY,
            "nodeRoutes": routes,
        }),
    )
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
