//! IPv6 in `from_pod` and `from_uplink`: neighbor solicitations answered for
//! the gateway, neighbor discovery and source spoofing dropped, pod-to-pod
//! delivery with the hop limit, what leaves the node and what the stack
//! gets.

use std::net::Ipv6Addr;

use cni_ebpf_common::{
    IpKey, NODE_F_MASQUERADE,
    program_names::{FROM_POD, FROM_UPLINK},
    wire::{
        ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT, ND_OPT_SOURCE_LL, ND_OPT_TARGET_LL, ND_REDIRECT,
        ND_ROUTER_ADVERT, ND_ROUTER_SOLICIT,
    },
};

use crate::{
    harness::{
        Datapath, Outcome, Skb, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, counted, with_datapath,
    },
    packet::{
        Frame6, L4v6, assert_ipv6_checksum_valid, nd_body, neighbor_advert_reply, neighbor_solicit,
    },
    world::*,
};

pub const POD_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 1, 0, 0, 0, 2);
pub const POD_B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 1, 0, 0, 0, 3);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 1, 0, 0, 0, 1);
pub const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
pub const OTHER_NODE_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 2, 0, 0, 0, 5);
pub const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10);
const FOREIGN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x66, 0x66];

pub fn key6(addr: Ipv6Addr) -> IpKey {
    IpKey::v6(addr.octets())
}

fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from(IpKey::link_local(mac).addr)
}

/// Pods A and B of `world` with an IPv6 address each and their link-local
/// keys, as ADD writes them for a dual-stack pod.
pub fn dual_stack_pods(dp: &mut Datapath) {
    pods(dp);
    for (addr, mac, endpoint) in [(POD_A6, POD_A_MAC, pod_a()), (POD_B6, POD_B_MAC, pod_b())] {
        dp.add_endpoint(key6(addr), endpoint);
        dp.add_endpoint(IpKey::link_local(mac), endpoint);
    }
    dp.add_node_addr(key6(NODE6));
}

/// The node's uplink with `flags`; the cluster's IPv6 CIDR keeps its source.
pub fn uplink6(dp: &mut Datapath, flags: u32) {
    uplink(dp, flags);
    dp.add_no_masq_v6(key6(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0)), 32);
}

fn from_a(dst: Ipv6Addr, l4: L4v6) -> Frame6 {
    Frame6::new(POD_A_MAC, HOST_A_MAC, POD_A6, dst, l4)
}

fn udp() -> L4v6 {
    L4v6::Udp {
        sport: 5353,
        dport: 53,
    }
}

fn icmp(kind: u8, body: Vec<u8>) -> L4v6 {
    L4v6::Icmp { kind, body }
}

/// A neighbor discovery message from A's MAC with hop limit 255.
fn nd_from(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, body: Vec<u8>) -> Frame6 {
    Frame6 {
        hop_limit: 255,
        ..Frame6::new(POD_A_MAC, HOST_A_MAC, src, dst, icmp(kind, body))
    }
}

fn run(dp: &mut Datapath, frame: &[u8]) -> Outcome {
    dp.run(FROM_POD, frame, Skb::default())
}

#[test]
fn neighbor_solicitation_is_answered_with_the_host_veths_mac() {
    with_datapath(|dp| {
        dual_stack_pods(dp);
        let a_link_local = link_local(POD_A_MAC);
        // From the pod's address and, as NUD probes are, from its link-local
        // one; for the gateway, for another pod and for an address off the
        // node: the node is the next hop for all of them.
        for (asker, target) in [
            (POD_A6, GATEWAY6),
            (a_link_local, GATEWAY6),
            (POD_A6, POD_B6),
            (POD_A6, REMOTE6),
        ] {
            let out = run(dp, &neighbor_solicit(POD_A_MAC, asker, target).bytes());
            assert_eq!(out.action, TC_ACT_REDIRECT, "sent back out of the veth");
            let reply = neighbor_advert_reply(HOST_A_MAC, POD_A_MAC, asker, target).bytes();
            assert_eq!(out.frame, reply, "answer to {asker} about {target}");
            assert_ipv6_checksum_valid(&out.frame);
        }
        assert_eq!(dp.counts(), counted(&[("nd-reply", 4)]));
    });
}

#[test]
fn solicitation_without_an_option_or_with_trailing_bytes_gets_a_full_answer() {
    with_datapath(|dp| {
        dual_stack_pods(dp);
        let bare = nd_from(
            POD_A6,
            GATEWAY6,
            ND_NEIGHBOR_SOLICIT,
            nd_body(0, GATEWAY6, None),
        );
        let mut long_body = nd_body(0, GATEWAY6, Some((ND_OPT_SOURCE_LL, POD_A_MAC)));
        long_body.extend_from_slice(&[0; 16]);
        let long = nd_from(POD_A6, GATEWAY6, ND_NEIGHBOR_SOLICIT, long_body);
        for frame in [bare, long] {
            let out = run(dp, &frame.bytes());
            assert_eq!(out.action, TC_ACT_REDIRECT);
            let reply = neighbor_advert_reply(HOST_A_MAC, POD_A_MAC, POD_A6, GATEWAY6).bytes();
            assert_eq!(out.frame, reply);
        }
        assert_eq!(dp.counts(), counted(&[("nd-reply", 2)]));
    });
}

#[test]
fn the_pods_own_discovery_goes_to_the_stack() {
    with_datapath(|dp| {
        dual_stack_pods(dp);
        let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
        let frames = [
            // Duplicate address detection: from `::`, nothing to answer.
            nd_from(
                Ipv6Addr::UNSPECIFIED,
                GATEWAY6,
                ND_NEIGHBOR_SOLICIT,
                nd_body(0, POD_A6, None),
            ),
            // A solicitation for its own address.
            neighbor_solicit(POD_A_MAC, POD_A6, POD_A6),
            // Advertisements of its own addresses (answers to the node).
            nd_from(
                POD_A6,
                NODE6,
                ND_NEIGHBOR_ADVERT,
                nd_body(0x60, POD_A6, Some((ND_OPT_TARGET_LL, POD_A_MAC))),
            ),
            nd_from(
                link_local(POD_A_MAC),
                NODE6,
                ND_NEIGHBOR_ADVERT,
                nd_body(0x60, link_local(POD_A_MAC), None),
            ),
            // Router solicitation: the node sends no advertisements.
            nd_from(
                link_local(POD_A_MAC),
                all_routers,
                ND_ROUTER_SOLICIT,
                vec![0; 4],
            ),
        ];
        for frame in frames {
            let bytes = frame.bytes();
            let out = run(dp, &bytes);
            assert_eq!((out.action, out.frame), (TC_ACT_OK, bytes), "{frame:?}");
        }
        assert_eq!(dp.counts(), counted(&[("to-stack", 5)]));
    });
}

#[test]
fn neighbor_discovery_lies_are_dropped() {
    with_datapath(|dp| {
        dual_stack_pods(dp);
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let advert = |target, option| nd_body(0x20, target, option);
        let frames = [
            // Advertising B's address, the gateway's, an unknown one.
            nd_from(POD_A6, all_nodes, ND_NEIGHBOR_ADVERT, advert(POD_B6, None)),
            nd_from(
                POD_A6,
                all_nodes,
                ND_NEIGHBOR_ADVERT,
                advert(GATEWAY6, None),
            ),
            nd_from(
                link_local(POD_A_MAC),
                all_nodes,
                ND_NEIGHBOR_ADVERT,
                advert(REMOTE6, None),
            ),
            // Its own address at another MAC.
            nd_from(
                POD_A6,
                all_nodes,
                ND_NEIGHBOR_ADVERT,
                advert(POD_A6, Some((ND_OPT_TARGET_LL, FOREIGN_MAC))),
            ),
            // Soliciting with B's address as source, or another MAC.
            neighbor_solicit(POD_A_MAC, POD_B6, GATEWAY6),
            Frame6 {
                eth_src: POD_A_MAC,
                ..neighbor_solicit(FOREIGN_MAC, POD_A6, GATEWAY6)
            },
            Frame6 {
                eth_src: FOREIGN_MAC,
                ..neighbor_solicit(POD_A_MAC, POD_A6, GATEWAY6)
            },
            // A router advertisement and a redirect.
            nd_from(
                link_local(POD_A_MAC),
                all_nodes,
                ND_ROUTER_ADVERT,
                vec![0; 12],
            ),
            nd_from(link_local(POD_A_MAC), POD_B6, ND_REDIRECT, vec![0; 36]),
        ];
        let cases = frames.len() as u64;
        for frame in frames {
            let bytes = frame.bytes();
            let out = run(dp, &bytes);
            assert_eq!((out.action, out.frame), (TC_ACT_SHOT, bytes), "{frame:?}");
        }
        assert_eq!(dp.counts(), counted(&[("drop spoofed-nd from-pod", cases)]));
    });
}

#[test]
fn ipv6_source_spoofing_is_dropped() {
    with_datapath(|dp| {
        dual_stack_pods(dp);
        let unknown = Frame6 {
            src: Ipv6Addr::new(0xfd00, 0x10, 0, 1, 0, 0, 0, 0x99),
            ..from_a(POD_B6, udp())
        };
        let bs_address = Frame6 {
            src: POD_B6,
            ..from_a(POD_A6, udp())
        };
        let foreign_mac = Frame6 {
            eth_src: FOREIGN_MAC,
            ..from_a(POD_B6, udp())
        };
        for frame in [unknown, bs_address, foreign_mac] {
            assert_eq!(run(dp, &frame.bytes()).action, TC_ACT_SHOT);
        }
        assert_eq!(
            dp.counts(),
            counted(&[
                ("drop unknown-source from-pod", 1),
                ("drop spoofed-source from-pod", 1),
                ("drop spoofed-mac from-pod", 1),
            ])
        );
    });
}

#[test]
fn ipv6_pod_to_pod_is_rewritten_and_redirected() {
    with_datapath(|dp| {
        dual_stack_pods(dp);
        for l4 in [udp(), L4v6::Echo { id: 7, seq: 1 }] {
            let sent = from_a(POD_B6, l4);
            let out = run(dp, &sent.bytes());
            assert_eq!(out.action, TC_ACT_REDIRECT);
            // MACs of B's veth pair, hop limit 63, payload untouched.
            assert_eq!(out.frame, sent.forwarded(HOST_B_MAC, POD_B_MAC).bytes());
        }
        assert_eq!(dp.counts(), counted(&[("local-delivery", 2)]));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (2, 0));
        assert_eq!(dp.endpoint_packets(HOST_B_IFINDEX), (0, 2));
    });
}

#[test]
fn ipv6_hop_limit_1_goes_to_the_stack() {
    with_datapath(|dp| {
        dual_stack_pods(dp);
        uplink6(dp, 0);
        for dst in [POD_B6, OTHER_NODE_POD6] {
            let frame = Frame6 {
                hop_limit: 1,
                ..from_a(dst, udp())
            }
            .bytes();
            let out = run(dp, &frame);
            // Unchanged: the stack sends the ICMPv6 time exceeded.
            assert_eq!((out.action, out.frame), (TC_ACT_OK, frame));
        }
        assert_eq!(dp.counts(), counted(&[("to-stack", 2)]));
    });
}

#[test]
fn ipv6_for_the_node_the_link_and_untranslated_outside_goes_to_the_stack() {
    with_datapath(|dp| {
        dual_stack_pods(dp);
        // No uplink yet: everything not for a pod.
        let remote = from_a(OTHER_NODE_POD6, udp()).bytes();
        assert_eq!(run(dp, &remote).action, TC_ACT_OK);
        uplink6(dp, NODE_F_MASQUERADE);
        let multicast = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
        // The node, and link-scoped destinations (B's link-local address
        // included: never delivered across links). IPv6 masquerade: see
        // `ipv6_nat`.
        for dst in [NODE6, multicast, link_local(POD_B_MAC)] {
            let frame = from_a(dst, udp()).bytes();
            let out = run(dp, &frame);
            assert_eq!((out.action, out.frame), (TC_ACT_OK, frame), "to {dst}");
        }
        assert_eq!(dp.counts(), counted(&[("to-stack", 4)]));
    });
}

#[test]
fn ipv6_to_other_nodes_pods_leaves_through_the_uplink() {
    with_datapath(|dp| {
        dual_stack_pods(dp);
        uplink6(dp, NODE_F_MASQUERADE);
        let sent = from_a(OTHER_NODE_POD6, udp());
        let out = run(dp, &sent.bytes());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        // The kernel fills the MACs in after the redirect: only the hop limit.
        assert_eq!(out.frame, sent.forwarded(POD_A_MAC, HOST_A_MAC).bytes());
        assert_eq!(dp.counts(), counted(&[("forwarded", 1)]));
        assert_eq!(dp.nat_flows(), 0);
    });
}

#[test]
fn ipv6_from_the_uplink_is_delivered_into_the_pod() {
    with_datapath(|dp| {
        dual_stack_pods(dp);
        uplink6(dp, 0);
        let sent = Frame6::new(ROUTER_MAC, UPLINK_MAC, OTHER_NODE_POD6, POD_A6, udp());
        let out = dp.run(FROM_UPLINK, &sent.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(out.frame, sent.forwarded(HOST_A_MAC, POD_A_MAC).bytes());
        // The node's own, link-scoped, hop limit 1 and strangers: the stack.
        let stack = [
            Frame6::new(ROUTER_MAC, UPLINK_MAC, OTHER_NODE_POD6, NODE6, udp()),
            Frame6::new(
                ROUTER_MAC,
                UPLINK_MAC,
                OTHER_NODE_POD6,
                link_local(POD_A_MAC),
                udp(),
            ),
            Frame6 {
                hop_limit: 1,
                ..sent.clone()
            },
            Frame6::new(ROUTER_MAC, UPLINK_MAC, OTHER_NODE_POD6, REMOTE6, udp()),
        ];
        for frame in stack {
            let bytes = frame.bytes();
            let out = dp.run(FROM_UPLINK, &bytes, Skb::default());
            assert_eq!((out.action, out.frame), (TC_ACT_OK, bytes), "{frame:?}");
        }
        assert_eq!(dp.counts(), counted(&[("local-delivery", 1)]));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (0, 1));
    });
}

/// A pod without IPv6 addresses has no link-local key: its link-local
/// neighbor discovery with the node goes to the stack as before IPv6 was
/// carried, but it advertises no routable address and no endpoint's.
#[test]
fn pods_without_ipv6_keep_link_local_discovery_but_claim_nothing() {
    with_datapath(|dp| {
        dual_stack_pods(dp);
        let unkeyed = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99);
        let node_link_local = link_local(HOST_A_MAC);
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let to_stack = [
            neighbor_solicit(POD_A_MAC, unkeyed, node_link_local),
            nd_from(
                unkeyed,
                node_link_local,
                ND_NEIGHBOR_ADVERT,
                nd_body(0x60, unkeyed, Some((ND_OPT_TARGET_LL, POD_A_MAC))),
            ),
        ];
        for frame in to_stack {
            let bytes = frame.bytes();
            let out = run(dp, &bytes);
            assert_eq!((out.action, out.frame), (TC_ACT_OK, bytes), "{frame:?}");
        }
        let lies = [
            nd_from(
                unkeyed,
                all_nodes,
                ND_NEIGHBOR_ADVERT,
                nd_body(0x20, POD_B6, None),
            ),
            nd_from(
                unkeyed,
                all_nodes,
                ND_NEIGHBOR_ADVERT,
                nd_body(0x20, GATEWAY6, None),
            ),
            nd_from(
                unkeyed,
                all_nodes,
                ND_NEIGHBOR_ADVERT,
                nd_body(0x20, link_local(POD_B_MAC), None),
            ),
        ];
        for frame in lies {
            let bytes = frame.bytes();
            assert_eq!(run(dp, &bytes).action, TC_ACT_SHOT, "{frame:?}");
        }
        assert_eq!(
            dp.counts(),
            counted(&[("to-stack", 2), ("drop spoofed-nd from-pod", 3)])
        );
    });
}
