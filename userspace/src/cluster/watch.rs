//! Learning the other nodes: a full list of the subnet keys at a revision,
//! then a prefix watch from the next one. A watch whose start revision was
//! compacted away ends with `Compacted`; the caller lists again.

use std::collections::BTreeMap;

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchStream};
use ipnet::IpNet;

use super::{
    error::{ClusterError, Result},
    keys::Keys,
    member::rpc,
    records::SubnetRecord,
};

/// One subnet key as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// `None` when the value is not a subnet record (written by hand, or by
    /// a newer agent); the CIDR still counts as taken.
    pub record: Option<SubnetRecord>,
    pub mod_revision: i64,
}

/// Every subnet key under `keys` and the store revision of the list.
pub async fn list_subnets(
    client: &mut Client,
    keys: &Keys,
) -> Result<(BTreeMap<IpNet, Listed>, i64)> {
    let response = rpc(client.get(keys.subnets(), Some(GetOptions::new().with_prefix()))).await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let subnets = response
        .kvs()
        .iter()
        .filter_map(|kv| {
            let cidr = keys.cidr_of(kv.key())?;
            Some((
                cidr,
                Listed {
                    record: serde_json::from_slice(kv.value()).ok(),
                    mod_revision: kv.mod_revision(),
                },
            ))
        })
        .collect();
    Ok((subnets, revision))
}

/// The records of a list, unreadable values left out.
pub fn records(listed: &BTreeMap<IpNet, Listed>) -> BTreeMap<IpNet, SubnetRecord> {
    listed
        .iter()
        .filter_map(|(cidr, l)| Some((*cidr, l.record.clone()?)))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node took or renewed `cidr`; `None` when the value is unreadable.
    Put(IpNet, Option<SubnetRecord>),
    /// `cidr`'s key is gone (lease expired or revoked, or deleted).
    Delete(IpNet),
}

#[derive(Debug)]
pub enum Step {
    /// Changes up to and including `revision`.
    Changes { changes: Vec<Change>, revision: i64 },
    /// The start revision is older than the oldest the store keeps.
    Compacted { compact_revision: i64 },
}

pub struct SubnetWatch {
    stream: WatchStream,
}

impl SubnetWatch {
    /// Watches every subnet key from `revision` on (inclusive).
    pub async fn start(client: &mut Client, keys: &Keys, revision: i64) -> Result<Self> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        let stream = rpc(client.watch(keys.subnets(), Some(options))).await?;
        Ok(Self { stream })
    }

    /// The next batch of changes. Waits as long as nothing changes; an
    /// error or a closed stream means the connection is gone.
    pub async fn next(&mut self, keys: &Keys) -> Result<Step> {
        loop {
            let response = self
                .stream
                .message()
                .await?
                .ok_or_else(|| ClusterError::Protocol("the watch stream ended".into()))?;
            if response.compact_revision() > 0 {
                return Ok(Step::Compacted {
                    compact_revision: response.compact_revision(),
                });
            }
            if response.canceled() {
                return Err(ClusterError::Protocol(format!(
                    "etcd canceled the watch: {}",
                    response.cancel_reason()
                )));
            }
            let mut changes = Vec::new();
            let mut revision = 0;
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                revision = revision.max(kv.mod_revision());
                let Some(cidr) = keys.cidr_of(kv.key()) else {
                    continue;
                };
                changes.push(match event.event_type() {
                    EventType::Put => Change::Put(cidr, serde_json::from_slice(kv.value()).ok()),
                    EventType::Delete => Change::Delete(cidr),
                });
            }
            // The creation answer and progress notices carry no events.
            if revision > 0 {
                return Ok(Step::Changes { changes, revision });
            }
        }
    }
}
