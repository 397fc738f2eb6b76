//! `xdp_uplink`: XDP on the node's uplink (native mode: veth has it), in
//! front of `from_uplink`. The common cases are handled before the kernel
//! builds a socket buffer, for IPv4 and IPv6 alike: replies of masqueraded
//! TCP and UDP flows are translated back, connections to published host
//! ports are translated to their pod, and those, like traffic from other
//! nodes' pods for a pod of this node, are redirected into the pod's host
//! veth. Everything else passes (`XDP_PASS`) to `from_uplink`, which does
//! the rest as before: ICMP and ICMPv6, fragments and IPv6 extension
//! headers, IPv4 options, pods whose veth cannot take XDP frames,
//! rate-limited pods, flows netfilter translated, the node's own traffic.
//!
//! The parsing (`l4::parse`, `l4::parse_v6`) and the lookups
//! (`nat::reply_of`, `host_ports::published`) are the tc programs'; only
//! the rewrite is XDP's own (no checksum helpers here: RFC 1624 incremental
//! updates on the packet in place).

use aya_ebpf::{
    bindings::xdp_action::{XDP_PASS, XDP_REDIRECT},
    helpers::generated::bpf_redirect,
    macros::xdp,
    programs::XdpContext,
};
use cni_ebpf_common::{
    Direction, ENDPOINT_F_NETFILTER_FLOWS, ENDPOINT_F_RATE_LIMITED, ENDPOINT_F_XDP_TARGET,
    Endpoint, IPPROTO_UDP, IpKey, NODE_F_MASQUERADE, Verdict,
};

use crate::{
    counters::{count_endpoint, count_verdict},
    family::Addr,
    headers::{
        ETH_LEN, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, header, ipv4_decrease_ttl,
        ipv6_decrease_hop_limit, ipv6_link_scoped,
    },
    host_ports, l4,
    l4::Transport,
    maps::{ENDPOINTS, NODE_ADDRS, NODE_CONFIG, NODE_CONFIG_V6},
    nat,
};

#[xdp]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    try_xdp_uplink(&ctx).unwrap_or(XDP_PASS)
}

/// `None`: pass the frame on to the stack (and `from_uplink`) untouched.
#[inline(always)]
fn try_xdp_uplink(ctx: &XdpContext) -> Option<u32> {
    let eth: *mut EthHdr = header(ctx, 0)?;
    // SAFETY: bounds-checked.
    match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_IP => ipv4(ctx, eth),
        ETH_P_IPV6 => ipv6(ctx, eth),
        _ => None,
    }
}

/// Where a frame for a node address goes, found by the tc programs' lookups:
/// the pod's address and port, and whether it answers a masqueraded flow
/// (else it is a connection to a host port). `None`: no pod of XDP's.
#[inline(always)]
fn translation<A: Addr>(
    src: A,
    dst: A,
    t: &Transport,
    masquerading: bool,
) -> Option<(A, u16, bool)> {
    if t.is_icmp() {
        // Echo replies and errors: the tc program's.
        return None;
    }
    if let Some((addr, port)) = masquerading.then(|| nat::reply_of(src, dst, t)).flatten() {
        return Some((addr, port, true));
    }
    let target = host_ports::published(src, dst, t)?;
    let pod = A::from_key(&target.pod_addr);
    // Hairpin: the source is rewritten too; `from_uplink` does it.
    (pod != src).then_some((pod, target.pod_port, false))
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, eth: *mut EthHdr) -> Option<u32> {
    let ip: *mut Ipv4Hdr = header(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked.
    let (src, dst, ttl, version_ihl) =
        unsafe { ((*ip).saddr, (*ip).daddr, (*ip).ttl, (*ip).version_ihl) };
    if ttl <= 1 {
        return None;
    }
    if NODE_ADDRS.get_ptr(&IpKey::v4(dst)).is_some() {
        // IP options: the tc program's.
        if version_ihl != 0x45 {
            return None;
        }
        let t = l4::parse(ctx, ip)?;
        let masquerading = NODE_CONFIG
            .get(0)
            .filter(|cfg| cfg.flags & NODE_F_MASQUERADE != 0)
            .is_some_and(|cfg| IpKey::v4(dst).addr == cfg.masq_addr);
        let (pod, pod_port, reply) = translation(src, dst, &t, masquerading)?;
        let target = xdp_target(IpKey::v4(pod))?;
        rewrite_destination_v4(ctx, ip, &t, dst, pod, pod_port)?;
        ipv4_decrease_ttl(ip);
        return redirect(ctx, eth, &target, reply);
    }
    let target = xdp_target(IpKey::v4(dst))?;
    ipv4_decrease_ttl(ip);
    redirect(ctx, eth, &target, false)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, eth: *mut EthHdr) -> Option<u32> {
    let ip: *mut Ipv6Hdr = header(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked.
    let (src, dst, hop_limit) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).hop_limit) };
    if hop_limit <= 1 || ipv6_link_scoped(&dst) {
        return None;
    }
    if NODE_ADDRS.get_ptr(&IpKey::v6(dst)).is_some() {
        // Extension headers (fragments among them): the tc program's.
        let t = l4::parse_v6(ctx, ip)?;
        // IPv6 UDP without a checksum is invalid: the stack's to judge.
        if t.no_csum {
            return None;
        }
        let masquerading = NODE_CONFIG_V6
            .get(0)
            .is_some_and(|v6| v6.flags & NODE_F_MASQUERADE != 0 && v6.masq_addr == dst);
        let (pod, pod_port, reply) = translation(src, dst, &t, masquerading)?;
        let target = xdp_target(IpKey::v6(pod))?;
        rewrite_destination_v6(ctx, ip, &t, &dst, &pod, pod_port)?;
        ipv6_decrease_hop_limit(ip);
        return redirect(ctx, eth, &target, reply);
    }
    let target = xdp_target(IpKey::v6(dst))?;
    ipv6_decrease_hop_limit(ip);
    redirect(ctx, eth, &target, false)
}

/// The pod at `key`, if XDP may redirect into its host veth: its veth takes
/// XDP frames, and no rate limit or netfilter flow needs the tc program.
#[inline(always)]
fn xdp_target(key: IpKey) -> Option<Endpoint> {
    // SAFETY: copied out at once.
    let target = unsafe { ENDPOINTS.get(&key) }.copied()?;
    if target.flags & ENDPOINT_F_XDP_TARGET == 0
        || target.flags & (ENDPOINT_F_NETFILTER_FLOWS | ENDPOINT_F_RATE_LIMITED) != 0
    {
        return None;
    }
    Some(target)
}

/// Rewrites the MACs and redirects the frame into `target`'s host veth,
/// counted as the tc program counts a local delivery (and apart too).
#[inline(always)]
fn redirect(ctx: &XdpContext, eth: *mut EthHdr, target: &Endpoint, nat_reply: bool) -> Option<u32> {
    // SAFETY: bounds-checked by the caller; nothing changed the frame's
    // length.
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
    if nat_reply {
        count_verdict(Verdict::NatReply, len);
    }
    count_verdict(Verdict::LocalDelivery, len);
    count_verdict(Verdict::XdpDelivered, len);
    count_endpoint(target, Direction::ToPod, len);
    Some(action)
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

/// `check` with the address `old` replaced by `new`, word by word (4 bytes
/// for IPv4, 16 for IPv6).
#[inline(always)]
fn csum_replace_addr<const N: usize>(mut check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut i = 0;
    while i + 1 < N {
        check = csum_replace(
            check,
            u16::from_ne_bytes([old[i], old[i + 1]]),
            u16::from_ne_bytes([new[i], new[i + 1]]),
        );
        i += 2;
    }
    check
}

/// The transport checksum (pseudo header and port) and the port itself for
/// a destination that becomes `pod:pod_port`.
#[inline(always)]
fn rewrite_transport<const N: usize>(
    ctx: &XdpContext,
    t: &Transport,
    old: &[u8; N],
    pod: &[u8; N],
    pod_port: u16,
) -> Option<()> {
    let csum: *mut u16 = header(ctx, t.csum_offset)?;
    let port: *mut u16 = header(ctx, t.offset + 2)?;
    // SAFETY: bounds-checked.
    unsafe {
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

/// The destination becomes `pod:pod_port`, with the IP checksum and the
/// transport checksum kept right.
#[inline(always)]
fn rewrite_destination_v4(
    ctx: &XdpContext,
    ip: *mut Ipv4Hdr,
    t: &Transport,
    old: [u8; 4],
    pod: [u8; 4],
    pod_port: u16,
) -> Option<()> {
    rewrite_transport(ctx, t, &old, &pod, pod_port)?;
    // SAFETY: bounds-checked by the caller.
    unsafe {
        (*ip).check = csum_replace_addr((*ip).check, &old, &pod);
        (*ip).daddr = pod;
    }
    Some(())
}

/// The destination becomes `pod:pod_port` (IPv6 has no header checksum).
#[inline(always)]
fn rewrite_destination_v6(
    ctx: &XdpContext,
    ip: *mut Ipv6Hdr,
    t: &Transport,
    old: &[u8; 16],
    pod: &[u8; 16],
    pod_port: u16,
) -> Option<()> {
    rewrite_transport(ctx, t, old, pod, pod_port)?;
    // SAFETY: bounds-checked by the caller.
    unsafe { (*ip).daddr = *pod };
    Some(())
}
