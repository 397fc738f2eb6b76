//! Frames built from scratch, checksums included (RFC 1071 over the whole
//! header or segment, never incrementally as the datapath does): a test
//! builds what it sends and, independently, what it expects back, and
//! compares bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use cni_ebpf_common::{
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    wire::{
        ARP_HTYPE_ETHERNET, ETH_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ICMP_CSUM_OFF,
        ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMPV6, IPV4_CSUM_OFF, IPV4_DST_OFF,
        IPV4_SRC_OFF, ND_NA_OVERRIDE, ND_NA_ROUTER, ND_NA_SOLICITED, ND_NEIGHBOR_ADVERT,
        ND_NEIGHBOR_SOLICIT, ND_OPT_SOURCE_LL, ND_OPT_TARGET_LL, TCP_CSUM_OFF, UDP_CSUM_OFF,
    },
};

/// The IPv4 header the builder writes (no options).
pub const IPV4_LEN: usize = 20;
/// Where the transport header starts in a frame built here.
pub const L4_OFF: usize = ETH_LEN + IPV4_LEN;
/// Offset of the TTL in the IPv4 header.
const IPV4_TTL: usize = 8;
const TCP_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// Payload of every TCP, UDP and echo packet: makes checksums non-trivial.
pub const PAYLOAD: &[u8] = b"cni-ebpf datapath";

/// The transport part of a frame.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    /// `checksum: false` sends it without one (zero), as UDP allows.
    Udp {
        sport: u16,
        dport: u16,
        checksum: bool,
    },
    Echo {
        request: bool,
        id: u16,
        seq: u16,
    },
    /// An ICMP error quoting `quote` (an IPv4 packet, e.g. from
    /// [`Frame::ip_packet`]).
    IcmpError {
        kind: u8,
        code: u8,
        quote: Vec<u8>,
    },
    /// Another protocol, or a deliberately short transport header.
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

/// An Ethernet frame carrying IPv4.
#[derive(Clone, Debug)]
pub struct Frame {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// The IPv4 flags and fragment offset field (host order).
    pub frag: u16,
    pub l4: L4,
}

impl Frame {
    pub fn new(eth_src: [u8; 6], eth_dst: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            eth_dst,
            eth_src,
            src,
            dst,
            ttl: 64,
            frag: 0,
            l4,
        }
    }

    /// The same frame after a router: TTL one less, MACs of the next hop.
    pub fn forwarded(&self, eth_src: [u8; 6], eth_dst: [u8; 6]) -> Self {
        Self {
            eth_src,
            eth_dst,
            ttl: self.ttl - 1,
            ..self.clone()
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        ethernet(self.eth_dst, self.eth_src, ETH_P_IP, &self.ip_packet())
    }

    /// The IPv4 packet without the Ethernet header.
    pub fn ip_packet(&self) -> Vec<u8> {
        let (proto, l4) = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => (IPPROTO_TCP, tcp(self.src, self.dst, *sport, *dport, *flags)),
            L4::Udp {
                sport,
                dport,
                checksum,
            } => (
                IPPROTO_UDP,
                udp(self.src, self.dst, *sport, *dport, *checksum),
            ),
            L4::Echo { request, id, seq } => (IPPROTO_ICMP, echo(*request, *id, *seq)),
            L4::IcmpError { kind, code, quote } => {
                (IPPROTO_ICMP, icmp(*kind, *code, [0; 4], quote))
            }
            L4::Raw { proto, bytes } => (*proto, bytes.clone()),
        };
        let mut ip = vec![0u8; IPV4_LEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((IPV4_LEN + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[IPV4_TTL] = self.ttl;
        ip[9] = proto;
        let (src, dst) = (IPV4_SRC_OFF - ETH_LEN, IPV4_DST_OFF - ETH_LEN);
        ip[src..src + 4].copy_from_slice(&self.src.octets());
        ip[dst..dst + 4].copy_from_slice(&self.dst.octets());
        let csum = IPV4_CSUM_OFF - ETH_LEN;
        let sum = checksum(&ip);
        ip[csum..csum + 2].copy_from_slice(&sum.to_be_bytes());
        ip.extend_from_slice(&l4);
        ip
    }
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_LEN + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The Internet checksum of `bytes` (RFC 1071), ready to store big-endian.
pub fn checksum(bytes: &[u8]) -> u16 {
    !fold(sum_words(bytes))
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum of a TCP or UDP segment with its IPv4 pseudo header.
fn transport_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    checksum(&pseudo)
}

/// A TCP segment with `PAYLOAD`, its checksum left zero.
fn tcp_segment(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut segment = vec![0u8; TCP_LEN];
    segment[0..2].copy_from_slice(&sport.to_be_bytes());
    segment[2..4].copy_from_slice(&dport.to_be_bytes());
    segment[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    segment[12] = ((TCP_LEN / 4) as u8) << 4;
    segment[13] = flags;
    segment[14..16].copy_from_slice(&64240u16.to_be_bytes());
    segment.extend_from_slice(PAYLOAD);
    segment
}

fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut segment = tcp_segment(sport, dport, flags);
    let sum = transport_checksum(src, dst, IPPROTO_TCP, &segment);
    segment[TCP_CSUM_OFF..TCP_CSUM_OFF + 2].copy_from_slice(&sum.to_be_bytes());
    segment
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, with_checksum: bool) -> Vec<u8> {
    let mut datagram = vec![0u8; UDP_LEN];
    datagram[0..2].copy_from_slice(&sport.to_be_bytes());
    datagram[2..4].copy_from_slice(&dport.to_be_bytes());
    datagram[4..6].copy_from_slice(&((UDP_LEN + PAYLOAD.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(PAYLOAD);
    if with_checksum {
        // A computed zero is sent as all ones (RFC 768).
        let sum = match transport_checksum(src, dst, IPPROTO_UDP, &datagram) {
            0 => 0xffff,
            sum => sum,
        };
        datagram[UDP_CSUM_OFF..UDP_CSUM_OFF + 2].copy_from_slice(&sum.to_be_bytes());
    }
    datagram
}

fn echo(request: bool, id: u16, seq: u16) -> Vec<u8> {
    let kind = if request {
        ICMP_ECHO_REQUEST
    } else {
        ICMP_ECHO_REPLY
    };
    let mut rest = [0u8; 4];
    rest[0..2].copy_from_slice(&id.to_be_bytes());
    rest[2..4].copy_from_slice(&seq.to_be_bytes());
    icmp(kind, 0, rest, PAYLOAD)
}

fn icmp(kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut message = vec![kind, code, 0, 0];
    message.extend_from_slice(&rest);
    message.extend_from_slice(body);
    let sum = checksum(&message);
    message[ICMP_CSUM_OFF..ICMP_CSUM_OFF + 2].copy_from_slice(&sum.to_be_bytes());
    message
}

/// An ARP packet for IPv4 over Ethernet in a frame.
pub struct Arp {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub htype: u16,
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: Ipv4Addr,
    pub tha: [u8; 6],
    pub tpa: Ipv4Addr,
}

impl Arp {
    /// A pod's broadcast request: who has `tpa`, tell `spa`.
    pub fn request(mac: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Self {
        Self {
            eth_dst: [0xff; 6],
            eth_src: mac,
            htype: ARP_HTYPE_ETHERNET,
            op: cni_ebpf_common::wire::ARP_REQUEST,
            sha: mac,
            spa,
            tha: [0; 6],
            tpa,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut arp = Vec::with_capacity(28);
        arp.extend_from_slice(&self.htype.to_be_bytes());
        arp.extend_from_slice(&ETH_P_IP.to_be_bytes());
        arp.extend_from_slice(&[6, 4]);
        arp.extend_from_slice(&self.op.to_be_bytes());
        arp.extend_from_slice(&self.sha);
        arp.extend_from_slice(&self.spa.octets());
        arp.extend_from_slice(&self.tha);
        arp.extend_from_slice(&self.tpa.octets());
        ethernet(self.eth_dst, self.eth_src, ETH_P_ARP, &arp)
    }
}

/// The source port (or echo identifier) of a frame built here.
pub fn source_port(frame: &[u8]) -> u16 {
    let proto = frame[ETH_LEN + 9];
    let at = if proto == IPPROTO_ICMP {
        L4_OFF + 4
    } else {
        L4_OFF
    };
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Checks every checksum a frame built here carries (IPv4 header, TCP/UDP
/// with pseudo header, ICMP, and for an ICMP error the quoted IPv4 header):
/// valid sums add up to all ones.
pub fn assert_checksums_valid(frame: &[u8]) {
    let ip = &frame[ETH_LEN..];
    assert_eq!(
        fold(sum_words(&ip[..IPV4_LEN])),
        0xffff,
        "IPv4 header checksum"
    );
    let segment = &ip[IPV4_LEN..];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    match ip[9] {
        IPPROTO_TCP | IPPROTO_UDP => {
            if ip[9] == IPPROTO_UDP && segment[UDP_CSUM_OFF..UDP_CSUM_OFF + 2] == [0, 0] {
                return;
            }
            assert_eq!(
                transport_checksum(src, dst, ip[9], segment),
                0,
                "transport checksum of {segment:02x?}"
            );
        }
        IPPROTO_ICMP => {
            assert_eq!(fold(sum_words(segment)), 0xffff, "ICMP checksum");
            if segment[0] != ICMP_ECHO_REQUEST && segment[0] != ICMP_ECHO_REPLY {
                let quote = &segment[8..];
                assert_eq!(
                    fold(sum_words(&quote[..IPV4_LEN])),
                    0xffff,
                    "quoted IPv4 header checksum"
                );
            }
        }
        _ => {}
    }
}

/// An Ethernet frame carrying IPv6 (no extension headers) and `payload`,
/// a transport segment or ICMPv6 message whose checksum the builder
/// computes with the IPv6 pseudo header.
#[derive(Clone, Debug)]
pub struct Frame6 {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub l4: L4v6,
}

/// The transport part of an IPv6 frame.
#[derive(Clone, Debug)]
pub enum L4v6 {
    Udp {
        sport: u16,
        dport: u16,
    },
    Echo {
        id: u16,
        seq: u16,
    },
    EchoReply {
        id: u16,
        seq: u16,
    },
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    /// An ICMPv6 error of `kind` quoting `quote` (an IPv6 packet, e.g.
    /// from [`Frame6::ip_packet`]).
    IcmpError {
        kind: u8,
        quote: Vec<u8>,
    },
    /// An ICMPv6 message of `kind` whose body (after the 4-byte header) is
    /// `body`.
    Icmp {
        kind: u8,
        body: Vec<u8>,
    },
}

impl Frame6 {
    pub fn new(eth_src: [u8; 6], eth_dst: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, l4: L4v6) -> Self {
        Self {
            eth_dst,
            eth_src,
            src,
            dst,
            hop_limit: 64,
            l4,
        }
    }

    /// The same frame after a router: hop limit one less, MACs of the next
    /// hop (nothing else changes: IPv6 has no header checksum).
    pub fn forwarded(&self, eth_src: [u8; 6], eth_dst: [u8; 6]) -> Self {
        Self {
            eth_src,
            eth_dst,
            hop_limit: self.hop_limit - 1,
            ..self.clone()
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let (next, mut l4, csum_off) = match &self.l4 {
            L4v6::Udp { sport, dport } => {
                let mut d = vec![0u8; UDP_LEN];
                d[0..2].copy_from_slice(&sport.to_be_bytes());
                d[2..4].copy_from_slice(&dport.to_be_bytes());
                d[4..6].copy_from_slice(&((UDP_LEN + PAYLOAD.len()) as u16).to_be_bytes());
                d.extend_from_slice(PAYLOAD);
                (IPPROTO_UDP, d, UDP_CSUM_OFF)
            }
            L4v6::Echo { id, seq } | L4v6::EchoReply { id, seq } => {
                let kind = match self.l4 {
                    L4v6::Echo { .. } => ICMPV6_ECHO_REQUEST,
                    _ => ICMPV6_ECHO_REPLY,
                };
                let mut m = vec![kind, 0, 0, 0];
                m.extend_from_slice(&id.to_be_bytes());
                m.extend_from_slice(&seq.to_be_bytes());
                m.extend_from_slice(PAYLOAD);
                (IPPROTO_ICMPV6, m, ICMP_CSUM_OFF)
            }
            L4v6::Tcp {
                sport,
                dport,
                flags,
            } => (
                IPPROTO_TCP,
                tcp_segment(*sport, *dport, *flags),
                TCP_CSUM_OFF,
            ),
            L4v6::IcmpError { kind, quote } => {
                // Type, code, checksum, 4 unused bytes (the MTU for "packet
                // too big"), then the quote.
                let mut m = vec![*kind, 0, 0, 0, 0, 0, 0x05, 0x00];
                m.extend_from_slice(quote);
                (IPPROTO_ICMPV6, m, ICMP_CSUM_OFF)
            }
            L4v6::Icmp { kind, body } => {
                let mut m = vec![*kind, 0, 0, 0];
                m.extend_from_slice(body);
                (IPPROTO_ICMPV6, m, ICMP_CSUM_OFF)
            }
        };
        let sum = ipv6_checksum(self.src, self.dst, next, &l4);
        l4[csum_off..csum_off + 2].copy_from_slice(&sum.to_be_bytes());
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[next, self.hop_limit]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&l4);
        ethernet(self.eth_dst, self.eth_src, ETH_P_IPV6, &ip)
    }
}

impl Frame6 {
    /// The IPv6 packet without the Ethernet header.
    pub fn ip_packet(&self) -> Vec<u8> {
        self.bytes()[ETH_LEN..].to_vec()
    }
}

pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// The checksum of a transport segment or ICMPv6 message with the IPv6
/// pseudo header (RFC 8200 §8.1).
pub fn ipv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, next: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + segment.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next]);
    pseudo.extend_from_slice(segment);
    checksum(&pseudo)
}

/// A neighbor solicitation or advertisement body (after the ICMPv6
/// header): flags, target, and a link-layer option when `option` is given.
pub fn nd_body(flags: u8, target: Ipv6Addr, option: Option<(u8, [u8; 6])>) -> Vec<u8> {
    let mut body = vec![flags, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    if let Some((kind, mac)) = option {
        body.extend_from_slice(&[kind, 1]);
        body.extend_from_slice(&mac);
    }
    body
}

/// A pod's multicast solicitation for `target`, as Linux sends it: to the
/// solicited-node group, hop limit 255, its MAC in a source link-layer
/// option.
pub fn neighbor_solicit(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Frame6 {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    Frame6 {
        hop_limit: 255,
        ..Frame6::new(
            mac,
            [0x33, 0x33, 0xff, t[13], t[14], t[15]],
            src,
            group,
            L4v6::Icmp {
                kind: ND_NEIGHBOR_SOLICIT,
                body: nd_body(0, target, Some((ND_OPT_SOURCE_LL, mac))),
            },
        )
    }
}

/// The advertisement the datapath must answer `neighbor_solicit` with,
/// built from scratch: from the target to the asker, router + solicited +
/// override, the host veth's MAC in a target link-layer option.
pub fn neighbor_advert_reply(
    host_mac: [u8; 6],
    pod_mac: [u8; 6],
    asker: Ipv6Addr,
    target: Ipv6Addr,
) -> Frame6 {
    Frame6 {
        hop_limit: 255,
        ..Frame6::new(
            host_mac,
            pod_mac,
            target,
            asker,
            L4v6::Icmp {
                kind: ND_NEIGHBOR_ADVERT,
                body: nd_body(
                    ND_NA_ROUTER | ND_NA_SOLICITED | ND_NA_OVERRIDE,
                    target,
                    Some((ND_OPT_TARGET_LL, host_mac)),
                ),
            },
        )
    }
}

/// Checks the ICMPv6 error's checksum and the quoted packet's transport
/// checksum (with the quote's own pseudo header), both from scratch.
pub fn assert_ipv6_error_checksums_valid(frame: &[u8]) {
    assert_ipv6_checksum_valid(frame);
    let quote = &frame[ETH_LEN + 40 + 8..];
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&quote[8..24]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&quote[24..40]).unwrap());
    assert_eq!(
        ipv6_checksum(src, dst, quote[6], &quote[40..]),
        0,
        "quoted checksum of {:02x?}",
        &quote[40..]
    );
}

/// Checks the ICMPv6 or transport checksum of an IPv6 frame: a valid sum
/// over pseudo header and message is zero once complemented.
pub fn assert_ipv6_checksum_valid(frame: &[u8]) {
    let ip = &frame[ETH_LEN..];
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
    assert_eq!(
        ipv6_checksum(src, dst, ip[6], &ip[40..]),
        0,
        "checksum of {:02x?}",
        &ip[40..]
    );
}
