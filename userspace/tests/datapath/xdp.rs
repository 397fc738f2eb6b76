//! `xdp_uplink`: what XDP translates and redirects into a pod's host veth
//! before a socket buffer exists, for IPv4 and IPv6 (replies of masqueraded
//! flows, connections to host ports, traffic for a pod from other nodes),
//! and what it passes on untouched to `from_uplink`.

use std::net::Ipv6Addr;

use cni_ebpf_common::{
    CtState, ENDPOINT_F_HOST_PORTS, ENDPOINT_F_RATE_LIMITED, ENDPOINT_F_XDP_TARGET, FlowKey,
    HostPortKey, HostPortTarget, IPPROTO_TCP, IPPROTO_UDP, IpKey, NODE_F_MASQUERADE, NatEntry,
    NodeConfigV6,
    wire::{TCP_ACK, TCP_SYN},
};

use crate::{
    harness::{Datapath, XDP_PASS, XDP_REDIRECT, counted, with_datapath},
    ipv6::{NODE6, OTHER_NODE_POD6, POD_A6, REMOTE6, dual_stack_pods, key6, uplink6},
    packet::{Frame, Frame6, L4, L4v6, assert_checksums_valid, assert_ipv6_checksum_valid},
    world::*,
};

const NODE_PORT: u16 = 61000;
const POD_SPORT: u16 = 40000;
const HOST_PORT: u16 = 8080;
const POD_PORT: u16 = 80;

/// Dual-stack pods whose veths take XDP frames, an uplink masquerading
/// both families to the node's address of each.
fn xdp_node(dp: &mut Datapath) {
    dual_stack_pods(dp);
    uplink6(dp, NODE_F_MASQUERADE);
    dp.set_node_config_v6(NodeConfigV6 {
        masq_addr: NODE6.octets(),
        flags: NODE_F_MASQUERADE,
        ..NodeConfigV6::default()
    });
    for key in [key(POD_A), key6(POD_A6), key(POD_B)] {
        set_flags(dp, key, ENDPOINT_F_XDP_TARGET);
    }
}

fn set_flags(dp: &mut Datapath, key: IpKey, flags: u32) {
    let mut endpoint = dp.endpoint(key);
    endpoint.flags |= flags;
    dp.add_endpoint(key, endpoint);
}

fn flow6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: src.octets(),
        dst: dst.octets(),
        src_port: sport.to_be(),
        dst_port: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

fn nat_entry6(addr: Ipv6Addr, port: u16, state: CtState) -> NatEntry {
    NatEntry {
        addr: addr.octets(),
        port: port.to_be(),
        state: state as u8,
        ..Default::default()
    }
}

/// A's flow to `REMOTE6:80` masqueraded to `NODE6:NODE_PORT`.
fn masqueraded_flow6(dp: &mut Datapath, proto: u8, state: CtState) {
    dp.insert_nat_in(
        flow6(REMOTE6, 80, NODE6, NODE_PORT, proto),
        nat_entry6(POD_A6, POD_SPORT, state),
    );
}

fn to_node6(l4: L4v6) -> Frame6 {
    Frame6::new(ROUTER_MAC, UPLINK_MAC, REMOTE6, NODE6, l4)
}

/// `received` as XDP hands it to pod A's host veth: to A's address, `l4`
/// with the pod's port, one hop older, between A's host veth and A.
fn delivered_to_a6(received: &Frame6, l4: L4v6) -> Frame6 {
    Frame6 {
        dst: POD_A6,
        l4,
        ..received.forwarded(HOST_A_MAC, POD_A_MAC)
    }
}

/// The counters of one frame XDP delivered (a reply of a masqueraded flow
/// counted as such too), in the order `counts()` lists them.
fn xdp_delivered(nat_reply: bool) -> Vec<(String, u64)> {
    if nat_reply {
        counted(&[
            ("local-delivery", 1),
            ("nat-reply", 1),
            ("xdp-delivered", 1),
        ])
    } else {
        counted(&[("local-delivery", 1), ("xdp-delivered", 1)])
    }
}

#[test]
fn ipv6_replies_of_masqueraded_flows_are_translated_and_redirected() {
    with_datapath(|dp| {
        xdp_node(dp);
        masqueraded_flow6(dp, IPPROTO_UDP, CtState::Udp);
        let reply = to_node6(L4v6::Udp {
            sport: 80,
            dport: NODE_PORT,
        });
        let (action, frame) = dp.run_xdp(&reply.bytes());
        assert_eq!(action, XDP_REDIRECT);
        let expected = delivered_to_a6(
            &reply,
            L4v6::Udp {
                sport: 80,
                dport: POD_SPORT,
            },
        );
        assert_eq!(frame, expected.bytes());
        assert_ipv6_checksum_valid(&frame);
        assert_eq!(dp.counts(), xdp_delivered(true));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (0, 1));
    });
    with_datapath(|dp| {
        xdp_node(dp);
        masqueraded_flow6(dp, IPPROTO_TCP, CtState::TcpSynSent);
        let reply = to_node6(L4v6::Tcp {
            sport: 80,
            dport: NODE_PORT,
            flags: TCP_SYN | TCP_ACK,
        });
        let (action, frame) = dp.run_xdp(&reply.bytes());
        assert_eq!(action, XDP_REDIRECT);
        let expected = delivered_to_a6(
            &reply,
            L4v6::Tcp {
                sport: 80,
                dport: POD_SPORT,
                flags: TCP_SYN | TCP_ACK,
            },
        );
        assert_eq!(frame, expected.bytes());
        assert_ipv6_checksum_valid(&frame);
        // The connection's state follows, as in the tc program.
        assert_eq!(
            untimed(dp.nat_in(&flow6(REMOTE6, 80, NODE6, NODE_PORT, IPPROTO_TCP))).map(|e| e.state),
            Some(CtState::TcpEstablished as u8)
        );
    });
}

#[test]
fn ipv6_connections_to_a_host_port_are_translated_and_redirected() {
    with_datapath(|dp| {
        xdp_node(dp);
        dp.add_host_port(
            HostPortKey {
                host_addr: NODE6.octets(),
                port: HOST_PORT.to_be(),
                proto: IPPROTO_TCP,
                wildcard: 0,
            },
            HostPortTarget {
                pod_addr: POD_A6.octets(),
                pod_port: POD_PORT.to_be(),
                _pad: [0; 6],
                owner: OWNER_A,
            },
        );
        set_flags(dp, key6(POD_A6), ENDPOINT_F_HOST_PORTS);
        let syn = to_node6(L4v6::Tcp {
            sport: POD_SPORT,
            dport: HOST_PORT,
            flags: TCP_SYN,
        });
        let (action, frame) = dp.run_xdp(&syn.bytes());
        assert_eq!(action, XDP_REDIRECT);
        let expected = delivered_to_a6(
            &syn,
            L4v6::Tcp {
                sport: POD_SPORT,
                dport: POD_PORT,
                flags: TCP_SYN,
            },
        );
        assert_eq!(frame, expected.bytes());
        assert_ipv6_checksum_valid(&frame);
        assert_eq!(dp.counts(), xdp_delivered(false));
        // No masquerade flow was made for it.
        assert_eq!(dp.nat_flows(), 0);
    });
}

#[test]
fn ipv6_from_other_nodes_pods_is_redirected_into_the_pod() {
    with_datapath(|dp| {
        xdp_node(dp);
        let packet = Frame6::new(
            ROUTER_MAC,
            UPLINK_MAC,
            OTHER_NODE_POD6,
            POD_A6,
            L4v6::Udp {
                sport: 5000,
                dport: 6000,
            },
        );
        let (action, frame) = dp.run_xdp(&packet.bytes());
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(frame, packet.forwarded(HOST_A_MAC, POD_A_MAC).bytes());
        assert_eq!(dp.counts(), xdp_delivered(false));
    });
}

#[test]
fn ipv6_that_xdp_cannot_do_passes_untouched_to_tc() {
    with_datapath(|dp| {
        xdp_node(dp);
        masqueraded_flow6(dp, IPPROTO_UDP, CtState::Udp);
        let udp_reply = L4v6::Udp {
            sport: 80,
            dport: NODE_PORT,
        };
        let last_hop = Frame6 {
            hop_limit: 1,
            ..to_node6(udp_reply.clone())
        };
        // B's veth takes no XDP frames.
        let for_b_v6 = Frame6::new(
            ROUTER_MAC,
            UPLINK_MAC,
            OTHER_NODE_POD6,
            crate::ipv6::POD_B6,
            udp_reply.clone(),
        );
        let cases = [
            ("echo reply", to_node6(L4v6::EchoReply { id: 7, seq: 1 })),
            ("hop limit 1", last_hop),
            ("no XDP target", for_b_v6),
            (
                "the node's own",
                to_node6(L4v6::Udp {
                    sport: 80,
                    dport: 9999,
                }),
            ),
        ];
        for (what, packet) in cases {
            let bytes = packet.bytes();
            assert_eq!(dp.run_xdp(&bytes), (XDP_PASS, bytes), "{what}");
        }
        // A rate-limited pod is charged by the tc program.
        set_flags(dp, key6(POD_A6), ENDPOINT_F_RATE_LIMITED);
        let bytes = to_node6(udp_reply).bytes();
        assert_eq!(dp.run_xdp(&bytes), (XDP_PASS, bytes), "rate-limited");
        assert!(dp.counts().is_empty(), "{:?}", dp.counts());
    });
}

#[test]
fn ipv4_replies_of_masqueraded_flows_are_translated_and_redirected() {
    with_datapath(|dp| {
        xdp_node(dp);
        dp.insert_nat_in(
            flow(REMOTE, 80, NODE, NODE_PORT, IPPROTO_UDP),
            nat_entry(POD_A, POD_SPORT, CtState::Udp),
        );
        let reply = Frame::new(
            ROUTER_MAC,
            UPLINK_MAC,
            REMOTE,
            NODE,
            L4::Udp {
                sport: 80,
                dport: NODE_PORT,
                checksum: true,
            },
        );
        let (action, frame) = dp.run_xdp(&reply.bytes());
        assert_eq!(action, XDP_REDIRECT);
        let expected = Frame {
            dst: POD_A,
            l4: L4::Udp {
                sport: 80,
                dport: POD_SPORT,
                checksum: true,
            },
            ..reply.forwarded(HOST_A_MAC, POD_A_MAC)
        };
        assert_eq!(frame, expected.bytes());
        assert_checksums_valid(&frame);
        assert_eq!(dp.counts(), xdp_delivered(true));
    });
}
