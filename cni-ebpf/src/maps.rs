//! Every map of the datapath, pinned by name under `<bpffs root>/maps`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use cni_ebpf_common::{
    COUNTER_SLOTS, DROP_SLOTS, ENDPOINT_V4_SLOTS, Endpoint, EndpointStats, EndpointV4, FlowKey,
    HostPortFlow, HostPortKey, HostPortSockKey, HostPortTarget, IpKey, MAX_ENDPOINTS,
    MAX_HOST_PORT_FLOWS, MAX_HOST_PORT_SOCKS, MAX_HOST_PORTS, MAX_NAT_FLOWS, MAX_NETFILTER_FLOWS,
    MAX_NO_MASQ, MAX_NODE_ADDRS, MAX_PEERS, MAX_SERVICE_CIDRS, NatEntry, NodeConfig, NodeConfigV6,
    PacketCount, Peer, RateLimit, STATS_SLOTS, TunnelConfig,
};

/// Pod addresses on this node -> their interface.
#[map]
pub static ENDPOINTS: HashMap<IpKey, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// An IPv4 address as the maps' 16-byte key (`IpKey::v4`, IPv4-mapped),
/// built in 4-byte words on an 8-byte aligned slot: built as bytes, LLVM
/// makes it with a call to a byte-wise `memset`.
#[repr(C, align(8))]
pub struct KeyV4([u32; 4]);

impl KeyV4 {
    #[inline(always)]
    pub fn new(addr: [u8; 4]) -> Self {
        const MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        Self([0, 0, MAPPED, u32::from_ne_bytes(addr)])
    }

    #[inline(always)]
    pub fn key(&self) -> &IpKey {
        // SAFETY: 16 bytes laid out as `IpKey::v4`, and more aligned.
        unsafe { &*(&raw const *self).cast::<IpKey>() }
    }
}

const _: () = assert!(core::mem::size_of::<KeyV4>() == core::mem::size_of::<IpKey>());

/// IPv4 endpoints again, each at the slot of its address's low 12 bits
/// (`EndpointV4` says how the plugin writes them): an array lookup where
/// `ENDPOINTS` costs a hash lookup, on every packet between pods.
#[map]
pub static ENDPOINTS_V4: Array<EndpointV4> = Array::pinned(ENDPOINT_V4_SLOTS, 0);

/// The endpoint with IPv4 address `addr`: a pointer into its live slot of
/// `ENDPOINTS_V4`, else into `ENDPOINTS` (addresses that share their slot
/// with another, or a slot being rewritten); read in place.
#[inline(always)]
pub fn endpoint_v4(addr: [u8; 4]) -> Option<*const Endpoint> {
    if let Some(slot) = endpoint_slot_v4(addr) {
        // SAFETY: a live map value.
        return Some(unsafe { &raw const (*slot).endpoint });
    }
    ENDPOINTS.get_ptr(KeyV4::new(addr).key())
}

/// The slot of `ENDPOINTS_V4` that holds `addr`, if it is live.
#[inline(always)]
pub fn endpoint_slot_v4(addr: [u8; 4]) -> Option<*mut EndpointV4> {
    let slot = ENDPOINTS_V4.get_ptr_mut(cni_ebpf_common::endpoint_v4_index(addr))?;
    // SAFETY: array values stay allocated; `live` is only set once the rest
    // of the slot is written (`EndpointV4`). Read once, and the rest of the
    // slot only behind the branch on it: the compiler cannot hoist those
    // reads (nothing tells it the pointer is dereferenceable), and x86 does
    // not reorder loads with loads. (A compiler fence is no help here: the
    // BPF backend cannot select one.)
    let live = unsafe { core::ptr::read_volatile(&raw const (*slot).live) };
    if live == 0 {
        return None;
    }
    // SAFETY: as above.
    let held = unsafe { (*slot).addr };
    (u32::from_ne_bytes(held) == u32::from_ne_bytes(addr)).then_some(slot)
}

/// Dropped packets by reason and direction.
#[map]
pub static DROPS: PerCpuArray<PacketCount> = PerCpuArray::pinned(DROP_SLOTS, 0);

/// Packets the datapath passed on, by verdict.
#[map]
pub static COUNTERS: PerCpuArray<PacketCount> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// The node's settings (one entry), written by the plugin.
#[map]
pub static NODE_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

/// The node's IPv6 settings (one entry), written by the plugin.
#[map]
pub static NODE_CONFIG_V6: Array<NodeConfigV6> = Array::pinned(1, 0);

/// The node's own addresses: pod traffic to them goes to the node's stack.
#[map]
pub static NODE_ADDRS: HashMap<IpKey, u8> = HashMap::pinned(MAX_NODE_ADDRS, 0);

/// Destinations that keep the pod's source address (cluster CIDRs).
/// `BPF_F_NO_PREALLOC` is mandatory for LPM tries.
#[map]
pub static NO_MASQ: LpmTrie<[u8; 16], u8> = LpmTrie::pinned(MAX_NO_MASQ, 1);

/// Masqueraded flows as the pod sends them -> the translated source.
#[map]
pub static NAT_OUT: LruHashMap<FlowKey, NatEntry> = LruHashMap::pinned(MAX_NAT_FLOWS, 0);

/// Replies as they arrive at the node -> the pod's address and port.
#[map]
pub static NAT_IN: LruHashMap<FlowKey, NatEntry> = LruHashMap::pinned(MAX_NAT_FLOWS, 0);

/// Live translated flows (slot 0), against `NodeConfig::nat_max_flows`;
/// the agent's garbage collection rewrites it with the true count.
#[map]
pub static NAT_FLOWS: Array<u64> = Array::pinned(1, 0);

/// Published host ports -> the pod port behind them.
#[map]
pub static HOST_PORTS: HashMap<HostPortKey, HostPortTarget> = HashMap::pinned(MAX_HOST_PORTS, 0);

/// The node's UDP sockets sent to a pod port instead of a host port -> the
/// host address and port they sent to (answers show it as their source).
#[map]
pub static HOST_PORT_SOCK: LruHashMap<HostPortSockKey, HostPortKey> =
    LruHashMap::pinned(MAX_HOST_PORT_SOCKS, 0);

/// Connections through host ports, keyed by the reply as the pod sends it.
#[map]
pub static HOST_PORT_CT: LruHashMap<FlowKey, HostPortFlow> =
    LruHashMap::pinned(MAX_HOST_PORT_FLOWS, 0);

/// Published ports on specific addresses, counted by protocol and port: lets
/// the plugin refuse a conflicting mapping in O(1). Not read by programs.
#[map]
pub static HOST_PORT_USE: HashMap<u32, u32> = HashMap::pinned(MAX_HOST_PORTS, 0);

/// Bandwidth limits by endpoint owner.
#[map]
pub static RATE_LIMITS: HashMap<u64, RateLimit> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Per-endpoint traffic by host veth ifindex, for endpoints without a slot
/// in `ENDPOINT_COUNTERS`; entries are made by the plugin.
#[map]
pub static ENDPOINT_STATS: PerCpuHashMap<u32, EndpointStats> =
    PerCpuHashMap::pinned(MAX_ENDPOINTS, 0);

/// Per-endpoint traffic at the slot the endpoint names
/// (`Endpoint::stats_slot`): an array lookup the verifier inlines, where
/// `ENDPOINT_STATS` costs a hash lookup per packet.
#[map]
pub static ENDPOINT_COUNTERS: PerCpuArray<EndpointStats> = PerCpuArray::pinned(STATS_SLOTS, 0);

/// Which host veth holds each slot of `ENDPOINT_COUNTERS` (slot -> its
/// ifindex): the plugin claims a slot by inserting with `BPF_NOEXIST`, so
/// two ADDs never share one. Not read by programs.
#[map]
pub static ENDPOINT_SLOTS: HashMap<u32, u32> = HashMap::pinned(STATS_SLOTS, 0);

/// Service addresses (ClusterIP ranges, externalIPs, LoadBalancer IPs):
/// pod traffic to them goes to the node's stack, where netfilter (kube-proxy)
/// translates it. Read only on nodes with `NODE_F_SERVICES`.
#[map]
pub static SERVICES: LpmTrie<[u8; 16], u8> = LpmTrie::pinned(MAX_SERVICE_CIDRS, 1);

/// Flows netfilter translated, keyed by the packet that must go back
/// through it (the reply, as the pod or the uplink sees it); written where
/// the stack hands such a flow's packets to a pod or to the uplink.
#[map]
pub static NETFILTER_FLOWS: LruHashMap<FlowKey, u8> = LruHashMap::pinned(MAX_NETFILTER_FLOWS, 0);

/// Other nodes by pod CIDR: how their pods are reached.
#[map]
pub static PEERS: LpmTrie<[u8; 16], Peer> = LpmTrie::pinned(MAX_PEERS, 1);

/// The node's VXLAN tunnel (one entry), written by the agent.
#[map]
pub static TUNNEL: Array<TunnelConfig> = Array::pinned(1, 0);
