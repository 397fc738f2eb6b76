//! Pods on one node reach each other through the datapath alone, over
//! either family, and over both at once.

use std::thread;

use cni_ebpf_tests::{Family, Node, firewall, links, packet_watch::FrameSizes, traffic};

const TEN_MB: u64 = 10 * 1024 * 1024;

#[test]
fn two_pods_ping_each_other_and_move_10mb_over_tcp() {
    for family in Family::ALL {
        let node = Node::new();
        let a = node.add_pod_of(family);
        let b = node.add_pod_of(family);
        let (a_ip, b_ip) = (a.addr(family), b.addr(family));
        assert_ne!(a_ip, b_ip, "two pods got the same address");
        let delivered_before = node.verdict_bytes("local-delivery");

        assert!(
            traffic::ping(a.netns(), b_ip, 3),
            "{family:?}: a -> b ping failed"
        );
        assert!(
            traffic::ping(b.netns(), a_ip, 3),
            "{family:?}: b -> a ping failed"
        );
        let transfer = traffic::tcp_transfer(b.netns(), a.netns(), b_ip, 0, TEN_MB)
            .unwrap_or_else(|e| panic!("{family:?}: TCP transfer a -> b: {e}"));
        assert_eq!(transfer.received_bytes, TEN_MB, "{family:?}: {transfer:?}");
        assert!(
            transfer.intact(),
            "{family:?}: stream corrupted: {transfer:?}"
        );

        // The whole stream must have been redirected by the datapath (the
        // node does not forward).
        let delivered = node.verdict_bytes("local-delivery") - delivered_before;
        assert!(
            delivered >= TEN_MB,
            "{family:?}: only {delivered} bytes counted as local-delivery"
        );
    }
}

#[test]
fn dual_stack_pods_talk_over_both_families_at_once() {
    let node = Node::new();
    let conf = node.conf().dual_stack().build();
    let a = node.add_pod_with(conf.clone());
    let b = node.add_pod_with(conf);
    for family in Family::ALL {
        assert!(
            traffic::ping(a.netns(), b.addr(family), 2),
            "{family:?}: a -> b ping failed"
        );
    }
    let delivered_before = node.verdict_bytes("local-delivery");
    let transfers = thread::scope(|scope| {
        let streams: Vec<_> = Family::ALL
            .map(|family| {
                let (a, b) = (&a, &b);
                scope.spawn(move || {
                    traffic::tcp_transfer(b.netns(), a.netns(), b.addr(family), 0, TEN_MB)
                })
            })
            .into_iter()
            .collect();
        streams
            .into_iter()
            .map(|s| s.join().expect("transfer thread"))
            .collect::<Vec<_>>()
    });
    for (family, transfer) in Family::ALL.iter().zip(transfers) {
        let transfer = transfer.unwrap_or_else(|e| panic!("{family:?}: TCP transfer: {e}"));
        assert!(transfer.intact(), "{family:?}: {transfer:?}");
        assert_eq!(transfer.received_bytes, TEN_MB, "{family:?}");
    }
    let delivered = node.verdict_bytes("local-delivery") - delivered_before;
    assert!(
        delivered >= 2 * TEN_MB,
        "only {delivered} bytes counted as local-delivery"
    );
}

#[test]
fn node_has_no_forwarding_bridge_or_firewall_yet_traffic_flows() {
    for family in Family::ALL {
        let node = Node::new();
        let a = node.add_pod_of(family);
        let b = node.add_pod_of(family);

        let forwarding = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"];
        for key in forwarding {
            assert_eq!(node.netns().sysctl(key), "0", "{key}");
        }
        let bridges: Vec<_> = links::list(node.netns())
            .into_iter()
            .filter(|l| l.kind.as_deref() == Some("bridge"))
            .collect();
        assert!(
            bridges.is_empty(),
            "bridge devices in the node: {bridges:?}"
        );
        assert_eq!(firewall::rules(node.netns()), Vec::<String>::new());

        assert!(traffic::ping(a.netns(), b.addr(family), 2), "{family:?}");
        let transfer = traffic::tcp_transfer(a.netns(), b.netns(), a.addr(family), 0, 1 << 20)
            .unwrap_or_else(|e| panic!("{family:?}: TCP transfer b -> a: {e}"));
        assert!(transfer.intact(), "{family:?}: {transfer:?}");

        // Traffic must not have changed any of it either.
        for key in forwarding {
            assert_eq!(node.netns().sysctl(key), "0", "{key}");
        }
        assert_eq!(firewall::rules(node.netns()), Vec::<String>::new());
    }
}

#[test]
fn pod_is_addressed_as_the_datapath_expects() {
    for family in Family::ALL {
        let node = Node::new();
        let pod = node.add_pod_of(family);
        let gateway = pod
            .gateway_of(family)
            .unwrap_or_else(|| panic!("{family:?}: ADD result without a gateway"));
        let flag = family.flag();

        let addrs = pod.netns().ip(&["-o", flag, "addr", "show", "dev", "eth0"]);
        let address = format!("{}/{}", pod.addr(family), pod.prefix_len_of(family));
        assert!(addrs.contains(&address), "eth0 lacks {address}: {addrs}");
        // Usable at once: no duplicate address detection to wait for. (Not
        // the link-local address: even without DAD the kernel clears its
        // tentative flag from a work item, late on a loaded machine.)
        let line = addrs
            .lines()
            .find(|l| l.contains(&address))
            .unwrap_or_default();
        assert!(!line.contains("tentative"), "{family:?}: {line}");

        let routes = pod.netns().ip(&[flag, "route", "show"]);
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
        let subnet = family.subnet();
        assert!(
            !routes.lines().any(|r| r.starts_with(&format!("{subnet} "))),
            "a prefix route for the pod subnet: {routes}"
        );
        if family == Family::V6 {
            assert_eq!(pod.netns().sysctl("net.ipv6.conf.eth0.accept_dad"), "0");
            // The host reaches the pod through a /128 on its veth.
            let host_routes = node.netns().ip(&["-6", "route", "show"]);
            let host_route = format!("{} dev {}", pod.addr(family), pod.host_ifname());
            assert!(
                host_routes.lines().any(|r| r.starts_with(&host_route)),
                "no {host_route}: {host_routes}"
            );
        }
    }
}

/// What a pod's neighbor table holds for its IPv6 gateway after traffic:
/// the host veth's MAC, learnt from the datapath's advertisement (the
/// router flag set).
#[test]
fn ipv6_gateway_resolves_to_the_host_veths_mac() {
    let node = Node::new();
    let a = node.add_pod_of(Family::V6);
    let b = node.add_pod_of(Family::V6);
    assert!(traffic::ping(a.netns(), b.addr(Family::V6), 1));
    let gateway = a.gateway_of(Family::V6).unwrap();
    let host_mac = a.result()["interfaces"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let neighbours = a.netns().ip(&["-6", "neigh", "show", "dev", "eth0"]);
    let entry = neighbours
        .lines()
        .find(|l| l.starts_with(&gateway.to_string()))
        .unwrap_or_else(|| panic!("no neighbour entry for {gateway}: {neighbours}"));
    assert!(entry.contains(&host_mac), "{entry} (host veth {host_mac})");
    assert!(entry.contains("router"), "{entry}");
    assert!(node.verdict_packets("nd-reply") >= 1);
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

    let frames = FrameSizes::start(node.netns(), &a.host_ifname()).expect("packet socket");
    let transfer = traffic::tcp_transfer(
        b.netns(),
        a.netns(),
        std::net::IpAddr::V4(b.ip()),
        0,
        8 * TEN_MB,
    )
    .expect("TCP transfer a -> b");
    assert_eq!(transfer.received_bytes, 8 * TEN_MB, "{transfer:?}");
    assert!(transfer.intact(), "stream corrupted: {transfer:?}");
    // Some of the sender's GSO packets outgrew the legacy 64 KiB limit on
    // the way into the datapath (the plain pod cannot send one that large).
    // How many depends on how fast the receiver keeps up: under load most
    // are sized by its window, so the largest is what is checked, not the
    // average.
    let largest = frames.largest();
    let average = average_sent_packet(&node, a.ip());
    assert!(
        largest > LEGACY as usize,
        "largest frame a sent was {largest} bytes ({average} on average): no BIG TCP packet"
    );
    assert!(average > 0, "the datapath charged none of a's packets");
}
