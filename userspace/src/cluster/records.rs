//! What the cluster keeps in etcd: its network under one key, and one
//! record per node under each of its subnet keys (one per family: a
//! dual-stack node holds an IPv4 and an IPv6 key, both with the same record,
//! under one lease).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
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
    /// A dual-stack cluster's IPv6 pods: each node leases one of these too.
    /// Absent in an IPv4 cluster (and in what agents before it wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Pool>,
}

/// The IPv6 pod CIDR of the cluster and the prefix length of each node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Pool {
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Ipv6Net,
    #[serde(rename = "nodeCIDRPrefix")]
    pub node_cidr_prefix: u8,
}

/// One family's pool: a cluster CIDR split into node CIDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub cluster_cidr: IpNet,
    pub node_cidr_prefix: u8,
}

impl Pool {
    /// Every node CIDR, in order.
    pub fn node_cidrs(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.cluster_cidr
            .subnets(self.node_cidr_prefix)
            .into_iter()
            .flatten()
    }

    /// How many node CIDRs the cluster CIDR holds.
    pub fn capacity(&self) -> u64 {
        let bits = u32::from(
            self.node_cidr_prefix
                .saturating_sub(self.cluster_cidr.prefix_len()),
        );
        1u64.checked_shl(bits).unwrap_or(u64::MAX)
    }

    /// Whether `cidr` is one of its node CIDRs.
    pub fn holds(&self, cidr: &IpNet) -> bool {
        cidr.prefix_len() == self.node_cidr_prefix && self.cluster_cidr.contains(cidr)
    }
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
    /// Where the node's pods are reached: the next hop of IPv4 (native) or
    /// the tunnel's remote end for both families (VXLAN).
    pub underlay: Ipv4Addr,
    /// The next hop of its IPv6 pods (native), when the node has an IPv6
    /// underlay address.
    #[serde(
        rename = "underlayV6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub underlay_v6: Option<Ipv6Addr>,
    pub backend: Backend,
    /// Set when the node can terminate the overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep: Option<Vtep>,
}

impl SubnetRecord {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a subnet record always serializes")
    }

    /// The next hop of its pods of `cidr`'s family, if it has one.
    pub fn underlay_for(&self, cidr: &IpNet) -> Option<IpAddr> {
        match cidr {
            IpNet::V4(_) => Some(self.underlay.into()),
            IpNet::V6(_) => self.underlay_v6.map(IpAddr::from),
        }
    }
}

impl ClusterNetwork {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a cluster network always serializes")
    }

    /// The IPv4 pool.
    pub fn v4(&self) -> Pool {
        Pool {
            cluster_cidr: IpNet::V4(self.cluster_cidr),
            node_cidr_prefix: self.node_cidr_prefix,
        }
    }

    /// Every pool a node leases from: IPv4, then IPv6 in a dual-stack cluster.
    pub fn pools(&self) -> Vec<Pool> {
        let v6 = self.ipv6.map(|p| Pool {
            cluster_cidr: IpNet::V6(p.cluster_cidr),
            node_cidr_prefix: p.node_cidr_prefix,
        });
        std::iter::once(self.v4()).chain(v6).collect()
    }

    /// The cluster CIDRs, IPv4 first.
    pub fn cluster_cidrs(&self) -> String {
        let cidrs: Vec<String> = self
            .pools()
            .iter()
            .map(|p| p.cluster_cidr.to_string())
            .collect();
        cidrs.join(",")
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
            underlay_v6: None,
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
            ipv6: None,
        };
        let cidrs: Vec<String> = network.v4().node_cidrs().map(|c| c.to_string()).collect();
        assert_eq!(
            cidrs,
            [
                "10.244.0.0/24",
                "10.244.1.0/24",
                "10.244.2.0/24",
                "10.244.3.0/24"
            ]
        );
        assert_eq!(network.v4().capacity(), 4);
        assert_eq!(network.pools().len(), 1);
    }

    #[test]
    fn a_dual_stack_record_and_network_read_back_and_old_ones_still_do() {
        let record = SubnetRecord {
            node_name: "n1".into(),
            underlay: Ipv4Addr::new(10, 99, 1, 11),
            underlay_v6: Some("fd00:99:1::11".parse().unwrap()),
            backend: Backend::Native,
            vtep: None,
        };
        let json = String::from_utf8(record.to_json()).unwrap();
        assert!(json.contains(r#""underlayV6":"fd00:99:1::11""#), "{json}");
        assert_eq!(serde_json::from_str::<SubnetRecord>(&json).unwrap(), record);
        let v6: IpNet = "fd00:10:244:1::/64".parse().unwrap();
        assert_eq!(
            record.underlay_for(&v6),
            Some("fd00:99:1::11".parse().unwrap())
        );

        let stored = r#"{"clusterCIDR":"10.244.0.0/16","nodeCIDRPrefix":24,"backend":"auto","vxlan":{"vni":1,"port":8472}}"#;
        let mut network: ClusterNetwork = serde_json::from_str(stored).unwrap();
        assert_eq!(network.ipv6, None);
        assert_eq!(String::from_utf8(network.to_json()).unwrap(), stored);
        network.ipv6 = Some(Ipv6Pool {
            cluster_cidr: "fd00:10:244::/48".parse().unwrap(),
            node_cidr_prefix: 64,
        });
        let pools = network.pools();
        assert_eq!(pools[1].capacity(), 1 << 16);
        assert!(pools[1].holds(&v6));
        assert!(!pools[0].holds(&v6));
        assert_eq!(network.cluster_cidrs(), "10.244.0.0/16,fd00:10:244::/48");
        let json = String::from_utf8(network.to_json()).unwrap();
        assert!(
            json.contains(r#""ipv6":{"clusterCIDR":"fd00:10:244::/48","nodeCIDRPrefix":64}"#),
            "{json}"
        );
    }
}
