//! The per-CPU `DROPS` and `COUNTERS` arrays, summed over CPUs.

use aya::maps::{MapData, PerCpuArray};
use cni_ebpf_common::{
    Direction, DropReason, PacketCount, Verdict,
    map_names::{COUNTERS, DROPS},
};

use crate::{
    error::{DatapathError, Result, open_map},
    paths::BpffsLayout,
};

fn open(layout: &BpffsLayout, name: &'static str) -> Result<PerCpuArray<MapData, PacketCount>> {
    open_map(layout, name)
}

fn sum(
    map: &PerCpuArray<MapData, PacketCount>,
    name: &'static str,
    index: u32,
) -> Result<PacketCount> {
    let values = map
        .get(&index, 0)
        .map_err(|source| DatapathError::Map { name, source })?;
    Ok(values
        .iter()
        .fold(PacketCount::default(), |acc, v| PacketCount {
            packets: acc.packets + v.packets,
            bytes: acc.bytes + v.bytes,
        }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropCount {
    pub reason: DropReason,
    pub direction: Direction,
    pub count: PacketCount,
}

/// Drops by reason and direction, every slot included (zero or not).
pub fn drops(layout: &BpffsLayout) -> Result<Vec<DropCount>> {
    let map = open(layout, DROPS)?;
    let mut out = Vec::new();
    for reason in DropReason::ALL {
        for direction in [Direction::FromPod, Direction::ToPod] {
            let count = sum(&map, DROPS, reason.index(direction))?;
            out.push(DropCount {
                reason,
                direction,
                count,
            });
        }
    }
    Ok(out)
}

/// Packets passed on, by verdict.
pub fn verdicts(layout: &BpffsLayout) -> Result<Vec<(Verdict, PacketCount)>> {
    let map = open(layout, COUNTERS)?;
    Verdict::ALL
        .into_iter()
        .map(|verdict| Ok((verdict, sum(&map, COUNTERS, verdict as u32)?)))
        .collect()
}

pub const fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::FromPod => "from-pod",
        Direction::ToPod => "to-pod",
    }
}
