//! Per-endpoint bandwidth limits in both directions, safe on every CPU
//! without a lock: each direction is a virtual clock that admitted packets
//! advance with one atomic fetch-and-add by their cost at the configured
//! rate. A packet is admitted when the clock has not run ahead of now (so one
//! packet may overdraw: a 64 KiB GSO packet still passes a smaller burst, and
//! the long-run rate stays exact); an idle clock is pulled up to lag now by
//! at most the burst. (`fq` is not in this kernel, so EDT pacing is not an
//! option here; this is a policer.)

use core::ptr::{addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{helpers::generated::bpf_ktime_get_ns, programs::TcContext};
use cni_ebpf_common::{DropReason, ENDPOINT_F_RATE_LIMITED, Endpoint, RateBucket};

use crate::maps::RATE_LIMITS;

#[derive(Clone, Copy)]
pub enum Way {
    /// What the pod sends.
    Egress,
    /// What is delivered to the pod.
    Ingress,
}

const NSEC_PER_SEC: u64 = 1_000_000_000;
/// How far ahead of now the clock may run: what tbf would hold in its queue
/// (the reference bandwidth plugin gives tbf 25 ms of latency).
const QUEUE_NS: u64 = 25_000_000;
/// Small packets (acknowledgements, requests, answers of interactive flows)
/// may run the clock this much further: when a bulk flow keeps the limit
/// full, its packets are the ones dropped, and a ping-pong flow, which has
/// one packet in flight and would wait out a retransmission timeout for any
/// loss, gets through. Every admitted packet still advances the clock, so
/// the long-run rate stays the limit.
const SMALL_EXTRA_NS: u64 = 5_000_000;
/// At most this many bytes (as charged) make a small packet.
const SMALL_LEN: u32 = 256;

/// What a full TCP segment carries besides its payload on a veth: Ethernet
/// 14 + IPv4 20 + TCP 20 + timestamps 12.
pub const SEGMENT_OVERHEAD: u32 = 66;

/// The bytes the packet occupies as frames, which is what a limit counts
/// (as tbf does): a GSO packet carries its headers once but stands for
/// `gso_segs` frames, each with its own (taken as a full TCP segment's).
#[inline(always)]
fn wire_len(ctx: &TcContext) -> u32 {
    // SAFETY: the context is valid for the whole program run.
    let (len, segs) = unsafe { ((*ctx.skb.skb).len, (*ctx.skb.skb).gso_segs) };
    len + segs.saturating_sub(1) * SEGMENT_OVERHEAD
}

/// Charges the packet ([`wire_len`]) to `endpoint`'s limit in `way`. The
/// flag test is inlined into the caller: pods without a limit, the common
/// case, pay no call for it.
#[inline(always)]
pub fn charge(ctx: &TcContext, endpoint: &Endpoint, way: Way) -> Result<(), DropReason> {
    if endpoint.flags & ENDPOINT_F_RATE_LIMITED == 0 {
        return Ok(());
    }
    police(ctx, endpoint, way)
}

#[inline(never)]
fn police(ctx: &TcContext, endpoint: &Endpoint, way: Way) -> Result<(), DropReason> {
    let len = wire_len(ctx);
    let Some(limit) = RATE_LIMITS.get_ptr_mut(&endpoint.owner) else {
        return Ok(());
    };
    // SAFETY: a live map value; the clock is only changed atomically (and by
    // the benign catch-up store below).
    let bucket: *mut RateBucket = unsafe {
        match way {
            Way::Egress => addr_of_mut!((*limit).egress),
            Way::Ingress => addr_of_mut!((*limit).ingress),
        }
    };
    let (rate, burst) = unsafe { ((*bucket).bytes_per_sec, (*bucket).burst_ns) };
    if rate == 0 {
        return Ok(());
    }
    let clock = unsafe { addr_of_mut!((*bucket).clock_ns) };
    let now = unsafe { bpf_ktime_get_ns() };
    let floor = now.saturating_sub(burst);
    if unsafe { read_volatile(clock) } < floor {
        unsafe { write_volatile(clock, floor) };
    }
    let cost = u64::from(len) * NSEC_PER_SEC / rate;
    let before = atomic_fetch_add(clock, cost);
    let allowed = if len <= SMALL_LEN {
        QUEUE_NS + SMALL_EXTRA_NS
    } else {
        QUEUE_NS
    };
    if before <= now + allowed {
        Ok(())
    } else {
        atomic_fetch_add(clock, cost.wrapping_neg());
        Err(DropReason::RateLimited)
    }
}

/// `*ptr += value`, returning the old value (BPF atomic fetch-and-add; the
/// target has no atomics in core).
#[inline(always)]
fn atomic_fetch_add(ptr: *mut u64, value: u64) -> u64 {
    let mut v = value;
    // SAFETY: `ptr` is an 8-byte map value field.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({ptr} + 0), {v})",
            ptr = in(reg) ptr,
            v = inout(reg) v,
        );
    }
    v
}
