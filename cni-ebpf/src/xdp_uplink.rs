//! `xdp_uplink`: XDP on the node's uplink (native mode: veth has it), in
//! front of `from_uplink`. The common cases are handled before the kernel
//! builds a socket buffer: replies of masqueraded TCP and UDP flows are
//! translated back, connections to published host ports are translated to
//! their pod, and those, like traffic from other nodes' pods for a pod of
//! this node, are redirected into the pod's host veth. Everything else
//! passes (`XDP_PASS`) to `from_uplink`, which does the rest as before:
//! ICMP, fragments, pods whose veth cannot take XDP frames, rate-limited
//! pods, flows netfilter translated, the node's own traffic.
//!
//! The lookups are `nat::reply_of` and `host_ports::published`, shared with
//! the tc programs; only the rewrite is XDP's own (no checksum helpers
//! here: RFC 1624 incremental updates on the packet in place).

use aya_ebpf::{
    bindings::xdp_action::{XDP_PASS, XDP_REDIRECT},
    helpers::generated::bpf_redirect,
    macros::xdp,
    programs::XdpContext,
};
use cni_ebpf_common::{
    Direction, ENDPOINT_F_NETFILTER_FLOWS, ENDPOINT_F_RATE_LIMITED, ENDPOINT_F_XDP_TARGET,
    IPPROTO_TCP, IPPROTO_UDP, IpKey, NODE_F_MASQUERADE, Verdict,
};

use crate::{
    counters::{count_endpoint, count_verdict},
    headers::{
        ETH_LEN, ETH_P_IP, EthHdr, Ipv4Hdr, L4Head, TCP_CSUM_OFF, TcpFlagsWord, UDP_CSUM_OFF,
        ipv4_decrease_ttl,
    },
    host_ports,
    l4::Transport,
    maps::{ENDPOINTS, NODE_ADDRS, NODE_CONFIG},
    nat,
};

#[xdp]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    try_xdp_uplink(&ctx).unwrap_or(XDP_PASS)
}

/// A pointer to a `T` at `offset` in the frame, if it fits.
#[inline(always)]
fn at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// `None`: pass the frame on to the stack (and `from_uplink`) untouched.
#[inline(always)]
fn try_xdp_uplink(ctx: &XdpContext) -> Option<u32> {
    let eth: *mut EthHdr = at(ctx, 0)?;
    // SAFETY: bounds-checked.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IP {
        return None;
    }
    let ip: *mut Ipv4Hdr = at(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked.
    let (src, dst, ttl) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).ttl) };
    if ttl <= 1 {
        return None;
    }
    let mut pod = dst;
    // (pod port, for a translated packet), and whether it was NAT.
    let mut translated: Option<(u16, bool)> = None;
    let transport = if NODE_ADDRS.get_ptr(&IpKey::v4(dst)).is_some() {
        let t = transport(ctx, ip)?;
        let masquerading = NODE_CONFIG
            .get(0)
            .filter(|cfg| cfg.flags & NODE_F_MASQUERADE != 0)
            .is_some_and(|cfg| IpKey::v4(dst).addr == cfg.masq_addr);
        if let Some((addr, port)) = masquerading.then(|| nat::reply_of(src, dst, &t)).flatten() {
            pod = addr;
            translated = Some((port, true));
        } else if let Some(target) = host_ports::published(src, dst, &t) {
            pod = crate::headers::v4(&target.pod_addr);
            if pod == src {
                // Hairpin: the source is rewritten too; `from_uplink` does it.
                return None;
            }
            translated = Some((target.pod_port, false));
        } else {
            return None;
        }
        Some(t)
    } else {
        None
    };
    // SAFETY: copied out at once.
    let target = unsafe { ENDPOINTS.get(&IpKey::v4(pod)) }.copied()?;
    if target.flags & ENDPOINT_F_XDP_TARGET == 0
        || target.flags & (ENDPOINT_F_NETFILTER_FLOWS | ENDPOINT_F_RATE_LIMITED) != 0
    {
        return None;
    }
    if let (Some(t), Some((pod_port, _))) = (&transport, translated) {
        rewrite_destination(ctx, ip, t, dst, pod, pod_port)?;
    }
    ipv4_decrease_ttl(ip);
    // SAFETY: bounds-checked above; nothing changed the frame's length.
    unsafe {
        (*eth).dst = target.pod_mac;
        (*eth).src = target.host_mac;
    }
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(target.ifindex, 0) } as u32;
    if action != XDP_REDIRECT {
        return None;
    }
    let len = (ctx.data_end() - ctx.data()) as u32;
    if let Some((_, true)) = translated {
        count_verdict(Verdict::NatReply, len);
    }
    // A local delivery like the tc program's, and counted apart too.
    count_verdict(Verdict::LocalDelivery, len);
    count_verdict(Verdict::XdpDelivered, len);
    count_endpoint(target.ifindex, Direction::ToPod, len);
    Some(action)
}

/// TCP or UDP behind `ip` (XDP leaves ICMP, fragments and IP options to
/// the tc program).
#[inline(always)]
fn transport(ctx: &XdpContext, ip: *const Ipv4Hdr) -> Option<Transport> {
    // SAFETY: the caller bounds-checked `ip`.
    let (version_ihl, proto, frag) = unsafe {
        (
            (*ip).version_ihl,
            (*ip).protocol,
            u16::from_be((*ip).frag_off),
        )
    };
    if version_ihl != 0x45 || frag & 0x3fff != 0 {
        return None;
    }
    let offset = ETH_LEN + core::mem::size_of::<Ipv4Hdr>();
    let head: *const L4Head = at(ctx, offset)?;
    // SAFETY: bounds-checked.
    let (w0, w1, w3) = unsafe { ((*head).word0, (*head).word1, (*head).word3) };
    let mut t = Transport {
        proto,
        offset,
        src_port: w0,
        dst_port: w1,
        csum_offset: 0,
        tcp_flags: 0,
        icmp_type: 0,
        no_csum: false,
    };
    match proto {
        IPPROTO_TCP => {
            let flags: *const TcpFlagsWord = at(ctx, offset + 12)?;
            // The checksum must be in the frame too.
            at::<u16>(ctx, offset + TCP_CSUM_OFF)?;
            t.csum_offset = offset + TCP_CSUM_OFF;
            // SAFETY: bounds-checked.
            t.tcp_flags = unsafe { (*flags).flags };
        }
        IPPROTO_UDP => {
            t.csum_offset = offset + UDP_CSUM_OFF;
            t.no_csum = w3 == 0;
        }
        _ => return None,
    }
    Some(t)
}

/// RFC 1624: the checksum `check` with the 16-bit word `old` replaced by
/// `new` (all as they sit in the packet).
#[inline(always)]
fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// `check` with the 4-byte address `old` replaced by `new`.
#[inline(always)]
fn csum_replace_addr(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let words = |a: [u8; 4]| {
        (
            u16::from_ne_bytes([a[0], a[1]]),
            u16::from_ne_bytes([a[2], a[3]]),
        )
    };
    let ((o0, o1), (n0, n1)) = (words(old), words(new));
    csum_replace(csum_replace(check, o0, n0), o1, n1)
}

/// The destination becomes `pod:pod_port`, with the IP checksum and the
/// transport checksum (pseudo header and port) kept right.
#[inline(always)]
fn rewrite_destination(
    ctx: &XdpContext,
    ip: *mut Ipv4Hdr,
    t: &Transport,
    old: [u8; 4],
    pod: [u8; 4],
    pod_port: u16,
) -> Option<()> {
    let csum: *mut u16 = at(ctx, t.csum_offset)?;
    let port: *mut u16 = at(ctx, t.offset + 2)?;
    // SAFETY: bounds-checked.
    unsafe {
        (*ip).check = csum_replace_addr((*ip).check, old, pod);
        (*ip).daddr = pod;
        if !t.no_csum {
            let mut check = csum_replace_addr(*csum, old, pod);
            check = csum_replace(check, t.dst_port, pod_port);
            if t.proto == IPPROTO_UDP && check == 0 {
                check = 0xffff;
            }
            *csum = check;
        }
        *port = pod_port;
    }
    Some(())
}
