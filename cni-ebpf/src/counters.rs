//! Per-CPU packet and byte counters.

use cni_ebpf_common::{Direction, DropReason, PacketCount, Verdict};

use crate::maps::{COUNTERS, DROPS};

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
