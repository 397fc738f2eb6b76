//! Pods on one node reach each other through the datapath alone.

use std::net::IpAddr;

use cni_ebpf_tests::{Node, firewall, links, node::DEFAULT_SUBNET, traffic};

const TEN_MB: u64 = 10 * 1024 * 1024;

#[test]
fn two_pods_ping_each_other_and_move_10mb_over_tcp() {
    let node = Node::new();
    let a = node.add_pod();
    let b = node.add_pod();
    assert_ne!(a.ip(), b.ip(), "two pods got the same address");
    let delivered_before = node.verdict_bytes("local-delivery");

    assert!(
        traffic::ping(a.netns(), IpAddr::V4(b.ip()), 3),
        "a -> b ping failed"
    );
    assert!(
        traffic::ping(b.netns(), IpAddr::V4(a.ip()), 3),
        "b -> a ping failed"
    );
    let transfer = traffic::tcp_transfer(b.netns(), a.netns(), IpAddr::V4(b.ip()), 0, TEN_MB)
        .expect("TCP transfer a -> b");
    assert_eq!(transfer.received_bytes, TEN_MB, "{transfer:?}");
    assert!(transfer.intact(), "stream corrupted: {transfer:?}");

    // The whole stream must have been redirected by the datapath (the node
    // does not forward).
    let delivered = node.verdict_bytes("local-delivery") - delivered_before;
    assert!(
        delivered >= TEN_MB,
        "only {delivered} bytes counted as local-delivery"
    );
}

#[test]
fn node_has_no_forwarding_bridge_or_firewall_yet_traffic_flows() {
    let node = Node::new();
    let a = node.add_pod();
    let b = node.add_pod();

    assert_eq!(node.netns().sysctl("net.ipv4.ip_forward"), "0");
    let bridges: Vec<_> = links::list(node.netns())
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .collect();
    assert!(
        bridges.is_empty(),
        "bridge devices in the node: {bridges:?}"
    );
    assert_eq!(firewall::rules(node.netns()), Vec::<String>::new());

    assert!(traffic::ping(a.netns(), IpAddr::V4(b.ip()), 2));
    let transfer = traffic::tcp_transfer(a.netns(), b.netns(), IpAddr::V4(a.ip()), 0, 1 << 20)
        .expect("TCP transfer b -> a");
    assert!(transfer.intact(), "{transfer:?}");

    // Traffic must not have changed any of it either.
    assert_eq!(node.netns().sysctl("net.ipv4.ip_forward"), "0");
    assert_eq!(firewall::rules(node.netns()), Vec::<String>::new());
}

#[test]
fn pod_is_addressed_as_the_datapath_expects() {
    let node = Node::new();
    let pod = node.add_pod();
    let gateway = pod.gateway().expect("ADD result without a gateway");

    let addrs = pod.netns().ip(&["-o", "-4", "addr", "show", "dev", "eth0"]);
    let address = format!("{}/{}", pod.ip(), pod.prefix_len());
    assert!(addrs.contains(&address), "eth0 lacks {address}: {addrs}");

    let routes = pod.netns().ip(&["-4", "route", "show"]);
    assert!(
        routes
            .lines()
            .any(|r| r.starts_with(&format!("default via {gateway} dev eth0"))),
        "no default route via {gateway}: {routes}"
    );
    assert!(
        routes
            .lines()
            .any(|r| r.starts_with(&format!("{gateway} dev eth0"))),
        "no link route to {gateway}: {routes}"
    );
    // The datapath, not a subnet route, decides what is local.
    assert!(
        !routes
            .lines()
            .any(|r| r.starts_with(&format!("{DEFAULT_SUBNET} "))),
        "a prefix route for the pod subnet: {routes}"
    );
}
