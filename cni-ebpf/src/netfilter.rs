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
//! Why not look netfilter's conntrack up from here (`bpf_skb_ct_lookup`):
//! aya has no kfunc calls yet, and reading `nf_conn` needs CO-RE; the
//! egress hooks see every flow the stack carried, after its translation,
//! which is exactly the key a reply carries.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::generated::bpf_fib_lookup,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use cni_ebpf_common::{
    ENDPOINT_F_NETFILTER_FLOWS, FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IpKey,
    NODE_F_SERVICES, NodeConfig, Verdict,
};

use crate::{
    counters::count_verdict,
    headers::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST},
    l4::Transport,
    maps::{ENDPOINTS, NETFILTER_FLOWS, NODE_ADDRS, SERVICES},
};

/// Whether the node hands service traffic to netfilter.
#[inline(always)]
pub fn enabled(cfg: &NodeConfig) -> bool {
    cfg.flags & NODE_F_SERVICES != 0
}

/// Whether `addr` is a service address netfilter translates.
#[inline(always)]
pub fn is_service(addr: [u8; 4]) -> bool {
    SERVICES.get(Key::new(128, IpKey::v4(addr).addr)).is_some()
}

/// The key of the packet `src` -> `dst` as it travels.
#[inline(always)]
fn flow_key(src: [u8; 4], dst: [u8; 4], t: &Transport) -> FlowKey {
    FlowKey {
        src: IpKey::v4(src).addr,
        dst: IpKey::v4(dst).addr,
        src_port: t.src_port,
        dst_port: t.dst_port,
        proto: t.proto,
        _pad: [0; 3],
    }
}

/// The key of the replies to the packet `src` -> `dst`.
#[inline(always)]
fn reply_key(src: [u8; 4], dst: [u8; 4], t: &Transport) -> FlowKey {
    FlowKey {
        src: IpKey::v4(dst).addr,
        dst: IpKey::v4(src).addr,
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
pub fn belongs(src: [u8; 4], dst: [u8; 4], t: &Transport) -> bool {
    if t.proto == IPPROTO_ICMP {
        return t.icmp_type != ICMP_ECHO_REQUEST && t.icmp_type != ICMP_ECHO_REPLY;
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
pub fn remember_replies(src: [u8; 4], dst: [u8; 4], t: &Transport, pod: [u8; 4]) {
    if t.proto != IPPROTO_TCP && t.proto != IPPROTO_UDP {
        return;
    }
    let key = reply_key(src, dst, t);
    if NETFILTER_FLOWS.get_ptr(&key).is_none() {
        let _ = NETFILTER_FLOWS.insert(&key, &0, 0);
    }
    if let Some(endpoint) = ENDPOINTS.get_ptr_mut(&IpKey::v4(pod)) {
        // SAFETY: a live map value; the plugin only replaces entries whole
        // at ADD, and the flag is only ever set.
        unsafe {
            if (*endpoint).flags & ENDPOINT_F_NETFILTER_FLOWS == 0 {
                (*endpoint).flags |= ENDPOINT_F_NETFILTER_FLOWS;
            }
        }
    }
}

/// Whether replies to `peer` need no record: the node's own addresses and
/// service addresses go to the stack whatever the flow.
#[inline(always)]
pub fn stack_bound_anyway(peer: [u8; 4]) -> bool {
    NODE_ADDRS.get_ptr(&IpKey::v4(peer)).is_some() || is_service(peer)
}

/// Hands the packet to the stack for netfilter, counted.
#[inline(always)]
pub fn to_netfilter(ctx: &TcContext) -> i32 {
    count_verdict(Verdict::ToNetfilter, ctx.len());
    aya_ebpf::bindings::TC_ACT_OK
}

const AF_INET: u8 = 2;

/// Whether the stack would route `src` -> `dst`, arrived on `ifindex`, on
/// to somewhere else (a unicast route that is not the node's own): what a
/// guarded uplink refuses. Service addresses, multicast and broadcast are
/// never transit.
#[inline(never)]
pub fn is_transit(ctx: &TcContext, src: [u8; 4], dst: [u8; 4], ifindex: u32) -> bool {
    if dst[0] >= 224 || is_service(dst) {
        return false;
    }
    // SAFETY: plain data; all-zero is a valid lookup request.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
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
