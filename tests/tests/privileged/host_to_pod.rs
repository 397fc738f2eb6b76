//! The node itself (kubelet probes, host-network processes) reaches pods
//! through its normal stack, over either family.

use cni_ebpf_tests::{Family, Node, traffic};

#[test]
fn node_reaches_pod_over_tcp() {
    for family in Family::ALL {
        let node = Node::new();
        let _uplink = node.add_uplink();
        let pod = node.add_pod_of(family);
        let ip = pod.addr(family);

        let routes = node
            .netns()
            .ip(&[family.flag(), "route", "get", &ip.to_string()]);
        assert!(
            routes.contains(&pod.host_ifname()),
            "node routes {ip} elsewhere: {routes}"
        );

        assert!(
            traffic::ping(node.netns(), ip, 2),
            "{family:?}: node -> pod ping failed"
        );
        let transfer = traffic::tcp_transfer(pod.netns(), node.netns(), ip, 0, 4 << 20)
            .unwrap_or_else(|e| panic!("{family:?}: TCP transfer node -> pod: {e}"));
        assert!(transfer.intact(), "{family:?}: {transfer:?}");
    }
}

#[test]
fn pod_reaches_node_address_over_tcp() {
    for family in Family::ALL {
        let node = Node::new();
        let uplink = node.add_uplink();
        let pod = node.add_pod_of(family);

        let transfer = traffic::tcp_transfer(
            node.netns(),
            pod.netns(),
            uplink.node_addr(family),
            0,
            4 << 20,
        )
        .unwrap_or_else(|e| panic!("{family:?}: TCP transfer pod -> node: {e}"));
        assert!(transfer.intact(), "{family:?}: {transfer:?}");
    }
}
