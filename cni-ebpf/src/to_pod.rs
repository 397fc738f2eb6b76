//! `to_pod`: tc egress of a pod's host veth, for what the node's stack
//! delivers to it (traffic from the node itself, from other interfaces, and
//! flows netfilter translated). What the datapath delivers with
//! `bpf_redirect_peer` skips this hook and is charged where it is redirected.
//! Attached to pods with an ingress limit, and to every pod on a node with
//! netfilter services, where it records the flows the stack carried.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use cni_ebpf_common::{Direction, IpKey};

use crate::{
    counters::{count_drop, count_endpoint},
    headers::ipv4_headers,
    l4,
    maps::{ENDPOINTS, NODE_CONFIG},
    netfilter,
    rate::{Way, charge},
};

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    let Some((_, ip)) = ipv4_headers(&ctx) else {
        netfilter::remember_delivery_v6(&ctx);
        return TC_ACT_OK;
    };
    // SAFETY: bounds-checked.
    let (src, dst) = unsafe { ((*ip).saddr, (*ip).daddr) };
    // SAFETY: copied out at once.
    let Some(endpoint) = (unsafe { ENDPOINTS.get(&IpKey::v4(dst)) }).copied() else {
        return TC_ACT_OK;
    };
    if NODE_CONFIG.get(0).is_some_and(netfilter::enabled)
        && !netfilter::stack_bound_anyway(src)
        && let Some(transport) = l4::parse(&ctx, ip)
    {
        netfilter::remember_replies(src, dst, &transport, dst);
    }
    match charge(&ctx, &endpoint, Way::Ingress) {
        Ok(()) => {
            count_endpoint(endpoint.ifindex, Direction::ToPod, ctx.len());
            TC_ACT_OK
        }
        Err(reason) => {
            count_drop(reason, Direction::ToPod, ctx.len());
            TC_ACT_SHOT
        }
    }
}
