//! The node's pod CIDRs: the cluster's network under one key (created by the
//! first node), and the node's subnet key of each family, claimed in a
//! transaction that succeeds only if the key is free (or still the one this
//! node holds), and attached to the etcd lease the agent keeps alive (one
//! for both families, so they come and go together). Two nodes never hold
//! one CIDR: the compare of the transaction is the only way in.

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use ipnet::IpNet;

use super::{
    error::{ClusterError, Result},
    keys::Keys,
    member::rpc,
    records::{ClusterNetwork, Pool, SubnetRecord},
    watch::{Listed, list_subnets},
};

/// Lost races (another node took the CIDR between list and claim) before
/// giving up for this connection.
const CLAIM_ATTEMPTS: usize = 32;

/// The cluster's network: the stored one, or `wanted` stored now if there
/// is none yet. A stored network wins over this node's flags (the first
/// node decides), with a warning when they differ.
pub async fn ensure_network(
    client: &mut Client,
    keys: &Keys,
    wanted: Option<&ClusterNetwork>,
) -> Result<ClusterNetwork> {
    let key = keys.config();
    if let Some(wanted) = wanted {
        let create = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), wanted.to_json(), None)]);
        if rpc(client.txn(create)).await?.succeeded() {
            log::info!(
                "cluster: created {key}: cluster CIDR {}, /{} per node{}, backend {}",
                wanted.cluster_cidrs(),
                wanted.node_cidr_prefix,
                wanted
                    .ipv6
                    .map(|p| format!(" (IPv6 /{})", p.node_cidr_prefix))
                    .unwrap_or_default(),
                wanted.backend.name()
            );
            return Ok(wanted.clone());
        }
    }
    let response = rpc(client.get(key.clone(), None)).await?;
    let Some(kv) = response.kvs().first() else {
        return Err(ClusterError::Protocol(format!(
            "{key} does not exist yet: the first node needs --cluster-cidr"
        )));
    };
    let stored: ClusterNetwork = serde_json::from_slice(kv.value())
        .map_err(|e| ClusterError::Config(format!("{key} is not a cluster network: {e}")))?;
    if let Some(wanted) = wanted.filter(|w| **w != stored) {
        log::warn!(
            "cluster: {key} holds {} (/{}, {}), not this node's {} (/{}, {}); using the stored one",
            stored.cluster_cidrs(),
            stored.node_cidr_prefix,
            stored.backend.name(),
            wanted.cluster_cidrs(),
            wanted.node_cidr_prefix,
            wanted.backend.name()
        );
    }
    Ok(stored)
}

/// What this node asks for, of one family.
pub struct Claim<'a> {
    pub keys: &'a Keys,
    pub pool: Pool,
    pub record: &'a SubnetRecord,
    /// `--pod-cidr` of the pool's family: this one or none.
    pub given: Option<IpNet>,
    /// The CIDR of the family this node held before (its state file),
    /// preferred if free.
    pub previous: Option<IpNet>,
}

/// How a claim writes the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// The key does not exist.
    Create(IpNet),
    /// The key is this node's own (from a run whose lease is still alive),
    /// unchanged since `mod_revision`.
    Replace(IpNet, i64),
}

impl Take {
    fn cidr(self) -> IpNet {
        match self {
            Take::Create(cidr) | Take::Replace(cidr, _) => cidr,
        }
    }
}

/// Claims a pod CIDR of the pool under `lease`: the given one, else the one
/// a record already names this node for, else the previous one if free,
/// else the first free one from a place that depends on the node's name
/// (so nodes joining at once mostly try different CIDRs).
pub async fn claim(client: &mut Client, claim: &Claim<'_>, lease: i64) -> Result<IpNet> {
    for _ in 0..CLAIM_ATTEMPTS {
        let (taken, _) = list_subnets(client, claim.keys).await?;
        let take = choose(claim, &taken)?;
        let key = claim.keys.subnet(take.cidr());
        let compare = match take {
            Take::Create(_) => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Take::Replace(_, revision) => {
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision)
            }
        };
        let txn = Txn::new().when([compare]).and_then([TxnOp::put(
            key,
            claim.record.to_json(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
        if rpc(client.txn(txn)).await?.succeeded() {
            return Ok(take.cidr());
        }
    }
    Err(ClusterError::Protocol(format!(
        "lost the race for a pod CIDR {CLAIM_ATTEMPTS} times"
    )))
}

fn choose(claim: &Claim<'_>, taken: &BTreeMap<IpNet, Listed>) -> Result<Take> {
    let node = &claim.record.node_name;
    let family = |cidr: &IpNet| cidr.addr().is_ipv6() == claim.pool.cluster_cidr.addr().is_ipv6();
    let holder = |listed: &Listed| {
        listed.record.as_ref().map_or_else(
            || "<unreadable record>".to_string(),
            |r| r.node_name.clone(),
        )
    };
    let take_if_ours = |cidr: IpNet| match taken.get(&cidr) {
        None => Ok(Take::Create(cidr)),
        Some(listed) if holder(listed) == *node => Ok(Take::Replace(cidr, listed.mod_revision)),
        Some(listed) => Err(ClusterError::Collision {
            cidr,
            holder: holder(listed),
            node: node.clone(),
        }),
    };
    if let Some(given) = claim.given {
        return take_if_ours(given);
    }
    if let Some((cidr, listed)) = taken
        .iter()
        .find(|(cidr, l)| family(cidr) && l.record.as_ref().is_some_and(|r| r.node_name == *node))
    {
        return Ok(Take::Replace(*cidr, listed.mod_revision));
    }
    if let Some(previous) = claim
        .previous
        .filter(|p| claim.pool.holds(p) && !taken.contains_key(p))
    {
        return Ok(Take::Create(previous));
    }
    let capacity = claim.pool.capacity();
    let start = {
        let mut hasher = DefaultHasher::new();
        node.hash(&mut hasher);
        hasher.finish() % capacity.max(1)
    };
    // Bounded: a cluster CIDR split finer than this is refused at start.
    let candidates: Vec<IpNet> = claim.pool.node_cidrs().collect();
    candidates
        .iter()
        .cycle()
        .skip(start as usize)
        .take(candidates.len())
        .find(|cidr| !taken.contains_key(cidr))
        .map(|cidr| Take::Create(*cidr))
        .ok_or(ClusterError::Exhausted {
            cluster_cidr: claim.pool.cluster_cidr,
            prefix_len: claim.pool.node_cidr_prefix,
        })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::cluster::records::{Backend, Ipv6Pool, Vtep};

    fn network() -> ClusterNetwork {
        ClusterNetwork {
            cluster_cidr: "10.244.0.0/22".parse().unwrap(),
            node_cidr_prefix: 24,
            backend: Backend::Auto,
            vxlan: Vtep { vni: 1, port: 8472 },
            ipv6: Some(Ipv6Pool {
                cluster_cidr: "fd00:10:244::/62".parse().unwrap(),
                node_cidr_prefix: 64,
            }),
        }
    }

    fn record(node: &str) -> SubnetRecord {
        SubnetRecord {
            node_name: node.into(),
            underlay: Ipv4Addr::new(10, 99, 1, 11),
            underlay_v6: None,
            backend: Backend::Auto,
            vtep: None,
        }
    }

    fn listed(node: &str, mod_revision: i64) -> Listed {
        Listed {
            record: Some(record(node)),
            mod_revision,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_node_takes_back_its_own_record_then_its_previous_cidr() {
        let (keys, network, me) = (Keys::new("/c"), network(), record("me"));
        let mut claim = Claim {
            keys: &keys,
            pool: network.v4(),
            record: &me,
            given: None,
            previous: Some(net("10.244.2.0/24")),
        };
        let mut taken = BTreeMap::from([(net("10.244.1.0/24"), listed("me", 7))]);
        assert_eq!(
            choose(&claim, &taken).unwrap(),
            Take::Replace(net("10.244.1.0/24"), 7)
        );
        taken.clear();
        assert_eq!(
            choose(&claim, &taken).unwrap(),
            Take::Create(net("10.244.2.0/24"))
        );
        // Someone else took the previous one meanwhile: any free one.
        taken.insert(net("10.244.2.0/24"), listed("other", 9));
        claim.previous = Some(net("10.244.2.0/24"));
        let Take::Create(other) = choose(&claim, &taken).unwrap() else {
            panic!("expected a free CIDR");
        };
        assert_ne!(other, net("10.244.2.0/24"));
    }

    #[test]
    fn a_given_cidr_held_by_another_node_is_a_collision() {
        let (keys, network, me) = (Keys::new("/c"), network(), record("me"));
        let claim = Claim {
            keys: &keys,
            pool: network.v4(),
            record: &me,
            given: Some(net("10.244.3.0/24")),
            previous: None,
        };
        let taken = BTreeMap::from([(net("10.244.3.0/24"), listed("other", 3))]);
        let err = choose(&claim, &taken).unwrap_err();
        assert!(
            err.to_string()
                .contains("10.244.3.0/24 is held by node other"),
            "{err}"
        );
    }

    #[test]
    fn a_full_cluster_cidr_is_exhausted() {
        let (keys, network, me) = (Keys::new("/c"), network(), record("me"));
        let claim = Claim {
            keys: &keys,
            pool: network.v4(),
            record: &me,
            given: None,
            previous: None,
        };
        let taken = network
            .v4()
            .node_cidrs()
            .map(|c| (c, listed("other", 1)))
            .collect();
        assert!(matches!(
            choose(&claim, &taken),
            Err(ClusterError::Exhausted { .. })
        ));
    }

    #[test]
    fn each_family_is_claimed_from_its_own_pool_and_records() {
        let (keys, network, me) = (Keys::new("/c"), network(), record("me"));
        let v6 = network.pools()[1];
        let claim = Claim {
            keys: &keys,
            pool: v6,
            record: &me,
            given: None,
            previous: None,
        };
        // This node's IPv4 key is not an IPv6 one it holds.
        let mut taken = BTreeMap::from([(net("10.244.1.0/24"), listed("me", 7))]);
        let Take::Create(cidr) = choose(&claim, &taken).unwrap() else {
            panic!("expected a new IPv6 CIDR");
        };
        assert!(v6.holds(&cidr), "{cidr}");
        taken.insert(net("fd00:10:244:2::/64"), listed("me", 8));
        assert_eq!(
            choose(&claim, &taken).unwrap(),
            Take::Replace(net("fd00:10:244:2::/64"), 8)
        );
        // Full: four /64s in the /62, all held by others.
        let full = v6.node_cidrs().map(|c| (c, listed("other", 1))).collect();
        assert!(matches!(
            choose(&claim, &full),
            Err(ClusterError::Exhausted { .. })
        ));
    }
}
