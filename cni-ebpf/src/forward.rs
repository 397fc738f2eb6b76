//! Leaving the node without its stack's forwarding: `bpf_redirect_neigh`
//! with no next hop makes the kernel route the packet as if the node sent it
//! (an output lookup, so `ip_forward` may stay off) and resolve the
//! neighbour. `bpf_fib_lookup` cannot be used for this: it refuses with
//! `FWD_DISABLED` on a device without forwarding, even in output mode
//! (measured on 6.18).

use core::ptr;

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT, helpers::generated::bpf_redirect_neigh, programs::TcContext,
};
use cni_ebpf_common::{DropReason, MARK_DATAPATH_FORWARDED, NodeConfig};

use crate::netfilter;

/// Sends the packet out of the uplink towards its destination. On a node
/// with netfilter services the packet is marked as the datapath's own, so
/// `to_uplink` does not take it for a flow the stack forwarded.
#[inline(always)]
pub fn out_of_uplink(ctx: &TcContext, cfg: &NodeConfig) -> Result<i32, DropReason> {
    if netfilter::enabled(cfg) {
        // SAFETY: the context pointer is valid for the whole program run.
        let mark = unsafe { (*ctx.skb.skb).mark };
        ctx.set_mark(mark | MARK_DATAPATH_FORWARDED);
    }
    // SAFETY: no parameters: the kernel looks the route up itself.
    let action = unsafe { bpf_redirect_neigh(cfg.uplink_ifindex, ptr::null_mut(), 0, 0) } as i32;
    if action == TC_ACT_REDIRECT {
        Ok(action)
    } else {
        Err(DropReason::RedirectFailed)
    }
}
