//! What the cluster keeps in etcd: its network under one key, and one
//! record per node under its subnet key.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// How pods on two nodes reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A route to the peer's pod CIDR via its underlay address (one L2 segment).
    Native,
    /// The BPF VXLAN overlay for every peer.
    Vxlan,
    /// Native to peers on one of this node's own subnets, VXLAN to the others.
    Auto,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Vxlan => "vxlan",
            Self::Auto => "auto",
        }
    }

    /// Whether a node of this backend may tunnel, so needs a VXLAN device
    /// and pods that leave room for the tunnel header.
    pub fn tunnels(self) -> bool {
        !matches!(self, Self::Native)
    }
}

/// The cluster's network, written once by the first node (`<prefix>/config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetwork {
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Ipv4Net,
    /// The prefix length of each node's pod CIDR.
    #[serde(rename = "nodeCIDRPrefix")]
    pub node_cidr_prefix: u8,
    pub backend: Backend,
    pub vxlan: Vtep,
}

/// The VXLAN parameters every node of the cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vtep {
    pub vni: u32,
    pub port: u16,
}

/// One node's lease on a pod CIDR (`<prefix>/subnets/<cidr>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetRecord {
    pub node_name: String,
    /// Where the node's pods are reached: the next hop (native) or the
    /// tunnel's remote end (VXLAN).
    pub underlay: Ipv4Addr,
    pub backend: Backend,
    /// Set when the node can terminate the overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep: Option<Vtep>,
}

impl SubnetRecord {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a subnet record always serializes")
    }
}

impl ClusterNetwork {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a cluster network always serializes")
    }

    /// Every pod CIDR of the cluster, in order.
    pub fn node_cidrs(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.cluster_cidr
            .subnets(self.node_cidr_prefix)
            .into_iter()
            .flatten()
    }

    /// How many pod CIDRs the cluster CIDR holds.
    pub fn capacity(&self) -> u64 {
        let bits = u32::from(
            self.node_cidr_prefix
                .saturating_sub(self.cluster_cidr.prefix_len()),
        );
        1u64.checked_shl(bits).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back() {
        let record = SubnetRecord {
            node_name: "n1".into(),
            underlay: Ipv4Addr::new(10, 99, 1, 11),
            backend: Backend::Auto,
            vtep: Some(Vtep { vni: 1, port: 8472 }),
        };
        let json = String::from_utf8(record.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"nodeName":"n1","underlay":"10.99.1.11","backend":"auto","vtep":{"vni":1,"port":8472}}"#
        );
        assert_eq!(serde_json::from_str::<SubnetRecord>(&json).unwrap(), record);
    }

    #[test]
    fn a_cluster_cidr_splits_into_node_cidrs() {
        let network = ClusterNetwork {
            cluster_cidr: "10.244.0.0/22".parse().unwrap(),
            node_cidr_prefix: 24,
            backend: Backend::Native,
            vxlan: Vtep { vni: 1, port: 8472 },
        };
        let cidrs: Vec<String> = network.node_cidrs().map(|c| c.to_string()).collect();
        assert_eq!(
            cidrs,
            [
                "10.244.0.0/24",
                "10.244.1.0/24",
                "10.244.2.0/24",
                "10.244.3.0/24"
            ]
        );
        assert_eq!(network.capacity(), 4);
    }
}
