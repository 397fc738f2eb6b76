//! The IPv6 translations, hooked into `from_pod` and `from_uplink`'s IPv6
//! paths: masquerade of pod flows leaving the node and the reverse
//! translation of their replies and ICMPv6 errors, and host ports (the
//! pod's replies, connections to a node address from pods and from the
//! outside). The translations themselves are IPv4's ([`nat`], [`host_ports`],
//! generic over the family); this module only reads the IPv6 packet and
//! decides.

use aya_ebpf::{bindings::TC_ACT_OK, maps::lpm_trie::Key, programs::TcContext};
use cni_ebpf_common::{DropReason, ENDPOINT_F_HOST_PORTS, Endpoint, IpKey, NodeConfig, Verdict};

use crate::{
    counters::count_verdict,
    family::Addr,
    forward::out_of_uplink,
    from_pod::deliver_to_pod,
    headers::{ETH_LEN, EthHdr, Ipv6Hdr, header},
    host_ports, l4,
    maps::{ENDPOINTS, NO_MASQ, NODE_ADDRS, NODE_CONFIG},
    nat::{dnat, snat},
};

#[inline(always)]
fn ipv6_header(ctx: &TcContext) -> Result<*mut Ipv6Hdr, DropReason> {
    header(ctx, ETH_LEN).ok_or(DropReason::Malformed)
}

#[inline(always)]
fn decrease_hop_limit(ip: *mut Ipv6Hdr) {
    // SAFETY: `ip` was bounds-checked; IPv6 has no header checksum.
    unsafe { (*ip).hop_limit -= 1 }
}

/// A pod's packet that is a reply on a connection through one of its host
/// ports: rewritten to the published address and delivered. `None` for
/// anything else (and for pods that publish nothing, at no cost).
#[inline(never)]
pub fn host_port_reply(ctx: &TcContext, me: &Endpoint) -> Result<Option<i32>, DropReason> {
    if me.flags & ENDPOINT_F_HOST_PORTS == 0 {
        return Ok(None);
    }
    let ip = ipv6_header(ctx)?;
    // SAFETY: bounds-checked.
    let (src, dst, hop_limit) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).hop_limit) };
    if hop_limit <= 1 {
        return Ok(None);
    }
    let Some(t) = l4::parse_v6(ctx, ip) else {
        return Ok(None);
    };
    match host_ports::from_pod(ctx, src, dst, &t)? {
        Some(client) => deliver_rewritten(ctx, client).map(Some),
        None => Ok(None),
    }
}

/// A pod's packet leaving for a node address or past the node: a host port
/// of a node address is translated to its pod; a destination outside the
/// no-masquerade CIDRs is masqueraded and sent out of the uplink. `None`
/// when neither applies (the caller goes on as without translation).
#[inline(never)]
pub fn leave_node(ctx: &TcContext, cfg: &NodeConfig) -> Result<Option<i32>, DropReason> {
    let ip = ipv6_header(ctx)?;
    // SAFETY: bounds-checked.
    let (src, dst, hop_limit) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).hop_limit) };
    if hop_limit <= 1 {
        return Ok(None);
    }
    if NODE_ADDRS.get_ptr(&IpKey::v6(dst)).is_some() {
        let Some(t) = l4::parse_v6(ctx, ip) else {
            return Ok(None);
        };
        return match host_ports::to_pod(ctx, src, dst, &t)? {
            Some(pod) => deliver_rewritten(ctx, pod).map(Some),
            None => Ok(None),
        };
    }
    if cfg.uplink_ifindex == 0 || !masquerades(dst, cfg) {
        return Ok(None);
    }
    // Extension headers and fragments cannot be translated: the stack's.
    let Some(t) = l4::parse_v6(ctx, ip) else {
        return to_stack(ctx).map(Some);
    };
    if !snat(ctx, src, dst, &t, cfg)? {
        return to_stack(ctx).map(Some);
    }
    decrease_hop_limit(ipv6_header(ctx)?);
    let action = out_of_uplink(ctx, cfg)?;
    count_verdict(Verdict::Forwarded, ctx.len());
    Ok(Some(action))
}

/// Whether a pod's IPv6 packet to `dst` is masqueraded: IPv6 masquerade is
/// on and `dst` is outside the no-masquerade CIDRs.
#[inline(always)]
pub fn masquerades(dst: [u8; 16], cfg: &NodeConfig) -> bool {
    <[u8; 16]>::masquerade_addr(cfg).is_some()
        && NO_MASQ.get(Key::new(128, dst)).is_none()
}

/// A packet arriving on the uplink for a node address: the reply of a
/// masqueraded flow (or an ICMPv6 error about one) translated back, or a
/// connection to a host port translated to its pod. The pod's address, or
/// `None` when the packet is the node's own.
#[inline(never)]
pub fn from_uplink(ctx: &TcContext) -> Result<Option<[u8; 16]>, DropReason> {
    let ip = ipv6_header(ctx)?;
    // SAFETY: bounds-checked.
    let (src, dst) = unsafe { ((*ip).saddr, (*ip).daddr) };
    if NODE_ADDRS.get_ptr(&IpKey::v6(dst)).is_none() {
        return Ok(None);
    }
    let Some(t) = l4::parse_v6(ctx, ip) else {
        return Ok(None);
    };
    let masquerading = NODE_CONFIG.get(0).is_some_and(|cfg| {
        <[u8; 16]>::masquerade_addr(cfg) == Some(dst)
    });
    if masquerading && let Some(pod) = dnat(ctx, src, dst, &t)? {
        count_verdict(Verdict::NatReply, ctx.len());
        return Ok(Some(pod));
    }
    host_ports::to_pod(ctx, src, dst, &t)
}

fn to_stack(ctx: &TcContext) -> Result<i32, DropReason> {
    count_verdict(Verdict::ToStack, ctx.len());
    Ok(TC_ACT_OK)
}

/// Delivers a packet whose addresses were just rewritten for a host port:
/// into a pod of this node, to the node's stack, or out of the uplink
/// (never masqueraded again).
fn deliver_rewritten(ctx: &TcContext, dst: [u8; 16]) -> Result<i32, DropReason> {
    let ip = ipv6_header(ctx)?;
    let eth: *mut EthHdr = header(ctx, 0).ok_or(DropReason::Malformed)?;
    // SAFETY: copied out at once.
    if let Some(target) = (unsafe { ENDPOINTS.get(&IpKey::v6(dst)) }).copied() {
        decrease_hop_limit(ip);
        // SAFETY: bounds-checked.
        unsafe {
            (*eth).dst = target.pod_mac;
            (*eth).src = target.host_mac;
        }
        return deliver_to_pod(ctx, &target);
    }
    let Some(cfg) = NODE_CONFIG.get(0).copied() else {
        return to_stack(ctx);
    };
    if cfg.uplink_ifindex == 0 || NODE_ADDRS.get_ptr(&IpKey::v6(dst)).is_some() {
        return to_stack(ctx);
    }
    decrease_hop_limit(ip);
    let action = out_of_uplink(ctx, &cfg)?;
    count_verdict(Verdict::Forwarded, ctx.len());
    Ok(action)
}
