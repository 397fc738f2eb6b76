//! aya-log records of dropped packets, for `cni-ebpfd run --log-level`.
//! Called only from the entry points' drop arm, after the packet's own path
//! has returned: the record is built in this function's frame, so it adds
//! nothing to the deep call chains that sit near the 512-byte stack limit.
//! Policer drops are not logged: they are expected, and frequent.

use aya_ebpf::programs::TcContext;
use aya_log_ebpf::{debug, warn};
use cni_ebpf_common::{Direction, DropReason};

use crate::headers::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, header};

#[inline(never)]
pub fn log_drop(ctx: &TcContext, reason: DropReason, direction: Direction) {
    let way = match direction {
        Direction::FromPod => "from-pod",
        Direction::ToPod => "to-pod",
    };
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: bounds-checked.
    let ether_type = header::<EthHdr>(ctx, 0).map(|eth| u16::from_be(unsafe { (*eth).ether_type }));
    let loud = match reason {
        DropReason::RateLimited => return,
        DropReason::UnknownSource
        | DropReason::SpoofedSource
        | DropReason::SpoofedMac
        | DropReason::SpoofedArp
        | DropReason::SpoofedNd
        | DropReason::NatPortsExhausted
        | DropReason::NatTableFull => true,
        _ => false,
    };
    // One record, at the level `loud` picks, whatever the source's type.
    macro_rules! record {
        ($source:expr) => {{
            let source = $source;
            if loud {
                warn!(
                    ctx,
                    "drop {} {} ifindex {} source {:i}",
                    reason.name(),
                    way,
                    ifindex,
                    source
                );
            } else {
                debug!(
                    ctx,
                    "drop {} {} ifindex {} source {:i}",
                    reason.name(),
                    way,
                    ifindex,
                    source
                );
            }
        }};
    }
    if ether_type == Some(ETH_P_IPV6) {
        // SAFETY: bounds-checked; copied out at once.
        record!(
            header::<Ipv6Hdr>(ctx, ETH_LEN)
                .map(|ip| unsafe { (*ip).saddr })
                .unwrap_or_default()
        );
        return;
    }
    record!(
        match ether_type {
            // SAFETY: bounds-checked; copied out at once.
            Some(ETH_P_IP) => header::<Ipv4Hdr>(ctx, ETH_LEN).map(|ip| unsafe { (*ip).saddr }),
            _ => None,
        }
        .unwrap_or_default()
    );
}
