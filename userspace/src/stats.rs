//! Per-endpoint traffic counters. An endpoint is counted at its own slot of
//! `ENDPOINT_COUNTERS` (a per-CPU array, named by `Endpoint::stats_slot`),
//! claimed here at ADD in `ENDPOINT_SLOTS` (slot -> host veth ifindex); an
//! endpoint without a slot (all taken, or made before slots existed) is
//! counted in `ENDPOINT_STATS` (per CPU, keyed by the host veth's ifindex).
//! The plugin makes and removes both; the datapath only adds to them.

use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    util::nr_cpus,
};
use cni_ebpf_common::{
    EndpointStats, PacketCount, STATS_SLOTS,
    map_names::{ENDPOINT_COUNTERS, ENDPOINT_SLOTS, ENDPOINT_STATS},
};

use crate::{
    error::{DatapathError, Result, key_missing},
    paths::BpffsLayout,
};

/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

fn map_error(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    crate::error::map_error(name)
}

fn open_hash(layout: &BpffsLayout) -> Result<PerCpuHashMap<MapData, u32, EndpointStats>> {
    crate::error::open_map(layout, ENDPOINT_STATS)
}

fn open_slots(layout: &BpffsLayout) -> Result<HashMap<MapData, u32, u32>> {
    crate::error::open_map(layout, ENDPOINT_SLOTS)
}

fn open_counters(layout: &BpffsLayout) -> Result<PerCpuArray<MapData, EndpointStats>> {
    crate::error::open_map(layout, ENDPOINT_COUNTERS)
}

fn zeros() -> Result<PerCpuValues<EndpointStats>> {
    let cpus = nr_cpus()
        .map_err(|(_, e)| DatapathError::io("count CPUs", "/sys/devices/system/cpu/possible", e))?;
    PerCpuValues::try_from(vec![EndpointStats::default(); cpus]).map_err(|e| {
        DatapathError::io(
            "build per-CPU values",
            ENDPOINT_COUNTERS,
            std::io::Error::other(e),
        )
    })
}

/// Where the search for a free slot for `ifindex` starts (and so where its
/// slot almost always is): slots 1 to `STATS_SLOTS - 1`.
fn first_slot(ifindex: u32) -> u32 {
    1 + ifindex % (STATS_SLOTS - 1)
}

/// The slots in the order a claim for `ifindex` tries them.
fn probe_order(ifindex: u32) -> impl Iterator<Item = u32> {
    let first = first_slot(ifindex);
    (0..STATS_SLOTS - 1).map(move |i| 1 + (first - 1 + i) % (STATS_SLOTS - 1))
}

/// Whether the maps of slots exist (a bpffs root loaded by an older build
/// has only `ENDPOINT_STATS` until this build's programs are loaded).
fn has_slots(layout: &BpffsLayout) -> bool {
    layout.map(ENDPOINT_SLOTS).exists() && layout.map(ENDPOINT_COUNTERS).exists()
}

/// Starts counting for the endpoint behind host veth `ifindex`, from zero,
/// and returns its slot for `Endpoint::stats_slot`: a free slot of
/// `ENDPOINT_COUNTERS`, claimed atomically, or 0 when none is free, and
/// then the endpoint is counted in `ENDPOINT_STATS`.
pub fn create(layout: &BpffsLayout, ifindex: u32) -> Result<u32> {
    if has_slots(layout) {
        let mut slots = open_slots(layout)?;
        for slot in probe_order(ifindex) {
            let claimed = match slots.insert(slot, ifindex, BPF_NOEXIST) {
                Ok(()) => true,
                // Ours already (a retried ADD of the same interface).
                Err(_) => slots.get(&slot, 0).is_ok_and(|holder| holder == ifindex),
            };
            if claimed {
                open_counters(layout)?
                    .set(slot, zeros()?, 0)
                    .map_err(map_error(ENDPOINT_COUNTERS))?;
                return Ok(slot);
            }
        }
        log::warn!(
            "all {} counter slots are taken: host veth {ifindex} is counted by ifindex",
            STATS_SLOTS - 1
        );
    }
    open_hash(layout)?
        .insert(ifindex, zeros()?, 0)
        .map_err(map_error(ENDPOINT_STATS))?;
    Ok(0)
}

/// Stops counting for the endpoint behind host veth `ifindex`: frees its
/// slot and removes its `ENDPOINT_STATS` entry. Idempotent.
pub fn remove(layout: &BpffsLayout, ifindex: u32) -> Result<()> {
    if layout.map(ENDPOINT_SLOTS).exists() {
        let mut slots = open_slots(layout)?;
        let first = first_slot(ifindex);
        let held: Vec<u32> = if slots.get(&first, 0).is_ok_and(|holder| holder == ifindex) {
            vec![first]
        } else {
            // Its first choice was taken when it claimed: look at them all.
            slots
                .iter()
                .filter_map(|entry| entry.ok())
                .filter(|(_, holder)| *holder == ifindex)
                .map(|(slot, _)| slot)
                .collect()
        };
        for slot in held {
            match slots.remove(&slot) {
                Ok(()) => {}
                Err(e) if key_missing(&e) => {}
                Err(e) => return Err(map_error(ENDPOINT_SLOTS)(e)),
            }
        }
    }
    if layout.map(ENDPOINT_STATS).exists() {
        match open_hash(layout)?.remove(&ifindex) {
            Ok(()) => {}
            Err(e) if key_missing(&e) => {}
            Err(e) => return Err(map_error(ENDPOINT_STATS)(e)),
        }
    }
    Ok(())
}

fn add(a: PacketCount, b: PacketCount) -> PacketCount {
    PacketCount {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
    }
}

fn sum<'a>(
    start: EndpointStats,
    per_cpu: impl IntoIterator<Item = &'a EndpointStats>,
) -> EndpointStats {
    per_cpu.into_iter().fold(start, |acc, s| EndpointStats {
        from_pod: add(acc.from_pod, s.from_pod),
        to_pod: add(acc.to_pod, s.to_pod),
    })
}

/// Every counted endpoint's traffic by host veth ifindex, summed over CPUs
/// (and over its slot and its `ENDPOINT_STATS` entry, should it have both).
pub fn all(layout: &BpffsLayout) -> Result<Vec<(u32, EndpointStats)>> {
    let mut totals = std::collections::BTreeMap::<u32, EndpointStats>::new();
    if layout.map(ENDPOINT_STATS).exists() {
        for entry in open_hash(layout)?.iter() {
            let (ifindex, per_cpu) = entry.map_err(map_error(ENDPOINT_STATS))?;
            let total = totals.entry(ifindex).or_default();
            *total = sum(*total, per_cpu.iter());
        }
    }
    if has_slots(layout) {
        let counters = open_counters(layout)?;
        for entry in open_slots(layout)?.iter() {
            let (slot, ifindex) = entry.map_err(map_error(ENDPOINT_SLOTS))?;
            let per_cpu = counters
                .get(&slot, 0)
                .map_err(map_error(ENDPOINT_COUNTERS))?;
            let total = totals.entry(ifindex).or_default();
            *total = sum(*total, per_cpu.iter());
        }
    }
    Ok(totals.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_start_at_an_interfaces_own_slot_and_visit_every_other_once() {
        for ifindex in [
            0,
            1,
            2,
            STATS_SLOTS - 2,
            STATS_SLOTS - 1,
            STATS_SLOTS,
            u32::MAX,
        ] {
            let order: Vec<u32> = probe_order(ifindex).collect();
            assert_eq!(order[0], first_slot(ifindex));
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (1..STATS_SLOTS).collect::<Vec<_>>(),
                "ifindex {ifindex}"
            );
        }
    }
}
