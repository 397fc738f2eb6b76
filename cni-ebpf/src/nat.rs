//! Masquerade: source NAT of pod flows leaving through the uplink, and the
//! reverse translation of their replies (ICMP errors included), with the
//! connection state that decides when the agent may expire a flow. One
//! translation for both families ([`Addr`]); the maps' keys hold IPv4 as
//! IPv4-mapped IPv6, so both share the tables, the port range and the flow
//! limit.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_NOEXIST, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::generated::{
        bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_sk_lookup_udp, bpf_sk_release,
        bpf_skc_lookup_tcp,
    },
    programs::TcContext,
};
use cni_ebpf_common::{
    CtState, DropReason, FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IpKey, NAT_PORT_TRIES,
    NatEntry, NodeConfig, Verdict, wire::IPPROTO_ICMPV6,
};

use crate::{
    counters::count_verdict,
    family::Addr,
    headers::{
        IPV4_DST_OFF, Ipv4Hdr, Ipv6Hdr, L4Head, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, header, v4,
    },
    l4::{Transport, csum_diff16, rewrite_port},
    maps::{NAT_FLOWS, NAT_IN, NAT_OUT},
};

/// Translates a packet of a pod flow leaving the node: its source becomes
/// the node's masquerade address of the family and a port free for that
/// destination. `Ok(false)` when the packet cannot be masqueraded (ICMP
/// other than echo requests, or no masquerade address for the family):
/// the caller hands it to the stack.
#[inline(never)]
pub fn snat<A: Addr>(
    ctx: &TcContext,
    src: A,
    dst: A,
    t: &Transport,
    cfg: &NodeConfig,
) -> Result<bool, DropReason> {
    snat_inline(ctx, src, dst, t, cfg)
}

/// [`snat`] in the caller's frame, for a caller whose own frame on top of
/// `snat`'s would pass the verifier's limit for a call chain.
#[inline(always)]
pub fn snat_inline<A: Addr>(
    ctx: &TcContext,
    src: A,
    dst: A,
    t: &Transport,
    cfg: &NodeConfig,
) -> Result<bool, DropReason> {
    if t.is_icmp() && t.icmp_type != A::ECHO_REQUEST {
        return Ok(false);
    }
    let Some(masq) = A::masquerade_addr(cfg) else {
        return Ok(false);
    };
    let key = FlowKey {
        src: src.key(),
        dst: dst.key(),
        src_port: t.src_port,
        dst_port: if t.is_icmp() { 0 } else { t.dst_port },
        proto: t.proto,
        _pad: [0; 3],
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let nat_port = match NAT_OUT.get_ptr_mut(&key) {
        Some(entry) => {
            // SAFETY: a live map value; a torn update of two plain fields
            // only delays an expiry.
            unsafe {
                (*entry).last_seen_ns = now;
                if t.proto == IPPROTO_TCP && t.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                    (*entry).state = CtState::TcpClosing as u8;
                }
                (*entry).port
            }
        }
        None => new_flow::<A>(ctx, &key, t, cfg, masq.key(), now)?,
    };
    A::rewrite(ctx, t, A::SRC_OFF, src, masq)?;
    rewrite_port(ctx, t, t.src_port_offset(), t.src_port, nat_port)?;
    Ok(true)
}

fn initial_state(t: &Transport) -> CtState {
    match t.proto {
        IPPROTO_TCP if t.tcp_flags & TCP_SYN != 0 => CtState::TcpSynSent,
        // Mid-stream: a flow that outlived its entry (agent restart, eviction).
        IPPROTO_TCP => CtState::TcpEstablished,
        IPPROTO_UDP => CtState::Udp,
        _ => CtState::Icmp,
    }
}

/// Claims a translated port for a new flow: the pod's own when that is free
/// towards this destination, else random ones from the configured range.
/// Free means no other flow holds it (`NAT_IN` is written first with
/// `BPF_NOEXIST`, so two flows can never get the same translation) and no
/// socket of the node would take the replies ([`node_socket_answers`]):
/// the node's own connections pick their ports without the NAT table
/// knowing. Inlined: a call of its own would add its frame to the chains
/// that reach `snat` (the verifier's 512 bytes in all).
#[inline(always)]
fn new_flow<A: Addr>(
    ctx: &TcContext,
    key: &FlowKey,
    t: &Transport,
    cfg: &NodeConfig,
    masq: [u8; 16],
    now: u64,
) -> Result<u16, DropReason> {
    let flows = NAT_FLOWS.get_ptr_mut(0).ok_or(DropReason::NatTableFull)?;
    // SAFETY: a valid array slot.
    if unsafe { core::ptr::read_volatile(flows) } >= u64::from(cfg.nat_max_flows) {
        return Err(DropReason::NatTableFull);
    }
    let mut reply = FlowKey {
        src: key.dst,
        dst: masq,
        src_port: key.dst_port,
        dst_port: key.src_port,
        proto: key.proto,
        _pad: [0; 3],
    };
    let span = u32::from(cfg.nat_port_max.saturating_sub(cfg.nat_port_min)) + 1;
    let random_port = || {
        // SAFETY: plain helper call.
        let random = unsafe { bpf_get_prandom_u32() } % span;
        (cfg.nat_port_min + random as u16).to_be()
    };
    // The node's own connections take their ports from its ephemeral
    // range, which `natPortRange` stays out of (ADD warns otherwise): only
    // the pod's own port is asked about (a lookup per try of the loop
    // below took `from_pod`'s verification to 878 588 instructions of the
    // million allowed). Asked before `pod_side` exists, so that the
    // lookup's tuple can share its stack slot.
    if node_socket_answers::<A>(ctx, &mut reply) {
        count_verdict(Verdict::NatPortRetry, 0);
        reply.dst_port = random_port();
    }
    let state = initial_state(t) as u8;
    let pod_side = NatEntry {
        addr: key.src,
        port: key.src_port,
        state,
        _pad: [0; 5],
        last_seen_ns: now,
    };
    for _ in 0..NAT_PORT_TRIES {
        if NAT_IN
            .insert(&reply, &pod_side, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            let translated = NatEntry {
                addr: masq,
                port: reply.dst_port,
                state,
                _pad: [0; 5],
                last_seen_ns: now,
            };
            if NAT_OUT.insert(key, &translated, 0).is_err() {
                let _ = NAT_IN.remove(&reply);
                return Err(DropReason::NatTableFull);
            }
            atomic_add(flows, 1);
            count_verdict(Verdict::NatNewFlow, 0);
            return Ok(reply.dst_port);
        }
        count_verdict(Verdict::NatPortRetry, 0);
        reply.dst_port = random_port();
    }
    Err(DropReason::NatPortsExhausted)
}

/// Whether a socket of the node (the netns of the device the packet came
/// in on) would take a packet of `reply`, i.e. the replies of a flow
/// translated to its destination port: for TCP an established, time-wait
/// or half-open connection with that 4-tuple, or a listener on the port;
/// for UDP a connected or bound socket. Asked for new flows only (a hash
/// lookup in the kernel's socket tables per claim, never per packet). ICMP
/// echo identifiers are not checked: no helper looks up ping sockets.
#[inline(always)]
fn node_socket_answers<A: Addr>(ctx: &TcContext, reply: &mut FlowKey) -> bool {
    if reply.proto != IPPROTO_TCP && reply.proto != IPPROTO_UDP {
        return false;
    }
    if A::V6 {
        // The key is the tuple already (no second copy on `snat`'s stack).
        let size = size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>() as u32;
        socket_found(ctx, reply.proto, (&raw mut *reply).cast(), size)
    } else {
        let mut tuple = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: u32::from_ne_bytes(v4(&reply.src)),
            daddr: u32::from_ne_bytes(v4(&reply.dst)),
            sport: reply.src_port,
            dport: reply.dst_port,
        };
        let size = size_of_val(&tuple) as u32;
        socket_found(ctx, reply.proto, (&raw mut tuple).cast(), size)
    }
}

// A `FlowKey` starts with the IPv6 `bpf_sock_tuple`: remote address and
// port as the tuple's source, ours as its destination.
const _: () = {
    use core::mem::offset_of;
    type Tuple6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2;
    assert!(offset_of!(FlowKey, src) == offset_of!(Tuple6, saddr));
    assert!(offset_of!(FlowKey, dst) == offset_of!(Tuple6, daddr));
    assert!(offset_of!(FlowKey, src_port) == offset_of!(Tuple6, sport));
    assert!(offset_of!(FlowKey, dst_port) == offset_of!(Tuple6, dport));
};

/// The lookup of [`node_socket_answers`] in the current netns (the
/// device's), `size` telling the family; a socket found is released at
/// once, as the verifier demands.
#[inline(always)]
fn socket_found(ctx: &TcContext, proto: u8, tuple: *mut bpf_sock_tuple, size: u32) -> bool {
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: `tuple` points at `size` initialised bytes on the stack.
    let socket = unsafe {
        if proto == IPPROTO_TCP {
            bpf_skc_lookup_tcp(ctx.as_ptr(), tuple, size, netns, 0)
        } else {
            bpf_sk_lookup_udp(ctx.as_ptr(), tuple, size, netns, 0)
        }
    };
    if socket.is_null() {
        return false;
    }
    // SAFETY: a socket the lookup returned, released once.
    unsafe { bpf_sk_release(socket.cast()) };
    true
}

/// Translates a packet arriving for the masquerade address back to the pod
/// it belongs to; `None` when it belongs to no masqueraded flow (the node's
/// own traffic, or a connection attempt from outside, which is not let in).
#[inline(never)]
pub fn dnat(
    ctx: &TcContext,
    src: [u8; 4],
    dst: [u8; 4],
    t: &Transport,
) -> Result<Option<[u8; 4]>, DropReason> {
    if t.is_icmp() && <[u8; 4]>::is_icmp_error(t.icmp_type) {
        return dnat_icmp_error(ctx, dst, t);
    }
    dnat_inline(ctx, src, dst, t)
}

/// [`dnat`] but for ICMP errors, in the caller's frame: an IPv6 address
/// cannot be returned from a BPF function (it would travel through the
/// caller's stack, which the verifier refuses), so IPv6 callers inline it
/// and take errors to [`dnat_icmp6_error`] themselves.
#[inline(always)]
pub fn dnat_inline<A: Addr>(
    ctx: &TcContext,
    src: A,
    dst: A,
    t: &Transport,
) -> Result<Option<A>, DropReason> {
    if t.is_icmp() && A::is_icmp_error(t.icmp_type) {
        return Ok(None);
    }
    // Only echo replies answer a masqueraded ping (`snat` translates echo
    // requests only): an echo request from outside is for the node itself,
    // whatever its identifier.
    if t.is_icmp() && t.icmp_type != A::ECHO_REPLY {
        return Ok(None);
    }
    let Some((pod, pod_port)) = reply_of(src, dst, t) else {
        return Ok(None);
    };
    A::rewrite(ctx, t, A::DST_OFF, dst, pod)?;
    rewrite_port(ctx, t, t.dst_port_offset(), t.dst_port, pod_port)?;
    Ok(Some(pod))
}

/// The pod address and port of the masqueraded flow a packet from `src`
/// to `dst` (the masquerade address) answers, its connection state brought
/// up to date; `None` when it answers none. Shared by `dnat` and the XDP
/// program, which rewrite the packet each in their own way. ICMP errors are
/// the caller's (`dnat_icmp_error`).
#[inline(always)]
pub fn reply_of<A: Addr>(src: A, dst: A, t: &Transport) -> Option<(A, u16)> {
    let key = FlowKey {
        src: src.key(),
        dst: dst.key(),
        src_port: if t.is_icmp() { 0 } else { t.src_port },
        dst_port: t.dst_port,
        proto: t.proto,
        _pad: [0; 3],
    };
    let entry = NAT_IN.get_ptr_mut(&key)?;
    // SAFETY: plain helper call; a live map value: a torn update of two
    // plain fields only delays an expiry.
    unsafe {
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        if t.proto == IPPROTO_TCP {
            if t.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                (*entry).state = CtState::TcpClosing as u8;
            } else if t.tcp_flags & TCP_ACK != 0 && (*entry).state == CtState::TcpSynSent as u8 {
                (*entry).state = CtState::TcpEstablished as u8;
            }
        }
        Some((A::from_key(&(*entry).addr), (*entry).port))
    }
}

/// An ICMP error about a masqueraded flow (e.g. port unreachable, or time
/// exceeded for a traceroute) carries the translated packet inside: the
/// outer destination, the inner source address and port all go back to the
/// pod's, with the inner IP and transport checksums and the ICMP checksum
/// kept right.
fn dnat_icmp_error(
    ctx: &TcContext,
    dst: [u8; 4],
    t: &Transport,
) -> Result<Option<[u8; 4]>, DropReason> {
    let inner_off = t.offset + 8;
    let inner: *const Ipv4Hdr = header(ctx, inner_off).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked.
    let (proto, inner_src, inner_dst, ihl) = unsafe {
        (
            (*inner).protocol,
            (*inner).saddr,
            (*inner).daddr,
            usize::from((*inner).version_ihl & 0x0f) * 4,
        )
    };
    if inner_src != dst || ihl < 20 {
        return Ok(None);
    }
    let inner_l4 = inner_off + ihl;
    let head: *const L4Head = header(ctx, inner_l4).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked.
    let (w0, w1, w2) = unsafe { ((*head).word0, (*head).word1, (*head).word2) };
    let (src_port, dst_port, port_off, old_port) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (w1, w0, inner_l4, w0),
        IPPROTO_ICMP => (0, w2, inner_l4 + 4, w2),
        _ => return Ok(None),
    };
    let key = FlowKey {
        src: IpKey::v4(inner_dst).addr,
        dst: IpKey::v4(inner_src).addr,
        src_port,
        dst_port,
        proto,
        _pad: [0; 3],
    };
    // SAFETY: copied out at once.
    let Some(entry) = (unsafe { NAT_IN.get(&key) }).copied() else {
        return Ok(None);
    };
    let pod = v4(&entry.addr);
    <[u8; 4]>::rewrite(ctx, t, IPV4_DST_OFF, dst, pod)?;

    let icmp_csum = t.csum_offset;
    let inner_csum_off = inner_off + 10;
    let (from, to) = (u32::from_ne_bytes(inner_src), u32::from_ne_bytes(pod));
    let old_inner_csum: u16 = ctx
        .load(inner_csum_off)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.l3_csum_replace(inner_csum_off, u64::from(from), u64::from(to), 4)
        .map_err(|_| DropReason::RewriteFailed)?;
    let new_inner_csum: u16 = ctx
        .load(inner_csum_off)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(inner_off + 12, &pod, 0)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(port_off, &entry.port, 0)
        .map_err(|_| DropReason::RewriteFailed)?;
    let (old_l4_csum, new_l4_csum) =
        fix_inner_l4_csum(ctx, proto, inner_l4, (from, to), (old_port, entry.port))?;
    // Every inner change is payload to the ICMP checksum.
    for (old, new, size) in [
        (u64::from(from), u64::from(to), 4u64),
        (u64::from(old_inner_csum), u64::from(new_inner_csum), 2),
        (u64::from(old_port), u64::from(entry.port), 2),
        (u64::from(old_l4_csum), u64::from(new_l4_csum), 2),
    ] {
        ctx.l4_csum_replace(icmp_csum, old, new, size)
            .map_err(|_| DropReason::RewriteFailed)?;
    }
    Ok(Some(pod))
}

/// The quoted packet's own transport checksum covers its source port (and,
/// for TCP and UDP, its source address through the pseudo header): updated
/// as the receiving stack would expect it, as netfilter's NAT does. A UDP
/// datagram sent without a checksum keeps none; a quote too short to hold
/// the checksum is left alone. Returns the checksum before and after.
#[inline(always)]
fn fix_inner_l4_csum(
    ctx: &TcContext,
    proto: u8,
    inner_l4: usize,
    (old_addr, new_addr): (u32, u32),
    (old_port, new_port): (u16, u16),
) -> Result<(u16, u16), DropReason> {
    let (csum_off, pseudo) = match proto {
        IPPROTO_UDP => (inner_l4 + 6, true),
        IPPROTO_TCP => (inner_l4 + 16, true),
        _ => (inner_l4 + 2, false),
    };
    let Ok(old) = ctx.load::<u16>(csum_off) else {
        return Ok((0, 0));
    };
    if proto == IPPROTO_UDP && old == 0 {
        return Ok((0, 0));
    }
    // RFC 1624: HC' = ~(~HC + ~m + m'), word by word; the sum is the same
    // in either byte order as long as every word is read alike.
    let mut sum = u32::from(!old) + u32::from(!old_port) + u32::from(new_port);
    if pseudo {
        for (o, n) in [
            (old_addr as u16, new_addr as u16),
            ((old_addr >> 16) as u16, (new_addr >> 16) as u16),
        ] {
            sum += u32::from(!o) + u32::from(n);
        }
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let mut new = !(sum as u16);
    if proto == IPPROTO_UDP && new == 0 {
        new = 0xffff;
    }
    ctx.store(csum_off, &new, 0)
        .map_err(|_| DropReason::RewriteFailed)?;
    Ok((old, new))
}

/// The IPv6 counterpart of [`dnat_icmp_error`]: the ICMPv6 error quotes
/// the translated packet after 8 bytes; the outer destination, the quoted
/// source address and port go back to the pod's. IPv6 headers carry no
/// checksum, but every transport checksum (ICMPv6's too) covers the
/// addresses through the pseudo header: the quoted packet's own checksum
/// and the outer ICMPv6 checksum are both kept right. A quoted packet with
/// extension headers is not followed.
#[inline(never)]
pub fn dnat_icmp6_error(
    ctx: &TcContext,
    dst: &[u8; 16],
    t: &Transport,
) -> Result<bool, DropReason> {
    let dst = *dst;
    let inner_off = t.offset + 8;
    let inner: *const Ipv6Hdr = header(ctx, inner_off).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked.
    let (proto, inner_src, inner_dst) =
        unsafe { ((*inner).next_header, (*inner).saddr, (*inner).daddr) };
    if inner_src != dst {
        return Ok(false);
    }
    let inner_l4 = inner_off + size_of::<Ipv6Hdr>();
    let head: *const L4Head = header(ctx, inner_l4).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked.
    let (w0, w1, w2) = unsafe { ((*head).word0, (*head).word1, (*head).word2) };
    let (src_port, dst_port, port_off, old_port, csum_off) = match proto {
        IPPROTO_UDP => (w1, w0, inner_l4, w0, inner_l4 + 6),
        IPPROTO_TCP => (w1, w0, inner_l4, w0, inner_l4 + 16),
        IPPROTO_ICMPV6 => (0, w2, inner_l4 + 4, w2, inner_l4 + 2),
        _ => return Ok(false),
    };
    let key = FlowKey {
        src: inner_dst,
        dst: inner_src,
        src_port,
        dst_port,
        proto,
        _pad: [0; 3],
    };
    // SAFETY: copied out at once.
    let Some(entry) = (unsafe { NAT_IN.get(&key) }).copied() else {
        return Ok(false);
    };
    let pod = entry.addr;
    <[u8; 16]>::rewrite(ctx, t, <[u8; 16]>::DST_OFF, dst, pod)?;

    let addr_diff = csum_diff16(&inner_src, &pod);
    ctx.store(inner_off + 8, &pod, 0)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(port_off, &entry.port, 0)
        .map_err(|_| DropReason::RewriteFailed)?;
    // The quoted checksum: pseudo-header address and port, as the stack
    // receiving the error expects them (a zero UDP checksum, or one cut
    // off the quote, is left alone).
    let inner_csum = match ctx.load::<u16>(csum_off) {
        Ok(old) if !(proto == IPPROTO_UDP && old == 0) => {
            let mut new = csum_update(old, addr_diff, old_port, entry.port);
            if proto == IPPROTO_UDP && new == 0 {
                new = 0xffff;
            }
            ctx.store(csum_off, &new, 0)
                .map_err(|_| DropReason::RewriteFailed)?;
            Some((old, new))
        }
        _ => None,
    };
    // Every quoted change is payload to the outer ICMPv6 checksum.
    let icmp_csum = t.csum_offset;
    ctx.l4_csum_replace(icmp_csum, 0, addr_diff, 0)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.l4_csum_replace(icmp_csum, u64::from(old_port), u64::from(entry.port), 2)
        .map_err(|_| DropReason::RewriteFailed)?;
    if let Some((old, new)) = inner_csum {
        ctx.l4_csum_replace(icmp_csum, u64::from(old), u64::from(new), 2)
            .map_err(|_| DropReason::RewriteFailed)?;
    }
    Ok(true)
}

/// RFC 1624 for a checksum the kernel does not track (one inside a quoted
/// packet): `HC' = ~(~HC + diff + ~m + m')`, with `diff` a
/// `bpf_csum_diff` sum; byte order does not matter as long as every word
/// is read alike.
#[inline(always)]
fn csum_update(old: u16, diff: u64, old_port: u16, new_port: u16) -> u16 {
    let mut sum = u64::from(!old) + diff + u64::from(!old_port) + u64::from(new_port);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// `lock *(u64 *)(ptr) += value`: the BPF atomic add (core's atomics have no
/// read-modify-write on this target).
#[inline(always)]
fn atomic_add(ptr: *mut u64, value: u64) {
    // SAFETY: `ptr` is a map value slot of 8 bytes.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({ptr} + 0) += {value}",
            ptr = in(reg) ptr,
            value = in(reg) value,
        );
    }
}
