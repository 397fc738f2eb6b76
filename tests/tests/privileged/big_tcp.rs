//! BIG TCP (`bigTcp`) beyond one node's pods, both families: a pod's GSO
//! packets larger than 64 KiB masqueraded out of the uplink, sent to a pod
//! on another node over native routing, and (IPv6; IPv4 is in
//! `pod_to_pod.rs`) to a pod on the same node. The VXLAN tunnel is in
//! `tunnel.rs`.
//!
//! What the kernel does with them, as packet sockets see it: the pod sends
//! packets over 64 KiB into the datapath, which translates and redirects
//! them whole (IPv6 ones carry a Hop-by-Hop Jumbo Payload header in front
//! of TCP); a device whose GSO maximum is the default 64 KiB (the uplink,
//! the underlay) cuts each packet over it into MTU-sized segments in
//! software before it transmits (`gso_features_check`), so nothing over
//! 64 KiB leaves the node. The bytes arrive intact, and without TCP
//! sending them again: a BIG TCP packet the datapath does not carry is lost
//! and resent in small pieces, which "intact" alone would not show.

use std::{net::SocketAddr, time::Duration};

use cni_ebpf_tests::{
    Family, Netns, Node,
    ext::{PeerClient, PeerServer, TwoNodes, UNDERLAY, with_keys},
    packet_watch::{FrameSizes, LEGACY_GSO_MAX},
    tcp_counters::TcpSegments,
    uplink::{self, UPLINK},
};
use serde_json::json;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BYTES: u64 = 64 << 20;

/// A receive window that does not cap the sender's packets: TCP sizes
/// them to at most half of the peer's window, and the default initial
/// window (128 KiB) kept a busy machine's transfers under 64 KiB.
fn open_receive_window(ns: &Netns) {
    ns.set_sysctl("net.ipv4.tcp_rmem", "4096 1048576 6291456");
}

/// Sends `BYTES` from `from` to the server at `to`; panics unless they
/// arrive intact. Returns the address the server saw and the sender's
/// TCP segment counts during the transfer.
fn send(from: &Netns, to: SocketAddr) -> (SocketAddr, TcpSegments) {
    let before = TcpSegments::of(from);
    let client = from
        .run(|| PeerClient::connect(to, CONNECT_TIMEOUT))
        .unwrap_or_else(|e| panic!("-> {to}: {e}"));
    let seen_as = client.seen_as;
    let exchange = client.exchange(BYTES, 7).expect("exchange");
    assert!(exchange.intact(), "-> {to}: {exchange:?}");
    (seen_as, TcpSegments::of(from).since(before))
}

/// The datapath of the sending node carried the stream itself under
/// `verdict`, handing next to nothing to the stack, and TCP hardly sent a
/// segment twice (a lost BIG TCP packet is resent in small pieces).
fn assert_carried(case: &str, node: &Node, verdict: &str, run: impl FnOnce() -> TcpSegments) {
    let before = (node.verdict_bytes(verdict), node.verdict_bytes("to-stack"));
    let segments = run();
    let carried = node.verdict_bytes(verdict) - before.0;
    let to_stack = node.verdict_bytes("to-stack") - before.1;
    assert!(
        carried >= BYTES,
        "{case}: {carried} bytes {verdict}, {to_stack} to the stack"
    );
    assert!(
        to_stack < BYTES / 100,
        "{case}: {to_stack} bytes to the stack"
    );
    assert!(
        segments.retransmitted * 50 < segments.out,
        "{case}: {segments:?}"
    );
}

/// The pod sent BIG TCP packets, and none of them crossed `watched` (named
/// in the message) whole.
fn assert_segmented(case: &str, from_pod: &FrameSizes, watched: &[(&str, &FrameSizes)]) {
    assert!(
        from_pod.larger_than(LEGACY_GSO_MAX) > 0,
        "{case}: the pod sent no packet over 64 KiB ({})",
        from_pod.summary()
    );
    for (name, frames) in watched {
        assert!(frames.count() > 0, "{case}: nothing seen on {name}");
        assert_eq!(
            frames.larger_than(LEGACY_GSO_MAX),
            0,
            "{case}: a packet over 64 KiB crossed {name} ({})",
            frames.summary()
        );
    }
}

#[test]
fn big_tcp_pod_masqueraded_out_of_the_uplink() {
    for family in Family::ALL {
        let case = format!("{family:?} masqueraded");
        let node = Node::new();
        let ext = uplink::uplink_with_default_route(&node);
        open_receive_window(&ext.netns);
        let conf = with_keys(
            node.conf().family(family).build(),
            json!({ "ipMasq": true, "bigTcp": true }),
        );
        let pod = node.add_pod_with(conf);
        let server = PeerServer::start(&ext.netns, SocketAddr::new(ext.ext_addr(family), 0))
            .expect("server outside");
        let from_pod = FrameSizes::start(node.netns(), &pod.host_ifname()).unwrap();
        let uplink_out = FrameSizes::start(node.netns(), UPLINK).unwrap();
        let ext_in = FrameSizes::start(&ext.netns, "eth0").unwrap();

        assert_carried(&case, &node, "forwarded", || {
            let (seen, segments) = send(pod.netns(), server.addr());
            assert_eq!(seen.ip(), ext.node_addr(family), "{case}");
            segments
        });
        assert_segmented(
            &case,
            &from_pod,
            &[("the uplink", &uplink_out), ("ext's eth0", &ext_in)],
        );
    }
}

#[test]
fn big_tcp_pod_to_a_pod_on_another_node() {
    for family in Family::ALL {
        let case = format!("{family:?} to another node");
        let nodes = TwoNodes::new();
        let big = json!({ "bigTcp": true });
        let a = nodes
            .a
            .add_pod_with(with_keys(nodes.conf_a_of(&[family]), big.clone()));
        let b = nodes
            .b
            .add_pod_with(with_keys(nodes.conf_b_of(&[family]), big));
        open_receive_window(b.netns());
        let server = PeerServer::start(b.netns(), SocketAddr::new(b.addr(family), 0)).unwrap();
        let from_pod = FrameSizes::start(nodes.a.netns(), &a.host_ifname()).unwrap();
        let a_out = FrameSizes::start(nodes.a.netns(), UNDERLAY).unwrap();
        let b_in = FrameSizes::start(nodes.b.netns(), UNDERLAY).unwrap();
        // `from_uplink` delivers with `bpf_redirect_peer`: b's host veth
        // never sees the packets, the pod's eth0 does.
        let into_pod = FrameSizes::start(b.netns(), "eth0").unwrap();

        assert_carried(&case, &nodes.a, "forwarded", || {
            let (seen, segments) = send(a.netns(), server.addr());
            assert_eq!(seen.ip(), a.addr(family), "{case}: translated");
            segments
        });
        assert_segmented(
            &case,
            &from_pod,
            &[
                ("a's underlay", &a_out),
                ("b's underlay", &b_in),
                ("b's pod", &into_pod),
            ],
        );
    }
}

/// On one node the packets stay whole: `bpf_redirect_peer` hands them to
/// the other pod as they are.
#[test]
fn big_tcp_ipv6_pod_to_pod_on_one_node() {
    let case = "V6 on one node";
    let node = Node::new();
    let conf = with_keys(
        node.conf().family(Family::V6).build(),
        json!({ "bigTcp": true }),
    );
    let a = node.add_pod_with(conf.clone());
    let b = node.add_pod_with(conf);
    open_receive_window(b.netns());
    let server = PeerServer::start(b.netns(), SocketAddr::new(b.addr(Family::V6), 0)).unwrap();
    let from_pod = FrameSizes::start(node.netns(), &a.host_ifname()).unwrap();
    let into_pod = FrameSizes::start(b.netns(), "eth0").unwrap();

    assert_carried(case, &node, "local-delivery", || {
        let (seen, segments) = send(a.netns(), server.addr());
        assert_eq!(seen.ip(), a.addr(Family::V6), "{case}");
        segments
    });
    for (name, frames) in [("a's host veth", &from_pod), ("b's pod", &into_pod)] {
        assert!(
            frames.larger_than(LEGACY_GSO_MAX) > 0,
            "{case}: no packet over 64 KiB on {name} ({})",
            frames.summary()
        );
    }
}
