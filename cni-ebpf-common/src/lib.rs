//! Map keys, values and constants shared by the eBPF programs and userspace.
//!
//! Every struct here is `#[repr(C)]` with explicit padding and a size
//! assertion: the kernel side and the user side must agree byte for byte.
#![no_std]

/// Names of the maps as they appear in the ELF and under `<bpffs root>/maps`.
pub mod map_names {
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const DROPS: &str = "DROPS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const NODE_CONFIG: &str = "NODE_CONFIG";
    pub const NO_MASQ: &str = "NO_MASQ";
    pub const NODE_ADDRS: &str = "NODE_ADDRS";
    pub const HOST_PORTS: &str = "HOST_PORTS";
    pub const HOST_PORT_CT: &str = "HOST_PORT_CT";
    pub const HOST_PORT_USE: &str = "HOST_PORT_USE";
    pub const HOST_PORT_SOCK: &str = "HOST_PORT_SOCK";
    pub const RATE_LIMITS: &str = "RATE_LIMITS";
    pub const ENDPOINT_STATS: &str = "ENDPOINT_STATS";
    pub const NAT_OUT: &str = "NAT_OUT";
    pub const NAT_IN: &str = "NAT_IN";
    pub const NAT_FLOWS: &str = "NAT_FLOWS";
    pub const SERVICES: &str = "SERVICES";
    pub const NETFILTER_FLOWS: &str = "NETFILTER_FLOWS";
    pub const PEERS: &str = "PEERS";
    pub const TUNNEL: &str = "TUNNEL";
    pub const NODE_CONFIG_V6: &str = "NODE_CONFIG_V6";
    pub const ENDPOINT_COUNTERS: &str = "ENDPOINT_COUNTERS";
    pub const ENDPOINT_SLOTS: &str = "ENDPOINT_SLOTS";
    pub const ENDPOINTS_V4: &str = "ENDPOINTS_V4";
}

/// Names of the programs in the ELF.
pub mod program_names {
    pub const FROM_POD: &str = "from_pod";
    pub const FROM_UPLINK: &str = "from_uplink";
    pub const CONNECT4: &str = "host_connect4";
    pub const SENDMSG4: &str = "host_sendmsg4";
    pub const RECVMSG4: &str = "host_recvmsg4";
    pub const CONNECT6: &str = "host_connect6";
    pub const SENDMSG6: &str = "host_sendmsg6";
    pub const RECVMSG6: &str = "host_recvmsg6";
    pub const TO_POD: &str = "to_pod";
    pub const PACE_TCP: &str = "pace_tcp";
    pub const TO_UPLINK: &str = "to_uplink";
    pub const FROM_TUNNEL: &str = "from_tunnel";
    pub const TO_TUNNEL: &str = "to_tunnel";
    pub const XDP_UPLINK: &str = "xdp_uplink";
}

/// Wire constants of the headers the datapath reads and writes: shared so
/// that the datapath's unit tests build and read packets at the offsets the
/// programs use. Offsets are from the start of the Ethernet frame unless
/// they say otherwise; multi-byte values are in host order.
pub mod wire {
    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_IPV6: u16 = 0x86dd;

    pub const ARP_REQUEST: u16 = 1;
    pub const ARP_REPLY: u16 = 2;
    pub const ARP_HTYPE_ETHERNET: u16 = 1;

    /// Ethernet header: destination MAC, source MAC, EtherType.
    pub const ETH_LEN: usize = 14;

    pub const IPV4_CSUM_OFF: usize = ETH_LEN + 10;
    pub const IPV4_SRC_OFF: usize = ETH_LEN + 12;
    pub const IPV4_DST_OFF: usize = ETH_LEN + 16;

    /// Where a transport header's checksum sits, relative to its start.
    pub const TCP_CSUM_OFF: usize = 16;
    pub const UDP_CSUM_OFF: usize = 6;
    pub const ICMP_CSUM_OFF: usize = 2;

    pub const TCP_FIN: u8 = 0x01;
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_RST: u8 = 0x04;
    pub const TCP_ACK: u8 = 0x10;

    /// ICMPv6 (RFC 4443) types NAT translates: echo, and the errors that
    /// quote the packet they are about.
    pub const ICMPV6_DEST_UNREACH: u8 = 1;
    pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
    pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
    pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
    pub const ICMPV6_ECHO_REQUEST: u8 = 128;
    pub const ICMPV6_ECHO_REPLY: u8 = 129;

    pub const ICMP_ECHO_REPLY: u8 = 0;
    pub const ICMP_DEST_UNREACH: u8 = 3;
    pub const ICMP_ECHO_REQUEST: u8 = 8;
    pub const ICMP_TIME_EXCEEDED: u8 = 11;
    pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

    /// The IPv6 header (no extension headers follow it in what the
    /// datapath builds or answers).
    pub const IPV6_LEN: usize = 40;
    pub const IPV6_SRC_OFF: usize = ETH_LEN + 8;
    pub const IPV6_DST_OFF: usize = ETH_LEN + 24;
    pub const IPPROTO_ICMPV6: u8 = 58;

    /// Neighbor discovery (RFC 4861) message types.
    pub const ND_ROUTER_SOLICIT: u8 = 133;
    pub const ND_ROUTER_ADVERT: u8 = 134;
    pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
    pub const ND_NEIGHBOR_ADVERT: u8 = 136;
    pub const ND_REDIRECT: u8 = 137;
    /// Options: source and target link-layer address.
    pub const ND_OPT_SOURCE_LL: u8 = 1;
    pub const ND_OPT_TARGET_LL: u8 = 2;
    /// Neighbor advertisement flags (first byte after the checksum):
    /// router, solicited, override.
    pub const ND_NA_ROUTER: u8 = 0x80;
    pub const ND_NA_SOLICITED: u8 = 0x40;
    pub const ND_NA_OVERRIDE: u8 = 0x20;
    /// A neighbor solicitation or advertisement with one link-layer address
    /// option: type, code, checksum, flags, target, option.
    pub const ND_NA_LEN: usize = 32;
}

/// Endpoints the node can hold: one entry per pod address.
pub const MAX_ENDPOINTS: u32 = 65_536;
/// Slots of `ENDPOINT_COUNTERS`: per-endpoint counters for this many pod
/// interfaces at once (slot 0 is never handed out). Past it, an endpoint is
/// counted in `ENDPOINT_STATS` by ifindex, as before slots existed.
pub const STATS_SLOTS: u32 = 4096;
/// Translated flows the node can hold (each has an entry in `NAT_OUT` and
/// one in `NAT_IN`).
pub const MAX_NAT_FLOWS: u32 = 262_144;
/// Published host ports the node can hold.
pub const MAX_HOST_PORTS: u32 = 65_536;
/// Connections through host ports tracked at once.
pub const MAX_HOST_PORT_FLOWS: u32 = 262_144;
/// The node's own UDP sockets that sent to a host port, remembered at once.
pub const MAX_HOST_PORT_SOCKS: u32 = 65_536;
/// Addresses of the node itself.
pub const MAX_NODE_ADDRS: u32 = 256;
/// CIDRs excluded from masquerade.
pub const MAX_NO_MASQ: u32 = 1_024;
/// Service CIDRs (ClusterIP ranges, externalIPs, LoadBalancer IPs).
pub const MAX_SERVICE_CIDRS: u32 = 1_024;
/// Flows netfilter translated whose packets must keep passing through it.
pub const MAX_NETFILTER_FLOWS: u32 = 131_072;
/// Other nodes' pod CIDRs the node knows.
pub const MAX_PEERS: u32 = 16_384;
/// Tries at a free source port before the packet is dropped.
pub const NAT_PORT_TRIES: u32 = 32;

/// An IP address as a map key: IPv6 as is, IPv4 as an IPv4-mapped IPv6
/// address (`::ffff:a.b.c.d`), so one map serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IpKey {
    pub addr: [u8; 16],
}

impl IpKey {
    /// `octets` in network order, as they stand in the packet.
    #[inline(always)]
    pub const fn v4(octets: [u8; 4]) -> Self {
        let [a, b, c, d] = octets;
        Self {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d],
        }
    }

    #[inline(always)]
    pub const fn v6(octets: [u8; 16]) -> Self {
        Self { addr: octets }
    }

    pub const fn from_ip(ip: core::net::IpAddr) -> Self {
        match ip {
            core::net::IpAddr::V4(v4) => Self::v4(v4.octets()),
            core::net::IpAddr::V6(v6) => Self::v6(v6.octets()),
        }
    }

    /// The IPv6 link-local address the kernel gives an interface with `mac`
    /// (modified EUI-64, `addr_gen_mode` 0): the key under which a pod's
    /// link-local traffic finds its endpoint.
    pub const fn link_local(mac: [u8; 6]) -> Self {
        let [a, b, c, d, e, f] = mac;
        Self {
            addr: [
                0xfe,
                0x80,
                0,
                0,
                0,
                0,
                0,
                0,
                a ^ 0x02,
                b,
                c,
                0xff,
                0xfe,
                d,
                e,
                f,
            ],
        }
    }

    pub fn to_ip(&self) -> core::net::IpAddr {
        match self.as_v4() {
            Some(v4) => core::net::IpAddr::from(v4),
            None => core::net::IpAddr::from(self.addr),
        }
    }

    /// The IPv4 octets when this key holds an IPv4-mapped address.
    pub fn as_v4(&self) -> Option<[u8; 4]> {
        let a = &self.addr;
        if a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff {
            Some([a[12], a[13], a[14], a[15]])
        } else {
            None
        }
    }
}

/// A pod interface as the datapath sees it; the value of `ENDPOINTS`,
/// keyed by each of the pod's addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// ifindex of the host-side veth in the node namespace.
    pub ifindex: u32,
    pub flags: u32,
    /// MAC of the pod's own interface (the only source MAC it may use).
    pub pod_mac: [u8; 6],
    /// MAC of the host-side veth: the pod's gateway MAC.
    pub host_mac: [u8; 6],
    /// The endpoint's slot in `ENDPOINT_COUNTERS` (per-CPU array: found
    /// without a hash lookup); 0 when it has none (all slots taken, or an
    /// entry written before slots existed, where these bytes were padding):
    /// then it is counted in `ENDPOINT_STATS` by `ifindex`.
    pub stats_slot: u32,
    /// Stable hash of (container ID, interface name) that owns the entry.
    pub owner: u64,
    /// Cookie of the pod's network namespace (`SO_NETNS_COOKIE`): tells the
    /// pod's own sockets from any other with its address.
    pub netns_cookie: u64,
}

const _: () = assert!(core::mem::size_of::<Endpoint>() == 40);

/// Slots of `ENDPOINTS_V4`: one per value of an IPv4 address's low 12 bits
/// ([`endpoint_v4_index`]), so every address of a node's pod CIDR up to a
/// /20 has a slot of its own.
pub const ENDPOINT_V4_SLOTS: u32 = 4096;

/// The slot of `ENDPOINTS_V4` that may hold IPv4 address `octets` (in
/// network order, as the packet carries it): its low 12 bits.
#[inline(always)]
pub const fn endpoint_v4_index(octets: [u8; 4]) -> u32 {
    (((octets[2] & 0x0f) as u32) << 8) | octets[3] as u32
}

/// A value of `ENDPOINTS_V4`: a copy of the `ENDPOINTS` entry of one IPv4
/// address, found with an array lookup (inlined by the verifier, one cache
/// line) where `ENDPOINTS` costs a hash of 16 bytes and a bucket walk.
/// `ENDPOINTS` stays the record; the datapath falls back to it whenever
/// the slot is not `live` or holds another address.
///
/// An array's values are overwritten in place, so the writer (userspace
/// `EndpointMap`) keeps every read whole: it fills a slot while `live` is 0
/// and then rewrites it with only `live` changed to 1 (one byte: read as
/// 0 or 1, never torn); it retires a slot by rewriting it with only `live`
/// changed back to 0, and waits an RCU grace period before it reuses a slot
/// that was live.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointV4 {
    /// 1 while the datapath may use the slot; only ever 0 or 1.
    pub live: u32,
    /// The address whose entry this is, in network order.
    pub addr: [u8; 4],
    pub endpoint: Endpoint,
    /// To 64 bytes: a slot never straddles more cache lines than it must.
    pub _reserved: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<EndpointV4>() == 64);
const _: () = assert!(core::mem::size_of::<IpKey>() == 16);

/// Node-wide settings of the datapath: the single entry of `NODE_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeConfig {
    /// Address pod flows are masqueraded to (IPv4-mapped for IPv4).
    pub masq_addr: [u8; 16],
    /// The uplink: where masqueraded and cross-node traffic leaves.
    pub uplink_ifindex: u32,
    /// `NODE_F_*` bits.
    pub flags: u32,
    /// Ports tried when a flow's own source port is taken (inclusive).
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// New masqueraded flows are refused (and counted) past this many.
    pub nat_max_flows: u32,
    /// Cookie of the node's network namespace: the socket hooks act only on
    /// sockets there.
    pub netns_cookie: u64,
}

pub const NODE_F_MASQUERADE: u32 = 1;
/// The node runs netfilter service rules (kube-proxy): pod traffic to
/// `SERVICES` and the flows netfilter translated pass through the stack.
pub const NODE_F_SERVICES: u32 = 2;
/// The node does not forward in general (`net.ipv4.conf.all.forwarding=0`)
/// but its uplink forwards for services: `from_uplink` drops what the stack
/// would forward for neither the node, its pods nor a service address.
pub const NODE_F_UPLINK_GUARD: u32 = 4;
/// `uplinkXdp`: the uplink should run `xdp_uplink`. Read by the agent (which
/// attaches it again when it is gone), not by the datapath; the record
/// outlives the XDP link's pin.
pub const NODE_F_UPLINK_XDP: u32 = 8;

/// `skb->mark` bit the datapath sets on what it sends out of the uplink
/// itself (never seen by netfilter), so that `to_uplink` tells it from what
/// the stack forwarded; cleared there.
pub const MARK_DATAPATH_FORWARDED: u32 = 0x0040_0000;

const _: () = assert!(core::mem::size_of::<NodeConfig>() == 40);

/// The node's IPv6 settings: the single entry of `NODE_CONFIG_V6`. A map of
/// its own rather than more fields in `NodeConfig`, so that a node upgrading
/// keeps its pinned `NODE_CONFIG` (a map's value size cannot change under
/// running programs). Ports and the flow limit are `NodeConfig`'s, shared
/// by both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeConfigV6 {
    /// Address IPv6 pod flows are masqueraded to.
    pub masq_addr: [u8; 16],
    /// `NODE_F_MASQUERADE`: masquerade IPv6 (independent of IPv4's bit).
    pub flags: u32,
    /// The node's own ephemeral ports (`net.ipv4.ip_local_port_range`,
    /// which IPv6 sockets use too), inclusive, host order; 0–0 when not
    /// known. Recorded by ADD, not read by the datapath: a port claim asks
    /// the kernel for the node's sockets instead (moving every pod port of
    /// this range into `natPortRange` capped masqueraded connection rates;
    /// see the README's masquerade section). Shared by both families; here
    /// because `NodeConfig`'s size is fixed by its pinned map (this field
    /// was padding, so an older map reads 0–0).
    pub ephemeral_min: u16,
    pub ephemeral_max: u16,
}

const _: () = assert!(core::mem::size_of::<NodeConfigV6>() == 24);

/// Another node, as the value of `PEERS` (keyed by its pod CIDR).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Peer {
    /// The node's underlay address (IPv4-mapped for IPv4).
    pub underlay: [u8; 16],
    /// `PEER_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Peer>() == 24);

/// `Peer::flags`: reach the node's pods through the VXLAN tunnel (else by
/// the node's routing table, natively).
pub const PEER_F_TUNNEL: u32 = 1;

/// The node's VXLAN tunnel: the single entry of `TUNNEL` (ifindex 0: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TunnelConfig {
    /// The collect-metadata VXLAN device.
    pub ifindex: u32,
    /// The VXLAN network identifier put on every packet.
    pub vni: u32,
}

const _: () = assert!(core::mem::size_of::<TunnelConfig>() == 8);

/// A published port: key of `HOST_PORTS`. An all-zero `host_addr` publishes
/// the port on every node address of one family (and the loopback address
/// for the node itself): IPv4 with `wildcard` 0 (as builds before IPv6 wrote
/// it), IPv6 with `HOST_PORT_ANY_V6`. A specific address has `wildcard` 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HostPortKey {
    pub host_addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub wildcard: u8,
}

/// `HostPortKey::wildcard` of a port published on every IPv6 address (`::`
/// and `0.0.0.0` are both all-zero keys; this tells them apart).
pub const HOST_PORT_ANY_V6: u8 = 6;

impl HostPortKey {
    /// The key publishing `port` on every address of the family.
    pub const fn any(v6: bool, port: u16, proto: u8) -> Self {
        Self {
            host_addr: [0; 16],
            port,
            proto,
            wildcard: if v6 { HOST_PORT_ANY_V6 } else { 0 },
        }
    }
}

const _: () = assert!(core::mem::size_of::<HostPortKey>() == 20);

/// Where a published port leads: value of `HOST_PORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostPortTarget {
    pub pod_addr: [u8; 16],
    /// Network order.
    pub pod_port: u16,
    pub _pad: [u8; 6],
    /// The attachment that published it (see `Endpoint::owner`).
    pub owner: u64,
}

const _: () = assert!(core::mem::size_of::<HostPortTarget>() == 32);

/// Key of `HOST_PORT_SOCK`: one of the node's UDP sockets (by cookie) and
/// the pod port its datagrams to a host port went to; the value is the host
/// address and port it sent to, which the pod's answers must show again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HostPortSockKey {
    pub cookie: u64,
    pub pod_addr: [u8; 16],
    /// Network order.
    pub pod_port: u16,
    pub _pad: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<HostPortSockKey>() == 32);

/// A connection through a host port, keyed in `HOST_PORT_CT` by the reply as
/// the pod sends it: what the reply's source (and, for hairpin, its
/// destination) must become again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostPortFlow {
    /// The published address and port the client connected to.
    pub host_addr: [u8; 16],
    /// The client as it really is (differs from the reply's destination only
    /// for hairpin, where the client's source was rewritten).
    pub client_addr: [u8; 16],
    pub host_port: u16,
    pub client_port: u16,
    pub state: u8,
    pub _pad: [u8; 3],
    pub last_seen_ns: u64,
}

const _: () = assert!(core::mem::size_of::<HostPortFlow>() == 48);

/// Key of `HOST_PORT_USE` (userspace bookkeeping for conflict checks): a
/// protocol and port; the value counts mappings of it on specific addresses.
/// IPv6 mappings count apart from IPv4 ones (bit 24), so that a port on
/// one IPv6 address does not exclude the same port on every IPv4 one.
pub const fn host_port_use_key(proto: u8, port: u16, v6: bool) -> u32 {
    ((v6 as u32) << 24) | ((proto as u32) << 16) | port as u32
}

/// One direction's rate limit: a virtual clock that every admitted packet
/// advances by its cost at `bytes_per_sec`; a packet conforms when the clock
/// does not run ahead of now, and an idle clock lags now by at most
/// `burst_ns` (the burst, as time at the rate).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateBucket {
    pub bytes_per_sec: u64,
    pub burst_ns: u64,
    /// Updated with atomic adds by the datapath only.
    pub clock_ns: u64,
}

/// Value of `RATE_LIMITS`, keyed by `Endpoint::owner`; a zero rate is no
/// limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// What the pod sends.
    pub egress: RateBucket,
    /// What is delivered to the pod.
    pub ingress: RateBucket,
}

const _: () = assert!(core::mem::size_of::<RateLimit>() == 48);

/// `Endpoint::flags`: the pod has a `RATE_LIMITS` entry.
pub const ENDPOINT_F_RATE_LIMITED: u32 = 2;

/// `Endpoint::flags`: the pod publishes host ports, so its replies are
/// checked against `HOST_PORT_CT` (pods without any pay nothing for it).
pub const ENDPOINT_F_HOST_PORTS: u32 = 1;

/// `Endpoint::flags`, set by the datapath itself: netfilter translated a
/// flow of this pod (it is a service backend, or a client whose service
/// traffic left the node), so its packets and the replies delivered to it
/// are checked against `NETFILTER_FLOWS` (other pods pay nothing for it).
pub const ENDPOINT_F_NETFILTER_FLOWS: u32 = 4;

/// `Endpoint::flags`: the pod end of the veth runs NAPI (GRO on), so XDP on
/// the uplink may redirect frames into the host veth (`veth_xdp_xmit`
/// drops them otherwise); pods without it are left to the tc program.
pub const ENDPOINT_F_XDP_TARGET: u32 = 1 << 15;

/// `Endpoint::flags`, for the node agent only (the datapath ignores it):
/// the pod was added with `attachMode: auto`, through clsact so that ADD
/// does not wait for an RCU grace period, and the agent moves its programs
/// onto tcx links once it has lived a while (`cni_ebpf_userspace::promote`).
pub const ENDPOINT_F_TCX_LATER: u32 = 1 << 14;

/// One direction of a flow as the packet carries it. For ICMP echo the
/// identifier stands in the port of the side that chose it (`src_port` of a
/// request from the pod, `dst_port` of the reply) and the other port is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network order, as in the packet.
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Value of both NAT maps: what the other side of the translation is.
/// In `NAT_OUT` (keyed by the pod's flow) `addr`/`port` are the translated
/// source; in `NAT_IN` (keyed by the reply as it arrives) they are the pod's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatEntry {
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    /// `CtState` as u8.
    pub state: u8,
    pub _pad: [u8; 5],
    /// `bpf_ktime_get_ns` of the last packet either way.
    pub last_seen_ns: u64,
}

const _: () = assert!(core::mem::size_of::<NatEntry>() == 32);

/// Connection-tracking states that decide a flow's timeout.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    TcpSynSent = 1,
    TcpEstablished = 2,
    TcpClosing = 3,
    Udp = 4,
    Icmp = 5,
}

impl CtState {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(CtState::TcpSynSent),
            2 => Some(CtState::TcpEstablished),
            3 => Some(CtState::TcpClosing),
            4 => Some(CtState::Udp),
            5 => Some(CtState::Icmp),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            CtState::TcpSynSent => "syn-sent",
            CtState::TcpEstablished => "established",
            CtState::TcpClosing => "closing",
            CtState::Udp => "udp",
            CtState::Icmp => "icmp",
        }
    }
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Which way a packet was going when it was counted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    FromPod = 0,
    ToPod = 1,
}

pub const DIRECTIONS: u32 = 2;

/// Why the datapath dropped a packet. Index into `DROPS` is
/// `reason * DIRECTIONS + direction`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Header shorter than its protocol requires.
    Malformed = 0,
    /// Source IP belongs to no endpoint on this node.
    UnknownSource = 1,
    /// Source IP belongs to another endpoint than the sending interface.
    SpoofedSource = 2,
    /// Source MAC is not the endpoint's own.
    SpoofedMac = 3,
    /// ARP sender address or hardware address is not the endpoint's own.
    SpoofedArp = 4,
    /// An L3 protocol the datapath does not carry (yet).
    UnsupportedL3 = 5,
    /// The kernel refused a redirect.
    RedirectFailed = 6,
    /// No free source port for a new masqueraded flow.
    NatPortsExhausted = 7,
    /// The NAT maps refused a new entry.
    NatTableFull = 8,
    /// A checksum or header rewrite failed.
    RewriteFailed = 9,
    /// Over the endpoint's bandwidth limit.
    RateLimited = 10,
    /// Arrived on the uplink to be routed on, on a node that forwards only
    /// for its pods and services.
    Transit = 11,
    /// Neighbor discovery a pod may not send: an advertisement for an
    /// address that is not its own, a link-layer address option that is
    /// not its MAC, a router advertisement or a redirect.
    SpoofedNd = 12,
}

impl DropReason {
    pub const ALL: [DropReason; 13] = [
        DropReason::Malformed,
        DropReason::UnknownSource,
        DropReason::SpoofedSource,
        DropReason::SpoofedMac,
        DropReason::SpoofedArp,
        DropReason::UnsupportedL3,
        DropReason::RedirectFailed,
        DropReason::NatPortsExhausted,
        DropReason::NatTableFull,
        DropReason::RewriteFailed,
        DropReason::RateLimited,
        DropReason::Transit,
        DropReason::SpoofedNd,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownSource => "unknown-source",
            DropReason::SpoofedSource => "spoofed-source",
            DropReason::SpoofedMac => "spoofed-mac",
            DropReason::SpoofedArp => "spoofed-arp",
            DropReason::UnsupportedL3 => "unsupported-l3",
            DropReason::RedirectFailed => "redirect-failed",
            DropReason::NatPortsExhausted => "nat-ports-exhausted",
            DropReason::NatTableFull => "nat-table-full",
            DropReason::RewriteFailed => "rewrite-failed",
            DropReason::RateLimited => "rate-limited",
            DropReason::Transit => "transit",
            DropReason::SpoofedNd => "spoofed-nd",
        }
    }

    #[inline(always)]
    pub const fn index(self, direction: Direction) -> u32 {
        self as u32 * DIRECTIONS + direction as u32
    }
}

/// Room for reasons added later without resizing the pinned map.
pub const DROP_SLOTS: u32 = 64 * DIRECTIONS;

/// What the datapath did with packets it did not drop.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Redirected into a pod on this node.
    LocalDelivery = 0,
    /// Handed to the node's stack.
    ToStack = 1,
    /// ARP request answered on behalf of the gateway.
    ArpReply = 2,
    /// Sent out of the uplink after a FIB lookup (masqueraded or not).
    Forwarded = 3,
    /// A new masqueraded flow got its translation.
    NatNewFlow = 4,
    /// A new flow's port was taken (by another flow, or for its own port
    /// by a socket of the node) and another was tried.
    NatPortRetry = 5,
    /// Reply of a masqueraded flow translated back and delivered.
    NatReply = 6,
    /// Handed to the node's stack because netfilter translates the flow
    /// (a service address, or a packet of a flow netfilter translated).
    ToNetfilter = 7,
    /// Sent into the VXLAN tunnel towards another node.
    Tunneled = 8,
    /// Neighbor solicitation answered on behalf of the gateway (IPv6's ARP).
    NdReply = 9,
    /// Delivered into a pod by XDP on the uplink (after reverse NAT or
    /// host-port DNAT, or as it came from another node).
    XdpDelivered = 10,
}

impl Verdict {
    pub const ALL: [Verdict; 11] = [
        Verdict::LocalDelivery,
        Verdict::ToStack,
        Verdict::ArpReply,
        Verdict::Forwarded,
        Verdict::NatNewFlow,
        Verdict::NatPortRetry,
        Verdict::NatReply,
        Verdict::ToNetfilter,
        Verdict::Tunneled,
        Verdict::NdReply,
        Verdict::XdpDelivered,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::LocalDelivery => "local-delivery",
            Verdict::ToStack => "to-stack",
            Verdict::ArpReply => "arp-reply",
            Verdict::Forwarded => "forwarded",
            Verdict::NatNewFlow => "nat-new-flow",
            Verdict::NatPortRetry => "nat-port-retry",
            Verdict::NatReply => "nat-reply",
            Verdict::ToNetfilter => "to-netfilter",
            Verdict::Tunneled => "tunneled",
            Verdict::NdReply => "nd-reply",
            Verdict::XdpDelivered => "xdp-delivered",
        }
    }
}

pub const COUNTER_SLOTS: u32 = 64;

/// Traffic of one endpoint: the per-CPU value of `ENDPOINT_COUNTERS` at
/// the endpoint's slot, or of `ENDPOINT_STATS` keyed by the host veth's
/// ifindex for an endpoint without one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointStats {
    /// What the pod sent (counted where it entered the datapath).
    pub from_pod: PacketCount,
    /// What the datapath delivered to the pod (the node's stack delivers the
    /// rest through the host veth, whose own counters hold it).
    pub to_pod: PacketCount,
}

/// Packets and bytes, the value of the per-CPU `DROPS` and `COUNTERS` arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PacketCount>() == 16);
const _: () = assert!(core::mem::size_of::<EndpointStats>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data `#[repr(C)]` structs with explicit padding.
    unsafe impl aya::Pod for super::IpKey {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::EndpointV4 {}
    unsafe impl aya::Pod for super::PacketCount {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::NodeConfigV6 {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::NatEntry {}
    unsafe impl aya::Pod for super::HostPortKey {}
    unsafe impl aya::Pod for super::HostPortTarget {}
    unsafe impl aya::Pod for super::HostPortSockKey {}
    unsafe impl aya::Pod for super::HostPortFlow {}
    unsafe impl aya::Pod for super::RateLimit {}
    unsafe impl aya::Pod for super::EndpointStats {}
    unsafe impl aya::Pod for super::Peer {}
    unsafe impl aya::Pod for super::TunnelConfig {}
}
