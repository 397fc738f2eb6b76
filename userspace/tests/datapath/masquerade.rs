//! Masquerade: `from_pod` translates pod flows leaving the node (TCP, UDP
//! with and without a checksum, ICMP echo), claims ports in `NAT_OUT` /
//! `NAT_IN`, retries taken ones and refuses what it cannot admit;
//! `from_uplink` translates replies and ICMP errors about them back.

use std::net::{Ipv4Addr, TcpListener};

use cni_ebpf_common::{
    CtState, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, NAT_PORT_TRIES,
    program_names::{FROM_POD, FROM_UPLINK},
    wire::{ETH_LEN, ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, TCP_ACK, TCP_FIN, TCP_SYN},
};

use crate::{
    harness::{
        Datapath, Outcome, Skb, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, counted, with_datapath,
    },
    node_sockets::{in_own_netns, tcp_connection, udp_connected},
    packet::{Frame, L4, assert_checksums_valid, source_port},
    world::*,
};

const SPORT: u16 = 40000;

fn from_a(l4: L4) -> Frame {
    Frame::new(POD_A_MAC, HOST_A_MAC, POD_A, REMOTE, l4)
}

fn tcp(flags: u8) -> L4 {
    L4::Tcp {
        sport: SPORT,
        dport: 80,
        flags,
    }
}

fn udp(checksum: bool) -> L4 {
    L4::Udp {
        sport: SPORT,
        dport: 53,
        checksum,
    }
}

fn echo(request: bool) -> L4 {
    L4::Echo {
        request,
        id: SPORT,
        seq: 1,
    }
}

fn send(dp: &mut Datapath, frame: &Frame) -> Outcome {
    dp.run(FROM_POD, &frame.bytes(), Skb::default())
}

/// What arrives at the uplink from `REMOTE` for the node.
fn to_node(l4: L4) -> Frame {
    Frame::new(ROUTER_MAC, UPLINK_MAC, REMOTE, NODE, l4)
}

fn receive(dp: &mut Datapath, frame: &Frame) -> Outcome {
    dp.run(FROM_UPLINK, &frame.bytes(), Skb::default())
}

/// `sent` as it leaves the uplink: from the node's address and `port`,
/// one hop older (the kernel fills the MACs in after the redirect).
fn masqueraded(sent: &Frame, port: u16) -> Frame {
    let l4 = match sent.l4.clone() {
        L4::Tcp { dport, flags, .. } => L4::Tcp {
            sport: port,
            dport,
            flags,
        },
        L4::Udp {
            dport, checksum, ..
        } => L4::Udp {
            sport: port,
            dport,
            checksum,
        },
        L4::Echo { request, seq, .. } => L4::Echo {
            request,
            id: port,
            seq,
        },
        other => other,
    };
    Frame {
        src: NODE,
        ttl: sent.ttl - 1,
        l4,
        ..sent.clone()
    }
}

/// Takes `port` on the node towards `REMOTE:dport` for another flow.
fn take_port(dp: &mut Datapath, dport: u16, port: u16, proto: u8) {
    dp.insert_nat_in(
        flow(REMOTE, dport, NODE, port, proto),
        nat_entry(POD_B, port, CtState::Udp),
    );
}

#[test]
fn tcp_syn_is_masqueraded_with_its_own_port() {
    with_datapath(|dp| {
        masquerading_node(dp);
        let sent = from_a(tcp(TCP_SYN));
        let out = send(dp, &sent);
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(out.frame, masqueraded(&sent, SPORT).bytes());
        assert_eq!(
            untimed(dp.nat_out(&flow(POD_A, SPORT, REMOTE, 80, IPPROTO_TCP))),
            Some(nat_entry(NODE, SPORT, CtState::TcpSynSent))
        );
        assert_eq!(
            untimed(dp.nat_in(&flow(REMOTE, 80, NODE, SPORT, IPPROTO_TCP))),
            Some(nat_entry(POD_A, SPORT, CtState::TcpSynSent))
        );
        assert_eq!(dp.nat_flows(), 1);
        assert_eq!(
            dp.counts(),
            counted(&[("forwarded", 1), ("nat-new-flow", 1)])
        );
        assert_eq!(out.mark, 0, "no services: the datapath marks nothing");
    });
}

#[test]
fn later_packets_reuse_the_flow_and_fin_closes_it() {
    with_datapath(|dp| {
        masquerading_node(dp);
        send(dp, &from_a(tcp(TCP_SYN)));
        let ack = from_a(tcp(TCP_ACK));
        assert_eq!(send(dp, &ack).frame, masqueraded(&ack, SPORT).bytes());
        let key = flow(POD_A, SPORT, REMOTE, 80, IPPROTO_TCP);
        assert_eq!(
            untimed(dp.nat_out(&key)).map(|e| e.state),
            Some(CtState::TcpSynSent as u8)
        );
        send(dp, &from_a(tcp(TCP_FIN | TCP_ACK)));
        assert_eq!(
            untimed(dp.nat_out(&key)).map(|e| e.state),
            Some(CtState::TcpClosing as u8)
        );
        assert_eq!(dp.nat_flows(), 1);
        assert_eq!(
            dp.counts(),
            counted(&[("forwarded", 3), ("nat-new-flow", 1)])
        );
    });
}

#[test]
fn udp_keeps_its_checksum_or_its_lack_of_one() {
    with_datapath(|dp| {
        masquerading_node(dp);
        for checksum in [true, false] {
            let sent = Frame {
                dst: if checksum {
                    REMOTE
                } else {
                    Ipv4Addr::new(203, 0, 113, 11)
                },
                ..from_a(udp(checksum))
            };
            let out = send(dp, &sent);
            assert_eq!(out.action, TC_ACT_REDIRECT);
            assert_eq!(out.frame, masqueraded(&sent, SPORT).bytes());
            assert_checksums_valid(&out.frame);
        }
        assert_eq!(
            dp.counts(),
            counted(&[("forwarded", 2), ("nat-new-flow", 2)])
        );
    });
}

#[test]
fn echo_request_is_masqueraded_by_its_identifier() {
    with_datapath(|dp| {
        masquerading_node(dp);
        // Another flow holds the identifier: the retry translates it.
        take_port(dp, 0, SPORT, IPPROTO_ICMP);
        let sent = from_a(echo(true));
        let out = send(dp, &sent);
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(out.frame, masqueraded(&sent, NAT_PORT_MIN).bytes());
        assert_eq!(
            untimed(dp.nat_out(&flow(POD_A, SPORT, REMOTE, 0, IPPROTO_ICMP))),
            Some(nat_entry(NODE, NAT_PORT_MIN, CtState::Icmp))
        );
        // The reply comes back to the pod with its own identifier.
        let reply = to_node(L4::Echo {
            request: false,
            id: NAT_PORT_MIN,
            seq: 1,
        });
        let out = receive(dp, &reply);
        assert_eq!(out.action, TC_ACT_REDIRECT);
        let delivered = Frame {
            dst: POD_A,
            l4: echo(false),
            ..reply.forwarded(HOST_A_MAC, POD_A_MAC)
        };
        assert_eq!(out.frame, delivered.bytes());
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
fn echo_request_from_outside_is_never_taken_for_a_reply() {
    // A pings REMOTE; REMOTE pings the node with the same identifier. Only
    // echo replies answer a masqueraded ping: the request is the node's.
    with_datapath(|dp| {
        masquerading_node(dp);
        send(dp, &from_a(echo(true)));
        let ping = to_node(L4::Echo {
            request: true,
            id: SPORT,
            seq: 9,
        });
        let out = receive(dp, &ping);
        assert_eq!((out.action, out.frame), (TC_ACT_OK, ping.bytes()));
        assert_eq!(
            dp.counts(),
            counted(&[("forwarded", 1), ("nat-new-flow", 1)])
        );
    });
}

#[test]
fn a_port_of_the_nodes_own_sockets_is_never_kept() {
    // The node's own connections take their ports without the NAT table
    // knowing: a pod flow keeping the port of one towards the same server
    // would take its replies. The kernel's socket tables tell.
    with_datapath(|dp| {
        in_own_netns(&[NODE.into(), REMOTE.into()], || {
            masquerading_node(dp);
            let _tcp = tcp_connection((NODE, SPORT).into(), (REMOTE, 80).into());
            let _udp = udp_connected((NODE, SPORT).into(), (REMOTE, 53).into());
            let _listener = TcpListener::bind((NODE, LISTENING)).expect("a node listener");
            for (l4, proto, dport, state) in [
                (tcp(TCP_SYN), IPPROTO_TCP, 80, CtState::TcpSynSent),
                (udp(true), IPPROTO_UDP, 53, CtState::Udp),
                (
                    tcp_from(LISTENING, 443),
                    IPPROTO_TCP,
                    443,
                    CtState::TcpSynSent,
                ),
            ] {
                let sent = from_a(l4);
                let out = send(dp, &sent);
                assert_eq!(out.action, TC_ACT_REDIRECT);
                assert_eq!(out.frame, masqueraded(&sent, NAT_PORT_MIN).bytes());
                let own = source_port(&sent.bytes());
                assert_eq!(
                    untimed(dp.nat_in(&flow(REMOTE, dport, NODE, NAT_PORT_MIN, proto))),
                    Some(nat_entry(POD_A, own, state))
                );
                assert_eq!(dp.nat_in(&flow(REMOTE, dport, NODE, own, proto)), None);
            }
            // Towards another port of the server, the pod's port is free.
            let sent = from_a(tcp_from(SPORT, 81));
            assert_eq!(send(dp, &sent).frame, masqueraded(&sent, SPORT).bytes());
            assert_eq!(
                dp.counts(),
                counted(&[("forwarded", 4), ("nat-new-flow", 4), ("nat-port-retry", 3)])
            );
        })
    });
}

/// A port a listener of the node holds.
const LISTENING: u16 = SPORT + 1;

fn tcp_from(sport: u16, dport: u16) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags: TCP_SYN,
    }
}

#[test]
fn taken_port_is_retried_in_the_range() {
    with_datapath(|dp| {
        masquerading_node(dp);
        take_port(dp, 80, SPORT, IPPROTO_TCP);
        let sent = from_a(tcp(TCP_SYN));
        let out = send(dp, &sent);
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(source_port(&out.frame), NAT_PORT_MIN);
        assert_eq!(out.frame, masqueraded(&sent, NAT_PORT_MIN).bytes());
        assert_eq!(
            untimed(dp.nat_in(&flow(REMOTE, 80, NODE, NAT_PORT_MIN, IPPROTO_TCP))),
            Some(nat_entry(POD_A, SPORT, CtState::TcpSynSent))
        );
        assert_eq!(
            dp.counts(),
            counted(&[("forwarded", 1), ("nat-new-flow", 1), ("nat-port-retry", 1)])
        );
    });
}

#[test]
fn no_free_port_drops_the_packet() {
    with_datapath(|dp| {
        masquerading_node(dp);
        take_port(dp, 80, SPORT, IPPROTO_TCP);
        take_port(dp, 80, NAT_PORT_MIN, IPPROTO_TCP);
        assert_eq!(send(dp, &from_a(tcp(TCP_SYN))).action, TC_ACT_SHOT);
        assert_eq!(dp.nat_flows(), 0);
        assert_eq!(
            dp.nat_out(&flow(POD_A, SPORT, REMOTE, 80, IPPROTO_TCP)),
            None
        );
        assert_eq!(
            dp.counts(),
            counted(&[
                ("nat-port-retry", u64::from(NAT_PORT_TRIES)),
                ("drop nat-ports-exhausted from-pod", 1)
            ])
        );
    });
}

#[test]
fn full_table_refuses_new_flows() {
    with_datapath(|dp| {
        masquerading_node(dp);
        dp.set_nat_flows(100); // `nat_max_flows` of the world's node
        assert_eq!(send(dp, &from_a(tcp(TCP_SYN))).action, TC_ACT_SHOT);
        assert!(dp.nat_in_entries().is_empty());
        assert_eq!(dp.counts(), counted(&[("drop nat-table-full from-pod", 1)]));
    });
}

#[test]
fn truncated_tcp_header_fails_the_rewrite() {
    // 14 bytes of TCP: enough for the ports and flags the parser reads, not
    // for the checksum the rewrite must update.
    with_datapath(|dp| {
        masquerading_node(dp);
        let mut header = Vec::new();
        header.extend_from_slice(&SPORT.to_be_bytes());
        header.extend_from_slice(&80u16.to_be_bytes());
        header.extend_from_slice(&[0; 8]);
        header.extend_from_slice(&[0x50, TCP_SYN]);
        let sent = from_a(L4::Raw {
            proto: IPPROTO_TCP,
            bytes: header,
        });
        assert_eq!(send(dp, &sent).action, TC_ACT_SHOT);
        assert_eq!(
            dp.counts(),
            counted(&[("nat-new-flow", 1), ("drop rewrite-failed from-pod", 1)])
        );
        // The flow was admitted before the rewrite failed, and stays until
        // the agent's garbage collection expires it.
        assert_eq!(dp.nat_flows(), 1);
    });
}

#[test]
fn untranslatable_packets_go_to_the_stack() {
    with_datapath(|dp| {
        masquerading_node(dp);
        // ICMP other than echo requests, and fragments, carry no port.
        let unreachable = from_a(L4::IcmpError {
            kind: ICMP_DEST_UNREACH,
            code: 3,
            quote: Frame::new(POD_A_MAC, HOST_A_MAC, REMOTE, POD_A, udp(true)).ip_packet(),
        });
        let fragment = Frame {
            frag: 0x2000, // more fragments
            ..from_a(udp(true))
        };
        for sent in [unreachable, fragment] {
            let out = send(dp, &sent);
            assert_eq!((out.action, out.frame), (TC_ACT_OK, sent.bytes()));
        }
        assert_eq!(dp.nat_flows(), 0);
        assert_eq!(dp.counts(), counted(&[("to-stack", 2)]));
    });
}

#[test]
fn reply_is_translated_back_and_delivered() {
    with_datapath(|dp| {
        masquerading_node(dp);
        take_port(dp, 80, SPORT, IPPROTO_TCP);
        send(dp, &from_a(tcp(TCP_SYN)));
        let reply = to_node(L4::Tcp {
            sport: 80,
            dport: NAT_PORT_MIN,
            flags: TCP_SYN | TCP_ACK,
        });
        let out = receive(dp, &reply);
        assert_eq!(out.action, TC_ACT_REDIRECT);
        let delivered = Frame {
            dst: POD_A,
            l4: L4::Tcp {
                sport: 80,
                dport: SPORT,
                flags: TCP_SYN | TCP_ACK,
            },
            ..reply.forwarded(HOST_A_MAC, POD_A_MAC)
        };
        assert_eq!(out.frame, delivered.bytes());
        assert_eq!(
            untimed(dp.nat_in(&flow(REMOTE, 80, NODE, NAT_PORT_MIN, IPPROTO_TCP))),
            Some(nat_entry(POD_A, SPORT, CtState::TcpEstablished))
        );
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (1, 1));
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
fn packets_for_the_node_outside_any_flow_go_to_the_stack() {
    with_datapath(|dp| {
        masquerading_node(dp);
        let knock = to_node(L4::Tcp {
            sport: 80,
            dport: 22,
            flags: TCP_SYN,
        });
        let out = receive(dp, &knock);
        assert_eq!((out.action, out.frame), (TC_ACT_OK, knock.bytes()));
        // An ICMP error about no flow of ours.
        let error = to_node(L4::IcmpError {
            kind: ICMP_DEST_UNREACH,
            code: 3,
            quote: Frame::new(UPLINK_MAC, ROUTER_MAC, NODE, REMOTE, udp(true)).ip_packet(),
        });
        let out = receive(dp, &error);
        assert_eq!((out.action, out.frame), (TC_ACT_OK, error.bytes()));
        assert!(dp.counts().is_empty());
    });
}

/// Sends `l4` from pod A with `SPORT` taken on the node, so the flow
/// leaves translated to `NAT_PORT_MIN`; then `REMOTE` answers the
/// translated packet with an ICMP error of `kind`. Checks the error reaches
/// A quoting A's packet as A sent it (one hop older), every checksum
/// recomputed from scratch here.
fn icmp_error_about(l4: L4, dport: u16, kind: u8) {
    with_datapath(|dp| {
        masquerading_node(dp);
        let sent = from_a(l4);
        let proto = match sent.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            _ => IPPROTO_ICMP,
        };
        take_port(dp, dport, SPORT, proto);
        let out = send(dp, &sent);
        let left = masqueraded(&sent, NAT_PORT_MIN);
        assert_eq!(out.frame, left.bytes());
        let error = to_node(L4::IcmpError {
            kind,
            code: 0,
            quote: left.ip_packet(),
        });
        let out = receive(dp, &error);
        assert_eq!(out.action, TC_ACT_REDIRECT);
        let as_a_sent_it = Frame {
            ttl: sent.ttl - 1,
            ..sent
        };
        let delivered = Frame {
            dst: POD_A,
            l4: L4::IcmpError {
                kind,
                code: 0,
                quote: as_a_sent_it.ip_packet(),
            },
            ..error.forwarded(HOST_A_MAC, POD_A_MAC)
        };
        assert_checksums_valid(&out.frame);
        assert_eq!(out.frame, delivered.bytes());
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
fn icmp_error_about_udp_is_translated_back() {
    icmp_error_about(udp(true), 53, ICMP_DEST_UNREACH);
}

#[test]
fn icmp_error_about_checksumless_udp_is_translated_back() {
    icmp_error_about(udp(false), 53, ICMP_DEST_UNREACH);
}

#[test]
fn icmp_error_about_tcp_is_translated_back() {
    icmp_error_about(tcp(TCP_SYN), 80, ICMP_TIME_EXCEEDED);
}

#[test]
fn icmp_error_about_echo_is_translated_back() {
    icmp_error_about(echo(true), 0, ICMP_TIME_EXCEEDED);
}

#[test]
fn truncated_icmp_error_is_malformed() {
    with_datapath(|dp| {
        masquerading_node(dp);
        let error = to_node(L4::IcmpError {
            kind: ICMP_DEST_UNREACH,
            code: 3,
            quote: Vec::new(),
        });
        assert_eq!(receive(dp, &error).action, TC_ACT_SHOT);
        assert_eq!(dp.counts(), counted(&[("drop malformed to-pod", 1)]));
    });
}

#[test]
fn ipv4_header_shorter_than_its_minimum_is_not_translated() {
    // IHL 4 (16 bytes): no transport header can be found from it. Handed
    // to the stack as it is (which drops it), never given a NAT flow.
    with_datapath(|dp| {
        masquerading_node(dp);
        let mut frame = from_a(tcp(TCP_SYN)).bytes();
        frame[ETH_LEN] = 0x44;
        let out = dp.run(FROM_POD, &frame, Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, frame));
        assert_eq!(dp.nat_flows(), 0);
        assert_eq!(dp.counts(), counted(&[("to-stack", 1)]));
    });
}
