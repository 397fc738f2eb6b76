//! `from_pod` on the node itself: ARP, anti-spoofing, protocols it does not
//! carry, pod-to-pod delivery, the TTL, the node's own addresses, and the
//! policer in both directions.

use std::net::Ipv4Addr;

use cni_ebpf_common::{
    ENDPOINT_F_RATE_LIMITED, Endpoint, EndpointV4, RateBucket, RateLimit,
    program_names::FROM_POD,
    wire::{ARP_REPLY, ETH_LEN, ETH_P_IPV6, TCP_SYN},
};

use crate::{
    harness::{
        Datapath, Skb, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_STATS_SLOTS, counted,
        ktime_ns, with_datapath,
    },
    packet::{Arp, Frame, L4, ethernet},
    world::*,
};

/// The gateway a pod asks for (any address works: the host veth answers).
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

fn from_a(dst: Ipv4Addr, l4: L4) -> Frame {
    Frame::new(POD_A_MAC, HOST_A_MAC, POD_A, dst, l4)
}

fn syn(dport: u16) -> L4 {
    L4::Tcp {
        sport: 40000,
        dport,
        flags: TCP_SYN,
    }
}

fn run(dp: &mut Datapath, frame: &[u8]) -> crate::harness::Outcome {
    dp.run(FROM_POD, frame, Skb::default())
}

#[test]
fn arp_request_is_answered_in_place() {
    with_datapath(|dp| {
        pods(dp);
        let request = Arp::request(POD_A_MAC, POD_A, GATEWAY).bytes();
        let out = run(dp, &request);
        assert_eq!(out.action, TC_ACT_REDIRECT, "sent back out of the veth");
        let reply = Arp {
            eth_dst: POD_A_MAC,
            eth_src: HOST_A_MAC,
            op: ARP_REPLY,
            sha: HOST_A_MAC,
            spa: GATEWAY,
            tha: POD_A_MAC,
            tpa: POD_A,
            ..Arp::request(POD_A_MAC, POD_A, GATEWAY)
        };
        assert_eq!(out.frame, reply.bytes());
        assert_eq!(dp.counts(), counted(&[("arp-reply", 1)]));
    });
}

#[test]
fn gratuitous_arp_and_arp_replies_go_to_the_stack() {
    with_datapath(|dp| {
        pods(dp);
        let gratuitous = Arp::request(POD_A_MAC, POD_A, POD_A).bytes();
        let out = run(dp, &gratuitous);
        assert_eq!((out.action, out.frame), (TC_ACT_OK, gratuitous));
        let answer = Arp {
            op: ARP_REPLY,
            ..Arp::request(POD_A_MAC, POD_A, GATEWAY)
        }
        .bytes();
        let out = run(dp, &answer);
        assert_eq!((out.action, out.frame), (TC_ACT_OK, answer));
        assert_eq!(dp.counts(), counted(&[("to-stack", 2)]));
    });
}

#[test]
fn arp_spoofing_is_dropped() {
    with_datapath(|dp| {
        pods(dp);
        let foreign_mac = [0x02, 0, 0, 0, 0x66, 0x66];
        let cases = [
            // Sender hardware address differs from the frame's source MAC.
            Arp {
                sha: foreign_mac,
                ..Arp::request(POD_A_MAC, POD_A, GATEWAY)
            },
            // A's address with a MAC that is not A's.
            Arp::request(foreign_mac, POD_A, GATEWAY),
            // B's address, sent on A's interface.
            Arp::request(POD_A_MAC, POD_B, GATEWAY),
            // An address of no pod.
            Arp::request(POD_A_MAC, Ipv4Addr::new(10, 244, 1, 99), GATEWAY),
        ];
        for arp in &cases {
            let frame = arp.bytes();
            let out = run(dp, &frame);
            assert_eq!((out.action, out.frame), (TC_ACT_SHOT, frame));
        }
        assert_eq!(dp.counts(), counted(&[("drop spoofed-arp from-pod", 4)]));
    });
}

#[test]
fn arp_of_other_hardware_is_malformed() {
    with_datapath(|dp| {
        pods(dp);
        let token_ring = Arp {
            htype: 6,
            ..Arp::request(POD_A_MAC, POD_A, GATEWAY)
        };
        assert_eq!(run(dp, &token_ring.bytes()).action, TC_ACT_SHOT);
        // Cut inside the ARP body, and a bare Ethernet header.
        for len in [ETH_LEN + 20, ETH_LEN] {
            let mut short = Arp::request(POD_A_MAC, POD_A, GATEWAY).bytes();
            short.truncate(len);
            assert_eq!(run(dp, &short).action, TC_ACT_SHOT);
        }
        assert_eq!(dp.counts(), counted(&[("drop malformed from-pod", 3)]));
    });
}

#[test]
fn unknown_source_is_dropped() {
    with_datapath(|dp| {
        pods(dp);
        let frame = Frame {
            src: Ipv4Addr::new(10, 244, 1, 99),
            ..from_a(POD_B, syn(80))
        }
        .bytes();
        assert_eq!(run(dp, &frame).action, TC_ACT_SHOT);
        assert_eq!(dp.counts(), counted(&[("drop unknown-source from-pod", 1)]));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (0, 0));
    });
}

#[test]
fn source_of_another_interface_is_dropped() {
    with_datapath(|dp| {
        pods(dp);
        // B's address and MAC, arriving on A's host veth.
        let frame = Frame::new(POD_B_MAC, HOST_A_MAC, POD_B, POD_A, syn(80)).bytes();
        assert_eq!(run(dp, &frame).action, TC_ACT_SHOT);
        assert_eq!(dp.counts(), counted(&[("drop spoofed-source from-pod", 1)]));
    });
}

#[test]
fn foreign_mac_is_dropped() {
    with_datapath(|dp| {
        pods(dp);
        let frame = Frame {
            eth_src: [0x02, 0, 0, 0, 0x66, 0x66],
            ..from_a(POD_B, syn(80))
        }
        .bytes();
        assert_eq!(run(dp, &frame).action, TC_ACT_SHOT);
        assert_eq!(dp.counts(), counted(&[("drop spoofed-mac from-pod", 1)]));
    });
}

#[test]
fn unsupported_ethertypes_are_dropped() {
    with_datapath(|dp| {
        pods(dp);
        let lldp = ethernet(HOST_A_MAC, POD_A_MAC, 0x88cc, &[0; 46]);
        assert_eq!(run(dp, &lldp).action, TC_ACT_SHOT);
        assert_eq!(dp.counts(), counted(&[("drop unsupported-l3 from-pod", 1)]));
    });
}

/// An IPv6 header (no payload) from `src` to all routers (ff02::2).
fn ipv6_frame(src: u128) -> Vec<u8> {
    let mut ip = vec![0u8; 8];
    ip[0] = 0x60;
    ip[6] = 59; // no next header
    ip[7] = 255;
    ip.extend_from_slice(&src.to_be_bytes());
    ip.extend_from_slice(&0xff02_0000_0000_0000_0000_0000_0000_0002u128.to_be_bytes());
    ethernet([0x33, 0x33, 0, 0, 0, 2], POD_A_MAC, ETH_P_IPV6, &ip)
}

/// A pod without IPv6 addresses (no link-local key) still sends link-local
/// control traffic; its node's stack gets it, as before IPv6 was carried.
#[test]
fn ipv6_link_local_goes_to_the_stack() {
    with_datapath(|dp| {
        pods(dp);
        for frame in [ipv6_frame(0xfe80 << 112 | 1), ipv6_frame(0)] {
            let out = run(dp, &frame);
            assert_eq!((out.action, out.frame), (TC_ACT_OK, frame));
        }
        assert_eq!(dp.counts(), counted(&[("to-stack", 2)]));
    });
}

#[test]
fn pod_to_pod_is_rewritten_and_redirected() {
    with_datapath(|dp| {
        pods(dp);
        for l4 in [
            syn(80),
            L4::Udp {
                sport: 5353,
                dport: 53,
                checksum: true,
            },
            L4::Echo {
                request: true,
                id: 7,
                seq: 1,
            },
        ] {
            let sent = from_a(POD_B, l4);
            let out = run(dp, &sent.bytes());
            assert_eq!(out.action, TC_ACT_REDIRECT);
            // MACs of B's veth pair, TTL 63, header checksum updated.
            assert_eq!(out.frame, sent.forwarded(HOST_B_MAC, POD_B_MAC).bytes());
        }
        assert_eq!(dp.counts(), counted(&[("local-delivery", 3)]));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (3, 0));
        assert_eq!(dp.endpoint_packets(HOST_B_IFINDEX), (0, 3));
    });
}

/// The IPv4 paths read a pod from its live slot of `ENDPOINTS_V4`: a live
/// slot is enough, with no record in `ENDPOINTS` at all.
#[test]
fn a_live_slot_is_read_without_its_record() {
    with_datapath(|dp| {
        pods(dp);
        dp.remove_endpoint_record(key(POD_B));
        let sent = from_a(POD_B, syn(80));
        let out = run(dp, &sent.bytes());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(out.frame, sent.forwarded(HOST_B_MAC, POD_B_MAC).bytes());
    });
}

/// Where the slot does not hold the address live, `ENDPOINTS` decides,
/// for the sender (checked against it) and the receiver alike: pods an
/// older build added (no slot), a slot another address holds (the same low
/// 12 bits), and a retired slot, whatever it still holds.
#[test]
fn without_a_live_slot_of_its_own_a_pod_is_found_in_endpoints() {
    // What the slots hold: another interface, other MACs.
    let stale = Endpoint {
        ifindex: 77,
        pod_mac: [0x02, 0, 0, 0, 0x77, 0x01],
        host_mac: [0x02, 0, 0, 0, 0x77, 0xfe],
        ..pod_b()
    };
    let slot = |live: u32, addr: Ipv4Addr| EndpointV4 {
        live,
        addr: addr.octets(),
        endpoint: stale,
        _reserved: [0; 16],
    };
    // Addresses with the low 12 bits of POD_A (10.244.1.2) and POD_B.
    let (near_a, near_b) = (Ipv4Addr::new(10, 244, 17, 2), Ipv4Addr::new(10, 244, 17, 3));
    let cases = [
        ("no slots", vec![]),
        (
            "slots of other addresses",
            vec![slot(1, near_a), slot(1, near_b)],
        ),
        ("retired slots", vec![slot(0, POD_A), slot(0, POD_B)]),
    ];
    for (case, slots) in cases {
        with_datapath(|dp| {
            dp.add_endpoint_record_only(key(POD_A), pod_a());
            dp.add_endpoint_record_only(key(POD_B), pod_b());
            dp.add_endpoint_stats(HOST_A_IFINDEX);
            dp.add_endpoint_stats(HOST_B_IFINDEX);
            for slot in slots {
                dp.set_endpoint_slot_v4(slot);
            }
            let sent = from_a(POD_B, syn(80));
            let out = run(dp, &sent.bytes());
            assert_eq!(out.action, TC_ACT_REDIRECT, "{case}");
            assert_eq!(
                out.frame,
                sent.forwarded(HOST_B_MAC, POD_B_MAC).bytes(),
                "{case}"
            );
            assert_eq!(dp.counts(), counted(&[("local-delivery", 1)]), "{case}");
        });
    }
}

#[test]
fn endpoints_with_a_counter_slot_are_counted_there_and_not_by_ifindex() {
    with_datapath(|dp| {
        const SLOT_A: u32 = 3;
        const SLOT_B: u32 = 9;
        dp.add_endpoint(
            key(POD_A),
            Endpoint {
                stats_slot: SLOT_A,
                ..pod_a()
            },
        );
        dp.add_endpoint(
            key(POD_B),
            Endpoint {
                stats_slot: SLOT_B,
                ..pod_b()
            },
        );
        // Entries by ifindex too, which a slotted endpoint must not touch.
        dp.add_endpoint_stats(HOST_A_IFINDEX);
        dp.add_endpoint_stats(HOST_B_IFINDEX);
        for _ in 0..2 {
            let sent = from_a(POD_B, syn(80));
            assert_eq!(run(dp, &sent.bytes()).action, TC_ACT_REDIRECT);
        }
        assert_eq!(dp.slot_packets(SLOT_A), (2, 0));
        assert_eq!(dp.slot_packets(SLOT_B), (0, 2));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (0, 0));
        assert_eq!(dp.endpoint_packets(HOST_B_IFINDEX), (0, 0));
        for slot in (0..TEST_STATS_SLOTS).filter(|s| ![SLOT_A, SLOT_B].contains(s)) {
            assert_eq!(dp.slot_packets(slot), (0, 0), "slot {slot}");
        }
    });
}

#[test]
fn ttl_1_goes_to_the_stack() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, 0);
        for dst in [POD_B, REMOTE] {
            let frame = Frame {
                ttl: 1,
                ..from_a(dst, syn(80))
            }
            .bytes();
            let out = run(dp, &frame);
            // Unchanged: the stack sends the ICMP time exceeded.
            assert_eq!((out.action, out.frame), (TC_ACT_OK, frame));
        }
        assert_eq!(dp.counts(), counted(&[("to-stack", 2)]));
    });
}

#[test]
fn node_multicast_and_no_uplink_go_to_the_stack() {
    with_datapath(|dp| {
        pods(dp);
        // No uplink configured yet: everything not for a pod.
        let remote = from_a(REMOTE, syn(80)).bytes();
        assert_eq!(run(dp, &remote).action, TC_ACT_OK);
        uplink(dp, 0);
        for dst in [NODE, Ipv4Addr::new(224, 0, 0, 251)] {
            let frame = from_a(dst, syn(80)).bytes();
            let out = run(dp, &frame);
            assert_eq!((out.action, out.frame), (TC_ACT_OK, frame));
        }
        assert_eq!(dp.counts(), counted(&[("to-stack", 3)]));
    });
}

#[test]
fn cluster_destinations_leave_unmasqueraded() {
    with_datapath(|dp| {
        masquerading_node(dp);
        let sent = from_a(OTHER_NODE_POD, syn(80));
        let out = run(dp, &sent.bytes());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        // The kernel fills the MACs in after the redirect: only the TTL.
        assert_eq!(out.frame, sent.forwarded(POD_A_MAC, HOST_A_MAC).bytes());
        assert_eq!(dp.counts(), counted(&[("forwarded", 1)]));
        assert_eq!(dp.nat_flows(), 0);
        assert_eq!(out.mark, 0, "no services: the datapath marks nothing");
    });
}

/// A limit of 1 kB/s whose clock already runs `ahead_ns` ahead of now. The
/// burst is long, so a clock set at now is never pulled up to the burst's
/// floor however late the program runs.
fn limit(ahead_ns: u64) -> RateBucket {
    RateBucket {
        bytes_per_sec: 1000,
        burst_ns: 10_000_000_000,
        clock_ns: ktime_ns() + ahead_ns,
    }
}

#[test]
fn egress_over_the_limit_is_dropped() {
    with_datapath(|dp| {
        pods(dp);
        flag(dp, POD_A, ENDPOINT_F_RATE_LIMITED);
        let over = limit(10_000_000_000);
        dp.set_rate_limit(
            OWNER_A,
            RateLimit {
                egress: over,
                ..Default::default()
            },
        );
        let frame = from_a(POD_B, syn(80)).bytes();
        assert_eq!(run(dp, &frame).action, TC_ACT_SHOT);
        assert_eq!(dp.counts(), counted(&[("drop rate-limited from-pod", 1)]));
        // A refused packet gives its cost back.
        assert_eq!(dp.rate_limit(OWNER_A).egress.clock_ns, over.clock_ns);
    });
}

#[test]
fn ingress_over_the_limit_is_dropped_for_the_receiver() {
    with_datapath(|dp| {
        pods(dp);
        flag(dp, POD_B, ENDPOINT_F_RATE_LIMITED);
        let over = limit(10_000_000_000);
        dp.set_rate_limit(
            OWNER_B,
            RateLimit {
                ingress: over,
                ..Default::default()
            },
        );
        let frame = from_a(POD_B, syn(80)).bytes();
        assert_eq!(run(dp, &frame).action, TC_ACT_SHOT);
        // Charged to the receiving pod's direction; the sender counted it.
        assert_eq!(dp.counts(), counted(&[("drop rate-limited to-pod", 1)]));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (1, 0));
        assert_eq!(dp.endpoint_packets(HOST_B_IFINDEX), (0, 0));
    });
}

#[test]
fn packets_within_the_limit_advance_the_clock() {
    with_datapath(|dp| {
        pods(dp);
        flag(dp, POD_A, ENDPOINT_F_RATE_LIMITED);
        let within = limit(0);
        dp.set_rate_limit(
            OWNER_A,
            RateLimit {
                egress: within,
                ..Default::default()
            },
        );
        let frame = from_a(POD_B, syn(80)).bytes();
        assert_eq!(run(dp, &frame).action, TC_ACT_REDIRECT);
        // Cost at 1 kB/s: one microsecond per byte of the frame.
        let cost = frame.len() as u64 * 1_000_000;
        assert_eq!(
            dp.rate_limit(OWNER_A).egress.clock_ns,
            within.clock_ns + cost
        );
        assert_eq!(dp.counts(), counted(&[("local-delivery", 1)]));
    });
}

#[test]
fn gso_packet_is_charged_as_the_frames_it_stands_for() {
    /// Headers of a full TCP segment on a veth, as `rate.rs` counts them
    /// for every segment but the first (`SEGMENT_OVERHEAD`).
    const SEGMENT_OVERHEAD: u64 = 66;
    with_datapath(|dp| {
        pods(dp);
        flag(dp, POD_A, ENDPOINT_F_RATE_LIMITED);
        let within = limit(0);
        dp.set_rate_limit(
            OWNER_A,
            RateLimit {
                egress: within,
                ..Default::default()
            },
        );
        let frame = from_a(POD_B, syn(80)).bytes();
        let gso = Skb {
            gso_segs: 4,
            ..Skb::default()
        };
        assert_eq!(dp.run(FROM_POD, &frame, gso).action, TC_ACT_REDIRECT);
        let cost = (frame.len() as u64 + 3 * SEGMENT_OVERHEAD) * 1_000_000;
        assert_eq!(
            dp.rate_limit(OWNER_A).egress.clock_ns,
            within.clock_ns + cost
        );
    });
}
