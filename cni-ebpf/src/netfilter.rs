//! Living beside netfilter (kube-proxy). The datapath's redirects skip the
//! stack, so a packet it moves never meets netfilter's NAT, and a reply of a
//! flow netfilter translated is never translated back unless it goes through
//! the stack too. The rule: a flow goes entirely through the stack or
//! entirely through the datapath.
//!
//! - Forward: pod traffic to a service address (`SERVICES`) or to the node
//!   goes to the stack, where kube-proxy's rules translate it.
//! - Replies: the datapath learns which flows the stack carried where the
//!   stack hands their packets on: `to_pod` (tc egress of a host veth: what
//!   reaches a pod through the stack, since the datapath's own deliveries
//!   skip that hook) and `to_uplink` (tc egress of the uplink: pod packets
//!   the stack forwarded, told apart from the datapath's own by a mark). It
//!   records the reply's key in `NETFILTER_FLOWS` and flags the pod; packets
//!   of flagged pods, and deliveries to them from the uplink, that match a
//!   key go to the stack, whose conntrack translates them back.
//!
//! Both families alike: the functions are generic over the address
//! ([`Addr`]), and the IPv6 hooks ([`claims_v6`], [`remember_delivery_v6`],
//! [`leaving_v6`]) parse their own headers so that the programs' IPv6
//! paths only call them.
//!
//! Why not look netfilter's conntrack up from here (`bpf_skb_ct_lookup`):
//! aya has no kfunc calls yet, and reading `nf_conn` needs CO-RE; the
//! egress hooks see every flow the stack carried, after its translation,
//! which is exactly the key a reply carries.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::generated::{bpf_fib_lookup, bpf_skb_load_bytes},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use cni_ebpf_common::{
    ENDPOINT_F_NETFILTER_FLOWS, Endpoint, FlowKey, IPPROTO_TCP, IPPROTO_UDP, IpKey,
    NODE_F_SERVICES, NodeConfig, Verdict,
    wire::{ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, IPPROTO_ICMPV6, IPV6_DST_OFF, IPV6_SRC_OFF},
};

use crate::{
    counters::count_verdict,
    family::Addr,
    headers::{ETH_LEN, ETH_P_IPV6, Ipv6Hdr, ipv6_link_scoped, ipv6_v4_mapped},
    l4::Transport,
    maps::{ENDPOINTS, NETFILTER_FLOWS, NODE_ADDRS, NODE_CONFIG, SERVICES, endpoint_slot_v4},
};

/// Whether the node hands service traffic to netfilter.
#[inline(always)]
pub fn enabled(cfg: &NodeConfig) -> bool {
    cfg.flags & NODE_F_SERVICES != 0
}

/// Whether `addr` is a service address netfilter translates.
#[inline(always)]
pub fn is_service<A: Addr>(addr: A) -> bool {
    SERVICES.get(Key::new(128, addr.key())).is_some()
}

/// The key of the packet `src` -> `dst` as it travels.
#[inline(always)]
fn flow_key<A: Addr>(src: A, dst: A, t: &Transport) -> FlowKey {
    FlowKey {
        src: src.key(),
        dst: dst.key(),
        src_port: t.src_port,
        dst_port: t.dst_port,
        proto: t.proto,
        _pad: [0; 3],
    }
}

/// The key of the replies to the packet `src` -> `dst`.
#[inline(always)]
fn reply_key<A: Addr>(src: A, dst: A, t: &Transport) -> FlowKey {
    FlowKey {
        src: dst.key(),
        dst: src.key(),
        src_port: t.dst_port,
        dst_port: t.src_port,
        proto: t.proto,
        _pad: [0; 3],
    }
}

// Not inlined, here and below: the callers' stack frames are near the
// verifier's 512-byte limit for a call chain.

/// Whether the packet `src` -> `dst`, sent by or delivered to a flagged pod,
/// belongs to netfilter: a packet of a flow it translated; a packet whose
/// replies such a flow already claims (the same addresses and ports: a
/// client that reuses its port to reach a service's backend directly, or
/// the key a closed connection left), which netfilter sets apart as on any
/// node by giving the new flow another source port; or an ICMP error
/// (conntrack translates those about its flows, and forwards the rest).
#[inline(never)]
pub fn belongs<A: Addr>(src: A, dst: A, t: &Transport) -> bool {
    if t.is_icmp() {
        return t.icmp_type != A::ECHO_REQUEST && t.icmp_type != A::ECHO_REPLY;
    }
    NETFILTER_FLOWS.get_ptr(&flow_key(src, dst, t)).is_some()
        || NETFILTER_FLOWS.get_ptr(&reply_key(src, dst, t)).is_some()
}

/// The stack carried the packet `src` -> `dst` (to a pod, or out of the
/// uplink from a pod): its replies must come back through the stack.
/// Records their key and flags `pod`, the endpoint whose packets or
/// deliveries will be checked. TCP and UDP only (ICMP errors about them are
/// not followed).
#[inline(never)]
pub fn remember_replies<A: Addr>(src: A, dst: A, t: &Transport, pod: A) {
    if t.proto != IPPROTO_TCP && t.proto != IPPROTO_UDP {
        return;
    }
    record(
        &reply_key(src, dst, t),
        &IpKey { addr: pod.key() },
        pod.as_v4(),
    );
}

/// Records the reply key `key` and flags `pod` (whose IPv4 address is
/// `v4`, if it is one).
#[inline(never)]
fn record(key: &FlowKey, pod: &IpKey, v4: Option<[u8; 4]>) {
    if NETFILTER_FLOWS.get_ptr(key).is_none() {
        let _ = NETFILTER_FLOWS.insert(key, &0, 0);
    }
    if let Some(endpoint) = ENDPOINTS.get_ptr_mut(pod) {
        flag_netfilter_flows(endpoint);
    }
    // The copy the IPv4 paths read.
    if let Some(v4) = v4
        && let Some(slot) = endpoint_slot_v4(v4)
    {
        // SAFETY: a live map value.
        flag_netfilter_flows(unsafe { &raw mut (*slot).endpoint });
    }
}

#[inline(always)]
fn flag_netfilter_flows(endpoint: *mut Endpoint) {
    // SAFETY: a live map value; the plugin only replaces entries whole at
    // ADD, and the flag is only ever set.
    unsafe {
        if (*endpoint).flags & ENDPOINT_F_NETFILTER_FLOWS == 0 {
            (*endpoint).flags |= ENDPOINT_F_NETFILTER_FLOWS;
        }
    }
}

/// Whether replies to `peer` need no record: the node's own addresses and
/// service addresses go to the stack whatever the flow.
#[inline(always)]
pub fn stack_bound_anyway<A: Addr>(peer: A) -> bool {
    NODE_ADDRS.get_ptr(&IpKey { addr: peer.key() }).is_some() || is_service(peer)
}

/// Hands the packet to the stack for netfilter, counted.
#[inline(always)]
pub fn to_netfilter(ctx: &TcContext) -> i32 {
    count_verdict(Verdict::ToNetfilter, ctx.len());
    aya_ebpf::bindings::TC_ACT_OK
}

/// IPv6: whether the packet, sent by or delivered to `endpoint`, belongs
/// to netfilter ([`belongs`]); only flagged endpoints pay for the question.
#[inline(always)]
pub fn claims_v6(ctx: &TcContext, endpoint: &Endpoint) -> bool {
    endpoint.flags & ENDPOINT_F_NETFILTER_FLOWS != 0 && belongs_v6(ctx)
}

/// Where the EtherType and IPv6's next header sit in a frame.
const ETH_TYPE_OFF: usize = 12;
const IPV6_NEXT_HEADER_OFF: usize = ETH_LEN + 6;

/// [`belongs`] for the IPv6 packet in `ctx`, with the smallest stack frame
/// it takes: it runs under `from_pod`'s IPv6 path, whose frames leave it
/// 64 of the verifier's 512 bytes. The packet's addresses and ports lie in
/// the order of a `FlowKey`'s first fields and are loaded into one; the
/// reply's key is the same one swapped.
#[inline(never)]
fn belongs_v6(ctx: &TcContext) -> bool {
    let Ok(proto) = ctx.load::<u8>(IPV6_NEXT_HEADER_OFF) else {
        return false;
    };
    if proto == IPPROTO_ICMPV6 {
        let Ok(kind) = ctx.load::<u8>(ETH_LEN + size_of::<Ipv6Hdr>()) else {
            return false;
        };
        return kind != ICMPV6_ECHO_REQUEST && kind != ICMPV6_ECHO_REPLY;
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return false;
    }
    let mut key = FlowKey {
        src: [0; 16],
        dst: [0; 16],
        src_port: 0,
        dst_port: 0,
        proto,
        _pad: [0; 3],
    };
    if !load_into(
        ctx,
        IPV6_SRC_OFF,
        (&raw mut key).cast(),
        FLOW_KEY_FROM_PACKET,
    ) {
        return false;
    }
    if NETFILTER_FLOWS.get_ptr(&key).is_some() {
        return true;
    }
    // The reply's key, loaded crosswise: a swap would take a temporary.
    let (src_port, dst_port) = (key.src_port, key.dst_port);
    if !load_into(ctx, IPV6_SRC_OFF, key.dst.as_mut_ptr(), 16)
        || !load_into(ctx, IPV6_DST_OFF, key.src.as_mut_ptr(), 16)
    {
        return false;
    }
    key.src_port = dst_port;
    key.dst_port = src_port;
    NETFILTER_FLOWS.get_ptr(&key).is_some()
}

/// Loads `len` bytes of the packet at `offset` into `dst`.
#[inline(always)]
fn load_into(ctx: &TcContext, offset: usize, dst: *mut u8, len: u32) -> bool {
    // SAFETY: every caller passes a buffer of at least `len` bytes that
    // outlives the call.
    unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), offset as u32, dst.cast(), len) == 0 }
}

/// `FlowKey`'s `src`, `dst`, `src_port` and `dst_port`, as an IPv6 packet
/// carries them from its source address on.
const FLOW_KEY_FROM_PACKET: u32 = 36;
const _: () = assert!(core::mem::offset_of!(FlowKey, src_port) == 32);
const _: () = assert!(core::mem::offset_of!(FlowKey, dst_port) == 34);

/// The key of the IPv6 packet in `ctx` (TCP or UDP, `proto`), loaded with
/// `bpf_skb_load_bytes` straight into it: the packet's addresses and ports
/// lie in the order of a `FlowKey`'s first fields. The leaves that call it
/// keep small stack frames, and use `ctx` for a helper, so LLVM passes them
/// `ctx` itself (not the packet's bounds, as 32-bit values the verifier
/// refuses to compare with).
#[inline(always)]
fn packet_key_v6(ctx: &TcContext, proto: u8) -> Option<FlowKey> {
    let mut key = FlowKey {
        src: [0; 16],
        dst: [0; 16],
        src_port: 0,
        dst_port: 0,
        proto,
        _pad: [0; 3],
    };
    // SAFETY: `key` outlives the call; the helper writes 36 bytes into it
    // (source, destination, the two ports), within its size.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            IPV6_SRC_OFF as u32,
            (&raw mut key).cast(),
            FLOW_KEY_FROM_PACKET,
        )
    };
    (loaded == 0).then_some(key)
}

/// IPv6 in `to_pod`: the stack delivers a packet to a pod; on a node with
/// services, its replies are recorded (as IPv4's in `to_pod` itself).
#[inline(never)]
pub fn remember_delivery_v6(ctx: &TcContext) {
    if !NODE_CONFIG.get(0).is_some_and(enabled) {
        return;
    }
    let ether_type: u16 = ctx.load(ETH_TYPE_OFF).unwrap_or(0);
    if u16::from_be(ether_type) != ETH_P_IPV6 {
        return;
    }
    let Ok(proto) = ctx.load::<u8>(IPV6_NEXT_HEADER_OFF) else {
        return;
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    let Some(mut key) = packet_key_v6(ctx, proto) else {
        return;
    };
    if off_link(&key.src, &key.dst)
        || ENDPOINTS.get_ptr(&IpKey { addr: key.dst }).is_none()
        || stack_bound_anyway(key.src)
    {
        return;
    }
    // The reply's key: from the pod.
    core::mem::swap(&mut key.src, &mut key.dst);
    core::mem::swap(&mut key.src_port, &mut key.dst_port);
    record(&key, &IpKey { addr: key.src }, None);
}

/// IPv6 in `to_uplink` (services on) and `to_tunnel`: a pod's packet the
/// stack forwarded out of the node (the datapath's own carry its mark, or
/// their tunnel key, and do not get here). Its replies are recorded;
/// `true` when it was such a packet (TCP or UDP from a pod).
#[inline(never)]
pub fn leaving_v6(ctx: &TcContext) -> bool {
    let ether_type: u16 = ctx.load(ETH_TYPE_OFF).unwrap_or(0);
    if u16::from_be(ether_type) != ETH_P_IPV6 {
        return false;
    }
    let Ok(proto) = ctx.load::<u8>(IPV6_NEXT_HEADER_OFF) else {
        return false;
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return false;
    }
    let Some(mut key) = packet_key_v6(ctx, proto) else {
        return false;
    };
    // Link-scoped addresses (a pod's link-local one is an endpoint key too)
    // are never forwarded: nothing here is a pod's flow.
    if off_link(&key.src, &key.dst) || ENDPOINTS.get_ptr(&IpKey { addr: key.src }).is_none() {
        return false;
    }
    // The reply's key: to the pod.
    core::mem::swap(&mut key.src, &mut key.dst);
    core::mem::swap(&mut key.src_port, &mut key.dst_port);
    record(&key, &IpKey { addr: key.dst }, None);
    true
}

/// An IPv6 packet the stack never forwards: either address link-scoped,
/// or IPv4-mapped (never on the wire, and a key of an IPv4 address).
#[inline(always)]
fn off_link(src: &[u8; 16], dst: &[u8; 16]) -> bool {
    ipv6_link_scoped(src) || ipv6_link_scoped(dst) || ipv6_v4_mapped(src) || ipv6_v4_mapped(dst)
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const LOOPBACK_IFINDEX: u32 = 1;

/// `bpf_fib_lookup`'s 32-bit words of an IPv6 address, in network order.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Whether the stack would route `src` -> `dst`, arrived on `ifindex`, on
/// to somewhere else (a unicast route that is not the node's own): what a
/// guarded uplink refuses. Service addresses, multicast and broadcast are
/// never transit.
#[inline(never)]
pub fn is_transit<A: Addr>(ctx: &TcContext, src: A, dst: A, ifindex: u32) -> bool {
    let (src, dst_key) = (src.key(), dst.key());
    let multicast = if A::V6 {
        dst_key[0] == 0xff
    } else {
        dst_key[12] >= 224
    };
    if multicast || is_service(dst) {
        return false;
    }
    // SAFETY: plain data; all-zero is a valid lookup request.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.ifindex = ifindex;
    if A::V6 {
        // The IPv6 lookup refuses (`FWD_DISABLED`) on a device whose
        // `forwarding` is off, and the uplink forwards through
        // `force_forwarding` alone; asked from the loopback, whose
        // `forwarding` the plugin turns on, it tells local from routed.
        params.ifindex = LOOPBACK_IFINDEX;
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(&src);
        params.__bindgen_anon_4.ipv6_dst = words(&dst_key);
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = words(&src)[3];
        params.__bindgen_anon_4.ipv4_dst = words(&dst_key)[3];
    }
    // SAFETY: `params` outlives the call and its size is passed.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &raw mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    // Local and broadcast destinations answer NOT_FWDED.
    ret == BPF_FIB_LKUP_RET_SUCCESS as i64 || ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64
}
