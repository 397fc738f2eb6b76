//! Pods on two nodes joined by an underlay reach each other with their own
//! addresses: out of the sender's uplink with `bpf_redirect_neigh`, into
//! the receiver's pod by `from_uplink`, neither node forwarding.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use cni_ebpf_tests::{
    Family, Node, Pod,
    ext::{
        PeerClient, PeerServer, SIDE_A, SIDE_B, TwoNodes, UNDERLAY, assert_node_untouched,
        nat_table,
    },
    traffic,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FOUR_MB: u64 = 4 << 20;

/// Counters of one node, read before and after traffic.
#[derive(Debug, Clone, Copy)]
struct Counters {
    forwarded: u64,
    delivered: u64,
    new_nat_flows: u64,
}

impl Counters {
    fn of(node: &Node) -> Self {
        Self {
            forwarded: node.verdict_bytes("forwarded"),
            delivered: node.verdict_bytes("local-delivery"),
            new_nat_flows: node.verdict_packets("nat-new-flow"),
        }
    }
}

/// A server in `to` on its pod address of `family`, a client in `from`:
/// the server must see `from`'s own address, and `bytes` arrive intact.
fn transfer_keeps_source(from: &Pod<'_>, to: &Pod<'_>, family: Family, bytes: u64) {
    let to_ip = to.addr(family);
    let server = PeerServer::start(to.netns(), SocketAddr::new(to_ip, 0))
        .expect("starting the server in the pod");
    let client = from
        .netns()
        .run(|| PeerClient::connect(server.addr(), CONNECT_TIMEOUT))
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.addr(family), server.addr()));
    let pod_side = client.stream.local_addr().unwrap();
    assert_eq!(pod_side.ip(), from.addr(family));
    assert_eq!(
        client.seen_as, pod_side,
        "the server in {to_ip} saw {} for {pod_side}",
        client.seen_as
    );
    let exchange = client
        .exchange(bytes, u64::from(pod_side.port()))
        .expect("exchange");
    assert!(
        exchange.intact(),
        "{} -> {to_ip}: {exchange:?}",
        from.addr(family)
    );
    assert_eq!(exchange.server_bytes, bytes);
    let peers: Vec<SocketAddr> = server.conns().iter().map(|c| c.peer).collect();
    assert_eq!(peers, [pod_side]);
}

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let net: IpAddr = net.parse().unwrap();
    let len: u32 = len.parse().unwrap();
    // Both families as the top bits of a u128, so the prefix counts from
    // the top for either.
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => u128::from(v4.to_bits()) << 96,
        IpAddr::V6(v6) => v6.to_bits(),
    };
    let same_family = ip.is_ipv4() == net.is_ipv4();
    let (ip, net) = (bits(ip), bits(net));
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    same_family && ip & mask == net & mask
}

/// Runs for IPv4, IPv6 and dual-stack pods: each family's traffic goes out
/// of the sender's uplink and straight into the receiving pod.
#[test]
fn pods_on_two_nodes_talk_with_their_own_addresses() {
    for families in [&[Family::V4][..], &[Family::V6], &Family::ALL] {
        pods_on_two_nodes_talk_with_their_own_addresses_in(families);
    }
}

fn pods_on_two_nodes_talk_with_their_own_addresses_in(families: &[Family]) {
    let nodes = TwoNodes::new();
    let a = nodes.a.add_pod_with(nodes.conf_a_of(families));
    let b = nodes.b.add_pod_with(nodes.conf_b_of(families));
    for &family in families {
        let (a_ip, b_ip) = (a.addr(family), b.addr(family));
        assert!(
            in_cidr(a_ip, SIDE_A.pod_cidr_of(family)),
            "pod a got {a_ip}"
        );
        assert!(
            in_cidr(b_ip, SIDE_B.pod_cidr_of(family)),
            "pod b got {b_ip}"
        );

        // ADD installed each node's route to the other's pods.
        for (node, other) in [(&nodes.a, SIDE_B), (&nodes.b, SIDE_A)] {
            let routes =
                node.netns()
                    .ip(&[family.flag(), "route", "show", other.pod_cidr_of(family)]);
            let want = format!("via {} dev {UNDERLAY}", other.underlay_of(family));
            assert!(
                routes.contains(&want),
                "{}: {routes:?} lacks {want}",
                node.name()
            );
        }
    }

    let before = (Counters::of(&nodes.a), Counters::of(&nodes.b));
    for &family in families {
        let (a_ip, b_ip) = (a.addr(family), b.addr(family));
        assert!(traffic::ping(a.netns(), b_ip, 3), "ping a -> {b_ip} failed");
        assert!(traffic::ping(b.netns(), a_ip, 3), "ping b -> {a_ip} failed");
        transfer_keeps_source(&a, &b, family, FOUR_MB);
        transfer_keeps_source(&b, &a, family, FOUR_MB);
    }
    let after = (Counters::of(&nodes.a), Counters::of(&nodes.b));

    // Each node sent a stream per family out of its uplink and had one
    // delivered into its pod from the uplink (there is no second pod on
    // either node that local delivery could have come from).
    let streams = families.len() as u64 * FOUR_MB;
    for (name, before, after) in [("a", before.0, after.0), ("b", before.1, after.1)] {
        let forwarded = after.forwarded - before.forwarded;
        let delivered = after.delivered - before.delivered;
        assert!(
            forwarded >= streams,
            "{families:?} node {name}: {forwarded} bytes forwarded"
        );
        assert!(
            delivered >= streams,
            "{families:?} node {name}: {delivered} bytes delivered"
        );
        assert_eq!(
            after.new_nat_flows, before.new_nat_flows,
            "node {name} masqueraded cluster traffic"
        );
    }
    for node in [&nodes.a, &nodes.b] {
        let table = nat_table(node);
        assert_eq!(table.count, 0, "{}: {table:?}", node.name());
        assert_node_untouched(node);
    }
}

/// Runs for IPv4 and IPv6: the other node's own address of the family is
/// outside the cluster CIDRs.
#[test]
fn pod_to_the_other_node_itself_is_masqueraded() {
    for family in Family::ALL {
        pod_to_the_other_node_itself_is_masqueraded_in(family);
    }
}

fn pod_to_the_other_node_itself_is_masqueraded_in(family: Family) {
    let nodes = TwoNodes::new();
    let a = nodes.a.add_pod_with(nodes.conf_a_of(&[family]));
    // B's uplink program is attached by its first ADD.
    let _b = nodes.b.add_pod_with(nodes.conf_b_of(&[family]));

    // Outside the cluster CIDR: B's own address sees A's, not the pod's.
    let server = PeerServer::start(
        nodes.b.netns(),
        SocketAddr::new(SIDE_B.underlay_of(family), 0),
    )
    .expect("starting the server on node b");
    let client = a
        .netns()
        .run(|| PeerClient::connect(server.addr(), CONNECT_TIMEOUT))
        .expect("pod a -> node b");
    assert_eq!(
        client.seen_as.ip(),
        SIDE_A.underlay_of(family),
        "{family:?}"
    );
    let exchange = client.exchange(FOUR_MB, 5).expect("exchange");
    assert!(exchange.intact(), "{family:?}: {exchange:?}");
    let table = nat_table(&nodes.a);
    assert!(
        table
            .flows
            .iter()
            .any(|f| f.remote == server.addr() && f.pod.ip() == a.addr(family)),
        "{family:?}: {table:?}"
    );
    assert_node_untouched(&nodes.a);
    assert_node_untouched(&nodes.b);
}
