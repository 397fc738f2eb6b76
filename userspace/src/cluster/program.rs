//! Turns the other nodes' subnet records into datapath peers: decides each
//! peer's mode, programs what changed, forgets what left, and retries what
//! failed on the next [`PeerTable::retry`].

use std::collections::{BTreeMap, BTreeSet};

use ipnet::{IpNet, Ipv4Net};

use super::{
    records::{Backend, SubnetRecord},
    underlay::Underlay,
};
use crate::{
    BpffsLayout,
    peers::{self, Peer, PeerMode},
};

pub struct PeerTable {
    layout: BpffsLayout,
    backend: Backend,
    underlay: Underlay,
    /// What the datapath holds, by pod CIDR.
    programmed: BTreeMap<Ipv4Net, Peer>,
    /// Wanted but not programmed yet (the last attempt failed).
    pending: BTreeMap<Ipv4Net, Peer>,
    /// CIDRs to take out of the datapath whose removal failed.
    stale: BTreeSet<Ipv4Net>,
}

impl PeerTable {
    /// Starts from the IPv4 peers the datapath already holds (an earlier
    /// run's): the first full list removes those of nodes that left while
    /// the agent was away. In cluster mode the agent owns every peer.
    pub fn new(layout: BpffsLayout, backend: Backend, underlay: Underlay) -> Self {
        let programmed = match peers::list(&layout) {
            Ok(peers) => peers
                .into_iter()
                .filter_map(|peer| match peer.pod_cidr {
                    IpNet::V4(cidr) => Some((cidr, peer)),
                    IpNet::V6(_) => None,
                })
                .collect(),
            Err(e) => {
                log::warn!("cluster: reading the datapath's peers: {e}");
                BTreeMap::new()
            }
        };
        Self {
            layout,
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

    pub fn mode_for(&self, record: &SubnetRecord) -> PeerMode {
        mode_for(self.backend, &self.underlay, record)
    }

    /// A node announced (or changed) its subnet.
    pub async fn upsert(&mut self, cidr: Ipv4Net, record: &SubnetRecord) {
        let peer = Peer {
            pod_cidr: IpNet::V4(cidr),
            underlay: record.underlay.into(),
            mode: self.mode_for(record),
        };
        self.stale.remove(&cidr);
        if self.programmed.get(&cidr) == Some(&peer) {
            return;
        }
        match peers::apply(&self.layout, &peer).await {
            Ok(()) => {
                log::info!(
                    "cluster: peer {} {cidr} via {} ({})",
                    record.node_name,
                    record.underlay,
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
    pub async fn remove(&mut self, cidr: Ipv4Net) {
        self.pending.remove(&cidr);
        if self.programmed.remove(&cidr).is_none() && !self.stale.contains(&cidr) {
            return;
        }
        match peers::remove(&self.layout, IpNet::V4(cidr)).await {
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
    pub async fn sync(&mut self, records: &BTreeMap<Ipv4Net, SubnetRecord>) {
        let gone: Vec<Ipv4Net> = self
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
            match peers::remove(&self.layout, IpNet::V4(cidr)).await {
                Ok(()) => log::info!("cluster: peer {cidr} removed"),
                Err(_) => {
                    self.stale.insert(cidr);
                }
            }
        }
        for (cidr, peer) in std::mem::take(&mut self.pending) {
            match peers::apply(&self.layout, &peer).await {
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
            if let Err(e) = peers::apply(&self.layout, &peer).await {
                log::warn!("cluster: programming peer {cidr} again failed (retrying): {e}");
                self.pending.insert(cidr, peer);
            } else {
                self.programmed.insert(cidr, peer);
            }
        }
    }
}

/// Native where the cluster says so, or (auto) where the peer is one hop
/// away on a subnet of this node; VXLAN otherwise.
fn mode_for(backend: Backend, underlay: &Underlay, record: &SubnetRecord) -> PeerMode {
    match backend {
        Backend::Native => PeerMode::Native,
        Backend::Vxlan => PeerMode::Vxlan,
        Backend::Auto if underlay.is_neighbour(record.underlay) => PeerMode::Native,
        Backend::Auto => PeerMode::Vxlan,
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

    #[test]
    fn auto_routes_neighbours_natively_and_tunnels_to_the_rest() {
        let underlay = Underlay {
            ifname: "eth0".into(),
            address: Ipv4Addr::new(10, 99, 1, 11),
            mtu: 1500,
            subnets: vec!["10.99.1.0/24".parse().unwrap()],
        };
        let peer = |ip: [u8; 4]| SubnetRecord {
            node_name: "peer".into(),
            underlay: Ipv4Addr::from(ip),
            backend: Backend::Auto,
            vtep: None,
        };
        let (near, far) = (peer([10, 99, 1, 12]), peer([10, 99, 2, 11]));
        assert_eq!(mode_for(Backend::Auto, &underlay, &near), PeerMode::Native);
        assert_eq!(mode_for(Backend::Auto, &underlay, &far), PeerMode::Vxlan);
        assert_eq!(mode_for(Backend::Native, &underlay, &far), PeerMode::Native);
        assert_eq!(mode_for(Backend::Vxlan, &underlay, &near), PeerMode::Vxlan);
    }
}
