//! Leaving the node without its stack's forwarding: `bpf_redirect_neigh`
//! with no next hop makes the kernel route the packet as if the node sent it
//! (an output lookup, so `ip_forward` may stay off) and resolve the
//! neighbour. `bpf_fib_lookup` cannot be used for this: it refuses with
//! `FWD_DISABLED` on a device without forwarding, even in output mode
//! (measured on 6.18).

use core::ptr;

use aya_ebpf::{bindings::TC_ACT_REDIRECT, helpers::generated::bpf_redirect_neigh};
use cni_ebpf_common::DropReason;

/// Sends the packet out of `uplink` towards its destination.
#[inline(always)]
pub fn out_of_uplink(uplink: u32) -> Result<i32, DropReason> {
    // SAFETY: no parameters: the kernel looks the route up itself.
    let action = unsafe { bpf_redirect_neigh(uplink, ptr::null_mut(), 0, 0) } as i32;
    if action == TC_ACT_REDIRECT {
        Ok(action)
    } else {
        Err(DropReason::RedirectFailed)
    }
}
