//! `from_pod`: tc ingress of every host-side veth, i.e. everything a pod
//! sends. Anti-spoofing first, then local delivery straight into the
//! destination pod with `bpf_redirect_peer`, ARP for the gateway answered
//! here (and neighbor solicitations for it, in `ndp`); traffic for other nodes and the outside leaves through the uplink
//! (masqueraded unless its destination is a cluster CIDR), and everything
//! else is handed to the node's stack.

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use cni_ebpf_common::{
    Direction, DropReason, ENDPOINT_F_HOST_PORTS, ENDPOINT_F_NETFILTER_FLOWS, Endpoint, IpKey,
    NODE_F_MASQUERADE, Verdict,
};

use crate::{
    counters::{count_drop, count_endpoint, count_verdict},
    forward::out_of_uplink,
    headers::{
        ARP_HTYPE_ETHERNET, ARP_REPLY, ARP_REQUEST, ArpEthIpv4, ETH_LEN, ETH_P_ARP, ETH_P_IP,
        ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, header, ipv4_decrease_ttl, ipv6_decrease_hop_limit,
        ipv6_link_scoped, ipv6_v4_mapped, pull_headers,
    },
    host_ports, l4,
    log::log_drop,
    maps::{ENDPOINTS, KeyV4, NO_MASQ, NODE_ADDRS, NODE_CONFIG, SERVICES, endpoint_v4},
    nat::snat,
    ndp,
    netfilter::{self, to_netfilter},
    rate::{Way, charge},
    translate6, tunnel,
};

/// Ethernet + the longest L3 header we read.
const HEADERS_LEN: u32 = (ETH_LEN + core::mem::size_of::<Ipv6Hdr>()) as u32;

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    match try_from_pod(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count_drop(reason, Direction::FromPod, ctx.len());
            log_drop(&ctx, reason, Direction::FromPod);
            TC_ACT_SHOT
        }
    }
}

fn try_from_pod(ctx: &TcContext) -> Result<i32, DropReason> {
    pull_headers(ctx, HEADERS_LEN);
    let eth: *mut EthHdr = header(ctx, 0).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked above.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    match ether_type {
        ETH_P_IP => ipv4(ctx, eth),
        ETH_P_ARP => arp(ctx, eth),
        ETH_P_IPV6 => match ndp::message_type(ctx) {
            Some(kind) => ndp::from_pod(ctx, kind),
            None => translate6::finish(ctx, tunnel::finish_v6(ctx, ipv6(ctx, eth)?)?),
        },
        _ => Err(DropReason::UnsupportedL3),
    }
}

/// The endpoint that owns `addr`, if the packet really comes from it: the
/// address must be one of this interface's and the MAC the pod's own.
#[inline(always)]
fn sender(
    ctx: &TcContext,
    addr: IpKey,
    mac: &[u8; 6],
    spoofed: DropReason,
) -> Result<&'static Endpoint, DropReason> {
    verified(ctx, ENDPOINTS.get_ptr(&addr), mac, spoofed)
}

/// `found`, the endpoint of the packet's source address, if the packet
/// really comes from it ([`sender`]). The value is read in place, field by
/// field as the path needs it: a whole copy costs a byte-wise `memmove`
/// call, and a copy is no more atomic than the reads (entries are only
/// replaced whole, by the plugin, for a pod being added or deleted).
#[inline(always)]
fn verified(
    ctx: &TcContext,
    found: Option<*const Endpoint>,
    mac: &[u8; 6],
    spoofed: DropReason,
) -> Result<&'static Endpoint, DropReason> {
    // SAFETY: a live map value (`endpoint_in_place`).
    let endpoint = endpoint_in_place(found.ok_or(match spoofed {
        DropReason::SpoofedArp => DropReason::SpoofedArp,
        _ => DropReason::UnknownSource,
    })?);
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if endpoint.ifindex != ifindex {
        return Err(spoofed);
    }
    if !same_mac(&endpoint.pod_mac, mac) {
        return Err(match spoofed {
            DropReason::SpoofedArp => DropReason::SpoofedArp,
            _ => DropReason::SpoofedMac,
        });
    }
    Ok(endpoint)
}

fn ipv4(ctx: &TcContext, eth: *mut EthHdr) -> Result<i32, DropReason> {
    let ip: *mut Ipv4Hdr = header(ctx, ETH_LEN).ok_or(DropReason::Malformed)?;
    // SAFETY: `eth` and `ip` are bounds-checked.
    let (src, dst, ttl, eth_src) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).ttl, (*eth).src) };
    let me = verified(ctx, endpoint_v4(src), &eth_src, DropReason::SpoofedSource)?;
    charge(ctx, me, Way::Egress)?;
    count_endpoint(me, Direction::FromPod, ctx.len());
    if me.flags & ENDPOINT_F_NETFILTER_FLOWS != 0
        && let Some(transport) = l4::parse(ctx, ip)
        && netfilter::belongs(src, dst, &transport)
    {
        return Ok(to_netfilter(ctx));
    }
    if me.flags & ENDPOINT_F_HOST_PORTS != 0
        && ttl > 1
        && let Some(transport) = l4::parse(ctx, ip)
        && let Some(client) = host_ports::from_pod(ctx, src, dst, &transport)?
    {
        return deliver_rewritten(ctx, client);
    }

    let Some(target) = endpoint_v4(dst).map(endpoint_in_place) else {
        return leave_node(ctx, ip, src, dst, ttl);
    };
    if ttl <= 1 {
        // The stack answers with ICMP time exceeded.
        count_verdict(Verdict::ToStack, ctx.len());
        return Ok(TC_ACT_OK);
    }
    if target.flags & ENDPOINT_F_NETFILTER_FLOWS != 0
        && let Some(transport) = l4::parse(ctx, ip)
        && netfilter::belongs(src, dst, &transport)
    {
        return Ok(to_netfilter(ctx));
    }
    ipv4_decrease_ttl(ip);
    address_to_pod(eth, target);
    deliver(ctx, target)
}

/// Addresses the frame at `eth` (bounds-checked, and nothing since changed
/// the packet's length) from `target`'s host veth to the pod, in 2-byte
/// words: a plain copy of the arrays between the map value and the packet
/// becomes a call to a byte-wise `memmove`.
#[inline(always)]
fn address_to_pod(eth: *mut EthHdr, target: &Endpoint) {
    let pod = (&raw const target.pod_mac).cast::<u16>();
    let host = (&raw const target.host_mac).cast::<u16>();
    let frame = eth.cast::<u16>();
    // SAFETY: `eth` covers the 12 bytes of both addresses; the MACs are
    // 2-byte aligned in `Endpoint` (asserted below), as `EthHdr` is.
    unsafe {
        for i in 0..3 {
            *frame.add(i) = *pod.add(i);
            *frame.add(3 + i) = *host.add(i);
        }
    }
}

const _: () = assert!(core::mem::offset_of!(Endpoint, pod_mac) % 2 == 0);
const _: () = assert!(core::mem::offset_of!(Endpoint, host_mac) % 2 == 0);
const _: () = assert!(core::mem::align_of::<EthHdr>() == 2);

/// Whether `mac` is `pod_mac` (an `Endpoint`'s), read in 2-byte words
/// rather than six byte loads.
#[inline(always)]
fn same_mac(pod_mac: &[u8; 6], mac: &[u8; 6]) -> bool {
    let words = pod_mac.as_ptr().cast::<u16>();
    let word = |i: usize| u16::from_ne_bytes([mac[2 * i], mac[2 * i + 1]]);
    // SAFETY: 6 bytes, 2-byte aligned in `Endpoint` (asserted above).
    unsafe { *words == word(0) && *words.add(1) == word(1) && *words.add(2) == word(2) }
}

/// A value of `ENDPOINTS`, read in place (see [`verified`]).
#[inline(always)]
fn endpoint_in_place(found: *const Endpoint) -> &'static Endpoint {
    // SAFETY: map values stay allocated for the program's run.
    unsafe { &*found }
}

fn to_stack(ctx: &TcContext) -> Result<i32, DropReason> {
    count_verdict(Verdict::ToStack, ctx.len());
    Ok(TC_ACT_OK)
}

/// Out of the uplink, masqueraded unless `dst` is in `NO_MASQ`; the node's
/// own addresses, multicast and broadcast go to the stack.
fn leave_node(
    ctx: &TcContext,
    ip: *mut Ipv4Hdr,
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
) -> Result<i32, DropReason> {
    let Some(cfg) = NODE_CONFIG.get(0).copied() else {
        return to_stack(ctx);
    };
    let for_node = dst[0] >= 224 || NODE_ADDRS.get_ptr(KeyV4::new(dst).key()).is_some();
    if for_node
        && ttl > 1
        && let Some(transport) = l4::parse(ctx, ip)
        && let Some(pod) = host_ports::to_pod(ctx, src, dst, &transport)?
    {
        return deliver_rewritten(ctx, pod);
    }
    if cfg.uplink_ifindex == 0 || ttl <= 1 || for_node {
        return to_stack(ctx);
    }
    let services = netfilter::enabled(&cfg);
    if services && netfilter::is_service(dst) {
        return Ok(to_netfilter(ctx));
    }
    if let Some(action) = tunnel::into_tunnel(ctx, ip, dst)? {
        return Ok(action);
    }
    let masquerade = cfg.flags & NODE_F_MASQUERADE != 0
        && NO_MASQ.get(Key::new(128, IpKey::v4(dst).addr)).is_none();
    if masquerade {
        // Fragments and protocols without ports cannot be translated.
        let Some(transport) = l4::parse(ctx, ip) else {
            return to_stack(ctx);
        };
        if !snat(ctx, src, dst, &transport, &cfg)? {
            return to_stack(ctx);
        }
    }
    // The rewrites went through helpers: the packet pointers must be fresh.
    let ip: *mut Ipv4Hdr = header(ctx, ETH_LEN).ok_or(DropReason::Malformed)?;
    ipv4_decrease_ttl(ip);
    let action = out_of_uplink(ctx, &cfg)?;
    count_verdict(Verdict::Forwarded, ctx.len());
    Ok(action)
}

/// Delivers a packet whose addresses were just rewritten for a host port:
/// into a pod of this node, to the node's stack, or out of the uplink
/// (never masqueraded again).
fn deliver_rewritten(ctx: &TcContext, dst: [u8; 4]) -> Result<i32, DropReason> {
    let ip: *mut Ipv4Hdr = header(ctx, ETH_LEN).ok_or(DropReason::Malformed)?;
    let eth: *mut EthHdr = header(ctx, 0).ok_or(DropReason::Malformed)?;
    if let Some(target) = endpoint_v4(dst).map(endpoint_in_place) {
        ipv4_decrease_ttl(ip);
        address_to_pod(eth, target);
        return deliver_to_pod(ctx, target);
    }
    let Some(cfg) = NODE_CONFIG.get(0).copied() else {
        return to_stack(ctx);
    };
    if cfg.uplink_ifindex == 0 || NODE_ADDRS.get_ptr(KeyV4::new(dst).key()).is_some() {
        return to_stack(ctx);
    }
    ipv4_decrease_ttl(ip);
    let action = out_of_uplink(ctx, &cfg)?;
    count_verdict(Verdict::Forwarded, ctx.len());
    Ok(action)
}

/// Into the pod behind `target`'s host veth, skipping the host veth itself.
/// Out of line, for the other programs and paths; `from_pod`'s own pod to
/// pod path has [`deliver`] inlined.
#[inline(never)]
pub fn deliver_to_pod(ctx: &TcContext, target: &Endpoint) -> Result<i32, DropReason> {
    deliver(ctx, target)
}

#[inline(always)]
fn deliver(ctx: &TcContext, target: &Endpoint) -> Result<i32, DropReason> {
    if let Err(reason) = charge(ctx, target, Way::Ingress) {
        // Counted against the receiving pod, not the sender.
        count_drop(reason, Direction::ToPod, ctx.len());
        return Ok(TC_ACT_SHOT);
    }
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect_peer(target.ifindex, 0) } as i32;
    if action != TC_ACT_REDIRECT {
        return Err(DropReason::RedirectFailed);
    }
    count_verdict(Verdict::LocalDelivery, ctx.len());
    count_endpoint(target, Direction::ToPod, ctx.len());
    Ok(action)
}

/// Answers the pod's ARP requests with the host veth's MAC: the node routes
/// every packet of the pod, so it is the next hop for any address the pod asks
/// about. Other ARP (replies to the node's own requests) goes to the stack.
fn arp(ctx: &TcContext, eth: *mut EthHdr) -> Result<i32, DropReason> {
    let arp: *mut ArpEthIpv4 = header(ctx, ETH_LEN).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked.
    let (htype, ptype, hlen, plen, op, sha, spa, tpa, eth_src) = unsafe {
        (
            u16::from_be((*arp).htype),
            u16::from_be((*arp).ptype),
            (*arp).hlen,
            (*arp).plen,
            u16::from_be((*arp).op),
            (*arp).sha,
            (*arp).spa,
            (*arp).tpa,
            (*eth).src,
        )
    };
    if htype != ARP_HTYPE_ETHERNET || ptype != ETH_P_IP || hlen != 6 || plen != 4 {
        return Err(DropReason::Malformed);
    }
    if sha != eth_src {
        return Err(DropReason::SpoofedArp);
    }
    let endpoint = sender(ctx, IpKey::v4(spa), &sha, DropReason::SpoofedArp)?;
    if op != ARP_REQUEST || tpa == spa {
        count_verdict(Verdict::ToStack, ctx.len());
        return Ok(TC_ACT_OK);
    }
    // SAFETY: bounds-checked; the reply is built in place, same length.
    unsafe {
        (*eth).dst = sha;
        (*eth).src = endpoint.host_mac;
        (*arp).op = ARP_REPLY.to_be();
        (*arp).tha = sha;
        (*arp).tpa = spa;
        (*arp).sha = endpoint.host_mac;
        (*arp).spa = tpa;
    }
    count_verdict(Verdict::ArpReply, ctx.len());
    // Back out of the same veth: its egress is the pod's ingress.
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(endpoint.ifindex, 0) } as i32)
}

/// IPv6 from a pod: anti-spoofing (neighbor discovery included), local
/// delivery with `bpf_redirect_peer`, and out of the uplink natively; what
/// the IPv4 path translates in BPF and IPv6 does not yet (masquerade, host
/// ports, services, the overlay) is handed to the node's stack. Not inlined:
/// the IPv4 path keeps its own stack frame.
#[inline(never)]
fn ipv6(ctx: &TcContext, eth: *mut EthHdr) -> Result<i32, DropReason> {
    let ip: *mut Ipv6Hdr = header(ctx, ETH_LEN).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked.
    let (src, dst, hop_limit, eth_src) =
        unsafe { ((*ip).saddr, (*ip).daddr, (*ip).hop_limit, (*eth).src) };
    let link_local = src[0] == 0xfe && (src[1] & 0xc0) == 0x80;
    if src == [0u8; 16] || (link_local && ENDPOINTS.get_ptr(&IpKey::v6(src)).is_none()) {
        // `::` (early MLD) and the link-local addresses of pods without
        // IPv6 belong to no endpoint: the node's own business.
        return to_stack(ctx);
    }
    if ipv6_v4_mapped(&src) {
        // The key of the pod's IPv4 address, not an IPv6 one it owns.
        return Err(DropReason::SpoofedSource);
    }
    // A link-local source never leaves its link: the stack refuses to
    // forward it (ICMPv6 "beyond scope of source address"); nor does it
    // forward to an IPv4-mapped address (read from the packet: a copy
    // would outgrow the verifier's stack limit).
    // SAFETY: bounds-checked.
    let stays_on_link =
        link_local || ipv6_link_scoped(&dst) || ipv6_v4_mapped(unsafe { &(*ip).daddr });
    let me = sender(ctx, IpKey::v6(src), &eth_src, DropReason::SpoofedSource)?;
    charge(ctx, me, Way::Egress)?;
    count_endpoint(me, Direction::FromPod, ctx.len());
    if stays_on_link {
        return to_stack(ctx);
    }
    if netfilter::claims_v6(ctx, me) {
        return Ok(to_netfilter(ctx));
    }
    if translate6::is_host_port_reply(ctx, me) {
        return Ok(translate6::HOST_PORT_REPLY);
    }
    let Some(target) = ENDPOINTS.get_ptr(&IpKey::v6(dst)).map(endpoint_in_place) else {
        return leave_node_v6(ctx, ip, dst, hop_limit);
    };
    if hop_limit <= 1 {
        // The stack answers with ICMPv6 time exceeded.
        return to_stack(ctx);
    }
    if netfilter::claims_v6(ctx, target) {
        return Ok(to_netfilter(ctx));
    }
    ipv6_decrease_hop_limit(ip);
    address_to_pod(eth, target);
    deliver_to_pod(ctx, target)
}

/// IPv6 to another node's pods and the outside: out of the uplink as the
/// node routes it, or through the tunnel to peers behind it. The node's
/// own addresses go to the stack.
fn leave_node_v6(
    ctx: &TcContext,
    ip: *mut Ipv6Hdr,
    dst: [u8; 16],
    hop_limit: u8,
) -> Result<i32, DropReason> {
    let Some(cfg) = NODE_CONFIG.get(0).copied() else {
        return to_stack(ctx);
    };
    if hop_limit > 1 && NODE_ADDRS.get_ptr(&IpKey::v6(dst)).is_some() {
        return Ok(translate6::TO_HOST_PORT);
    }
    if cfg.uplink_ifindex == 0 || hop_limit <= 1 || NODE_ADDRS.get_ptr(&IpKey::v6(dst)).is_some() {
        return to_stack(ctx);
    }
    let key = Key::new(128, dst);
    if netfilter::enabled(&cfg) && SERVICES.get(&key).is_some() {
        return Ok(to_netfilter(ctx));
    }
    if tunnel::tunnels_v6(dst) {
        return Ok(tunnel::INTO_TUNNEL);
    }
    if translate6::masquerades(dst) {
        return Ok(translate6::MASQUERADE);
    }
    ipv6_decrease_hop_limit(ip);
    let action = out_of_uplink(ctx, &cfg)?;
    count_verdict(Verdict::Forwarded, ctx.len());
    Ok(action)
}
