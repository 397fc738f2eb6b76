//! Published host ports: a packet to a node address at a published port is
//! rewritten to the pod behind it (one hash lookup, whatever the number of
//! mappings), and the connection is remembered so that the pod's replies get
//! the published address and port back. A pod reaching its own host port
//! (hairpin) also gets its source rewritten to the node address: a packet
//! from its own address would be dropped by its stack.
//!
//! The forward direction always consults `HOST_PORTS`, never the connection
//! table, so a remapped UDP port reaches the new pod at once (no stale
//! conntrack as with iptables DNAT).

use aya_ebpf::{helpers::generated::bpf_ktime_get_ns, programs::TcContext};
use cni_ebpf_common::{
    CtState, DropReason, FlowKey, HostPortFlow, HostPortKey, HostPortTarget, IPPROTO_TCP,
    IPPROTO_UDP,
};

use crate::{
    family::Addr,
    headers::{TCP_FIN, TCP_RST, TCP_SYN},
    l4::{Transport, rewrite_port},
    maps::{HOST_PORT_CT, HOST_PORTS},
};

fn state_of(t: &Transport) -> u8 {
    match t.proto {
        IPPROTO_TCP if t.tcp_flags & (TCP_FIN | TCP_RST) != 0 => CtState::TcpClosing as u8,
        IPPROTO_TCP if t.tcp_flags & TCP_SYN != 0 => CtState::TcpSynSent as u8,
        IPPROTO_TCP => CtState::TcpEstablished as u8,
        _ => CtState::Udp as u8,
    }
}

/// Rewrites a packet for `dst:t.dst_port` to the pod publishing it; the
/// pod's address when it did.
#[inline(never)]
pub fn to_pod<A: Addr>(
    ctx: &TcContext,
    src: A,
    dst: A,
    t: &Transport,
) -> Result<Option<A>, DropReason> {
    to_pod_inline(ctx, src, dst, t)
}

/// [`to_pod`] in the caller's frame (IPv6 callers: an IPv6 address cannot
/// be returned from a BPF function, and a frame of their own on top of
/// `to_pod`'s would pass the verifier's limit).
#[inline(always)]
pub fn to_pod_inline<A: Addr>(
    ctx: &TcContext,
    src: A,
    dst: A,
    t: &Transport,
) -> Result<Option<A>, DropReason> {
    let Some(target) = published(src, dst, t) else {
        return Ok(None);
    };
    let pod = A::from_key(&target.pod_addr);
    let hairpin = src == pod;
    A::rewrite(ctx, t, A::DST_OFF, dst, pod)?;
    rewrite_port(ctx, t, t.dst_port_offset(), t.dst_port, target.pod_port)?;
    if hairpin {
        A::rewrite(ctx, t, A::SRC_OFF, src, dst)?;
    }
    Ok(Some(pod))
}

/// The pod port published at `dst:t.dst_port`, with the connection
/// remembered for the pod's replies; `None` when nothing is published
/// there. Shared by `to_pod` and the XDP program, which rewrite the packet
/// each in their own way (a hairpin's source too: `src` is then the pod's).
#[inline(always)]
pub fn published<A: Addr>(src: A, dst: A, t: &Transport) -> Option<&'static HostPortTarget> {
    if t.proto != IPPROTO_TCP && t.proto != IPPROTO_UDP {
        return None;
    }
    let mut key = HostPortKey {
        host_addr: dst.key(),
        port: t.dst_port,
        proto: t.proto,
        wildcard: 0,
    };
    // Referenced, not copied (the frame counts against the verifier's limit
    // for the whole call chain): entries are only replaced whole, and an
    // element stays readable for the program's run.
    // SAFETY: see above.
    let target: &HostPortTarget = match unsafe { HOST_PORTS.get(&key) } {
        Some(target) => target,
        None => {
            key = HostPortKey::any(A::V6, t.dst_port, t.proto);
            // SAFETY: as above.
            unsafe { HOST_PORTS.get(&key) }?
        }
    };
    let pod = A::from_key(&target.pod_addr);
    let hairpin = src == pod;
    let reply = FlowKey {
        src: target.pod_addr,
        dst: if hairpin { dst } else { src }.key(),
        src_port: target.pod_port,
        dst_port: t.src_port,
        proto: t.proto,
        _pad: [0; 3],
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    match HOST_PORT_CT.get_ptr_mut(&reply) {
        // The same connection: refresh it.
        // SAFETY: a live map value; plain stores.
        Some(known)
            if unsafe { (*known).host_addr == dst.key() && (*known).host_port == t.dst_port } =>
        unsafe {
            (*known).last_seen_ns = now;
            if t.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                (*known).state = CtState::TcpClosing as u8;
            }
        },
        // New, or the same client tuple now through another published port
        // of the same pod port: this mapping is the one replies must show.
        _ => {
            let flow = HostPortFlow {
                host_addr: dst.key(),
                client_addr: src.key(),
                host_port: t.dst_port,
                client_port: t.src_port,
                state: state_of(t),
                _pad: [0; 3],
                last_seen_ns: now,
            };
            let _ = HOST_PORT_CT.insert(&reply, &flow, 0);
        }
    }
    Some(target)
}

/// Whether `src` -> `dst` is a pod's reply on a connection through a host
/// port (what [`from_pod`] would rewrite).
#[inline(always)]
pub fn is_reply<A: Addr>(src: A, dst: A, t: &Transport) -> bool {
    (t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP)
        && HOST_PORT_CT
            .get_ptr(&FlowKey {
                src: src.key(),
                dst: dst.key(),
                src_port: t.src_port,
                dst_port: t.dst_port,
                proto: t.proto,
                _pad: [0; 3],
            })
            .is_some()
}

/// Rewrites a pod's reply on a connection that came in through a host port
/// back to the published address and port; the client's address when it
/// did (differs from `dst` only for hairpin).
#[inline(never)]
pub fn from_pod<A: Addr>(
    ctx: &TcContext,
    src: A,
    dst: A,
    t: &Transport,
) -> Result<Option<A>, DropReason> {
    from_pod_inline(ctx, src, dst, t)
}

/// [`from_pod`] in the caller's frame (IPv6 callers: an IPv6 address
/// cannot be returned from a BPF function).
#[inline(always)]
pub fn from_pod_inline<A: Addr>(
    ctx: &TcContext,
    src: A,
    dst: A,
    t: &Transport,
) -> Result<Option<A>, DropReason> {
    if t.proto != IPPROTO_TCP && t.proto != IPPROTO_UDP {
        return Ok(None);
    }
    let key = FlowKey {
        src: src.key(),
        dst: dst.key(),
        src_port: t.src_port,
        dst_port: t.dst_port,
        proto: t.proto,
        _pad: [0; 3],
    };
    let Some(flow) = HOST_PORT_CT.get_ptr_mut(&key) else {
        return Ok(None);
    };
    // SAFETY: a live map value; copied out and refreshed.
    let flow = unsafe {
        (*flow).last_seen_ns = bpf_ktime_get_ns();
        if t.proto == IPPROTO_TCP {
            if t.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                (*flow).state = CtState::TcpClosing as u8;
            } else if (*flow).state == CtState::TcpSynSent as u8 {
                (*flow).state = CtState::TcpEstablished as u8;
            }
        }
        *flow
    };
    let host = A::from_key(&flow.host_addr);
    let client = A::from_key(&flow.client_addr);
    A::rewrite(ctx, t, A::SRC_OFF, src, host)?;
    rewrite_port(ctx, t, t.src_port_offset(), t.src_port, flow.host_port)?;
    if client != dst {
        A::rewrite(ctx, t, A::DST_OFF, dst, client)?;
    }
    Ok(Some(client))
}
