//! The VXLAN overlay: pods on nodes the underlay cannot route to directly
//! are reached through the node's collect-metadata VXLAN device. `from_pod`
//! puts the peer's underlay address in the packet's tunnel key and
//! redirects it to the device, which encapsulates it; `from_tunnel` (tc
//! ingress of the device) takes what the device decapsulated and delivers
//! it straight into the pod; `to_tunnel` (tc egress of the device) keys what
//! the node's stack routes over the device (the node's own traffic to other
//! nodes' pods, and service flows netfilter forwarded there).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_tunnel_key},
    helpers::generated::{
        bpf_redirect, bpf_skb_change_type, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key,
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
    headers::{ETH_LEN, Ipv4Hdr, Ipv6Hdr, ipv4_decrease_ttl, ipv4_headers, pull_headers, v4},
    l4,
    log::log_drop,
    maps::{ENDPOINTS, PEERS, TUNNEL},
    netfilter::{self, to_netfilter},
};

const HEADERS_LEN: u32 = (ETH_LEN + core::mem::size_of::<Ipv6Hdr>()) as u32;
/// `skb->pkt_type` of a frame for this host.
const PACKET_HOST: u32 = 0;
/// Outer TTL of encapsulated packets.
const TUNNEL_TTL: u8 = 64;

/// The tunnel and the peer `dst` lives on, when it is reached through it.
#[inline(always)]
fn tunnel_peer(dst: [u8; 4]) -> Option<(TunnelConfig, Peer)> {
    let tunnel = TUNNEL.get(0).copied().filter(|t| t.ifindex != 0)?;
    let peer = PEERS.get(Key::new(128, IpKey::v4(dst).addr)).copied()?;
    (peer.flags & PEER_F_TUNNEL != 0).then_some((tunnel, peer))
}

/// Puts the tunnel key towards `peer` on the packet.
#[inline(always)]
fn set_key(ctx: &TcContext, tunnel: &TunnelConfig, peer: &Peer) -> Result<(), DropReason> {
    // SAFETY: plain data; all-zero is a valid key.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = tunnel.vni;
    // The helper takes the remote address in host order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(v4(&peer.underlay));
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: `key` outlives the call and its size is passed.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &raw mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(DropReason::RedirectFailed)
    }
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
    let Some((tunnel, peer)) = tunnel_peer(dst) else {
        return Ok(None);
    };
    ipv4_decrease_ttl(ip);
    set_key(ctx, &tunnel, &peer)?;
    // SAFETY: plain helper call; to the device's egress, which encapsulates.
    let action = unsafe { bpf_redirect(tunnel.ifindex, 0) } as i32;
    count_verdict(Verdict::Tunneled, ctx.len());
    Ok(Some(action))
}

/// The remote underlay address of a decapsulated packet (or the one a
/// packet on its way into the tunnel is keyed with).
#[inline(always)]
fn tunnel_source(ctx: &TcContext) -> Option<[u8; 4]> {
    // SAFETY: plain data; filled by the helper.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: `key` outlives the call and its size is passed.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.skb.skb,
            &raw mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    // SAFETY: an IPv4 tunnel fills the IPv4 member.
    (rc == 0).then(|| unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be_bytes())
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

fn try_from_tunnel(ctx: &TcContext) -> Result<i32, DropReason> {
    pull_headers(ctx, HEADERS_LEN);
    let Some((eth, ip)) = ipv4_headers(ctx) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: bounds-checked.
    let (src, dst, ttl) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).ttl) };
    // Only a peer may send from its pods' addresses (or its own).
    let remote = tunnel_source(ctx).ok_or(DropReason::Malformed)?;
    let owner = PEERS.get(Key::new(128, IpKey::v4(src).addr));
    if src != remote && owner.is_none_or(|p| v4(&p.underlay) != remote) {
        return Err(DropReason::UnknownSource);
    }
    // SAFETY: copied out at once.
    let Some(target) = (unsafe { ENDPOINTS.get(&IpKey::v4(dst)) }).copied() else {
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
/// does). The datapath's own redirects are keyed already.
fn try_to_tunnel(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some((_, ip)) = ipv4_headers(ctx) else {
        return Ok(TC_ACT_OK);
    };
    if tunnel_source(ctx).is_some() {
        return Ok(TC_ACT_OK);
    }
    // SAFETY: bounds-checked.
    let (src, dst) = unsafe { ((*ip).saddr, (*ip).daddr) };
    let (tunnel, peer) = tunnel_peer(dst).ok_or(DropReason::RedirectFailed)?;
    if ENDPOINTS.get_ptr(&IpKey::v4(src)).is_some()
        && let Some(transport) = l4::parse(ctx, ip)
    {
        netfilter::remember_replies(src, dst, &transport, src);
    }
    set_key(ctx, &tunnel, &peer)?;
    Ok(TC_ACT_OK)
}
