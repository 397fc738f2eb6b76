//! Turns the other nodes' subnet records into datapath peers: decides each
//! peer's mode, programs what changed, forgets what left, and retries what
//! failed on the next [`PeerTable::retry`]. A dual-stack node is two peers,
//! one per pod CIDR.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::{
    records::{Backend, SubnetRecord},
    underlay::Underlay,
};
use crate::{
    BpffsLayout,
    peers::{self, Peer, PeerMode, Peers},
};

pub struct PeerTable {
    datapath: Peers,
    backend: Backend,
    underlay: Underlay,
    /// What the datapath holds, by pod CIDR.
    programmed: BTreeMap<IpNet, Peer>,
    /// Wanted but not programmed yet (the last attempt failed).
    pending: BTreeMap<IpNet, Peer>,
    /// CIDRs to take out of the datapath whose removal failed.
    stale: BTreeSet<IpNet>,
}

impl PeerTable {
    /// Starts from the peers the datapath already holds (an earlier run's):
    /// the first full list removes those of nodes that left while the agent
    /// was away. In cluster mode the agent owns every peer.
    pub fn new(
        layout: &BpffsLayout,
        datapath: Peers,
        backend: Backend,
        underlay: Underlay,
    ) -> Self {
        let programmed = match peers::list(layout) {
            Ok(peers) => peers
                .into_iter()
                .map(|peer| (peer.pod_cidr, peer))
                .collect(),
            Err(e) => {
                log::warn!("cluster: reading the datapath's peers: {e}");
                BTreeMap::new()
            }
        };
        Self {
            datapath,
            backend,
            underlay,
            programmed,
            pending: BTreeMap::new(),
            stale: BTreeSet::new(),
        }
    }

    pub fn set_backend(&mut self, backend: Backend) {
        self.backend = backend;
    }

    /// The node's peers and tunnel device in the datapath.
    pub fn datapath(&self) -> &Peers {
        &self.datapath
    }

    /// A node announced (or changed) its subnet.
    pub async fn upsert(&mut self, cidr: IpNet, record: &SubnetRecord) {
        let Some(peer) = peer_for(self.backend, &self.underlay, cidr, record) else {
            log::warn!(
                "cluster: peer {} {cidr}: no IPv6 underlay address to route it via natively (give the node --underlay-address with an IPv6 one, or tunnel)",
                record.node_name
            );
            self.remove(cidr).await;
            return;
        };
        self.stale.remove(&cidr);
        if self.programmed.get(&cidr) == Some(&peer) {
            return;
        }
        match self.datapath.apply(&peer).await {
            Ok(()) => {
                log::info!(
                    "cluster: peer {} {cidr} via {} ({})",
                    record.node_name,
                    peer.underlay,
                    mode_name(peer.mode)
                );
                self.pending.remove(&cidr);
                self.programmed.insert(cidr, peer);
            }
            Err(e) => {
                log::warn!(
                    "cluster: programming peer {} {cidr} failed (retrying): {e}",
                    record.node_name
                );
                self.programmed.remove(&cidr);
                self.pending.insert(cidr, peer);
            }
        }
    }

    /// A node's subnet left the cluster (its lease expired or was revoked).
    pub async fn remove(&mut self, cidr: IpNet) {
        self.pending.remove(&cidr);
        if self.programmed.remove(&cidr).is_none() && !self.stale.contains(&cidr) {
            return;
        }
        match self.datapath.remove(cidr).await {
            Ok(()) => {
                self.stale.remove(&cidr);
                log::info!("cluster: peer {cidr} removed");
            }
            Err(e) => {
                self.stale.insert(cidr);
                log::warn!("cluster: removing peer {cidr} failed (retrying): {e}");
            }
        }
    }

    /// Makes the datapath hold exactly `records` (after a full list).
    pub async fn sync(&mut self, records: &BTreeMap<IpNet, SubnetRecord>) {
        let gone: Vec<IpNet> = self
            .programmed
            .keys()
            .chain(self.pending.keys())
            .filter(|cidr| !records.contains_key(cidr))
            .copied()
            .collect();
        for cidr in gone {
            self.remove(cidr).await;
        }
        for (cidr, record) in records {
            self.upsert(*cidr, record).await;
        }
    }

    /// Tries again what failed before.
    pub async fn retry(&mut self) {
        for cidr in std::mem::take(&mut self.stale) {
            match self.datapath.remove(cidr).await {
                Ok(()) => log::info!("cluster: peer {cidr} removed"),
                Err(_) => {
                    self.stale.insert(cidr);
                }
            }
        }
        for (cidr, peer) in std::mem::take(&mut self.pending) {
            match self.datapath.apply(&peer).await {
                Ok(()) => {
                    log::info!(
                        "cluster: peer {cidr} via {} ({})",
                        peer.underlay,
                        mode_name(peer.mode)
                    );
                    self.programmed.insert(cidr, peer);
                }
                Err(_) => {
                    self.pending.insert(cidr, peer);
                }
            }
        }
    }

    /// Programs every peer again (idempotent): puts back a route or map
    /// entry removed behind the agent's back.
    pub async fn reapply(&mut self) {
        for (cidr, peer) in std::mem::take(&mut self.programmed) {
            if let Err(e) = self.datapath.apply(&peer).await {
                log::warn!("cluster: programming peer {cidr} again failed (retrying): {e}");
                self.pending.insert(cidr, peer);
            } else {
                self.programmed.insert(cidr, peer);
            }
        }
    }
}

/// How `record`'s pods of `cidr` are reached: natively via its underlay
/// address of the CIDR's family where the cluster says so, or (auto) where
/// that address is one hop away on a subnet of this node; else through the
/// tunnel to its IPv4 underlay address (IPv6 pods too: the pods' MTU leaves
/// room for an IPv4 outer header only). `None`: native, but the peer has no
/// underlay address of the family.
fn peer_for(
    backend: Backend,
    underlay: &Underlay,
    cidr: IpNet,
    record: &SubnetRecord,
) -> Option<Peer> {
    let next_hop = record.underlay_for(&cidr);
    let native = |via| Peer {
        pod_cidr: cidr,
        underlay: via,
        mode: PeerMode::Native,
    };
    let tunneled = Peer {
        pod_cidr: cidr,
        underlay: record.underlay.into(),
        mode: PeerMode::Vxlan,
    };
    match backend {
        Backend::Native => next_hop.map(native),
        Backend::Vxlan => Some(tunneled),
        Backend::Auto => Some(match next_hop {
            Some(via) if underlay.is_neighbour(via) => native(via),
            _ => tunneled,
        }),
    }
}

fn mode_name(mode: PeerMode) -> &'static str {
    match mode {
        PeerMode::Native => "native",
        PeerMode::Vxlan => "vxlan",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn underlay() -> Underlay {
        Underlay {
            ifname: "eth0".into(),
            address: Ipv4Addr::new(10, 99, 1, 11),
            address_v6: Some("fd00:99:1::11".parse().unwrap()),
            mtu: 1500,
            subnets: vec![
                "10.99.1.0/24".parse().unwrap(),
                "fd00:99:1::/64".parse().unwrap(),
            ],
        }
    }

    fn peer(ip: [u8; 4], ip6: Option<&str>) -> SubnetRecord {
        SubnetRecord {
            node_name: "peer".into(),
            underlay: Ipv4Addr::from(ip),
            underlay_v6: ip6.map(|a| a.parse().unwrap()),
            backend: Backend::Auto,
            vtep: None,
        }
    }

    fn mode(backend: Backend, cidr: &str, record: &SubnetRecord) -> Option<(PeerMode, String)> {
        let peer = peer_for(backend, &underlay(), cidr.parse().unwrap(), record)?;
        Some((peer.mode, peer.underlay.to_string()))
    }

    #[test]
    fn auto_routes_neighbours_natively_and_tunnels_to_the_rest() {
        let v4 = "10.244.2.0/24";
        let near = peer([10, 99, 1, 12], None);
        let far = peer([10, 99, 2, 11], None);
        let native = |ip: &str| Some((PeerMode::Native, ip.to_string()));
        let tunneled = |ip: &str| Some((PeerMode::Vxlan, ip.to_string()));
        assert_eq!(mode(Backend::Auto, v4, &near), native("10.99.1.12"));
        assert_eq!(mode(Backend::Auto, v4, &far), tunneled("10.99.2.11"));
        assert_eq!(mode(Backend::Native, v4, &far), native("10.99.2.11"));
        assert_eq!(mode(Backend::Vxlan, v4, &near), tunneled("10.99.1.12"));
    }

    #[test]
    fn ipv6_pods_go_via_the_ipv6_underlay_natively_and_tunnel_over_ipv4() {
        let v6 = "fd00:10:244:2::/64";
        let near = peer([10, 99, 1, 12], Some("fd00:99:1::12"));
        let far = peer([10, 99, 2, 11], Some("fd00:99:2::11"));
        let without = peer([10, 99, 1, 13], None);
        let native = |ip: &str| Some((PeerMode::Native, ip.to_string()));
        let tunneled = |ip: &str| Some((PeerMode::Vxlan, ip.to_string()));
        assert_eq!(mode(Backend::Auto, v6, &near), native("fd00:99:1::12"));
        assert_eq!(mode(Backend::Auto, v6, &far), tunneled("10.99.2.11"));
        assert_eq!(mode(Backend::Auto, v6, &without), tunneled("10.99.1.13"));
        assert_eq!(mode(Backend::Native, v6, &far), native("fd00:99:2::11"));
        assert_eq!(mode(Backend::Native, v6, &without), None);
        assert_eq!(mode(Backend::Vxlan, v6, &near), tunneled("10.99.1.12"));
    }
}
