//! `from_uplink` delivering into pods (traffic of other nodes' pods), what
//! it leaves to the stack, and the uplink guard of a node that does not
//! forward.

use std::{net::Ipv4Addr, process::Command, thread};

use cni_ebpf_common::{
    CtState, ENDPOINT_F_RATE_LIMITED, IPPROTO_TCP, NODE_F_UPLINK_GUARD, RateBucket, RateLimit,
    program_names::FROM_UPLINK,
    wire::{ETH_P_IPV6, TCP_ACK, TCP_SYN},
};
use nix::sched::{CloneFlags, unshare};

use crate::{
    harness::{
        Datapath, Skb, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, counted, ktime_ns, with_datapath,
    },
    packet::{Arp, Frame, L4, ethernet},
    world::*,
};

fn syn() -> L4 {
    L4::Tcp {
        sport: 40000,
        dport: 80,
        flags: TCP_SYN,
    }
}

fn arriving(src: Ipv4Addr, dst: Ipv4Addr) -> Frame {
    Frame::new(ROUTER_MAC, UPLINK_MAC, src, dst, syn())
}

#[test]
fn other_nodes_pods_are_delivered_straight_into_the_pod() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, 0);
        let sent = arriving(OTHER_NODE_POD, POD_A);
        let out = dp.run(FROM_UPLINK, &sent.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(out.frame, sent.forwarded(HOST_A_MAC, POD_A_MAC).bytes());
        assert_eq!(dp.counts(), counted(&[("local-delivery", 1)]));
        assert_eq!(dp.endpoint_packets(HOST_A_IFINDEX), (0, 1));
    });
}

#[test]
fn ttl_1_non_ipv4_and_strangers_go_to_the_stack_uncounted() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, 0);
        let frames = [
            Frame {
                ttl: 1,
                ..arriving(OTHER_NODE_POD, POD_A)
            }
            .bytes(),
            Arp::request(ROUTER_MAC, REMOTE, NODE).bytes(),
            ethernet(UPLINK_MAC, ROUTER_MAC, ETH_P_IPV6, &[0x60; 40]),
            arriving(REMOTE, Ipv4Addr::new(198, 51, 100, 7)).bytes(),
        ];
        for frame in frames {
            let out = dp.run(FROM_UPLINK, &frame, Skb::default());
            assert_eq!((out.action, out.frame), (TC_ACT_OK, frame));
        }
        assert!(dp.counts().is_empty());
    });
}

#[test]
fn replies_are_not_translated_without_masquerade() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, 0);
        dp.insert_nat_in(
            flow(REMOTE, 80, NODE, 40000, IPPROTO_TCP),
            nat_entry(POD_A, 40000, CtState::TcpSynSent),
        );
        let reply = Frame::new(
            ROUTER_MAC,
            UPLINK_MAC,
            REMOTE,
            NODE,
            L4::Tcp {
                sport: 80,
                dport: 40000,
                flags: TCP_SYN | TCP_ACK,
            },
        );
        let out = dp.run(FROM_UPLINK, &reply.bytes(), Skb::default());
        assert_eq!((out.action, out.frame), (TC_ACT_OK, reply.bytes()));
        assert!(dp.counts().is_empty());
    });
}

#[test]
fn deliveries_over_the_ingress_limit_are_dropped() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, 0);
        flag(dp, POD_A, ENDPOINT_F_RATE_LIMITED);
        dp.set_rate_limit(
            OWNER_A,
            RateLimit {
                ingress: RateBucket {
                    bytes_per_sec: 1000,
                    burst_ns: 1_000_000,
                    clock_ns: ktime_ns() + 10_000_000_000,
                },
                ..Default::default()
            },
        );
        let sent = arriving(OTHER_NODE_POD, POD_A).bytes();
        assert_eq!(
            dp.run(FROM_UPLINK, &sent, Skb::default()).action,
            TC_ACT_SHOT
        );
        assert_eq!(dp.counts(), counted(&[("drop rate-limited to-pod", 1)]));
    });
}

/// Runs `body` on a thread inside a new, private network namespace holding
/// an "uplink" veth `up0` (10.50.0.1/24, forwarding on) whose peer routes
/// 198.51.100.0/24: the FIB the guard asks. Returns when the thread ends,
/// and the namespace and its links go with it.
fn with_routed_uplink(dp: &mut Datapath, body: impl FnOnce(&mut Datapath, u32) + Send) {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let own = std::fs::read_link("/proc/thread-self/ns/net").expect("netns");
                unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
                let private = std::fs::read_link("/proc/thread-self/ns/net").expect("netns");
                assert_ne!(own, private, "in a network namespace of its own");
                // Commands started here inherit this thread's namespace.
                for args in [
                    "link set lo up",
                    "link add up0 type veth peer name up1",
                    "addr add 10.50.0.1/24 dev up0",
                    "link set up0 up",
                    "link set up1 up",
                    "route add 198.51.100.0/24 via 10.50.0.2 dev up0",
                ] {
                    let status = Command::new("ip")
                        .args(args.split(' '))
                        .status()
                        .expect("running ip");
                    assert!(status.success(), "ip {args}");
                }
                std::fs::write("/proc/sys/net/ipv4/conf/up0/forwarding", "1")
                    .expect("forwarding on up0");
                let ifindex = nix::net::if_::if_nametoindex("up0").expect("up0");
                body(dp, ifindex);
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    });
}

#[test]
fn guard_drops_transit_and_passes_the_rest() {
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, NODE_F_UPLINK_GUARD);
        dp.add_service_cidr(key(SERVICE_CIDR.0), SERVICE_CIDR.1);
        with_routed_uplink(dp, |dp, up0| {
            let on_uplink = Skb {
                ifindex: up0,
                ..Skb::default()
            };
            let transit = arriving(REMOTE, Ipv4Addr::new(198, 51, 100, 7)).bytes();
            assert_eq!(dp.run(FROM_UPLINK, &transit, on_uplink).action, TC_ACT_SHOT);
            // The uplink's own address (not in NODE_ADDRS), multicast and
            // service addresses are not transit.
            for dst in [
                Ipv4Addr::new(10, 50, 0, 1),
                Ipv4Addr::new(224, 0, 0, 5),
                DNS_SERVICE,
            ] {
                let frame = arriving(REMOTE, dst).bytes();
                let out = dp.run(FROM_UPLINK, &frame, on_uplink);
                assert_eq!((out.action, out.frame), (TC_ACT_OK, frame), "to {dst}");
            }
            assert_eq!(dp.counts(), counted(&[("drop transit to-pod", 1)]));
            // A node that forwards has no guard.
            uplink(dp, 0);
            assert_eq!(dp.run(FROM_UPLINK, &transit, on_uplink).action, TC_ACT_OK);
            assert_eq!(dp.counts(), counted(&[("drop transit to-pod", 1)]));
        });
    });
}

#[test]
fn established_flows_are_untouched_by_the_guard() {
    // Pods are never transit: a guarded node still delivers to them.
    with_datapath(|dp| {
        pods(dp);
        uplink(dp, NODE_F_UPLINK_GUARD);
        let sent = Frame {
            l4: L4::Tcp {
                sport: 40000,
                dport: 80,
                flags: TCP_ACK,
            },
            ..arriving(OTHER_NODE_POD, POD_A)
        };
        let out = dp.run(FROM_UPLINK, &sent.bytes(), Skb::default());
        assert_eq!(out.action, TC_ACT_REDIRECT);
        assert_eq!(dp.counts(), counted(&[("local-delivery", 1)]));
    });
}
