//! The transport header of an IPv4 or IPv6 packet as NAT sees it, and the
//! checksum-correct rewrites of addresses and ports.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_csum_diff,
    programs::TcContext,
};
use cni_ebpf_common::{DropReason, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, wire::IPPROTO_ICMPV6};

use crate::headers::{
    ETH_LEN, ICMP_CSUM_OFF, IPV4_CSUM_OFF, Ipv4Hdr, Ipv6Hdr, L4Head, Packet, TCP_CSUM_OFF,
    TcpFlagsWord, UDP_CSUM_OFF, header, ipv4_l4_offset,
};

/// `bpf_l4_csum_replace` flag (Linux 6.16+): the packet is IPv6, whose
/// header has no checksum to cancel a pseudo-header change out, so a
/// `CHECKSUM_COMPLETE` sum must not be adjusted for it.
const BPF_F_IPV6: u64 = 1 << 7;

/// Offsets are from the start of the packet; ports in network order.
#[derive(Clone, Copy)]
pub struct Transport {
    pub proto: u8,
    pub offset: usize,
    pub src_port: u16,
    pub dst_port: u16,
    pub csum_offset: usize,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// UDP sent without a checksum: it must stay zero.
    pub no_csum: bool,
}

impl Transport {
    /// ICMP or ICMPv6: echo identifiers stand in for ports.
    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        self.proto == IPPROTO_ICMP || self.proto == IPPROTO_ICMPV6
    }

    /// Offset of the port NAT rewrites on the source side (or the echo id).
    pub fn src_port_offset(&self) -> usize {
        if self.is_icmp() {
            self.offset + 4
        } else {
            self.offset
        }
    }

    pub fn dst_port_offset(&self) -> usize {
        if self.is_icmp() {
            self.offset + 4
        } else {
            self.offset + 2
        }
    }
}

/// Parses TCP, UDP or ICMP behind `ip` (in a socket buffer or an XDP
/// frame); `None` for other protocols, for fragments, which carry no
/// complete transport header, and for a header length under the IPv4
/// minimum, which points into the IP header itself.
#[inline(always)]
pub fn parse<P: Packet>(ctx: &P, ip: *const Ipv4Hdr) -> Option<Transport> {
    // SAFETY: the caller bounds-checked `ip`.
    let (proto, frag) = unsafe { ((*ip).protocol, u16::from_be((*ip).frag_off)) };
    if frag & 0x3fff != 0 {
        return None;
    }
    let offset = ipv4_l4_offset(ip);
    if offset < ETH_LEN + size_of::<Ipv4Hdr>() {
        return None;
    }
    transport(ctx, proto, offset, IPPROTO_ICMP)
}

/// `NEXTHDR_HOP`: a Hop-by-Hop options header follows.
const IPPROTO_HOPOPTS: u8 = 0;
/// `IPV6_TLV_JUMBO`: the Jumbo Payload option (RFC 2675).
const IPV6_TLV_JUMBO: u8 = 0xc2;

/// A Hop-by-Hop options header holding only a Jumbo Payload option: what
/// the kernel puts in front of TCP in an IPv6 BIG TCP packet over 64 KiB
/// (payload length 0; `ipv6_has_hopopt_jumbo`).
#[repr(C)]
struct JumboHopOpts {
    next_header: u8,
    /// In 8-byte units past the first 8: 0.
    hdr_len: u8,
    opt_type: u8,
    opt_len: u8,
    jumbo_len: u32,
}

const _: () = assert!(size_of::<JumboHopOpts>() == 8);

/// Parses TCP, UDP or ICMPv6 right behind the IPv6 header, or TCP behind
/// the Jumbo Payload header of an IPv6 BIG TCP packet; `None` for other
/// next headers, other extension headers (fragments among them) included:
/// those go to the node's stack.
#[inline(always)]
pub fn parse_v6<P: Packet>(ctx: &P, ip: *const Ipv6Hdr) -> Option<Transport> {
    // SAFETY: the caller bounds-checked `ip`.
    let (proto, payload_len) = unsafe { ((*ip).next_header, (*ip).payload_len) };
    let offset = ETH_LEN + size_of::<Ipv6Hdr>();
    if proto == IPPROTO_HOPOPTS && payload_len == 0 {
        // Handed to the stack, a GSO packet this large is lost (the node
        // forwards no IPv6) and TCP sends it again in small pieces.
        let jumbo: *const JumboHopOpts = header(ctx, offset)?;
        // SAFETY: bounds-checked.
        let (next, len, kind, opt_len) = unsafe {
            (
                (*jumbo).next_header,
                (*jumbo).hdr_len,
                (*jumbo).opt_type,
                (*jumbo).opt_len,
            )
        };
        if next != IPPROTO_TCP || len != 0 || kind != IPV6_TLV_JUMBO || opt_len != 4 {
            return None;
        }
        return transport(
            ctx,
            next,
            offset + size_of::<JumboHopOpts>(),
            IPPROTO_ICMPV6,
        );
    }
    transport(ctx, proto, offset, IPPROTO_ICMPV6)
}

/// The transport header at `offset`; `icmp` is the family's ICMP (the
/// other family's is just another protocol).
#[inline(always)]
fn transport<P: Packet>(ctx: &P, proto: u8, offset: usize, icmp: u8) -> Option<Transport> {
    let head: *const L4Head = header(ctx, offset)?;
    // SAFETY: bounds-checked.
    let (w0, w1, w2) = unsafe { ((*head).word0, (*head).word1, (*head).word2) };
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
            let flags: *const TcpFlagsWord = header(ctx, offset + 12)?;
            t.csum_offset = offset + TCP_CSUM_OFF;
            // SAFETY: bounds-checked.
            t.tcp_flags = unsafe { (*flags).flags };
        }
        IPPROTO_UDP => {
            t.csum_offset = offset + UDP_CSUM_OFF;
            // SAFETY: bounds-checked (8 bytes).
            t.no_csum = unsafe { (*head).word3 } == 0;
        }
        _ if proto == icmp => {
            t.csum_offset = offset + ICMP_CSUM_OFF;
            t.icmp_type = w0.to_ne_bytes()[0];
            // Echo: the identifier stands in for both ports.
            t.src_port = w2;
            t.dst_port = w2;
        }
        _ => return None,
    }
    Some(t)
}

fn udp_flag(t: &Transport) -> u64 {
    if t.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    }
}

/// Replaces the IPv4 address at `offset` (source or destination), fixing the
/// IP checksum and the transport checksum's pseudo header.
#[inline(always)]
pub fn rewrite_addr_v4(
    ctx: &TcContext,
    t: &Transport,
    offset: usize,
    old: [u8; 4],
    new: [u8; 4],
) -> Result<(), DropReason> {
    let (from, to) = (u32::from_ne_bytes(old), u32::from_ne_bytes(new));
    if (t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP) && !t.no_csum {
        ctx.l4_csum_replace(
            t.csum_offset,
            u64::from(from),
            u64::from(to),
            u64::from(BPF_F_PSEUDO_HDR) | udp_flag(t) | 4,
        )
        .map_err(|_| DropReason::RewriteFailed)?;
    }
    ctx.l3_csum_replace(IPV4_CSUM_OFF, u64::from(from), u64::from(to), 4)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(offset, &new, 0)
        .map_err(|_| DropReason::RewriteFailed)
}

/// Replaces the IPv6 address at `offset` (source or destination), fixing
/// the pseudo header of the transport checksum, ICMPv6's included.
#[inline(always)]
pub fn rewrite_addr_v6(
    ctx: &TcContext,
    t: &Transport,
    offset: usize,
    old: [u8; 16],
    new: [u8; 16],
) -> Result<(), DropReason> {
    if !t.no_csum {
        ctx.l4_csum_replace(
            t.csum_offset,
            0,
            csum_diff16(&old, &new),
            u64::from(BPF_F_PSEUDO_HDR) | BPF_F_IPV6 | udp_flag(t),
        )
        .map_err(|_| DropReason::RewriteFailed)?;
    }
    ctx.store(offset, &new, 0)
        .map_err(|_| DropReason::RewriteFailed)
}

/// The checksum difference of replacing 16 bytes (`bpf_csum_diff`), for
/// the `l4_csum_replace` variant that takes a difference (size 0).
#[inline(always)]
pub fn csum_diff16(old: &[u8; 16], new: &[u8; 16]) -> u64 {
    // SAFETY: the helper only reads both buffers (its pointers are not
    // const in the binding); 16 is a multiple of 4 as it requires.
    let diff = unsafe {
        bpf_csum_diff(
            old.as_ptr().cast_mut().cast(),
            16,
            new.as_ptr().cast_mut().cast(),
            16,
            0,
        )
    };
    u64::from(diff as u32)
}

/// Replaces a port (or the echo identifier) at `offset`, fixing the
/// transport checksum.
#[inline(always)]
pub fn rewrite_port(
    ctx: &TcContext,
    t: &Transport,
    offset: usize,
    old: u16,
    new: u16,
) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    if !t.no_csum {
        ctx.l4_csum_replace(
            t.csum_offset,
            u64::from(old),
            u64::from(new),
            udp_flag(t) | 2,
        )
        .map_err(|_| DropReason::RewriteFailed)?;
    }
    ctx.store(offset, &new, 0)
        .map_err(|_| DropReason::RewriteFailed)
}
