//! Per-CPU packet and byte counters.

use core::ptr::addr_of_mut;

use cni_ebpf_common::{Direction, DropReason, PacketCount, Verdict};

use crate::maps::{COUNTERS, DROPS, ENDPOINT_STATS};

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

/// Counts a packet of the endpoint behind host veth `ifindex`.
#[inline(always)]
pub fn count_endpoint(ifindex: u32, direction: Direction, bytes: u32) {
    let Some(stats) = ENDPOINT_STATS.get_ptr_mut(&ifindex) else {
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
