//! The handoff to netfilter (kube-proxy): service addresses go to the
//! stack; `to_pod` and `to_uplink` record the replies of flows the stack
//! carried and flag the pod; a flagged pod's packets and deliveries that
//! match go back to the stack; a TCP SYN on the fast path forgets a stale
//! reply key; `to_uplink` tells the datapath's own packets by their mark and
//! masquerades what the stack forwarded for pods. IPv6 alike (at the end).

use std::net::{Ipv4Addr, Ipv6Addr};

use cni_ebpf_common::{
    CtState, ENDPOINT_F_NETFILTER_FLOWS, FlowKey, IPPROTO_TCP, IPPROTO_UDP,
    MARK_DATAPATH_FORWARDED, NODE_F_MASQUERADE, NODE_F_SERVICES, NatEntry, NodeConfigV6,
    program_names::{FROM_POD, FROM_UPLINK, TO_POD, TO_UPLINK},
    wire::{TCP_ACK, TCP_SYN},
};

use crate::{
    harness::{Datapath, Skb, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, counted, with_datapath},
    ipv6::{NODE6, OTHER_NODE_POD6, POD_A6, POD_B6, REMOTE6, dual_stack_pods, key6, uplink6},
    packet::{Frame, Frame6, L4, L4v6},
    world::*,
};

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

fn dns_query() -> L4 {
    L4::Udp {
        sport: 33333,
        dport: 53,
        checksum: true,
    }
}

/// Whether `pod` is flagged, in its record and in its slot of
/// `ENDPOINTS_V4` alike (the IPv4 paths read the slot).
fn flagged(dp: &Datapath, pod: Ipv4Addr) -> bool {
    let record = dp.endpoint(key(pod)).flags & ENDPOINT_F_NETFILTER_FLOWS != 0;
    let slot = dp.endpoint_slot_v4(pod.octets()).endpoint.flags & ENDPOINT_F_NETFILTER_FLOWS != 0;
    assert_eq!(slot, record, "{pod}: its slot and its record disagree");
    record
}

#[test]
fn service_address_goes_to_netfilter() {
    with_datapath(|dp| {
        services_node(dp);
        let query = Frame::new(POD_A_MAC, HOST_A_MAC, POD_A, DNS_SERVICE, dns_query());
        let out = dp.run(FROM_POD, &query.bytes(), Skb::default());
        // Untouched (no TTL decrement): PREROUTING's DNAT sees it as sent.
        assert_eq!((out.action, out.frame), (TC_ACT_OK, query.bytes()));
        assert_eq!(out.mark, 0);
        assert_eq!(dp.counts(), counted(&[("to-netfilter", 1)]));
        assert_eq!(dp.nat_flows(), 0);
        assert!(dp.netfilter_flows().is_empty());
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (1, 0));
    });
}

#[test]
fn service_cidrs_mean_nothing_without_the_services_flag() {
    with_datapath(|dp| {
        masquerading_node(dp);
        dp.add_service_cidr(key(SERVICE_CIDR.0), SERVICE_CIDR.1);
        let query = Frame::new(POD_A_MAC, HOST_A_MAC, POD_A, DNS_SERVICE, dns_query());
        let out = dp.run(FROM_POD, &query.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(
            dp.counts(),
            counted(&[("forwarded", 1), ("nat-new-flow", 1)])
        );
    });
}

#[test]
fn datapath_forwards_are_marked_on_a_services_node() {
    with_datapath(|dp| {
        services_node(dp);
        let syn = Frame::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A,
            REMOTE,
            tcp(40000, 443, TCP_SYN),
        );
        let out = dp.run(
            FROM_POD,
            &syn.bytes(),
            Skb {
                mark: 0x1,
                ..Skb::default()
            },
        );
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(
            out.mark,
            0x1 | MARK_DATAPATH_FORWARDED,
            "other mark bits kept"
        );
        // `to_uplink` then lets it pass untouched and clears the mark.
        let out = dp.run(
            TO_UPLINK,
            &out.frame,
            Skb {
                mark: out.mark,
                ..Skb::default()
            },
        );
        assert_eq!(out.action, TC_ACT_OK);
        assert_eq!(out.mark, 0x1);
        assert!(dp.netfilter_flows().is_empty(), "nothing recorded");
        assert!(!flagged(dp, POD_A));
        assert_eq!(dp.nat_flows(), 1, "masqueraded once, by from_pod");
    });
}

/// B reached a service whose endpoint is A: the stack DNATed B's packet to
/// A:80 and delivers it through A's host veth.
fn stack_delivers_b_to_a(dp: &mut Datapath) -> crate::harness::Outcome {
    let delivered = Frame::new(HOST_A_MAC, POD_A_MAC, POD_B, POD_A, tcp(33333, 80, TCP_SYN));
    let out = dp.run(TO_POD, &delivered.bytes(), Skb::default());
    assert_eq!((out.action, &out.frame), (TC_ACT_OK, &delivered.bytes()));
    out
}

#[test]
fn to_pod_records_the_replies_of_stack_deliveries() {
    with_datapath(|dp| {
        services_node(dp);
        stack_delivers_b_to_a(dp);
        assert_eq!(
            dp.netfilter_flows(),
            [flow(POD_A, 80, POD_B, 33333, IPPROTO_TCP)]
        );
        assert!(flagged(dp, POD_A));
        assert!(!flagged(dp, POD_B));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (0, 1));
        assert!(dp.counts().is_empty(), "to_pod counts no verdict");
    });
}

#[test]
fn to_pod_records_nothing_it_does_not_need() {
    with_datapath(|dp| {
        services_node(dp);
        // From the node itself and from a service address: replies to them
        // go to the stack anyway.
        for src in [NODE, DNS_SERVICE] {
            let frame = Frame::new(HOST_A_MAC, POD_A_MAC, src, POD_A, tcp(33333, 80, TCP_SYN));
            assert_eq!(
                dp.run(TO_POD, &frame.bytes(), Skb::default()).action,
                TC_ACT_OK
            );
        }
        // ICMP: not followed.
        let ping = Frame::new(
            HOST_A_MAC,
            POD_A_MAC,
            POD_B,
            POD_A,
            L4::Echo {
                request: true,
                id: 1,
                seq: 1,
            },
        );
        assert_eq!(
            dp.run(TO_POD, &ping.bytes(), Skb::default()).action,
            TC_ACT_OK
        );
        assert!(dp.netfilter_flows().is_empty());
        assert!(!flagged(dp, POD_A));
    });
}

#[test]
fn to_pod_records_nothing_without_services() {
    with_datapath(|dp| {
        masquerading_node(dp);
        stack_delivers_b_to_a(dp);
        assert!(dp.netfilter_flows().is_empty());
        assert!(!flagged(dp, POD_A));
    });
}

#[test]
fn flagged_pods_reply_goes_back_through_netfilter() {
    with_datapath(|dp| {
        services_node(dp);
        stack_delivers_b_to_a(dp);
        let answer = Frame::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A,
            POD_B,
            tcp(80, 33333, TCP_SYN | TCP_ACK),
        );
        let out = dp.run(FROM_POD, &answer.bytes(), Skb::default());
        // To the stack as sent: conntrack turns A back into the service.
        assert_eq!((out.action, out.frame), (TC_ACT_OK, answer.bytes()));
        assert_eq!(dp.counts(), counted(&[("to-netfilter", 1)]));
        // Another flow of the same pod stays on the fast path.
        let other = Frame::new(POD_A_MAC, HOST_A_MAC, POD_A, POD_B, tcp(80, 44444, TCP_ACK));
        assert_eq!(
            dp.run(FROM_POD, &other.bytes(), Skb::default()).action,
            TC_ACT_REDIRECT
        );
    });
}

#[test]
fn reply_from_the_uplink_to_a_flagged_pod_goes_back_through_netfilter() {
    with_datapath(|dp| {
        services_node(dp);
        // A reached a service whose endpoint is a pod on another node; the
        // stack forwarded A's packet out of the uplink (`to_uplink`
        // recorded it). The endpoint answers A directly.
        let forwarded = Frame::new(
            UPLINK_MAC,
            ROUTER_MAC,
            POD_A,
            OTHER_NODE_POD,
            tcp(40000, 8443, TCP_SYN),
        );
        dp.run(TO_UPLINK, &forwarded.bytes(), Skb::default());
        let answer = Frame::new(
            ROUTER_MAC,
            UPLINK_MAC,
            OTHER_NODE_POD,
            POD_A,
            tcp(8443, 40000, TCP_SYN | TCP_ACK),
        );
        let out = dp.run(FROM_UPLINK, &answer.bytes(), Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, answer.bytes()));
        assert_eq!(dp.counts(), counted(&[("to-netfilter", 1)]));
    });
}

#[test]
fn unflagged_pods_are_not_looked_up() {
    with_datapath(|dp| {
        services_node(dp);
        // A reply key exists but A was never flagged: A pays no lookup.
        dp.insert_netfilter_flow(flow(POD_A, 80, POD_B, 33333, IPPROTO_TCP));
        let answer = Frame::new(POD_A_MAC, HOST_A_MAC, POD_A, POD_B, tcp(80, 33333, TCP_ACK));
        let out = dp.run(FROM_POD, &answer.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(dp.counts(), counted(&[("local-delivery", 1)]));
    });
}

/// The reply key a service connection left (live or closed) for
/// `src:sport` -> `dst:dport` (TCP), with the pod it concerns flagged.
fn claimed_replies(
    dp: &mut Datapath,
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    pod: Ipv4Addr,
) -> FlowKey {
    let claimed = flow(dst, dport, src, sport, IPPROTO_TCP);
    dp.insert_netfilter_flow(claimed);
    flag(dp, pod, ENDPOINT_F_NETFILTER_FLOWS);
    claimed
}

/// A packet whose replies a netfilter flow claims goes to netfilter, which
/// gives the new flow another source port; the key stays for the flow
/// that holds it.
/// `handed` counts the packets handed so far, this one included.
fn clash_goes_to_netfilter(
    dp: &mut Datapath,
    program: &'static str,
    frame: &Frame,
    claimed: FlowKey,
    handed: u64,
) {
    let out = dp.run(program, &frame.bytes(), Skb::default());
    assert_eq!(out.action, TC_ACT_OK);
    assert_eq!(out.frame, frame.bytes(), "the packet was changed");
    assert_eq!(dp.netfilter_flows(), [claimed]);
    assert_eq!(dp.counts(), counted(&[("to-netfilter", handed)]));
}

#[test]
fn a_pod_reaching_a_flagged_pod_on_claimed_ports_goes_to_netfilter() {
    with_datapath(|dp| {
        services_node(dp);
        let claimed = claimed_replies(dp, POD_A, 40000, POD_B, 80, POD_B);
        // A new connection and a packet of one alike.
        for (handed, flags) in [(1, TCP_SYN), (2, TCP_ACK)] {
            let frame = Frame::new(POD_A_MAC, HOST_A_MAC, POD_A, POD_B, tcp(40000, 80, flags));
            clash_goes_to_netfilter(dp, FROM_POD, &frame, claimed, handed);
        }
    });
}

#[test]
fn a_flagged_pod_reaching_the_outside_on_claimed_ports_goes_to_netfilter() {
    with_datapath(|dp| {
        services_node(dp);
        let claimed = claimed_replies(dp, POD_A, 40000, REMOTE, 443, POD_A);
        let syn = Frame::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A,
            REMOTE,
            tcp(40000, 443, TCP_SYN),
        );
        clash_goes_to_netfilter(dp, FROM_POD, &syn, claimed, 1);
    });
}

#[test]
fn the_uplink_delivering_on_claimed_ports_goes_to_netfilter() {
    with_datapath(|dp| {
        services_node(dp);
        let claimed = claimed_replies(dp, OTHER_NODE_POD, 40000, POD_A, 80, POD_A);
        let syn = Frame::new(
            ROUTER_MAC,
            UPLINK_MAC,
            OTHER_NODE_POD,
            POD_A,
            tcp(40000, 80, TCP_SYN),
        );
        clash_goes_to_netfilter(dp, FROM_UPLINK, &syn, claimed, 1);
    });
}

#[test]
fn to_uplink_masquerades_and_records_what_the_stack_forwarded_for_a_pod() {
    with_datapath(|dp| {
        services_node(dp);
        // A -> a service whose endpoint is outside the cluster CIDR: the
        // stack DNATed it and forwards it out of the uplink, unmarked.
        let forwarded = Frame::new(
            UPLINK_MAC,
            ROUTER_MAC,
            POD_A,
            REMOTE,
            tcp(40000, 443, TCP_SYN),
        );
        let out = dp.run(TO_UPLINK, &forwarded.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_OK);
        let masqueraded = Frame {
            src: NODE,
            ..forwarded.clone()
        };
        assert_eq!(
            out.frame,
            masqueraded.bytes(),
            "source translated, nothing else"
        );
        assert_eq!(
            dp.netfilter_flows(),
            [flow(REMOTE, 443, POD_A, 40000, IPPROTO_TCP)]
        );
        assert!(flagged(dp, POD_A));
        assert_eq!(
            untimed(dp.nat_out(&flow(POD_A, 40000, REMOTE, 443, IPPROTO_TCP))),
            Some(nat_entry(NODE, 40000, CtState::TcpSynSent))
        );
        assert_eq!(dp.counts(), counted(&[("nat-new-flow", 1)]));

        // The reply: translated back by from_uplink, then handed to
        // netfilter (conntrack turns REMOTE back into the service).
        let reply = Frame::new(
            ROUTER_MAC,
            UPLINK_MAC,
            REMOTE,
            NODE,
            tcp(443, 40000, TCP_SYN | TCP_ACK),
        );
        let out = dp.run(FROM_UPLINK, &reply.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_OK);
        let translated = Frame {
            dst: POD_A,
            ..reply
        };
        assert_eq!(out.frame, translated.bytes(), "translated, not forwarded");
        assert_eq!(
            dp.counts(),
            counted(&[("nat-new-flow", 1), ("nat-reply", 1), ("to-netfilter", 1)])
        );
    });
}

#[test]
fn to_uplink_records_cluster_destinations_without_masquerade() {
    with_datapath(|dp| {
        services_node(dp);
        let forwarded = Frame::new(UPLINK_MAC, ROUTER_MAC, POD_A, OTHER_NODE_POD, dns_query());
        let out = dp.run(TO_UPLINK, &forwarded.bytes(), Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, forwarded.bytes()));
        assert_eq!(
            dp.netfilter_flows(),
            [flow(OTHER_NODE_POD, 53, POD_A, 33333, IPPROTO_UDP)]
        );
        assert!(dp.counts().is_empty());
    });
}

#[test]
fn to_uplink_leaves_the_nodes_own_traffic_and_nodes_without_services_alone() {
    with_datapath(|dp| {
        services_node(dp);
        let own = Frame::new(
            UPLINK_MAC,
            ROUTER_MAC,
            NODE,
            REMOTE,
            tcp(40000, 443, TCP_SYN),
        );
        let out = dp.run(TO_UPLINK, &own.bytes(), Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, own.bytes()));
        // Without services the datapath does not mark its own packets:
        // nothing is taken for a stack forward.
        uplink(dp, NODE_F_MASQUERADE);
        let pods = Frame::new(
            UPLINK_MAC,
            ROUTER_MAC,
            POD_A,
            REMOTE,
            tcp(40000, 443, TCP_SYN),
        );
        let out = dp.run(TO_UPLINK, &pods.bytes(), Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, pods.bytes()));
        assert!(dp.netfilter_flows().is_empty());
        assert_eq!(dp.nat_flows(), 0);
        assert!(dp.counts().is_empty());
    });
}

#[test]
fn to_uplink_drops_what_it_cannot_masquerade() {
    with_datapath(|dp| {
        services_node(dp);
        dp.set_nat_flows(100);
        let forwarded = Frame::new(
            UPLINK_MAC,
            ROUTER_MAC,
            POD_A,
            REMOTE,
            tcp(40000, 443, TCP_SYN),
        );
        assert_eq!(
            dp.run(TO_UPLINK, &forwarded.bytes(), Skb::default()).action,
            TC_ACT_SHOT
        );
        assert_eq!(dp.counts(), counted(&[("drop nat-table-full from-pod", 1)]));
    });
}

// ---- IPv6 ----

/// The IPv6 service CIDR, and an address in it.
const SERVICE_CIDR6: (Ipv6Addr, u32) = (Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0), 112);
const DNS_SERVICE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);

/// Dual-stack pods, an uplink masquerading both families, netfilter
/// services with an IPv6 service CIDR.
fn services_node6(dp: &mut Datapath) {
    dual_stack_pods(dp);
    uplink6(dp, NODE_F_MASQUERADE | NODE_F_SERVICES);
    dp.set_node_config_v6(NodeConfigV6 {
        masq_addr: NODE6.octets(),
        flags: NODE_F_MASQUERADE,
        ..NodeConfigV6::default()
    });
    dp.add_service_cidr_v6(key6(SERVICE_CIDR6.0), SERVICE_CIDR6.1);
}

fn nat_entry6(addr: Ipv6Addr, port: u16, state: CtState) -> NatEntry {
    NatEntry {
        addr: addr.octets(),
        port: port.to_be(),
        state: state as u8,
        ..Default::default()
    }
}

fn flagged6(dp: &Datapath, pod: Ipv6Addr) -> bool {
    dp.endpoint(key6(pod)).flags & ENDPOINT_F_NETFILTER_FLOWS != 0
}

fn tcp6(sport: u16, dport: u16, flags: u8) -> L4v6 {
    L4v6::Tcp {
        sport,
        dport,
        flags,
    }
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

#[test]
fn ipv6_service_address_goes_to_netfilter() {
    with_datapath(|dp| {
        services_node6(dp);
        let query = Frame6::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A6,
            DNS_SERVICE6,
            L4v6::Udp {
                sport: 33333,
                dport: 53,
            },
        );
        let out = dp.run(FROM_POD, &query.bytes(), Skb::default());
        // Untouched (no hop limit decrement): PREROUTING's DNAT sees it as sent.
        assert_eq!((out.action, out.frame), (TC_ACT_OK, query.bytes()));
        assert_eq!(dp.counts(), counted(&[("to-netfilter", 1)]));
        assert_eq!(dp.nat_flows(), 0);
    });
}

#[test]
fn ipv6_stack_deliveries_are_recorded_and_the_replies_go_back_through_netfilter() {
    with_datapath(|dp| {
        services_node6(dp);
        // B reached a service whose endpoint is A: the stack DNATed B's
        // packet to A:80 and delivers it through A's host veth.
        let delivered = Frame6::new(
            HOST_A_MAC,
            POD_A_MAC,
            POD_B6,
            POD_A6,
            tcp6(33333, 80, TCP_SYN),
        );
        let out = dp.run(TO_POD, &delivered.bytes(), Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, delivered.bytes()));
        assert_eq!(
            dp.netfilter_flows(),
            [flow6(POD_A6, 80, POD_B6, 33333, IPPROTO_TCP)]
        );
        assert!(flagged6(dp, POD_A6));
        assert!(!flagged6(dp, POD_B6));

        let answer = Frame6::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A6,
            POD_B6,
            tcp6(80, 33333, TCP_SYN | TCP_ACK),
        );
        let out = dp.run(FROM_POD, &answer.bytes(), Skb::default());
        // To the stack as sent: conntrack turns A back into the service.
        assert_eq!((out.action, out.frame), (TC_ACT_OK, answer.bytes()));
        assert_eq!(dp.counts(), counted(&[("to-netfilter", 1)]));
        // Another flow of the same pod stays on the fast path.
        let other = Frame6::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A6,
            POD_B6,
            tcp6(80, 44444, TCP_ACK),
        );
        assert_eq!(
            dp.run(FROM_POD, &other.bytes(), Skb::default()).action,
            TC_ACT_REDIRECT
        );
        assert_eq!(
            dp.counts(),
            counted(&[("local-delivery", 1), ("to-netfilter", 1)])
        );
    });
}

#[test]
fn ipv6_a_packet_for_a_flagged_pod_on_claimed_ports_goes_to_netfilter() {
    with_datapath(|dp| {
        services_node6(dp);
        // The stack delivered A's service connection to B:8080.
        let delivered = Frame6::new(
            HOST_B_MAC,
            POD_B_MAC,
            POD_A6,
            POD_B6,
            tcp6(44444, 8080, TCP_SYN),
        );
        dp.run(TO_POD, &delivered.bytes(), Skb::default());
        assert!(flagged6(dp, POD_B6));
        assert!(!flagged6(dp, POD_A6));
        // A reaches B directly on the same ports: the stack sets it apart.
        let direct = Frame6::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A6,
            POD_B6,
            tcp6(44444, 8080, TCP_SYN),
        );
        let out = dp.run(FROM_POD, &direct.bytes(), Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, direct.bytes()));
        assert_eq!(dp.counts(), counted(&[("to-netfilter", 1)]));
        // Other ports: the fast path.
        let other = Frame6::new(
            POD_A_MAC,
            HOST_A_MAC,
            POD_A6,
            POD_B6,
            tcp6(44445, 8080, TCP_SYN),
        );
        assert_eq!(
            dp.run(FROM_POD, &other.bytes(), Skb::default()).action,
            TC_ACT_REDIRECT
        );
    });
}

#[test]
fn ipv6_reply_from_the_uplink_to_a_flagged_pod_goes_back_through_netfilter() {
    with_datapath(|dp| {
        services_node6(dp);
        // A reached a service whose endpoint is a pod on another node (no
        // masquerade: the cluster CIDR); the stack forwarded A's packet out
        // of the uplink. The endpoint answers A directly.
        let forwarded = Frame6::new(
            UPLINK_MAC,
            ROUTER_MAC,
            POD_A6,
            OTHER_NODE_POD6,
            tcp6(40000, 8443, TCP_SYN),
        );
        let out = dp.run(TO_UPLINK, &forwarded.bytes(), Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, forwarded.bytes()));
        assert_eq!(
            dp.netfilter_flows(),
            [flow6(OTHER_NODE_POD6, 8443, POD_A6, 40000, IPPROTO_TCP)]
        );
        assert!(flagged6(dp, POD_A6));
        let answer = Frame6::new(
            ROUTER_MAC,
            UPLINK_MAC,
            OTHER_NODE_POD6,
            POD_A6,
            tcp6(8443, 40000, TCP_SYN | TCP_ACK),
        );
        let out = dp.run(FROM_UPLINK, &answer.bytes(), Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, answer.bytes()));
        assert_eq!(dp.counts(), counted(&[("to-netfilter", 1)]));
    });
}

#[test]
fn ipv6_to_uplink_masquerades_and_records_what_the_stack_forwarded_for_a_pod() {
    with_datapath(|dp| {
        services_node6(dp);
        // A -> a service whose endpoint is outside the cluster CIDR: the
        // stack DNATed it and forwards it out of the uplink, unmarked.
        let forwarded = Frame6::new(
            UPLINK_MAC,
            ROUTER_MAC,
            POD_A6,
            REMOTE6,
            tcp6(40000, 443, TCP_SYN),
        );
        let out = dp.run(TO_UPLINK, &forwarded.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_OK);
        let masqueraded = Frame6 {
            src: NODE6,
            ..forwarded.clone()
        };
        assert_eq!(
            out.frame,
            masqueraded.bytes(),
            "source translated, nothing else"
        );
        assert_eq!(
            dp.netfilter_flows(),
            [flow6(REMOTE6, 443, POD_A6, 40000, IPPROTO_TCP)]
        );
        assert!(flagged6(dp, POD_A6));
        assert_eq!(
            untimed(dp.nat_out(&flow6(POD_A6, 40000, REMOTE6, 443, IPPROTO_TCP))),
            Some(nat_entry6(NODE6, 40000, CtState::TcpSynSent))
        );
        assert_eq!(dp.counts(), counted(&[("nat-new-flow", 1)]));

        // The reply: translated back by from_uplink, then handed to
        // netfilter (conntrack turns REMOTE6 back into the service).
        let reply = Frame6::new(
            ROUTER_MAC,
            UPLINK_MAC,
            REMOTE6,
            NODE6,
            tcp6(443, 40000, TCP_SYN | TCP_ACK),
        );
        let out = dp.run(FROM_UPLINK, &reply.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_OK);
        let translated = Frame6 {
            dst: POD_A6,
            ..reply
        };
        assert_eq!(out.frame, translated.bytes(), "translated, not forwarded");
        assert_eq!(
            dp.counts(),
            counted(&[("nat-new-flow", 1), ("nat-reply", 1), ("to-netfilter", 1)])
        );
    });
}

#[test]
fn ipv6_to_uplink_records_cluster_destinations_without_masquerade() {
    with_datapath(|dp| {
        services_node6(dp);
        let forwarded = Frame6::new(
            UPLINK_MAC,
            ROUTER_MAC,
            POD_A6,
            OTHER_NODE_POD6,
            L4v6::Udp {
                sport: 33333,
                dport: 53,
            },
        );
        let out = dp.run(TO_UPLINK, &forwarded.bytes(), Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, forwarded.bytes()));
        assert_eq!(
            dp.netfilter_flows(),
            [flow6(OTHER_NODE_POD6, 53, POD_A6, 33333, IPPROTO_UDP)]
        );
        assert_eq!(dp.nat_flows(), 0);
        assert!(dp.counts().is_empty());
    });
}

#[test]
fn ipv6_to_uplink_masquerades_only_with_ipv6_masquerade_on() {
    with_datapath(|dp| {
        services_node6(dp);
        // `ipMasqV6: false`: IPv4 still masquerades, IPv6 leaves as it is.
        dp.set_node_config_v6(NodeConfigV6 {
            masq_addr: NODE6.octets(),
            flags: 0,
            ..NodeConfigV6::default()
        });
        let forwarded = Frame6::new(
            UPLINK_MAC,
            ROUTER_MAC,
            POD_A6,
            REMOTE6,
            tcp6(40000, 443, TCP_SYN),
        );
        let out = dp.run(TO_UPLINK, &forwarded.bytes(), Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, forwarded.bytes()));
        assert_eq!(dp.nat_flows(), 0);
        assert_eq!(
            dp.netfilter_flows(),
            [flow6(REMOTE6, 443, POD_A6, 40000, IPPROTO_TCP)]
        );
    });
}

#[test]
fn ipv6_to_uplink_drops_what_it_cannot_masquerade() {
    with_datapath(|dp| {
        services_node6(dp);
        dp.set_nat_flows(100);
        let forwarded = Frame6::new(
            UPLINK_MAC,
            ROUTER_MAC,
            POD_A6,
            REMOTE6,
            tcp6(40000, 443, TCP_SYN),
        );
        assert_eq!(
            dp.run(TO_UPLINK, &forwarded.bytes(), Skb::default()).action,
            TC_ACT_SHOT
        );
        assert_eq!(dp.counts(), counted(&[("drop nat-table-full from-pod", 1)]));
    });
}
