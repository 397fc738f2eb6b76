//! Neighbor discovery from pods, IPv6's ARP. The datapath answers a pod's
//! neighbor solicitations with the host veth's MAC (the node routes every
//! packet of the pod, so it is the next hop for any address the pod asks
//! about, the gateway first of all), and keeps pods from advertising
//! addresses or MACs that are not theirs, or themselves as routers.
//! Router solicitations go to the node's stack, which sends no router
//! advertisements (the kernel never does by itself): pods get their routes
//! from CNI, not from RAs.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::generated::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use cni_ebpf_common::{DropReason, Endpoint, IpKey, Verdict};

use crate::{
    counters::count_verdict,
    headers::{
        ETH_LEN, EthHdr, IPPROTO_ICMPV6, IPV6_LEN, Ipv6Hdr, ND_NA_LEN, ND_NA_OVERRIDE,
        ND_NA_ROUTER, ND_NA_SOLICITED, ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT, ND_OPT_SOURCE_LL,
        ND_OPT_TARGET_LL, ND_REDIRECT, ND_ROUTER_ADVERT, NdLinkOpt, NdMsg, header, pull_headers,
    },
    maps::ENDPOINTS,
};

/// An answer: Ethernet, IPv6 and an advertisement with one option.
const ANSWER_LEN: u32 = (ETH_LEN + IPV6_LEN + ND_NA_LEN) as u32;
const MSG_OFF: usize = ETH_LEN + IPV6_LEN;
const OPT_OFF: usize = MSG_OFF + core::mem::size_of::<NdMsg>();
/// Hop limit every neighbor discovery message carries (RFC 4861 §7.1).
const ND_HOP_LIMIT: u8 = 255;

/// The neighbor discovery type of an ICMPv6 packet whose ICMPv6 header
/// follows the IPv6 header right away, or `None` for any other packet.
#[inline(always)]
pub fn message_type(ctx: &TcContext) -> Option<u8> {
    let ip: *const Ipv6Hdr = header(ctx, ETH_LEN)?;
    let kind: *const u8 = header(ctx, MSG_OFF)?;
    // SAFETY: bounds-checked.
    let (next, kind) = unsafe { ((*ip).next_header, *kind) };
    (next == IPPROTO_ICMPV6 && (133..=137).contains(&kind)).then_some(kind)
}

/// Handles neighbor discovery message `kind` from a pod. Its own room (and
/// stack frame), called straight from the program: the sender is checked
/// here as `from_pod` checks it, every lie counted as `spoofed-nd`. The
/// addresses are looked up where they lie in the packet: copies of them
/// held across helper calls cost more stack than the verifier allows.
#[inline(never)]
pub fn from_pod(ctx: &TcContext, kind: u8) -> Result<i32, DropReason> {
    if kind == ND_ROUTER_ADVERT || kind == ND_REDIRECT {
        return Err(DropReason::SpoofedNd);
    }
    let eth: *const EthHdr = header(ctx, 0).ok_or(DropReason::Malformed)?;
    let ip: *const Ipv6Hdr = header(ctx, ETH_LEN).ok_or(DropReason::Malformed)?;
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: bounds-checked; `IpKey` is the address's 16 bytes.
    let src = unsafe { &*(core::ptr::addr_of!((*ip).saddr) as *const IpKey) };
    // `None`: `::` (duplicate address detection) or the link-local address
    // of a pod without IPv6, which the datapath cannot tie to an endpoint.
    let me: Option<*const Endpoint> = match ENDPOINTS.get_ptr(src) {
        Some(me) => {
            // SAFETY: a map value, valid for the program run; `eth` is
            // bounds-checked.
            let honest = unsafe { (*me).ifindex == ifindex && (*me).pod_mac == (*eth).src };
            if !honest {
                return Err(DropReason::SpoofedNd);
            }
            Some(me)
        }
        None if src.addr == [0u8; 16] => None,
        None if src.addr[0] == 0xfe && (src.addr[1] & 0xc0) == 0x80 => None,
        None => return Err(DropReason::SpoofedNd),
    };
    if kind != ND_NEIGHBOR_SOLICIT && kind != ND_NEIGHBOR_ADVERT {
        // Router solicitation.
        return to_stack(ctx);
    }
    let msg: *const NdMsg = header(ctx, MSG_OFF).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked; `IpKey` is the address's 16 bytes.
    let target = unsafe { &*(core::ptr::addr_of!((*msg).target) as *const IpKey) };
    let owner = ENDPOINTS.get_ptr(target);
    // SAFETY: a map value, valid for the program run.
    let own_target = owner.is_some_and(|owner| unsafe { (*owner).ifindex } == ifindex);
    let Some(me) = me else {
        // A pod without IPv6 addresses still talks to the node from its
        // link-local address, as before IPv6 was carried: it may ask, and
        // advertise a link-local address no endpoint has, nothing else.
        let link_local_target = target.addr[0] == 0xfe && (target.addr[1] & 0xc0) == 0x80;
        if kind == ND_NEIGHBOR_ADVERT && (owner.is_some() || !link_local_target) {
            return Err(DropReason::SpoofedNd);
        }
        return to_stack(ctx);
    };
    // A pod's own link-layer address is the only one it may announce.
    if let Some(opt) = link_layer_option(ctx) {
        // SAFETY: bounds-checked.
        if unsafe { (*opt).mac != (*eth).src } {
            return Err(DropReason::SpoofedNd);
        }
    }
    if kind == ND_NEIGHBOR_ADVERT {
        // A pod advertises its own addresses only.
        if !own_target {
            return Err(DropReason::SpoofedNd);
        }
        return to_stack(ctx);
    }
    if own_target || target.addr[0] == 0xff {
        return to_stack(ctx);
    }
    // SAFETY: a map value, valid for the program run.
    let (host_ifindex, pod_mac, host_mac) =
        unsafe { ((*me).ifindex, (*me).pod_mac, (*me).host_mac) };
    answer(ctx, host_ifindex, pod_mac, host_mac)
}

/// The first option of the message, when it is a link-layer address.
#[inline(always)]
fn link_layer_option(ctx: &TcContext) -> Option<*const NdLinkOpt> {
    let opt: *const NdLinkOpt = header(ctx, OPT_OFF)?;
    // SAFETY: bounds-checked.
    let (kind, len) = unsafe { ((*opt).kind, (*opt).len) };
    (len == 1 && (kind == ND_OPT_SOURCE_LL || kind == ND_OPT_TARGET_LL)).then_some(opt)
}

/// Turns the solicitation into the advertisement of its target at the host
/// veth's MAC, in place (from the target, to the asker), and sends it back
/// to the pod: router, solicited and override set (the pod's entry is
/// replaced, as an ARP reply does).
#[inline(always)]
fn answer(
    ctx: &TcContext,
    ifindex: u32,
    pod_mac: [u8; 6],
    host_mac: [u8; 6],
) -> Result<i32, DropReason> {
    if ctx.len() != ANSWER_LEN {
        // Only the tail changes: the headers and the target stay in place.
        // SAFETY: plain helper call; every pointer is fetched again below.
        if unsafe { bpf_skb_change_tail(ctx.skb.skb, ANSWER_LEN, 0) } != 0 {
            return Err(DropReason::RewriteFailed);
        }
        pull_headers(ctx, ANSWER_LEN);
    }
    let eth: *mut EthHdr = header(ctx, 0).ok_or(DropReason::Malformed)?;
    let ip: *mut Ipv6Hdr = header(ctx, ETH_LEN).ok_or(DropReason::Malformed)?;
    let msg: *mut NdMsg = header(ctx, MSG_OFF).ok_or(DropReason::Malformed)?;
    let opt: *mut NdLinkOpt = header(ctx, OPT_OFF).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked; the copies are between distinct fields.
    unsafe {
        (*eth).dst = pod_mac;
        (*eth).src = host_mac;
        (*ip).version_class_flow = [0x60, 0, 0, 0];
        (*ip).payload_len = (ND_NA_LEN as u16).to_be();
        (*ip).next_header = IPPROTO_ICMPV6;
        (*ip).hop_limit = ND_HOP_LIMIT;
        core::ptr::copy_nonoverlapping(&(*ip).saddr, &mut (*ip).daddr, 1);
        core::ptr::copy_nonoverlapping(&(*msg).target, &mut (*ip).saddr, 1);
        (*msg).kind = ND_NEIGHBOR_ADVERT;
        (*msg).code = 0;
        (*msg).check = 0;
        (*msg).flags = [ND_NA_ROUTER | ND_NA_SOLICITED | ND_NA_OVERRIDE, 0, 0, 0];
        (*opt).kind = ND_OPT_TARGET_LL;
        (*opt).len = 1;
        (*opt).mac = host_mac;
    }
    // SAFETY: both ranges are bounds-checked packet data.
    let check = unsafe {
        icmpv6_checksum(
            core::ptr::addr_of_mut!((*ip).saddr) as *mut u32,
            msg as *mut u32,
        )
    };
    // SAFETY: bounds-checked.
    unsafe { (*msg).check = check };
    count_verdict(Verdict::NdReply, ctx.len());
    // Back out of the same veth: its egress is the pod's ingress.
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of an advertisement as `answer`
/// builds it: `addrs` is source and destination (32 bytes), `msg` the
/// message with its option (32 bytes, checksum zero). In memory order,
/// ready to store as it is.
///
/// # Safety
/// Both pointers must be bounds-checked packet data of that length.
#[inline(always)]
unsafe fn icmpv6_checksum(addrs: *mut u32, msg: *mut u32) -> u16 {
    let len = ND_NA_LEN as u32;
    // SAFETY: the caller's promise.
    let sum = unsafe {
        let addrs = bpf_csum_diff(core::ptr::null_mut(), 0, addrs, len, 0);
        bpf_csum_diff(core::ptr::null_mut(), 0, msg, len, addrs as u32)
    };
    // The rest of the pseudo header: length and next header, as 32-bit
    // big-endian words, summed as the helper sums memory.
    let mut sum = u64::from(sum as u32)
        + u64::from((ND_NA_LEN as u16).to_be())
        + u64::from(u16::from(IPPROTO_ICMPV6).to_be());
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn to_stack(ctx: &TcContext) -> Result<i32, DropReason> {
    count_verdict(Verdict::ToStack, ctx.len());
    Ok(TC_ACT_OK)
}
