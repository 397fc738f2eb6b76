//! `from_uplink`: tc ingress of the node's uplink. Replies of masqueraded
//! flows are translated back, connections to published host ports are
//! translated to their pod, and, like traffic from other nodes' pods for a
//! pod of this node, delivered straight into the pod; everything else is the
//! node's own and goes to its stack.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use cni_ebpf_common::{
    Direction, DropReason, ENDPOINT_F_NETFILTER_FLOWS, IpKey, NODE_F_MASQUERADE,
    NODE_F_UPLINK_GUARD, Verdict,
};

use crate::{
    counters::{count_drop, count_verdict},
    from_pod::deliver_to_pod,
    headers::{
        ETH_LEN, EthHdr, Ipv4Hdr, Ipv6Hdr, header, ipv4_decrease_ttl, ipv4_headers,
        ipv6_decrease_hop_limit, ipv6_headers, ipv6_link_scoped, ipv6_v4_mapped, pull_headers,
    },
    host_ports, l4,
    log::log_drop,
    maps::{ENDPOINTS, NODE_ADDRS, NODE_CONFIG, endpoint_v4},
    nat::dnat,
    netfilter::{self, to_netfilter},
    translate6,
};

const HEADERS_LEN: u32 = (ETH_LEN + core::mem::size_of::<Ipv6Hdr>()) as u32;

#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    match try_from_uplink(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count_drop(reason, Direction::ToPod, ctx.len());
            log_drop(&ctx, reason, Direction::ToPod);
            TC_ACT_SHOT
        }
    }
}

fn try_from_uplink(ctx: &TcContext) -> Result<i32, DropReason> {
    pull_headers(ctx, HEADERS_LEN);
    let Some((_, ip)) = ipv4_headers(ctx) else {
        return ipv6(ctx);
    };
    // SAFETY: bounds-checked.
    let (src, dst, ttl) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).ttl) };
    let mut pod = dst;
    if NODE_ADDRS.get_ptr(&IpKey::v4(dst)).is_some() {
        let Some(transport) = l4::parse(ctx, ip) else {
            return Ok(TC_ACT_OK);
        };
        let masquerading = NODE_CONFIG
            .get(0)
            .filter(|cfg| cfg.flags & NODE_F_MASQUERADE != 0)
            .is_some_and(|cfg| IpKey::v4(dst).addr == cfg.masq_addr);
        let reply = if masquerading {
            dnat(ctx, src, dst, &transport)?
        } else {
            None
        };
        if let Some(translated) = reply {
            count_verdict(Verdict::NatReply, ctx.len());
            pod = translated;
        } else if let Some(published) = host_ports::to_pod(ctx, src, dst, &transport)? {
            pod = published;
        } else {
            return Ok(TC_ACT_OK);
        }
    }
    // SAFETY: a live map value, copied out at once.
    let Some(target) = endpoint_v4(pod).map(|found| unsafe { *found }) else {
        let guarded = NODE_CONFIG
            .get(0)
            .is_some_and(|cfg| cfg.flags & NODE_F_UPLINK_GUARD != 0);
        // SAFETY: the context pointer is valid for the whole program run.
        if guarded && netfilter::is_transit(ctx, src, pod, unsafe { (*ctx.skb.skb).ifindex }) {
            return Err(DropReason::Transit);
        }
        return Ok(TC_ACT_OK);
    };
    if ttl <= 1 {
        return Ok(TC_ACT_OK);
    }
    // Fresh pointers: the translation may have gone through helpers.
    let ip: *mut Ipv4Hdr = header(ctx, ETH_LEN).ok_or(DropReason::Malformed)?;
    if target.flags & ENDPOINT_F_NETFILTER_FLOWS != 0
        && let Some(transport) = l4::parse(ctx, ip)
        // A reply of a flow netfilter translated on its way out (a service
        // whose endpoint is off the node): conntrack translates it back.
        && netfilter::belongs(src, pod, &transport)
    {
        return Ok(to_netfilter(ctx));
    }
    let eth: *mut EthHdr = header(ctx, 0).ok_or(DropReason::Malformed)?;
    ipv4_decrease_ttl(ip);
    // SAFETY: bounds-checked.
    unsafe {
        (*eth).dst = target.pod_mac;
        (*eth).src = target.host_mac;
    }
    deliver_to_pod(ctx, &target)
}

/// IPv6 for a pod of this node (from another node's pod, or the outside
/// when the pod's address is routed to the node): straight into the pod,
/// unless it is a reply of a flow netfilter translated. Everything else is
/// the node's own (transit refused on a guarded uplink, as for IPv4).
fn ipv6(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some((_, ip)) = ipv6_headers(ctx) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: bounds-checked.
    let (dst, hop_limit) = unsafe { ((*ip).daddr, (*ip).hop_limit) };
    if ipv6_link_scoped(&dst) || ipv6_v4_mapped(&dst) || hop_limit <= 1 {
        return Ok(TC_ACT_OK);
    }
    // Replies of masqueraded flows and host ports at a node address are
    // translated in place: the destination is then the pod's.
    translate6::from_uplink(ctx)?;
    let (_, ip) = ipv6_headers(ctx).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked.
    let (src, dst) = unsafe { ((*ip).saddr, (*ip).daddr) };
    // SAFETY: copied out at once.
    let Some(target) = (unsafe { ENDPOINTS.get(&IpKey::v6(dst)) }).copied() else {
        let guarded = NODE_CONFIG
            .get(0)
            .is_some_and(|cfg| cfg.flags & NODE_F_UPLINK_GUARD != 0);
        // SAFETY: the context pointer is valid for the whole program run.
        if guarded && netfilter::is_transit(ctx, src, dst, unsafe { (*ctx.skb.skb).ifindex }) {
            return Err(DropReason::Transit);
        }
        return Ok(TC_ACT_OK);
    };
    if netfilter::claims_v6(ctx, &target) {
        // A reply of a flow netfilter translated on its way out.
        return Ok(to_netfilter(ctx));
    }
    let (eth, ip) = ipv6_headers(ctx).ok_or(DropReason::Malformed)?;
    ipv6_decrease_hop_limit(ip);
    // SAFETY: bounds-checked.
    unsafe {
        (*eth).dst = target.pod_mac;
        (*eth).src = target.host_mac;
    }
    deliver_to_pod(ctx, &target)
}
