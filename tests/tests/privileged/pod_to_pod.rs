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

/// Average bytes per packet the pod at `ip` sent, from its endpoint counters
/// (a GSO packet counts once, with all its bytes).
fn average_sent_packet(node: &Node, ip: std::net::Ipv4Addr) -> u64 {
    let endpoint = node
        .endpoints()
        .into_iter()
        .find(|e| e["ip"] == ip.to_string())
        .unwrap_or_else(|| panic!("no endpoint {ip}"));
    let sent = &endpoint["fromPod"];
    sent["bytes"].as_u64().unwrap_or(0) / sent["packets"].as_u64().unwrap_or(0).max(1)
}

#[test]
fn big_tcp_raises_gso_and_gro_sizes_of_both_ends_and_traffic_flows() {
    const BIG: u32 = cni_ebpf_tests::node::BIG_TCP_DEFAULT;
    const LEGACY: u32 = 65_536;
    let node = Node::new();
    let mut conf = node.conf().build();
    conf["bigTcp"] = serde_json::json!(true);
    let a = node.add_pod_with(conf.clone());
    let b = node.add_pod_with(conf);
    let plain = node.add_pod();

    let big = links::GsoSizes {
        gso: BIG,
        gro: BIG,
        gso_ipv4: BIG,
        gro_ipv4: BIG,
    };
    for pod in [&a, &b] {
        assert_eq!(links::gso_sizes(pod.netns(), "eth0"), big, "pod end");
        assert_eq!(
            links::gso_sizes(node.netns(), &pod.host_ifname()),
            big,
            "host end"
        );
    }
    let legacy = links::gso_sizes(plain.netns(), "eth0");
    assert_eq!(
        (legacy.gso, legacy.gso_ipv4),
        (LEGACY, LEGACY),
        "default left alone"
    );

    let transfer = traffic::tcp_transfer(b.netns(), a.netns(), IpAddr::V4(b.ip()), 0, 8 * TEN_MB)
        .expect("TCP transfer a -> b");
    assert_eq!(transfer.received_bytes, 8 * TEN_MB, "{transfer:?}");
    assert!(transfer.intact(), "stream corrupted: {transfer:?}");
    // The sender's GSO packets outgrew the legacy 64 KiB limit on the way
    // through the datapath (the plain pod cannot send one that large).
    let average = average_sent_packet(&node, a.ip());
    assert!(
        average > u64::from(LEGACY),
        "a sent {average} bytes per packet on average: no BIG TCP packet"
    );
}
