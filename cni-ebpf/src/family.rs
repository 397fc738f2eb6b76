//! What NAT and host ports need to know about an address family, so that
//! one translation serves IPv4 and IPv6: where the addresses sit, which
//! ICMP it speaks, the masquerade address, and the checksum-correct
//! rewrite of an address (IPv4 has a header checksum and a 4-byte pseudo
//! header; IPv6 has none and a 16-byte one, which ICMPv6 covers too).

use aya_ebpf::programs::TcContext;
use cni_ebpf_common::{
    DropReason, IpKey, NODE_F_MASQUERADE, NodeConfig,
    wire::{
        ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMPV6_PACKET_TOO_BIG,
        ICMPV6_PARAMETER_PROBLEM, ICMPV6_TIME_EXCEEDED, IPV6_DST_OFF, IPV6_SRC_OFF,
    },
};

use crate::{
    headers::{
        ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_PARAMETER_PROBLEM,
        ICMP_TIME_EXCEEDED, IPV4_DST_OFF, IPV4_SRC_OFF, v4,
    },
    l4::{Transport, rewrite_addr_v4, rewrite_addr_v6},
    maps::NODE_CONFIG_V6,
};

/// An address as it stands in the packet: `[u8; 4]` or `[u8; 16]`.
pub trait Addr: Copy + PartialEq {
    const V6: bool;
    const SRC_OFF: usize;
    const DST_OFF: usize;
    const ECHO_REQUEST: u8;
    const ECHO_REPLY: u8;

    /// The map key of the address (IPv4-mapped for IPv4).
    fn key(self) -> [u8; 16];
    fn from_key(key: &[u8; 16]) -> Self;
    /// The address itself when it is IPv4.
    fn as_v4(self) -> Option<[u8; 4]>;
    /// An ICMP error that quotes the packet it is about.
    fn is_icmp_error(kind: u8) -> bool;
    /// The address pod flows of this family are masqueraded to, if they are.
    fn masquerade_addr(cfg: &NodeConfig) -> Option<Self>;
    /// Replaces the address at `offset` (source or destination), fixing
    /// every checksum that covers it.
    fn rewrite(
        ctx: &TcContext,
        t: &Transport,
        offset: usize,
        old: Self,
        new: Self,
    ) -> Result<(), DropReason>;
}

impl Addr for [u8; 4] {
    const V6: bool = false;
    const SRC_OFF: usize = IPV4_SRC_OFF;
    const DST_OFF: usize = IPV4_DST_OFF;
    const ECHO_REQUEST: u8 = ICMP_ECHO_REQUEST;
    const ECHO_REPLY: u8 = ICMP_ECHO_REPLY;

    #[inline(always)]
    fn key(self) -> [u8; 16] {
        IpKey::v4(self).addr
    }

    #[inline(always)]
    fn from_key(key: &[u8; 16]) -> Self {
        v4(key)
    }

    #[inline(always)]
    fn as_v4(self) -> Option<[u8; 4]> {
        Some(self)
    }

    #[inline(always)]
    fn is_icmp_error(kind: u8) -> bool {
        matches!(
            kind,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
        )
    }

    #[inline(always)]
    fn masquerade_addr(cfg: &NodeConfig) -> Option<Self> {
        (cfg.flags & NODE_F_MASQUERADE != 0).then(|| v4(&cfg.masq_addr))
    }

    #[inline(always)]
    fn rewrite(
        ctx: &TcContext,
        t: &Transport,
        offset: usize,
        old: Self,
        new: Self,
    ) -> Result<(), DropReason> {
        rewrite_addr_v4(ctx, t, offset, old, new)
    }
}

impl Addr for [u8; 16] {
    const V6: bool = true;
    const SRC_OFF: usize = IPV6_SRC_OFF;
    const DST_OFF: usize = IPV6_DST_OFF;
    const ECHO_REQUEST: u8 = ICMPV6_ECHO_REQUEST;
    const ECHO_REPLY: u8 = ICMPV6_ECHO_REPLY;

    #[inline(always)]
    fn key(self) -> [u8; 16] {
        self
    }

    #[inline(always)]
    fn from_key(key: &[u8; 16]) -> Self {
        *key
    }

    #[inline(always)]
    fn as_v4(self) -> Option<[u8; 4]> {
        None
    }

    #[inline(always)]
    fn is_icmp_error(kind: u8) -> bool {
        matches!(
            kind,
            ICMPV6_DEST_UNREACH
                | ICMPV6_PACKET_TOO_BIG
                | ICMPV6_TIME_EXCEEDED
                | ICMPV6_PARAMETER_PROBLEM
        )
    }

    #[inline(always)]
    fn masquerade_addr(_cfg: &NodeConfig) -> Option<Self> {
        NODE_CONFIG_V6
            .get(0)
            .filter(|v6| v6.flags & NODE_F_MASQUERADE != 0)
            .map(|v6| v6.masq_addr)
    }

    #[inline(always)]
    fn rewrite(
        ctx: &TcContext,
        t: &Transport,
        offset: usize,
        old: Self,
        new: Self,
    ) -> Result<(), DropReason> {
        rewrite_addr_v6(ctx, t, offset, old, new)
    }
}
