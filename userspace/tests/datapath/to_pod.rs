//! `to_pod` on its own: what the node's stack delivers to a pod is counted
//! and charged to the pod's ingress limit; anything else passes.

use cni_ebpf_common::{
    ENDPOINT_F_RATE_LIMITED, RateBucket, RateLimit, program_names::TO_POD, wire::TCP_SYN,
};

use crate::{
    harness::{Datapath, Skb, TC_ACT_OK, TC_ACT_SHOT, counted, ktime_ns, with_datapath},
    ipv6::{NODE6, POD_A6, REMOTE6, dual_stack_pods, key6},
    packet::{Arp, Frame, Frame6, L4, L4v6},
    world::*,
};

fn from_node() -> Frame {
    Frame::new(
        HOST_A_MAC,
        POD_A_MAC,
        NODE,
        POD_A,
        L4::Tcp {
            sport: 10250,
            dport: 8080,
            flags: TCP_SYN,
        },
    )
}

fn from_node6(dst: std::net::Ipv6Addr) -> Frame6 {
    Frame6::new(
        HOST_A_MAC,
        POD_A_MAC,
        NODE6,
        dst,
        L4v6::Tcp {
            sport: 10250,
            dport: 8080,
            flags: TCP_SYN,
        },
    )
}

/// A's ingress clock far ahead of now: anything charged is over the limit.
fn a_over_its_ingress_limit(dp: &mut Datapath) -> RateBucket {
    let over = RateBucket {
        bytes_per_sec: 1000,
        burst_ns: 1_000_000,
        clock_ns: ktime_ns() + 10_000_000_000,
    };
    dp.set_rate_limit(
        OWNER_A,
        RateLimit {
            ingress: over,
            ..Default::default()
        },
    );
    over
}

#[test]
fn stack_deliveries_are_counted_for_the_pod() {
    with_datapath(|dp| {
        pods(dp);
        let probe = from_node().bytes();
        let out = dp.run(TO_POD, &probe, Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, probe));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (0, 1));
        assert!(dp.counts().is_empty());
    });
}

#[test]
fn ingress_over_the_limit_is_dropped() {
    with_datapath(|dp| {
        pods(dp);
        flag(dp, POD_A, ENDPOINT_F_RATE_LIMITED);
        let over = a_over_its_ingress_limit(dp);
        assert_eq!(
            dp.run(TO_POD, &from_node().bytes(), Skb::default()).action,
            TC_ACT_SHOT
        );
        assert_eq!(dp.counts(), counted(&[("drop rate-limited to-pod", 1)]));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (0, 0));
        assert_eq!(dp.rate_limit(OWNER_A).ingress.clock_ns, over.clock_ns);
    });
}

#[test]
fn other_packets_pass_uncounted() {
    with_datapath(|dp| {
        pods(dp);
        // ARP, and IPv4 for no pod of the node.
        let arp = Arp::request(HOST_A_MAC, NODE, POD_A).bytes();
        let stranger = Frame {
            dst: REMOTE,
            ..from_node()
        }
        .bytes();
        for frame in [arp, stranger] {
            let out = dp.run(TO_POD, &frame, Skb::default());
            assert_eq!((out.action, out.frame), (TC_ACT_OK, frame));
        }
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (0, 0));
        assert!(dp.counts().is_empty());
    });
}

#[test]
fn ipv6_stack_deliveries_are_counted_and_charged() {
    with_datapath(|dp| {
        dual_stack_pods(dp);
        let probe = from_node6(POD_A6).bytes();
        let out = dp.run(TO_POD, &probe, Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, probe.clone()));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (0, 1));
        assert!(dp.counts().is_empty());

        let mut limited = dp.endpoint(key6(POD_A6));
        limited.flags |= ENDPOINT_F_RATE_LIMITED;
        dp.add_endpoint(key6(POD_A6), limited);
        let over = a_over_its_ingress_limit(dp);
        assert_eq!(dp.run(TO_POD, &probe, Skb::default()).action, TC_ACT_SHOT);
        assert_eq!(dp.counts(), counted(&[("drop rate-limited to-pod", 1)]));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (0, 1));
        assert_eq!(dp.rate_limit(OWNER_A).ingress.clock_ns, over.clock_ns);

        // IPv6 for no pod of the node passes uncounted.
        let stranger = from_node6(REMOTE6).bytes();
        let out = dp.run(TO_POD, &stranger, Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, stranger));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (0, 1));
    });
}
