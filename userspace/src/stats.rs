//! Per-endpoint traffic counters (`ENDPOINT_STATS`, per CPU, keyed by the
//! host veth's ifindex). The plugin makes and removes the entries; the
//! datapath only adds to them.

use aya::{
    maps::{MapData, MapError, PerCpuHashMap, PerCpuValues},
    util::nr_cpus,
};
use cni_ebpf_common::{EndpointStats, PacketCount, map_names::ENDPOINT_STATS};

use crate::{
    error::{DatapathError, Result, key_missing},
    paths::BpffsLayout,
};

fn map_error(source: MapError) -> DatapathError {
    crate::error::map_error(ENDPOINT_STATS)(source)
}

fn open(layout: &BpffsLayout) -> Result<PerCpuHashMap<MapData, u32, EndpointStats>> {
    crate::error::open_map(layout, ENDPOINT_STATS)
}

/// Starts counting for the endpoint behind host veth `ifindex`, from zero.
pub fn create(layout: &BpffsLayout, ifindex: u32) -> Result<()> {
    let cpus = nr_cpus()
        .map_err(|(_, e)| DatapathError::io("count CPUs", "/sys/devices/system/cpu/possible", e))?;
    let zeros = PerCpuValues::try_from(vec![EndpointStats::default(); cpus]).map_err(|e| {
        DatapathError::io(
            "build per-CPU values",
            "ENDPOINT_STATS",
            std::io::Error::other(e),
        )
    })?;
    open(layout)?.insert(ifindex, zeros, 0).map_err(map_error)
}

/// Idempotent.
pub fn remove(layout: &BpffsLayout, ifindex: u32) -> Result<()> {
    match open(layout)?.remove(&ifindex) {
        Ok(()) => Ok(()),
        Err(e) if key_missing(&e) => Ok(()),
        Err(e) => Err(map_error(e)),
    }
}

fn add(a: PacketCount, b: PacketCount) -> PacketCount {
    PacketCount {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
    }
}

/// Every endpoint's counters, summed over CPUs.
pub fn all(layout: &BpffsLayout) -> Result<Vec<(u32, EndpointStats)>> {
    let map = open(layout)?;
    let mut out = Vec::new();
    for entry in map.iter() {
        let (ifindex, per_cpu) = entry.map_err(map_error)?;
        let total = per_cpu
            .iter()
            .fold(EndpointStats::default(), |acc, s| EndpointStats {
                from_pod: add(acc.from_pod, s.from_pod),
                to_pod: add(acc.to_pod, s.to_pod),
            });
        out.push((ifindex, total));
    }
    out.sort_by_key(|(ifindex, _)| *ifindex);
    Ok(out)
}
