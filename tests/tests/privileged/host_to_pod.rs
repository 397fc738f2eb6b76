//! The node itself (kubelet probes, host-network processes) reaches pods
//! through its normal stack.

use std::net::IpAddr;

use cni_ebpf_tests::{Node, traffic};

#[test]
fn node_reaches_pod_over_tcp() {
    let node = Node::new();
    let _uplink = node.add_uplink();
    let pod = node.add_pod();

    let routes = node
        .netns()
        .ip(&["-4", "route", "get", &pod.ip().to_string()]);
    assert!(
        routes.contains(&pod.host_ifname()),
        "node routes {} elsewhere: {routes}",
        pod.ip()
    );

    assert!(
        traffic::ping(node.netns(), IpAddr::V4(pod.ip()), 2),
        "node -> pod ping failed"
    );
    let transfer =
        traffic::tcp_transfer(pod.netns(), node.netns(), IpAddr::V4(pod.ip()), 0, 4 << 20)
            .expect("TCP transfer node -> pod");
    assert!(transfer.intact(), "{transfer:?}");
}

#[test]
fn pod_reaches_node_address_over_tcp() {
    let node = Node::new();
    let uplink = node.add_uplink();
    let pod = node.add_pod();

    let transfer = traffic::tcp_transfer(
        node.netns(),
        pod.netns(),
        IpAddr::V4(uplink.node_ip),
        0,
        4 << 20,
    )
    .expect("TCP transfer pod -> node");
    assert!(transfer.intact(), "{transfer:?}");
}
