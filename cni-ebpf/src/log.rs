//! aya-log records of dropped packets, for `cni-ebpfd run --log-level`.
//! Called only from the entry points' drop arm, after the packet's own path
//! has returned: the record is built in this function's frame, so it adds
//! nothing to the deep call chains that sit near the 512-byte stack limit.
//! Policer drops are not logged: they are expected, and frequent.

use aya_ebpf::programs::TcContext;
use aya_log_ebpf::{debug, warn};
use cni_ebpf_common::{Direction, DropReason};

use crate::headers::{ETH_LEN, ETH_P_IP, EthHdr, Ipv4Hdr, header};

#[inline(never)]
pub fn log_drop(ctx: &TcContext, reason: DropReason, direction: Direction) {
    let way = match direction {
        Direction::FromPod => "from-pod",
        Direction::ToPod => "to-pod",
    };
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let source = match header::<EthHdr>(ctx, 0) {
        // SAFETY: bounds-checked.
        Some(eth) if u16::from_be(unsafe { (*eth).ether_type }) == ETH_P_IP => {
            // SAFETY: bounds-checked; copied out at once.
            header::<Ipv4Hdr>(ctx, ETH_LEN).map(|ip| unsafe { (*ip).saddr })
        }
        _ => None,
    }
    .unwrap_or_default();
    match reason {
        DropReason::RateLimited => {}
        DropReason::UnknownSource
        | DropReason::SpoofedSource
        | DropReason::SpoofedMac
        | DropReason::SpoofedArp
        | DropReason::NatPortsExhausted
        | DropReason::NatTableFull => warn!(
            ctx,
            "drop {} {} ifindex {} source {:i}",
            reason.name(),
            way,
            ifindex,
            source
        ),
        _ => debug!(
            ctx,
            "drop {} {} ifindex {} source {:i}",
            reason.name(),
            way,
            ifindex,
            source
        ),
    }
}
