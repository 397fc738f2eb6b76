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
use cni_ebpf_common::{Direction, Endpoint, IpKey};

use crate::{
    counters::{count_drop, count_endpoint},
    headers::{ipv4_headers, ipv6_headers},
    l4,
    maps::{ENDPOINTS, NODE_CONFIG, endpoint_v4},
    netfilter,
    rate::{Way, charge},
};

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    let Some((_, ip)) = ipv4_headers(&ctx) else {
        netfilter::remember_delivery_v6(&ctx);
        return to_pod_v6(&ctx);
    };
    // SAFETY: bounds-checked.
    let (src, dst) = unsafe { ((*ip).saddr, (*ip).daddr) };
    let Some(endpoint) = endpoint_v4(dst) else {
        return TC_ACT_OK;
    };
    // SAFETY: a live map value, read in place as `from_pod` reads it.
    let endpoint = unsafe { &*endpoint };
    if NODE_CONFIG.get(0).is_some_and(netfilter::enabled)
        && !netfilter::stack_bound_anyway(src)
        && let Some(transport) = l4::parse(&ctx, ip)
    {
        netfilter::remember_replies(src, dst, &transport, dst);
    }
    deliver(&ctx, endpoint)
}

/// IPv6 the stack delivers to a pod: charged and counted as IPv4 is (no
/// flow to remember: services are IPv4 only).
fn to_pod_v6(ctx: &TcContext) -> i32 {
    let Some((_, ip)) = ipv6_headers(ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: bounds-checked; copied out at once.
    let Some(endpoint) = (unsafe { ENDPOINTS.get(&IpKey::v6((*ip).daddr)) }).copied() else {
        return TC_ACT_OK;
    };
    deliver(ctx, &endpoint)
}

fn deliver(ctx: &TcContext, endpoint: &Endpoint) -> i32 {
    match charge(ctx, endpoint, Way::Ingress) {
        Ok(()) => {
            count_endpoint(endpoint, Direction::ToPod, ctx.len());
            TC_ACT_OK
        }
        Err(reason) => {
            count_drop(reason, Direction::ToPod, ctx.len());
            TC_ACT_SHOT
        }
    }
}
