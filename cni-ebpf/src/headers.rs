//! The few packet headers the datapath reads and writes, with bounds-checked
//! access. Written here rather than taken from a crate so that the layout the
//! verifier sees is exactly the wire layout, with no version churn.

use aya_ebpf::programs::{TcContext, XdpContext};
// The wire constants live in the common crate, where the unit tests read them.
pub use cni_ebpf_common::wire::{
    ARP_HTYPE_ETHERNET, ARP_REPLY, ARP_REQUEST, ETH_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6,
    ICMP_CSUM_OFF, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_PARAMETER_PROBLEM,
    ICMP_TIME_EXCEEDED, IPPROTO_ICMPV6, IPV4_CSUM_OFF, IPV4_DST_OFF, IPV4_SRC_OFF, IPV6_LEN,
    ND_NA_LEN, ND_NA_OVERRIDE, ND_NA_ROUTER, ND_NA_SOLICITED, ND_NEIGHBOR_ADVERT,
    ND_NEIGHBOR_SOLICIT, ND_OPT_SOURCE_LL, ND_OPT_TARGET_LL, ND_REDIRECT, ND_ROUTER_ADVERT,
    TCP_ACK, TCP_CSUM_OFF, TCP_FIN, TCP_RST, TCP_SYN, UDP_CSUM_OFF,
};

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network order.
    pub ether_type: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// ARP for IPv4 over Ethernet; multi-byte fields in network order.
#[repr(C)]
pub struct ArpEthIpv4 {
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// A neighbor solicitation or advertisement up to its target address.
#[repr(C)]
pub struct NdMsg {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    /// Advertisement flags in the first byte; reserved in a solicitation.
    pub flags: [u8; 4],
    pub target: [u8; 16],
}

/// A link-layer address option of neighbor discovery on Ethernet.
#[repr(C)]
pub struct NdLinkOpt {
    pub kind: u8,
    /// In units of 8 bytes: 1.
    pub len: u8,
    pub mac: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == ETH_LEN);
const _: () =
    assert!(core::mem::size_of::<NdMsg>() + core::mem::size_of::<NdLinkOpt>() == ND_NA_LEN);
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == 20);
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == 40);
const _: () = assert!(core::mem::size_of::<ArpEthIpv4>() == 28);

/// A packet the programs read in place: a socket buffer's linear data (tc)
/// or an XDP frame, so that the header parsers serve both.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

/// A pointer to a `T` at `offset` in the linear packet data, if it fits.
#[inline(always)]
pub fn header<T>(ctx: &impl Packet, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The Ethernet and IPv4 headers of an IPv4 frame, bounds-checked; `None`
/// for other EtherTypes and frames too short to hold both.
#[inline(always)]
pub fn ipv4_headers(ctx: &TcContext) -> Option<(*mut EthHdr, *mut Ipv4Hdr)> {
    let eth: *mut EthHdr = header(ctx, 0)?;
    // SAFETY: bounds-checked.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IP {
        return None;
    }
    Some((eth, header(ctx, ETH_LEN)?))
}

/// The Ethernet and IPv6 headers of an IPv6 frame, bounds-checked.
#[inline(always)]
pub fn ipv6_headers(ctx: &TcContext) -> Option<(*mut EthHdr, *mut Ipv6Hdr)> {
    let eth: *mut EthHdr = header(ctx, 0)?;
    // SAFETY: bounds-checked.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IPV6 {
        return None;
    }
    Some((eth, header(ctx, ETH_LEN)?))
}

/// An IPv4-mapped address (`::ffff:0:0/96`): never on the wire (RFC 4291
/// 2.5.5.2), and the maps' key of an IPv4 address, so an IPv6 packet
/// carrying one must never be looked up by it.
#[inline(always)]
pub fn ipv6_v4_mapped(addr: &[u8; 16]) -> bool {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    word(0) == 0 && word(4) == 0 && word(8) == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// Link-local unicast (`fe80::/10`) or multicast (`ff00::/8`): addresses
/// that never leave the link, so the datapath never forwards to them.
#[inline(always)]
pub fn ipv6_link_scoped(addr: &[u8; 16]) -> bool {
    addr[0] == 0xff || (addr[0] == 0xfe && (addr[1] & 0xc0) == 0x80)
}

/// Decrement the hop limit: IPv6 has no header checksum, and the transport
/// checksums do not cover it.
#[inline(always)]
pub fn ipv6_decrease_hop_limit(ip: *mut Ipv6Hdr) {
    // SAFETY: `ip` was bounds-checked by `header`.
    unsafe { (*ip).hop_limit -= 1 }
}

/// Make sure the first `len` bytes are in the linear area (or the packet is
/// shorter than that), so that direct access sees the whole header chain.
/// A packet that is all linear already (short ones: requests, answers,
/// acknowledgements) costs no helper call.
#[inline(always)]
pub fn pull_headers(ctx: &TcContext, len: u32) {
    let linear = ctx.data_end() - ctx.data();
    if linear < len as usize && (ctx.len() as usize) > linear {
        let want = if ctx.len() < len { ctx.len() } else { len };
        let _ = ctx.pull_data(want);
    }
}

/// Decrement the TTL and patch the checksum incrementally (RFC 1624), as the
/// kernel's `ip_decrease_ttl` does.
#[inline(always)]
pub fn ipv4_decrease_ttl(ip: *mut Ipv4Hdr) {
    // SAFETY: `ip` was bounds-checked by `header`.
    unsafe {
        let mut check = u32::from((*ip).check);
        check += u32::from(0x0100u16.to_be());
        (*ip).check = (check + u32::from(check >= 0xffff)) as u16;
        (*ip).ttl -= 1;
    }
}

/// The first 8 bytes of TCP, UDP and ICMP alike: enough for ports (or the
/// echo identifier) and, for TCP, up to the flags.
#[repr(C)]
pub struct L4Head {
    pub word0: u16,
    pub word1: u16,
    pub word2: u16,
    pub word3: u16,
}

#[repr(C)]
pub struct TcpFlagsWord {
    pub data_off: u8,
    pub flags: u8,
}

/// Offset of the transport header behind an IPv4 header at `ETH_LEN`.
#[inline(always)]
pub fn ipv4_l4_offset(ip: *const Ipv4Hdr) -> usize {
    // SAFETY: the caller bounds-checked `ip`.
    ETH_LEN + (usize::from(unsafe { (*ip).version_ihl } & 0x0f) * 4)
}

/// The IPv4 address in an IPv4-mapped 16-byte address.
#[inline(always)]
pub fn v4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[12], addr[13], addr[14], addr[15]]
}
