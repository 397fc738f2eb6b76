//! The IPv6 translations, hooked into `from_pod` and `from_uplink`'s IPv6
//! paths: masquerade of pod flows leaving the node and the reverse
//! translation of their replies and ICMPv6 errors, and host ports (the
//! pod's replies, connections to a node address from pods and from the
//! outside). The translations themselves are IPv4's ([`nat`], [`host_ports`],
//! generic over the family); this module only reads the IPv6 packet and
//! decides.

use aya_ebpf::{bindings::TC_ACT_OK, maps::lpm_trie::Key, programs::TcContext};
use cni_ebpf_common::{
    DropReason, ENDPOINT_F_HOST_PORTS, Endpoint, IpKey, NODE_F_MASQUERADE, Verdict,
};

use crate::{
    counters::count_verdict,
    family::Addr,
    forward::out_of_uplink,
    from_pod::deliver_to_pod,
    headers::{ETH_LEN, EthHdr, Ipv6Hdr, header},
    host_ports, l4,
    l4::Transport,
    maps::{ENDPOINTS, NO_MASQ, NODE_ADDRS, NODE_CONFIG, NODE_CONFIG_V6},
    nat::{dnat_icmp6_error, dnat_inline, snat_inline},
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

/// What `from_pod`'s IPv6 path asks to translate, returned in place of a
/// verdict (outside the range of TC verdicts) and run by [`finish`] at the
/// program's top level: nested under the IPv6 path, the translations'
/// stack frames would pass the verifier's 512 bytes for a call chain.
pub const HOST_PORT_REPLY: i32 = 0x100;
pub const TO_HOST_PORT: i32 = 0x101;
pub const MASQUERADE: i32 = 0x102;

/// Runs the translation `action` asks for, or passes a verdict through.
/// A translated packet is delivered from here too, so that no translation
/// frame lies under the delivery's.
#[inline(always)]
pub fn finish(ctx: &TcContext, action: i32) -> Result<i32, DropReason> {
    let translated = match action {
        HOST_PORT_REPLY => host_port_reply(ctx)?,
        TO_HOST_PORT => to_host_port(ctx)?,
        MASQUERADE => return masquerade(ctx),
        verdict => return Ok(verdict),
    };
    if translated {
        deliver_rewritten(ctx)
    } else {
        to_stack(ctx)
    }
}

/// Whether the pod's packet is a reply on a connection through one of its
/// host ports (pods that publish nothing pay nothing for the question).
#[inline(always)]
pub fn is_host_port_reply(ctx: &TcContext, me: &Endpoint) -> bool {
    if me.flags & ENDPOINT_F_HOST_PORTS == 0 {
        return false;
    }
    let Ok(ip) = ipv6_header(ctx) else {
        return false;
    };
    let Some(t) = l4::parse_v6(ctx, ip) else {
        return false;
    };
    // SAFETY: bounds-checked.
    let (src, dst, hop_limit) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).hop_limit) };
    hop_limit > 1 && host_ports::is_reply(src, dst, &t)
}

/// Rewrites a reply on a connection through a host port
/// ([`is_host_port_reply`]) to the published address and port.
#[inline(never)]
fn host_port_reply(ctx: &TcContext) -> Result<bool, DropReason> {
    let ip = ipv6_header(ctx)?;
    let Some(t) = l4::parse_v6(ctx, ip) else {
        return Ok(false);
    };
    // SAFETY: bounds-checked.
    let (src, dst) = unsafe { ((*ip).saddr, (*ip).daddr) };
    Ok(host_ports::from_pod_inline(ctx, src, dst, &t)?.is_some())
}

/// Rewrites a pod's packet to a host port at a node address (hop limit
/// checked) to the pod publishing it.
#[inline(never)]
fn to_host_port(ctx: &TcContext) -> Result<bool, DropReason> {
    let ip = ipv6_header(ctx)?;
    let Some(t) = l4::parse_v6(ctx, ip) else {
        return Ok(false);
    };
    // SAFETY: bounds-checked.
    let (src, dst) = unsafe { ((*ip).saddr, (*ip).daddr) };
    Ok(host_ports::to_pod_inline(ctx, src, dst, &t)?.is_some())
}

/// Masquerades a pod's packet ([`masquerades`] said so) and sends it out of
/// the uplink; what cannot be translated (extension headers, fragments,
/// ICMPv6 other than echo requests) goes to the stack.
#[inline(never)]
fn masquerade(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = NODE_CONFIG.get(0) else {
        return to_stack(ctx);
    };
    let ip = ipv6_header(ctx)?;
    let Some(t) = l4::parse_v6(ctx, ip) else {
        return to_stack(ctx);
    };
    // SAFETY: bounds-checked.
    if !unsafe { snat_inline(ctx, (*ip).saddr, (*ip).daddr, &t, cfg)? } {
        return to_stack(ctx);
    }
    // The rewrites went through helpers: the packet pointers must be fresh.
    decrease_hop_limit(ipv6_header(ctx)?);
    let action = out_of_uplink(ctx, cfg)?;
    count_verdict(Verdict::Forwarded, ctx.len());
    Ok(action)
}

/// Whether a pod's IPv6 packet to `dst` is masqueraded: IPv6 masquerade is
/// on and `dst` is outside the no-masquerade CIDRs.
#[inline(always)]
pub fn masquerades(dst: [u8; 16]) -> bool {
    NODE_CONFIG_V6
        .get(0)
        .is_some_and(|v6| v6.flags & NODE_F_MASQUERADE != 0)
        && NO_MASQ.get(Key::new(128, dst)).is_none()
}

/// Translates, in place, a packet arriving on the uplink for a node
/// address: the reply of a masqueraded flow (or an ICMPv6 error about one)
/// back to its pod, or a connection to a host port to the pod publishing
/// it. Afterwards the packet's destination is the pod's address; `false`
/// when the packet is the node's own (left as it is).
#[inline(never)]
pub fn from_uplink(ctx: &TcContext) -> Result<bool, DropReason> {
    let ip = ipv6_header(ctx)?;
    // SAFETY: bounds-checked.
    if NODE_ADDRS
        .get_ptr(&IpKey::v6(unsafe { (*ip).daddr }))
        .is_none()
    {
        return Ok(false);
    }
    let Some(t) = l4::parse_v6(ctx, ip) else {
        return Ok(false);
    };
    // SAFETY: bounds-checked.
    let dst = unsafe { (*ip).daddr };
    let masquerading = NODE_CONFIG_V6
        .get(0)
        .is_some_and(|v6| v6.flags & NODE_F_MASQUERADE != 0 && v6.masq_addr == dst);
    if masquerading {
        // Each translation its own leaf: stacked, their frames would pass
        // the verifier's limit.
        let reply = if t.is_icmp() && <[u8; 16]>::is_icmp_error(t.icmp_type) {
            dnat_icmp6_error(ctx, &dst, &t)?
        } else {
            reply_to_pod(ctx, &t)?
        };
        if reply {
            count_verdict(Verdict::NatReply, ctx.len());
            return Ok(true);
        }
    }
    connection_to_pod(ctx, &t)
}

#[inline(never)]
fn reply_to_pod(ctx: &TcContext, t: &Transport) -> Result<bool, DropReason> {
    let ip = ipv6_header(ctx)?;
    // SAFETY: bounds-checked.
    let (src, dst) = unsafe { ((*ip).saddr, (*ip).daddr) };
    Ok(dnat_inline(ctx, src, dst, t)?.is_some())
}

#[inline(never)]
fn connection_to_pod(ctx: &TcContext, t: &Transport) -> Result<bool, DropReason> {
    let ip = ipv6_header(ctx)?;
    // SAFETY: bounds-checked.
    let (src, dst) = unsafe { ((*ip).saddr, (*ip).daddr) };
    Ok(host_ports::to_pod_inline(ctx, src, dst, t)?.is_some())
}

fn to_stack(ctx: &TcContext) -> Result<i32, DropReason> {
    count_verdict(Verdict::ToStack, ctx.len());
    Ok(TC_ACT_OK)
}

/// Delivers a packet whose addresses were just rewritten for a host port
/// to its new destination: into a pod of this node, to the node's stack,
/// or out of the uplink (never masqueraded again).
#[inline(never)]
fn deliver_rewritten(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip = ipv6_header(ctx)?;
    let eth: *mut EthHdr = header(ctx, 0).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked.
    let dst = IpKey::v6(unsafe { (*ip).daddr });
    // SAFETY: copied out at once.
    if let Some(target) = (unsafe { ENDPOINTS.get(&dst) }).copied() {
        decrease_hop_limit(ip);
        // SAFETY: bounds-checked.
        unsafe {
            (*eth).dst = target.pod_mac;
            (*eth).src = target.host_mac;
        }
        return deliver_to_pod(ctx, &target);
    }
    let Some(cfg) = NODE_CONFIG.get(0) else {
        return to_stack(ctx);
    };
    if cfg.uplink_ifindex == 0 || NODE_ADDRS.get_ptr(&dst).is_some() {
        return to_stack(ctx);
    }
    decrease_hop_limit(ip);
    let action = out_of_uplink(ctx, cfg)?;
    count_verdict(Verdict::Forwarded, ctx.len());
    Ok(action)
}
