//! IPv6 translations: masquerade in `from_pod` (TCP, UDP, ICMPv6 echo by
//! identifier) and the reverse translation in `from_uplink` (replies, and
//! ICMPv6 errors whose quoted packet goes back to the pod's address and
//! port), host ports published on an IPv6 address or on every one. Every
//! expected frame is built from scratch, checksums included.

use std::net::Ipv6Addr;

use cni_ebpf_common::{
    CtState, ENDPOINT_F_HOST_PORTS, FlowKey, HostPortKey, HostPortTarget, IPPROTO_TCP, IPPROTO_UDP,
    IpKey, NODE_F_MASQUERADE, NatEntry, NodeConfigV6,
    program_names::{FROM_POD, FROM_UPLINK},
    wire::{
        ETH_LEN, ICMPV6_DEST_UNREACH, ICMPV6_PACKET_TOO_BIG, ICMPV6_TIME_EXCEEDED, IPPROTO_ICMPV6,
        TCP_ACK, TCP_SYN,
    },
};

use crate::{
    harness::{
        Datapath, Outcome, Skb, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, counted, with_datapath,
    },
    ipv6::{NODE6, OTHER_NODE_POD6, POD_A6, POD_B6, REMOTE6, dual_stack_pods, key6, uplink6},
    node_sockets::{in_own_netns, tcp_connection, udp_connected},
    packet::{Frame6, L4v6, assert_ipv6_checksum_valid, assert_ipv6_error_checksums_valid},
    world::*,
};

const SPORT: u16 = 40000;
const HOST_PORT: u16 = 8080;
const POD_PORT: u16 = 80;

/// Dual-stack pods, an uplink masquerading both families to the node's
/// address of each.
fn masquerading_node6(dp: &mut Datapath) {
    dual_stack_pods(dp);
    uplink6(dp, NODE_F_MASQUERADE);
    dp.set_node_config_v6(NodeConfigV6 {
        masq_addr: NODE6.octets(),
        flags: NODE_F_MASQUERADE,
        ..NodeConfigV6::default()
    });
}

fn from_a(dst: Ipv6Addr, l4: L4v6) -> Frame6 {
    Frame6::new(POD_A_MAC, HOST_A_MAC, POD_A6, dst, l4)
}

fn to_node(l4: L4v6) -> Frame6 {
    Frame6::new(ROUTER_MAC, UPLINK_MAC, REMOTE6, NODE6, l4)
}

fn send(dp: &mut Datapath, frame: &Frame6) -> Outcome {
    dp.run(FROM_POD, &frame.bytes(), Skb::default())
}

fn receive(dp: &mut Datapath, frame: &Frame6) -> Outcome {
    dp.run(FROM_UPLINK, &frame.bytes(), Skb::default())
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4v6 {
    L4v6::Tcp {
        sport,
        dport,
        flags,
    }
}

fn udp(sport: u16, dport: u16) -> L4v6 {
    L4v6::Udp { sport, dport }
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

/// `sent` as it leaves the uplink: from the node's address, `l4` with the
/// translated port, one hop older (the kernel fills the MACs in).
fn masqueraded(sent: &Frame6, l4: L4v6) -> Frame6 {
    Frame6 {
        src: NODE6,
        l4,
        ..sent.forwarded(sent.eth_src, sent.eth_dst)
    }
}

/// `received` as it is delivered into pod A: to A's address, `l4` with the
/// pod's port, one hop older, between A's host veth and A.
fn delivered_to_a(received: &Frame6, l4: L4v6) -> Frame6 {
    Frame6 {
        dst: POD_A6,
        l4,
        ..received.forwarded(HOST_A_MAC, POD_A_MAC)
    }
}

/// Takes `port` on the node towards `REMOTE6:dport` for another flow.
fn take_port(dp: &mut Datapath, dport: u16, port: u16, proto: u8) {
    dp.insert_nat_in(
        flow6(REMOTE6, dport, NODE6, port, proto),
        nat_entry6(POD_B6_UNUSED, port, CtState::Udp),
    );
}

/// The holder of a taken port in [`take_port`]: any address but A's.
const POD_B6_UNUSED: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 1, 0, 0, 0, 0x99);

#[test]
fn tcp_is_masqueraded_to_the_nodes_ipv6_address_and_the_reply_comes_back() {
    with_datapath(|dp| {
        masquerading_node6(dp);
        let syn = from_a(REMOTE6, tcp(SPORT, 80, TCP_SYN));
        let out = send(dp, &syn);
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(
            out.frame,
            masqueraded(&syn, tcp(SPORT, 80, TCP_SYN)).bytes()
        );
        assert_ipv6_checksum_valid(&out.frame);
        assert_eq!(
            untimed(dp.nat_out(&flow6(POD_A6, SPORT, REMOTE6, 80, IPPROTO_TCP))),
            Some(nat_entry6(NODE6, SPORT, CtState::TcpSynSent))
        );
        assert_eq!(
            untimed(dp.nat_in(&flow6(REMOTE6, 80, NODE6, SPORT, IPPROTO_TCP))),
            Some(nat_entry6(POD_A6, SPORT, CtState::TcpSynSent))
        );
        assert_eq!(dp.nat_flows(), 1);

        let reply = to_node(tcp(80, SPORT, TCP_SYN | TCP_ACK));
        let out = receive(dp, &reply);
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(
            out.frame,
            delivered_to_a(&reply, tcp(80, SPORT, TCP_SYN | TCP_ACK)).bytes()
        );
        assert_ipv6_checksum_valid(&out.frame);
        assert_eq!(
            untimed(dp.nat_in(&flow6(REMOTE6, 80, NODE6, SPORT, IPPROTO_TCP))).map(|e| e.state),
            Some(CtState::TcpEstablished as u8)
        );
        assert_eq!(
            dp.counts(),
            counted(&[
                ("local-delivery", 1),
                ("forwarded", 1),
                ("nat-new-flow", 1),
                ("nat-reply", 1)
            ])
        );
    });
}

#[test]
fn udp_on_a_taken_port_is_retried_and_translated_both_ways() {
    with_datapath(|dp| {
        masquerading_node6(dp);
        take_port(dp, 53, SPORT, IPPROTO_UDP);
        let sent = from_a(REMOTE6, udp(SPORT, 53));
        let out = send(dp, &sent);
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(out.frame, masqueraded(&sent, udp(NAT_PORT_MIN, 53)).bytes());
        assert_ipv6_checksum_valid(&out.frame);
        let answer = to_node(udp(53, NAT_PORT_MIN));
        let out = receive(dp, &answer);
        assert_eq!(out.frame, delivered_to_a(&answer, udp(53, SPORT)).bytes());
        assert_ipv6_checksum_valid(&out.frame);
        assert_eq!(
            dp.counts(),
            counted(&[
                ("local-delivery", 1),
                ("forwarded", 1),
                ("nat-new-flow", 1),
                ("nat-port-retry", 1),
                ("nat-reply", 1)
            ])
        );
    });
}

#[test]
fn a_port_of_the_nodes_own_sockets_is_never_kept() {
    // IPv6's twin of `masquerade::a_port_of_the_nodes_own_sockets_is_never_kept`:
    // a connection of the node from NODE6:SPORT to REMOTE6:80 and a UDP
    // socket of the node at SPORT keep pod flows off SPORT towards them.
    with_datapath(|dp| {
        in_own_netns(&[NODE6.into(), REMOTE6.into()], || {
            masquerading_node6(dp);
            let _tcp = tcp_connection((NODE6, SPORT).into(), (REMOTE6, 80).into());
            let _udp = udp_connected((NODE6, SPORT).into(), (REMOTE6, 53).into());
            for (l4, moved, proto, dport, state) in [
                (
                    tcp(SPORT, 80, TCP_SYN),
                    tcp(NAT_PORT_MIN, 80, TCP_SYN),
                    IPPROTO_TCP,
                    80,
                    CtState::TcpSynSent,
                ),
                (
                    udp(SPORT, 53),
                    udp(NAT_PORT_MIN, 53),
                    IPPROTO_UDP,
                    53,
                    CtState::Udp,
                ),
            ] {
                let sent = from_a(REMOTE6, l4);
                let out = send(dp, &sent);
                assert_eq!(out.action, TC_ACT_REDIRECT);
                assert_eq!(out.frame, masqueraded(&sent, moved).bytes());
                assert_ipv6_checksum_valid(&out.frame);
                assert_eq!(
                    untimed(dp.nat_in(&flow6(REMOTE6, dport, NODE6, NAT_PORT_MIN, proto))),
                    Some(nat_entry6(POD_A6, SPORT, state))
                );
                assert_eq!(dp.nat_in(&flow6(REMOTE6, dport, NODE6, SPORT, proto)), None);
            }
            // Towards another port of the server, the pod's port is free.
            let sent = from_a(REMOTE6, tcp(SPORT, 81, TCP_SYN));
            assert_eq!(
                send(dp, &sent).frame,
                masqueraded(&sent, tcp(SPORT, 81, TCP_SYN)).bytes()
            );
            assert_eq!(
                dp.counts(),
                counted(&[("forwarded", 3), ("nat-new-flow", 3), ("nat-port-retry", 2)])
            );
        })
    });
}

#[test]
fn echo_is_masqueraded_by_its_identifier_and_only_replies_come_back() {
    with_datapath(|dp| {
        masquerading_node6(dp);
        take_port(dp, 0, SPORT, IPPROTO_ICMPV6);
        let ping = from_a(REMOTE6, L4v6::Echo { id: SPORT, seq: 1 });
        let out = send(dp, &ping);
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(
            out.frame,
            masqueraded(
                &ping,
                L4v6::Echo {
                    id: NAT_PORT_MIN,
                    seq: 1
                }
            )
            .bytes()
        );
        assert_ipv6_checksum_valid(&out.frame);
        assert_eq!(
            untimed(dp.nat_out(&flow6(POD_A6, SPORT, REMOTE6, 0, IPPROTO_ICMPV6))),
            Some(nat_entry6(NODE6, NAT_PORT_MIN, CtState::Icmp))
        );
        // An echo request from outside with the translated identifier is
        // the node's own: not a reply.
        let request = to_node(L4v6::Echo {
            id: NAT_PORT_MIN,
            seq: 9,
        });
        let out = receive(dp, &request);
        assert_eq!((out.action, out.frame), (TC_ACT_OK, request.bytes()));
        let reply = to_node(L4v6::EchoReply {
            id: NAT_PORT_MIN,
            seq: 1,
        });
        let out = receive(dp, &reply);
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(
            out.frame,
            delivered_to_a(&reply, L4v6::EchoReply { id: SPORT, seq: 1 }).bytes()
        );
        assert_ipv6_checksum_valid(&out.frame);
        assert_eq!(
            dp.counts(),
            counted(&[
                ("local-delivery", 1),
                ("forwarded", 1),
                ("nat-new-flow", 1),
                ("nat-port-retry", 1),
                ("nat-reply", 1)
            ])
        );
    });
}

#[test]
fn icmpv6_errors_about_a_masqueraded_flow_reach_the_pod_translated() {
    with_datapath(|dp| {
        masquerading_node6(dp);
        // Two flows whose own ports are taken: the quote carries the
        // translated port, which must go back too.
        take_port(dp, 53, SPORT, IPPROTO_UDP);
        take_port(dp, 80, SPORT, IPPROTO_TCP);
        let flows = [
            (udp(SPORT, 53), udp(NAT_PORT_MIN, 53)),
            (tcp(SPORT, 80, TCP_SYN), tcp(NAT_PORT_MIN, 80, TCP_SYN)),
        ];
        for (pod_side, _) in &flows {
            let out = send(dp, &from_a(REMOTE6, pod_side.clone()));
            assert_eq!(out.action, TC_ACT_REDIRECT);
        }
        for (pod_side, node_side) in flows {
            for kind in [
                ICMPV6_DEST_UNREACH,
                ICMPV6_PACKET_TOO_BIG,
                ICMPV6_TIME_EXCEEDED,
            ] {
                let quoted = Frame6::new(UPLINK_MAC, ROUTER_MAC, NODE6, REMOTE6, node_side.clone())
                    .forwarded(UPLINK_MAC, ROUTER_MAC);
                let error = to_node(L4v6::IcmpError {
                    kind,
                    quote: quoted.ip_packet(),
                });
                let out = receive(dp, &error);
                assert_eq!(out.action, TC_ACT_REDIRECT, "ICMPv6 type {kind}");
                let original = Frame6 {
                    src: POD_A6,
                    l4: pod_side.clone(),
                    ..quoted.clone()
                };
                let expected = delivered_to_a(
                    &error,
                    L4v6::IcmpError {
                        kind,
                        quote: original.ip_packet(),
                    },
                );
                assert_eq!(out.frame, expected.bytes(), "ICMPv6 type {kind}");
                assert_ipv6_error_checksums_valid(&out.frame);
            }
        }
        assert_eq!(
            dp.counts(),
            counted(&[
                ("local-delivery", 6),
                ("forwarded", 2),
                ("nat-new-flow", 2),
                ("nat-port-retry", 2),
                ("nat-reply", 6)
            ])
        );
    });
}

#[test]
fn errors_and_replies_of_no_flow_are_the_nodes() {
    with_datapath(|dp| {
        masquerading_node6(dp);
        let stray = to_node(udp(53, SPORT));
        let quoted = Frame6::new(UPLINK_MAC, ROUTER_MAC, NODE6, REMOTE6, udp(SPORT, 53));
        let error = to_node(L4v6::IcmpError {
            kind: ICMPV6_DEST_UNREACH,
            quote: quoted.ip_packet(),
        });
        for frame in [stray, error] {
            let out = receive(dp, &frame);
            assert_eq!((out.action, out.frame), (TC_ACT_OK, frame.bytes()));
        }
        assert_eq!(dp.counts(), counted(&[]));
    });
}

#[test]
fn ipv6_keeps_its_source_without_ipv6_masquerade_or_inside_the_cluster() {
    with_datapath(|dp| {
        // IPv4 masquerades, IPv6 does not (`ipMasqV6: false`): routed as is.
        dual_stack_pods(dp);
        uplink6(dp, NODE_F_MASQUERADE);
        let sent = from_a(REMOTE6, udp(SPORT, 53));
        let out = send(dp, &sent);
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(out.frame, sent.forwarded(POD_A_MAC, HOST_A_MAC).bytes());
        // With IPv6 masquerade, the cluster CIDR still keeps the source.
        masquerading_node6(dp);
        let inside = from_a(OTHER_NODE_POD6, udp(SPORT, 53));
        let out = send(dp, &inside);
        assert_eq!(out.frame, inside.forwarded(POD_A_MAC, HOST_A_MAC).bytes());
        assert_eq!(dp.nat_flows(), 0);
        assert_eq!(dp.counts(), counted(&[("forwarded", 2)]));
    });
}

/// A publishes `HOST_PORT` on `host` (`wildcard` marks the every-address
/// keys) to its IPv6 address.
fn publish6(dp: &mut Datapath, host: [u8; 16], wildcard: u8) {
    dp.add_host_port(
        HostPortKey {
            host_addr: host,
            port: HOST_PORT.to_be(),
            proto: IPPROTO_TCP,
            wildcard,
        },
        HostPortTarget {
            pod_addr: POD_A6.octets(),
            pod_port: POD_PORT.to_be(),
            _pad: [0; 6],
            owner: OWNER_A,
        },
    );
    flag(dp, POD_A, ENDPOINT_F_HOST_PORTS);
    let mut a6 = dp.endpoint(key6(POD_A6));
    a6.flags |= ENDPOINT_F_HOST_PORTS;
    dp.add_endpoint(key6(POD_A6), a6);
}

#[test]
fn host_port_on_the_nodes_ipv6_address_reaches_the_pod_and_its_reply_goes_back() {
    for (host, wildcard) in [
        (NODE6.octets(), 0),
        ([0; 16], cni_ebpf_common::HOST_PORT_ANY_V6),
    ] {
        with_datapath(|dp| {
            masquerading_node6(dp);
            publish6(dp, host, wildcard);
            let syn = to_node(tcp(SPORT, HOST_PORT, TCP_SYN));
            let out = receive(dp, &syn);
            assert_eq!(out.action, TC_ACT_REDIRECT, "published as {host:?}");
            assert_eq!(
                out.frame,
                delivered_to_a(&syn, tcp(SPORT, POD_PORT, TCP_SYN)).bytes()
            );
            assert_ipv6_checksum_valid(&out.frame);
            let reply = from_a(REMOTE6, tcp(POD_PORT, SPORT, TCP_SYN | TCP_ACK));
            let out = send(dp, &reply);
            assert_eq!(out.action, TC_ACT_REDIRECT);
            let published = Frame6 {
                src: NODE6,
                l4: tcp(HOST_PORT, SPORT, TCP_SYN | TCP_ACK),
                ..reply.forwarded(POD_A_MAC, HOST_A_MAC)
            };
            assert_eq!(out.frame, published.bytes());
            assert_ipv6_checksum_valid(&out.frame);
            // Not masqueraded on top.
            assert_eq!(dp.nat_flows(), 0);
            assert_eq!(
                dp.counts(),
                counted(&[("local-delivery", 1), ("forwarded", 1)])
            );
        });
    }
}

#[test]
fn a_port_on_every_ipv4_address_is_not_published_on_ipv6() {
    with_datapath(|dp| {
        masquerading_node6(dp);
        publish6(dp, [0; 16], 0);
        let syn = to_node(tcp(SPORT, HOST_PORT, TCP_SYN));
        let out = receive(dp, &syn);
        assert_eq!((out.action, out.frame), (TC_ACT_OK, syn.bytes()));
        assert_eq!(dp.counts(), counted(&[]));
    });
}

/// Found by the packet fuzzer once it sent IPv6: addresses a pod may hold
/// but that must never leave its link, or never be on the wire at all.
#[test]
fn link_local_and_ipv4_mapped_addresses_are_never_masqueraded_or_forwarded() {
    with_datapath(|dp| {
        masquerading_node6(dp);
        let link_local_a = Ipv6Addr::from(IpKey::link_local(POD_A_MAC).addr);
        let pod_a_mapped = POD_A.to_ipv6_mapped();
        // From A's link-local address to the outside or to B: the stack's
        // (which refuses to forward it), not translated.
        for dst in [REMOTE6, POD_B6] {
            let sent = Frame6::new(POD_A_MAC, HOST_A_MAC, link_local_a, dst, udp(SPORT, 53));
            let out = send(dp, &sent);
            assert_eq!((out.action, out.frame), (TC_ACT_OK, sent.bytes()), "{dst}");
        }
        // To an IPv4-mapped address (B's IPv4 key, or outside): the
        // stack's too, never B's or a NAT flow.
        for dst in [POD_B.to_ipv6_mapped(), REMOTE.to_ipv6_mapped()] {
            let sent = from_a(dst, udp(SPORT, 53));
            let out = send(dp, &sent);
            assert_eq!((out.action, out.frame), (TC_ACT_OK, sent.bytes()), "{dst}");
        }
        // From A's IPv4 address written as IPv4-mapped IPv6: not A's.
        let sent = Frame6::new(POD_A_MAC, HOST_A_MAC, pod_a_mapped, REMOTE6, udp(SPORT, 53));
        assert_eq!(send(dp, &sent).action, TC_ACT_SHOT);
        // From the outside to the node's IPv4 key as IPv6: no reply of a
        // flow, no pod's.
        let mapped_node = Frame6::new(
            ROUTER_MAC,
            UPLINK_MAC,
            REMOTE6,
            NODE.to_ipv6_mapped(),
            udp(53, SPORT),
        );
        let out = receive(dp, &mapped_node);
        assert_eq!((out.action, out.frame), (TC_ACT_OK, mapped_node.bytes()));
        let mapped_pod = Frame6::new(
            ROUTER_MAC,
            UPLINK_MAC,
            REMOTE6,
            pod_a_mapped,
            udp(53, SPORT),
        );
        let out = receive(dp, &mapped_pod);
        assert_eq!((out.action, out.frame), (TC_ACT_OK, mapped_pod.bytes()));
        assert_eq!(dp.nat_flows(), 0);
        assert_eq!(
            dp.counts(),
            counted(&[("to-stack", 4), ("drop spoofed-source from-pod", 1)])
        );
    });
}

/// `frame` (IPv6 over Ethernet) as IPv6 BIG TCP sends a packet over 64 KiB:
/// payload length 0 and a Hop-by-Hop header holding only the Jumbo Payload
/// option in front of the transport header, whose checksum does not change
/// (its pseudo header counts the same transport length).
fn with_jumbo_header(frame: &[u8]) -> Vec<u8> {
    const IPV6_LEN: usize = 40;
    let ip = ETH_LEN;
    let next = frame[ip + 6];
    let payload = frame.len() - ip - IPV6_LEN;
    let mut jumbo = frame[..ip + IPV6_LEN].to_vec();
    jumbo[ip + 4..ip + 6].copy_from_slice(&[0, 0]);
    jumbo[ip + 6] = 0; // Hop-by-Hop options
    jumbo.extend_from_slice(&[next, 0, 0xc2, 4]);
    jumbo.extend_from_slice(&((payload + 8) as u32).to_be_bytes());
    jumbo.extend_from_slice(&frame[ip + IPV6_LEN..]);
    jumbo
}

#[test]
fn an_ipv6_big_tcp_packet_with_its_jumbo_header_is_masqueraded_not_handed_to_the_stack() {
    with_datapath(|dp| {
        masquerading_node6(dp);
        let syn = from_a(REMOTE6, tcp(SPORT, 80, TCP_SYN));
        assert_eq!(send(dp, &syn).action, TC_ACT_REDIRECT);
        let segment = from_a(REMOTE6, tcp(SPORT, 80, TCP_ACK));
        let out = dp.run(
            FROM_POD,
            &with_jumbo_header(&segment.bytes()),
            Skb::default(),
        );
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(
            out.frame,
            with_jumbo_header(&masqueraded(&segment, tcp(SPORT, 80, TCP_ACK)).bytes())
        );
        assert_eq!(
            dp.counts(),
            counted(&[("forwarded", 2), ("nat-new-flow", 1)])
        );
    });
}

#[test]
fn other_ipv6_hop_by_hop_options_still_go_to_the_stack() {
    with_datapath(|dp| {
        masquerading_node6(dp);
        let segment = from_a(REMOTE6, tcp(SPORT, 80, TCP_SYN));
        let mut frame = with_jumbo_header(&segment.bytes());
        // A Router Alert option in place of the jumbo payload.
        frame[ETH_LEN + 40 + 2..ETH_LEN + 40 + 8].copy_from_slice(&[5, 2, 0, 0, 1, 0]);
        let out = dp.run(FROM_POD, &frame, Skb::default());
        assert_eq!(out.action, TC_ACT_OK);
        assert_eq!(dp.nat_flows(), 0);
    });
}
