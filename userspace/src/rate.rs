//! Bandwidth limits (`RATE_LIMITS`) from userspace.

use aya::maps::{HashMap, MapData, MapError};
use cni_ebpf_common::{RateBucket, RateLimit, map_names::RATE_LIMITS};
use serde::{Deserialize, Serialize};

use crate::{
    error::{DatapathError, Result, key_missing},
    paths::BpffsLayout,
};

/// A limit as the bandwidth plugin spells it: bits per second and bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    pub rate_bits: u64,
    pub burst_bits: u64,
}

impl Limit {
    fn bucket(self) -> RateBucket {
        let bytes_per_sec = (self.rate_bits / 8).max(1);
        RateBucket {
            bytes_per_sec,
            burst_ns: (self.burst_bits / 8).saturating_mul(1_000_000_000) / bytes_per_sec,
            clock_ns: 0,
        }
    }
}

fn map_error(source: MapError) -> DatapathError {
    crate::error::map_error(RATE_LIMITS)(source)
}

fn open(layout: &BpffsLayout) -> Result<HashMap<MapData, u64, RateLimit>> {
    crate::error::open_map(layout, RATE_LIMITS)
}

fn to_value(egress: Option<Limit>, ingress: Option<Limit>) -> RateLimit {
    RateLimit {
        egress: egress.map(Limit::bucket).unwrap_or_default(),
        ingress: ingress.map(Limit::bucket).unwrap_or_default(),
    }
}

pub fn set(
    layout: &BpffsLayout,
    owner: u64,
    egress: Option<Limit>,
    ingress: Option<Limit>,
) -> Result<()> {
    open(layout)?
        .insert(owner, to_value(egress, ingress), 0)
        .map_err(map_error)
}

/// Idempotent.
pub fn remove(layout: &BpffsLayout, owner: u64) -> Result<()> {
    match open(layout)?.remove(&owner) {
        Ok(()) => Ok(()),
        Err(e) if key_missing(&e) => Ok(()),
        Err(e) => Err(map_error(e)),
    }
}

/// Whether the datapath holds exactly these limits for `owner` (for CHECK).
pub fn holds(
    layout: &BpffsLayout,
    owner: u64,
    egress: Option<Limit>,
    ingress: Option<Limit>,
) -> Result<bool> {
    let wanted = to_value(egress, ingress);
    match open(layout)?.get(&owner, 0) {
        Ok(v) => Ok(v.egress.bytes_per_sec == wanted.egress.bytes_per_sec
            && v.egress.burst_ns == wanted.egress.burst_ns
            && v.ingress.bytes_per_sec == wanted.ingress.bytes_per_sec
            && v.ingress.burst_ns == wanted.ingress.burst_ns),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(map_error(e)),
    }
}

/// Owners with an ingress limit (their host veths carry `to_pod` on
/// egress), in one pass over the map.
pub fn ingress_limited_owners(layout: &BpffsLayout) -> Result<Vec<u64>> {
    open(layout)?
        .iter()
        .filter_map(|entry| match entry {
            Ok((owner, limit)) => (limit.ingress.bytes_per_sec != 0).then_some(Ok(owner)),
            Err(e) => Some(Err(map_error(e))),
        })
        .collect()
}

/// Owners with a limit (for GC).
pub fn owners(layout: &BpffsLayout) -> Result<Vec<u64>> {
    open(layout)?.keys().map(|k| k.map_err(map_error)).collect()
}
