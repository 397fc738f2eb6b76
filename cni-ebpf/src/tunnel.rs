//! The VXLAN overlay: pods on nodes the underlay cannot route to directly
//! are reached through the node's collect-metadata VXLAN device. `from_pod`
//! puts the peer's underlay address in the packet's tunnel key and
//! redirects it to the device, which encapsulates it; `from_tunnel` (tc
//! ingress of the device) takes what the device decapsulated and delivers
//! it straight into the pod; `to_tunnel` (tc egress of the device) keys what
//! the node's stack routes over the device (the node's own traffic to other
//! nodes' pods, and service flows netfilter forwarded there).
//!
//! Both families ride it: the inner packet is IPv4 or IPv6 (the device
//! carries Ethernet frames), and the outer one is the family of the peer's
//! underlay address in `PEERS` (IPv4-mapped: an IPv4 underlay; the agent
//! tunnels IPv6 pods over the IPv4 underlay, so the pods' MTU stays the
//! underlay's minus 50; an IPv6 underlay costs 20 bytes more).

use aya_ebpf::{
    bindings::{
        BPF_F_TUNINFO_IPV6, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK,
        TC_ACT_SHOT, bpf_fib_lookup as FibParams, bpf_tunnel_key,
    },
    helpers::generated::{
        bpf_fib_lookup, bpf_redirect, bpf_skb_change_type, bpf_skb_get_tunnel_key,
        bpf_skb_set_tunnel_key,
    },
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use cni_ebpf_common::{
    Direction, DropReason, ENDPOINT_F_NETFILTER_FLOWS, IpKey, PEER_F_TUNNEL, Peer, TunnelConfig,
    Verdict,
};

use crate::{
    counters::{count_drop, count_verdict},
    from_pod::deliver_to_pod,
    headers::{
        ETH_LEN, Ipv4Hdr, Ipv6Hdr, ipv4_decrease_ttl, ipv4_headers, ipv6_decrease_hop_limit,
        ipv6_headers, ipv6_link_scoped, pull_headers, v4,
    },
    l4,
    log::log_drop,
    maps::{ENDPOINTS, PEERS, TUNNEL, endpoint_v4},
    netfilter::{self, to_netfilter},
};

const HEADERS_LEN: u32 = (ETH_LEN + core::mem::size_of::<Ipv6Hdr>()) as u32;
/// `skb->pkt_type` of a frame for this host.
const PACKET_HOST: u32 = 0;
/// Outer TTL of encapsulated packets.
const TUNNEL_TTL: u8 = 64;

/// The tunnel and the peer `dst` (a map key: IPv4-mapped for IPv4) lives
/// on, when it is reached through it.
#[inline(always)]
fn tunnel_peer(dst: [u8; 16]) -> Option<(TunnelConfig, Peer)> {
    let tunnel = TUNNEL.get(0).copied().filter(|t| t.ifindex != 0)?;
    let peer = PEERS.get(Key::new(128, dst)).copied()?;
    (peer.flags & PEER_F_TUNNEL != 0).then_some((tunnel, peer))
}

/// Whether a 16-byte address is IPv4-mapped (`::ffff:a.b.c.d`).
#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    // Byte by byte: a slice compare could become a `memcmp` call.
    let zeros = addr[0] | addr[1] | addr[2] | addr[3] | addr[4] | addr[5] | addr[6] | addr[7];
    zeros | addr[8] | addr[9] == 0 && addr[10] == 0xff && addr[11] == 0xff
}

/// Puts the tunnel key towards `peer` on the packet: an IPv4 outer header
/// for an IPv4-mapped underlay address, IPv6 otherwise.
#[inline(always)]
fn set_key(ctx: &TcContext, tunnel: &TunnelConfig, peer: &Peer) -> Result<(), DropReason> {
    // SAFETY: plain data; all-zero is a valid key.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = tunnel.vni;
    key.tunnel_ttl = TUNNEL_TTL;
    let flags = if is_v4_mapped(&peer.underlay) {
        // The helper takes the remote IPv4 address in host order.
        key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(v4(&peer.underlay));
        0
    } else {
        // ...and the IPv6 one as the bytes stand on the wire.
        key.__bindgen_anon_1.remote_ipv6 = words(&peer.underlay);
        u64::from(BPF_F_TUNINFO_IPV6)
    };
    // SAFETY: `key` outlives the call and its size is passed.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &raw mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(DropReason::RedirectFailed)
    }
}

/// An address's bytes as the kernel's `__u32[4]`, memory order kept.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// [`words`] the other way.
#[inline(always)]
fn bytes(words: [u32; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    addr
}

/// Keys the packet towards `peer` and redirects it to the device's egress,
/// which encapsulates it.
#[inline(always)]
fn redirect_into(ctx: &TcContext, tunnel: &TunnelConfig, peer: &Peer) -> Result<i32, DropReason> {
    set_key(ctx, tunnel, peer)?;
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(tunnel.ifindex, 0) } as i32;
    count_verdict(Verdict::Tunneled, ctx.len());
    Ok(action)
}

/// Sends a pod's packet for `dst` into the tunnel when `dst` lives on a
/// peer reached through it (`Ok(None)` otherwise). `ip` must be fresh; the
/// TTL is decremented here.
#[inline(never)]
pub fn into_tunnel(
    ctx: &TcContext,
    ip: *mut Ipv4Hdr,
    dst: [u8; 4],
) -> Result<Option<i32>, DropReason> {
    let Some((tunnel, peer)) = tunnel_peer(IpKey::v4(dst).addr) else {
        return Ok(None);
    };
    ipv4_decrease_ttl(ip);
    redirect_into(ctx, &tunnel, &peer).map(Some)
}

/// What `from_pod`'s IPv6 path returns, in place of a verdict (as
/// `translate6`'s actions, outside the TC verdicts), for a packet to a pod
/// behind the tunnel; [`finish_v6`] sends it at the program's top level:
/// nested under the IPv6 path, the tunnel key's frame would pass the
/// verifier's 512 bytes for a call chain.
pub const INTO_TUNNEL: i32 = 0x110;

/// Whether `dst` lives on a peer reached through the tunnel.
#[inline(always)]
pub fn tunnels_v6(dst: [u8; 16]) -> bool {
    PEERS
        .get(Key::new(128, dst))
        .is_some_and(|peer| peer.flags & PEER_F_TUNNEL != 0)
}

/// Runs [`INTO_TUNNEL`], or passes any other verdict through.
#[inline(always)]
pub fn finish_v6(ctx: &TcContext, action: i32) -> Result<i32, DropReason> {
    if action != INTO_TUNNEL {
        return Ok(action);
    }
    into_tunnel_v6(ctx)
}

/// [`into_tunnel`] for IPv6 (the hop limit was checked): the hop limit is
/// decremented here. A peer gone since the question goes to the stack.
#[inline(never)]
fn into_tunnel_v6(ctx: &TcContext) -> Result<i32, DropReason> {
    let (_, ip) = ipv6_headers(ctx).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked.
    let dst = unsafe { (*ip).daddr };
    let Some((tunnel, peer)) = tunnel_peer(dst) else {
        count_verdict(Verdict::ToStack, ctx.len());
        return Ok(TC_ACT_OK);
    };
    ipv6_decrease_hop_limit(ip);
    redirect_into(ctx, &tunnel, &peer)
}

/// The remote underlay address of a decapsulated packet (or the one a
/// packet on its way into the tunnel is keyed with), as a map key
/// (IPv4-mapped for an IPv4 underlay).
#[inline(always)]
fn tunnel_source(ctx: &TcContext) -> Option<[u8; 16]> {
    // SAFETY: plain data; filled by the helper.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of::<bpf_tunnel_key>() as u32;
    // SAFETY: `key` outlives the call and its size is passed.
    if unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &raw mut key, size, 0) } == 0 {
        // SAFETY: an IPv4 tunnel fills the IPv4 member.
        let remote = unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be_bytes();
        return Some(IpKey::v4(remote).addr);
    }
    // The helper refuses an IPv6 tunnel's key without the flag (EPROTO).
    let flags = u64::from(BPF_F_TUNINFO_IPV6);
    // SAFETY: as above.
    if unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &raw mut key, size, flags) } == 0 {
        // SAFETY: an IPv6 tunnel fills the IPv6 member.
        return Some(bytes(unsafe { key.__bindgen_anon_1.remote_ipv6 }));
    }
    None
}

/// Only a peer may send from its pods' addresses (or its own): `src` (a map
/// key) must be the remote underlay address of the decapsulated packet, or
/// an address of the pod CIDR that peer holds. Not inlined: the tunnel key
/// stays out of the callers' frames.
#[inline(never)]
fn check_sender(ctx: &TcContext, src: &[u8; 16]) -> Result<(), DropReason> {
    let remote = tunnel_source(ctx).ok_or(DropReason::Malformed)?;
    let owned = same(src, &remote)
        || PEERS
            .get(Key::new(128, *src))
            .is_some_and(|p| same(&p.underlay, &remote));
    if owned {
        Ok(())
    } else {
        Err(DropReason::UnknownSource)
    }
}

/// Two addresses compared word by word (no `memcmp` call in BPF).
#[inline(always)]
fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (words(a), words(b));
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

#[classifier]
pub fn from_tunnel(ctx: TcContext) -> i32 {
    match try_from_tunnel(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count_drop(reason, Direction::ToPod, ctx.len());
            log_drop(&ctx, reason, Direction::ToPod);
            TC_ACT_SHOT
        }
    }
}

/// Each family in its own frame: together they would pass the verifier's
/// 512 bytes for a call chain.
fn try_from_tunnel(ctx: &TcContext) -> Result<i32, DropReason> {
    pull_headers(ctx, HEADERS_LEN);
    if ipv4_headers(ctx).is_some() {
        from_tunnel_v4(ctx)
    } else {
        from_tunnel_v6(ctx)
    }
}

#[inline(never)]
fn from_tunnel_v4(ctx: &TcContext) -> Result<i32, DropReason> {
    let (eth, ip) = ipv4_headers(ctx).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked.
    let (src, dst, ttl) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).ttl) };
    // Only a peer may send from its pods' addresses (or its own).
    check_sender(ctx, &IpKey::v4(src).addr)?;
    // SAFETY: a live map value, copied out at once.
    let Some(target) = endpoint_v4(dst).map(|found| unsafe { *found }) else {
        // The device forwards (for the replies of service flows, below), but
        // nothing a peer sends is routed on.
        // SAFETY: the context pointer is valid for the whole program run.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        if netfilter::is_transit(ctx, src, dst, ifindex) {
            return Err(DropReason::Transit);
        }
        return Ok(to_stack(ctx));
    };
    if ttl <= 1 {
        return Ok(to_stack(ctx));
    }
    if target.flags & ENDPOINT_F_NETFILTER_FLOWS != 0
        && let Some(transport) = l4::parse(ctx, ip)
        && netfilter::belongs(src, dst, &transport)
    {
        make_ours(ctx);
        return Ok(to_netfilter(ctx));
    }
    ipv4_decrease_ttl(ip);
    // SAFETY: bounds-checked; nothing changed the packet's length.
    unsafe {
        (*eth).dst = target.pod_mac;
        (*eth).src = target.host_mac;
    }
    deliver_to_pod(ctx, &target)
}

/// A decapsulated IPv6 packet: into the pod it is for, the same checks as
/// IPv4's, replies of service flows netfilter translated included (to the
/// stack, whose conntrack translates them back). Not inlined: the IPv4
/// path keeps its own stack frame.
#[inline(never)]
fn from_tunnel_v6(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some((eth, ip)) = ipv6_headers(ctx) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: bounds-checked.
    let (src, dst, hop_limit) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).hop_limit) };
    if ipv6_link_scoped(&dst) {
        // Never routed on: the node's own business.
        return Ok(TC_ACT_OK);
    }
    check_sender(ctx, &src)?;
    // SAFETY: copied out at once.
    let Some(target) = (unsafe { ENDPOINTS.get(&IpKey::v6(dst)) }).copied() else {
        // SAFETY: the context pointer is valid for the whole program run.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        if is_transit_v6(ctx, &src, &dst, ifindex) {
            return Err(DropReason::Transit);
        }
        return Ok(to_stack(ctx));
    };
    if hop_limit <= 1 {
        // The stack answers with ICMPv6 time exceeded.
        return Ok(to_stack(ctx));
    }
    if netfilter::claims_v6(ctx, &target) {
        make_ours(ctx);
        return Ok(to_netfilter(ctx));
    }
    ipv6_decrease_hop_limit(ip);
    // SAFETY: bounds-checked; nothing changed the packet's length.
    unsafe {
        (*eth).dst = target.pod_mac;
        (*eth).src = target.host_mac;
    }
    deliver_to_pod(ctx, &target)
}

const AF_INET6: u8 = 10;

/// Whether the stack would route `src` -> `dst`, arrived on `ifindex`, on
/// to another host (IPv6's `netfilter::is_transit`): with IPv6 forwarding
/// off the lookup answers `FWD_DISABLED`, and the stack would not forward
/// either.
#[inline(never)]
fn is_transit_v6(ctx: &TcContext, src: &[u8; 16], dst: &[u8; 16], ifindex: u32) -> bool {
    // SAFETY: plain data; all-zero is a valid lookup request.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET6;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv6_src = words(src);
    params.__bindgen_anon_4.ipv6_dst = words(dst);
    // SAFETY: `params` outlives the call and its size is passed.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &raw mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    // Local destinations answer NOT_FWDED.
    ret == BPF_FIB_LKUP_RET_SUCCESS as i64 || ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64
}

/// A decapsulated frame still names the sending pod's gateway MAC on the
/// other node, so the stack would take it for someone else's and drop it:
/// make it the node's.
#[inline(always)]
fn make_ours(ctx: &TcContext) {
    // SAFETY: plain helper call.
    unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) };
}

/// Hands a decapsulated packet to the node's stack.
#[inline(always)]
fn to_stack(ctx: &TcContext) -> i32 {
    make_ours(ctx);
    count_verdict(Verdict::ToStack, ctx.len());
    TC_ACT_OK
}

#[classifier]
pub fn to_tunnel(ctx: TcContext) -> i32 {
    match try_to_tunnel(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count_drop(reason, Direction::FromPod, ctx.len());
            TC_ACT_SHOT
        }
    }
}

/// What the stack routes over the device carries no key yet: the node's
/// own packets and flows netfilter forwarded (recorded as `to_uplink`
/// does). The datapath's own redirects are keyed already. Each family in
/// its own frame: IPv4's under IPv6's recording would pass the verifier's
/// 512 bytes for a call chain.
fn try_to_tunnel(ctx: &TcContext) -> Result<i32, DropReason> {
    if tunnel_source(ctx).is_some() {
        return Ok(TC_ACT_OK);
    }
    if ipv4_headers(ctx).is_some() {
        to_tunnel_v4(ctx)
    } else {
        to_tunnel_v6(ctx)
    }
}

#[inline(never)]
fn to_tunnel_v4(ctx: &TcContext) -> Result<i32, DropReason> {
    let (_, ip) = ipv4_headers(ctx).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked.
    let (src, dst) = unsafe { ((*ip).saddr, (*ip).daddr) };
    let (tunnel, peer) = tunnel_peer(IpKey::v4(dst).addr).ok_or(DropReason::RedirectFailed)?;
    if ENDPOINTS.get_ptr(&IpKey::v4(src)).is_some()
        && let Some(transport) = l4::parse(ctx, ip)
    {
        netfilter::remember_replies(src, dst, &transport, src);
    }
    set_key(ctx, &tunnel, &peer)?;
    Ok(TC_ACT_OK)
}

/// The node's own IPv6 packets to other nodes' pods, and pods' flows
/// netfilter forwarded there (their replies recorded). Link-scoped ones
/// (the device's own neighbour discovery and MLD) go nowhere, unkeyed: the
/// device drops them, uncounted here.
#[inline(never)]
fn to_tunnel_v6(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some((_, ip)) = ipv6_headers(ctx) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: bounds-checked.
    let dst = unsafe { (*ip).daddr };
    if ipv6_link_scoped(&dst) {
        return Ok(TC_ACT_OK);
    }
    let (tunnel, peer) = tunnel_peer(dst).ok_or(DropReason::RedirectFailed)?;
    netfilter::leaving_v6(ctx);
    set_key(ctx, &tunnel, &peer)?;
    Ok(TC_ACT_OK)
}
