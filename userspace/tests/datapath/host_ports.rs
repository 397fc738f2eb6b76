//! Host ports: a connection to a published port is translated to its pod
//! (from the uplink, from another pod, from the pod itself), remembered in
//! `HOST_PORT_CT`, and the pod's replies get the published address and port
//! back.

use std::net::Ipv4Addr;

use cni_ebpf_common::{
    CtState, FlowKey, HostPortFlow, HostPortKey, HostPortTarget, IPPROTO_TCP, IPPROTO_UDP, IpKey,
    program_names::{FROM_POD, FROM_UPLINK},
    wire::{TCP_ACK, TCP_SYN},
};

use crate::{
    harness::{Datapath, Skb, TC_ACT_REDIRECT, counted, with_datapath},
    packet::{Frame, L4},
    world::*,
};

const HOST_PORT: u16 = 8080;
const POD_PORT: u16 = 80;
const CLIENT_PORT: u16 = 5555;

/// Publishes `HOST_PORT`/tcp on `host` (all-zero: every node address) for
/// `pod`:`POD_PORT`.
fn publish(dp: &mut Datapath, host: IpKey, pod: Ipv4Addr) {
    publish_proto(dp, host, pod, IPPROTO_TCP);
}

fn publish_proto(dp: &mut Datapath, host: IpKey, pod: Ipv4Addr, proto: u8) {
    dp.add_host_port(
        HostPortKey {
            host_addr: host.addr,
            port: HOST_PORT.to_be(),
            proto,
            wildcard: 0,
        },
        HostPortTarget {
            pod_addr: key(pod).addr,
            pod_port: POD_PORT.to_be(),
            ..Default::default()
        },
    );
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

/// The connection table's entry, without its timestamp.
fn connection(dp: &Datapath, reply: &FlowKey) -> Option<HostPortFlow> {
    dp.host_port_flow(reply).map(|flow| {
        assert_ne!(flow.last_seen_ns, 0, "the connection's timestamp is set");
        HostPortFlow {
            last_seen_ns: 0,
            ..flow
        }
    })
}

fn expected_connection(client: Ipv4Addr, state: CtState) -> HostPortFlow {
    HostPortFlow {
        host_addr: key(NODE).addr,
        client_addr: key(client).addr,
        host_port: HOST_PORT.to_be(),
        client_port: CLIENT_PORT.to_be(),
        state: state as u8,
        ..Default::default()
    }
}

#[test]
fn outside_connection_reaches_the_publishing_pod() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, 0);
        publish(dp, IpKey::default(), POD_A);
        let syn = Frame::new(
            ROUTER_MAC,
            UPLINK_MAC,
            REMOTE,
            NODE,
            tcp(CLIENT_PORT, HOST_PORT, TCP_SYN),
        );
        let out = dp.run(FROM_UPLINK, &syn.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        let delivered = Frame {
            dst: POD_A,
            l4: tcp(CLIENT_PORT, POD_PORT, TCP_SYN),
            ..syn.forwarded(HOST_A_MAC, POD_A_MAC)
        };
        assert_eq!(out.frame, delivered.bytes());
        let reply = flow(POD_A, POD_PORT, REMOTE, CLIENT_PORT, IPPROTO_TCP);
        assert_eq!(
            connection(dp, &reply),
            Some(expected_connection(REMOTE, CtState::TcpSynSent))
        );
        assert_eq!(dp.counts(), counted(&[("local-delivery", 1)]));
    });
}

#[test]
fn a_mapping_on_the_address_wins_over_every_address() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, 0);
        publish(dp, IpKey::default(), POD_A);
        publish(dp, key(NODE), POD_B);
        let syn = Frame::new(
            ROUTER_MAC,
            UPLINK_MAC,
            REMOTE,
            NODE,
            tcp(CLIENT_PORT, HOST_PORT, TCP_SYN),
        );
        let out = dp.run(FROM_UPLINK, &syn.bytes(), Skb::default());
        let delivered = Frame {
            dst: POD_B,
            l4: tcp(CLIENT_PORT, POD_PORT, TCP_SYN),
            ..syn.forwarded(HOST_B_MAC, POD_B_MAC)
        };
        assert_eq!(
            (out.action, out.frame),
            (TC_ACT_REDIRECT, delivered.bytes())
        );
    });
}

#[test]
fn pod_reply_shows_the_published_address_and_port() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, 0);
        publishes(dp);
        let reply = flow(POD_A, POD_PORT, REMOTE, CLIENT_PORT, IPPROTO_TCP);
        dp.insert_host_port_flow(
            reply,
            HostPortFlow {
                last_seen_ns: 1,
                ..expected_connection(REMOTE, CtState::TcpSynSent)
            },
        );
        let answer = Frame::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A,
            REMOTE,
            tcp(POD_PORT, CLIENT_PORT, TCP_SYN | TCP_ACK),
        );
        let out = dp.run(FROM_POD, &answer.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        // Out of the uplink, never masqueraded again.
        let left = Frame {
            src: NODE,
            ttl: answer.ttl - 1,
            l4: tcp(HOST_PORT, CLIENT_PORT, TCP_SYN | TCP_ACK),
            ..answer.clone()
        };
        assert_eq!(out.frame, left.bytes());
        assert_eq!(
            connection(dp, &reply),
            Some(expected_connection(REMOTE, CtState::TcpEstablished))
        );
        assert_eq!(dp.counts(), counted(&[("forwarded", 1)]));
    });
}

#[test]
fn pod_reaches_another_pods_host_port() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, 0);
        publish(dp, IpKey::default(), POD_B);
        let syn = Frame::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A,
            NODE,
            tcp(CLIENT_PORT, HOST_PORT, TCP_SYN),
        );
        let out = dp.run(FROM_POD, &syn.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        let delivered = Frame {
            dst: POD_B,
            l4: tcp(CLIENT_PORT, POD_PORT, TCP_SYN),
            ..syn.forwarded(HOST_B_MAC, POD_B_MAC)
        };
        assert_eq!(out.frame, delivered.bytes());
        let reply = flow(POD_B, POD_PORT, POD_A, CLIENT_PORT, IPPROTO_TCP);
        assert_eq!(
            connection(dp, &reply),
            Some(expected_connection(POD_A, CtState::TcpSynSent))
        );
        assert_eq!(dp.counts(), counted(&[("local-delivery", 1)]));
    });
}

#[test]
fn hairpin_rewrites_the_source_both_ways() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, 0);
        publishes(dp);
        publish(dp, IpKey::default(), POD_A);
        let syn = Frame::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A,
            NODE,
            tcp(CLIENT_PORT, HOST_PORT, TCP_SYN),
        );
        let out = dp.run(FROM_POD, &syn.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        // From the node's address: A's stack drops packets from itself.
        let delivered = Frame {
            src: NODE,
            dst: POD_A,
            l4: tcp(CLIENT_PORT, POD_PORT, TCP_SYN),
            ..syn.forwarded(HOST_A_MAC, POD_A_MAC)
        };
        assert_eq!(out.frame, delivered.bytes());
        let reply = flow(POD_A, POD_PORT, NODE, CLIENT_PORT, IPPROTO_TCP);
        assert_eq!(
            connection(dp, &reply),
            Some(expected_connection(POD_A, CtState::TcpSynSent))
        );
        // A answers the node's address; the reply goes back to A as from
        // the published port.
        let answer = Frame::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A,
            NODE,
            tcp(POD_PORT, CLIENT_PORT, TCP_SYN | TCP_ACK),
        );
        let out = dp.run(FROM_POD, &answer.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        let delivered = Frame {
            src: NODE,
            dst: POD_A,
            l4: tcp(HOST_PORT, CLIENT_PORT, TCP_SYN | TCP_ACK),
            ..answer.forwarded(HOST_A_MAC, POD_A_MAC)
        };
        assert_eq!(out.frame, delivered.bytes());
        assert_eq!(dp.counts(), counted(&[("local-delivery", 2)]));
    });
}

#[test]
fn replies_of_pods_without_host_ports_are_not_looked_up() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, 0);
        // A connection entry exists, but A publishes nothing (no flag).
        let reply = flow(POD_A, POD_PORT, REMOTE, CLIENT_PORT, IPPROTO_TCP);
        dp.insert_host_port_flow(reply, expected_connection(REMOTE, CtState::TcpSynSent));
        let answer = Frame::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A,
            REMOTE,
            tcp(POD_PORT, CLIENT_PORT, TCP_ACK),
        );
        let out = dp.run(FROM_POD, &answer.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(out.frame, answer.forwarded(POD_A_MAC, HOST_A_MAC).bytes());
        assert_eq!(dp.counts(), counted(&[("forwarded", 1)]));
    });
}

#[test]
fn remapped_udp_port_reaches_the_new_pod_at_once() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, 0);
        let datagram = Frame::new(
            ROUTER_MAC,
            UPLINK_MAC,
            REMOTE,
            NODE,
            L4::Udp {
                sport: CLIENT_PORT,
                dport: HOST_PORT,
                checksum: true,
            },
        );
        let translated = L4::Udp {
            sport: CLIENT_PORT,
            dport: POD_PORT,
            checksum: true,
        };
        publish_proto(dp, IpKey::default(), POD_A, IPPROTO_UDP);
        let out = dp.run(FROM_UPLINK, &datagram.bytes(), Skb::default());
        let to_a = Frame {
            dst: POD_A,
            l4: translated.clone(),
            ..datagram.forwarded(HOST_A_MAC, POD_A_MAC)
        };
        assert_eq!((out.action, out.frame), (TC_ACT_REDIRECT, to_a.bytes()));
        // The mapping moves to B: the same client's next datagram follows
        // it, whatever the connection table remembers of A.
        publish_proto(dp, IpKey::default(), POD_B, IPPROTO_UDP);
        let out = dp.run(FROM_UPLINK, &datagram.bytes(), Skb::default());
        let to_b = Frame {
            dst: POD_B,
            l4: translated,
            ..datagram.forwarded(HOST_B_MAC, POD_B_MAC)
        };
        assert_eq!((out.action, out.frame), (TC_ACT_REDIRECT, to_b.bytes()));
        let b_replies = flow(POD_B, POD_PORT, REMOTE, CLIENT_PORT, IPPROTO_UDP);
        assert_eq!(
            connection(dp, &b_replies),
            Some(expected_connection(REMOTE, CtState::Udp))
        );
        assert_eq!(dp.counts(), counted(&[("local-delivery", 2)]));
    });
}
