//! The node every test starts from: two pods on host veths, a node address
//! on the uplink, an outside host, another node's pod, a service range.
//! Pod A's host veth is `lo` (ifindex 1): the device test_run gives the
//! packet, so `from_pod` sees A's packets arriving where A's entry says.

use std::net::Ipv4Addr;

use cni_ebpf_common::{
    CtState, ENDPOINT_F_HOST_PORTS, Endpoint, FlowKey, IpKey, NODE_F_MASQUERADE, NODE_F_SERVICES,
    NatEntry, NodeConfig,
};

use crate::harness::{Datapath, LO_IFINDEX};

pub const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub const POD_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
pub const HOST_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0xfe];
pub const HOST_A_IFINDEX: u32 = LO_IFINDEX;
pub const OWNER_A: u64 = 0xa;

pub const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
pub const POD_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
pub const HOST_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0xfe];
/// B's host veth: only ever a redirect target, which test_run does not
/// look up.
pub const HOST_B_IFINDEX: u32 = 7;
pub const OWNER_B: u64 = 0xb;

/// The node's address on the uplink, and the masquerade address.
pub const NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const UPLINK_IFINDEX: u32 = 9;
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xee, 0x01];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xee, 0x02];

/// A host outside the cluster.
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// A pod on another node, inside the cluster CIDR (no masquerade).
pub const OTHER_NODE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
pub const CLUSTER_CIDR: (Ipv4Addr, u32) = (Ipv4Addr::new(10, 244, 0, 0), 16);
pub const SERVICE_CIDR: (Ipv4Addr, u32) = (Ipv4Addr::new(10, 96, 0, 0), 12);
pub const DNS_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Ports the translation may pick when a flow's own is taken.
pub const NAT_PORT_MIN: u16 = 61000;

pub fn key(addr: Ipv4Addr) -> IpKey {
    IpKey::v4(addr.octets())
}

pub fn pod_a() -> Endpoint {
    Endpoint {
        ifindex: HOST_A_IFINDEX,
        flags: 0,
        pod_mac: POD_A_MAC,
        host_mac: HOST_A_MAC,
        owner: OWNER_A,
        ..Default::default()
    }
}

pub fn pod_b() -> Endpoint {
    Endpoint {
        ifindex: HOST_B_IFINDEX,
        flags: 0,
        pod_mac: POD_B_MAC,
        host_mac: HOST_B_MAC,
        owner: OWNER_B,
        ..Default::default()
    }
}

/// Pods A and B, with their traffic counters, and the node's address; no
/// uplink (`NODE_CONFIG` all zero, as before the plugin writes it).
pub fn pods(dp: &mut Datapath) {
    dp.add_endpoint(key(POD_A), pod_a());
    dp.add_endpoint(key(POD_B), pod_b());
    dp.add_endpoint_stats(HOST_A_IFINDEX);
    dp.add_endpoint_stats(HOST_B_IFINDEX);
    dp.add_node_addr(key(NODE));
}

/// The node's settings with an uplink and `flags`; the cluster CIDR is
/// excluded from masquerade. `nat_port_max` = min: one port to retry with.
pub fn uplink(dp: &mut Datapath, flags: u32) {
    dp.set_node_config(NodeConfig {
        masq_addr: key(NODE).addr,
        uplink_ifindex: UPLINK_IFINDEX,
        flags,
        nat_port_min: NAT_PORT_MIN,
        nat_port_max: NAT_PORT_MIN,
        nat_max_flows: 100,
        ..Default::default()
    });
    dp.add_no_masq(key(CLUSTER_CIDR.0), CLUSTER_CIDR.1);
}

/// Pods, a masquerading uplink.
pub fn masquerading_node(dp: &mut Datapath) {
    pods(dp);
    uplink(dp, NODE_F_MASQUERADE);
}

/// Pods, a masquerading uplink, and netfilter services (kube-proxy).
pub fn services_node(dp: &mut Datapath) {
    pods(dp);
    uplink(dp, NODE_F_MASQUERADE | NODE_F_SERVICES);
    dp.add_service_cidr(key(SERVICE_CIDR.0), SERVICE_CIDR.1);
}

/// Sets `flags` on the endpoint at `addr` as well.
pub fn flag(dp: &mut Datapath, addr: Ipv4Addr, flags: u32) {
    let mut endpoint = dp.endpoint(key(addr));
    endpoint.flags |= flags;
    dp.add_endpoint(key(addr), endpoint);
}

/// A publishes host ports.
pub fn publishes(dp: &mut Datapath) {
    flag(dp, POD_A, ENDPOINT_F_HOST_PORTS);
}

/// A flow's key as the datapath writes it (ports in network order).
pub fn flow(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: key(src).addr,
        dst: key(dst).addr,
        src_port: sport.to_be(),
        dst_port: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

/// A NAT map value as the datapath writes it, without its timestamp.
pub fn nat_entry(addr: Ipv4Addr, port: u16, state: CtState) -> NatEntry {
    NatEntry {
        addr: key(addr).addr,
        port: port.to_be(),
        state: state as u8,
        ..Default::default()
    }
}

/// `entry` without its timestamp, which must have been set.
pub fn untimed(entry: Option<NatEntry>) -> Option<NatEntry> {
    entry.map(|entry| {
        assert_ne!(entry.last_seen_ns, 0, "the entry's timestamp is set");
        NatEntry {
            last_seen_ns: 0,
            ..entry
        }
    })
}
