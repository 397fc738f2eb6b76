//! Per-CPU packet and byte counters.

use core::ptr::addr_of_mut;

use cni_ebpf_common::{Direction, DropReason, Endpoint, PacketCount, Verdict};

use crate::maps::{COUNTERS, DROPS, ENDPOINT_COUNTERS, ENDPOINT_STATS};

#[inline(always)]
fn bump(slot: Option<*mut PacketCount>, bytes: u32) {
    if let Some(count) = slot {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe {
            (*count).packets += 1;
            (*count).bytes += u64::from(bytes);
        }
    }
}

#[inline(always)]
pub fn count_drop(reason: DropReason, direction: Direction, bytes: u32) {
    bump(DROPS.get_ptr_mut(reason.index(direction)), bytes);
}

#[inline(always)]
pub fn count_verdict(verdict: Verdict, bytes: u32) {
    bump(COUNTERS.get_ptr_mut(verdict as u32), bytes);
}

/// Counts a packet of `endpoint`: at its slot of `ENDPOINT_COUNTERS`, or by
/// its host veth's ifindex in `ENDPOINT_STATS` when it has no slot.
#[inline(always)]
pub fn count_endpoint(endpoint: &Endpoint, direction: Direction, bytes: u32) {
    let slot = endpoint.stats_slot;
    let found = if slot != 0 {
        ENDPOINT_COUNTERS.get_ptr_mut(slot)
    } else {
        ENDPOINT_STATS.get_ptr_mut(&endpoint.ifindex)
    };
    let Some(stats) = found else {
        return;
    };
    // SAFETY: a live per-CPU map value.
    let slot = unsafe {
        match direction {
            Direction::FromPod => addr_of_mut!((*stats).from_pod),
            Direction::ToPod => addr_of_mut!((*stats).to_pod),
        }
    };
    bump(Some(slot), bytes);
}
