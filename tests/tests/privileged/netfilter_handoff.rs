//! The datapath's side of living beside kube-proxy (`serviceCIDRs`): what
//! it hands to netfilter and what stays on the fast path, which pods it
//! flags, and the uplink that forwards only for pods and services. Each
//! test runs for both families from one body. The Service cases with
//! kube-proxy's own rule shapes are in `services`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use cni_ebpf_tests::{
    Family, Node, Pod,
    ext::{PeerClient, PeerServer, uplink_with_default_route, with_keys},
    netns::Netns,
    traffic,
};
use serde_json::{Value, json};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The service address of the tests in `family`.
fn vip(family: Family) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::new(10, 96, 0, 20).into(),
        Family::V6 => Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x20).into(),
    }
}

fn services_conf(node: &Node, family: Family) -> Value {
    let (services, cluster) = match family {
        Family::V4 => ("10.96.0.0/12", "10.244.0.0/16"),
        Family::V6 => ("fd00:10:96::/112", "fd00:10:244::/56"),
    };
    with_keys(
        node.conf().family(family).build(),
        json!({
            "ipMasq": true,
            "serviceCIDRs": [services],
            "nonMasqueradeCIDRs": [cluster],
        }),
    )
}

/// A DNAT of the VIP's port 80 to `backend:8080`, from pods (PREROUTING)
/// and the node (OUTPUT), and of UDP port 53 to `backend:5353`, where
/// nothing listens: the smallest rule set of kube-proxy's shape, with
/// `iptables-restore` or `ip6tables-restore`.
fn dnat_vip_to(node: &Node, backend: IpAddr) {
    let family = Family::of(backend);
    let (tool, host) = match family {
        Family::V4 => ("iptables-restore", "32"),
        Family::V6 => ("ip6tables-restore", "128"),
    };
    let vip = vip(family);
    let to = |port: u16| SocketAddr::new(backend, port);
    let rules = format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         -A PREROUTING -d {vip}/{host} -p tcp --dport 80 -j DNAT --to-destination {}\n\
         -A OUTPUT -d {vip}/{host} -p tcp --dport 80 -j DNAT --to-destination {}\n\
         -A PREROUTING -d {vip}/{host} -p udp --dport 53 -j DNAT --to-destination {}\n\
         COMMIT\n",
        to(8080),
        to(8080),
        to(5353)
    );
    let path = node.dir().join("dnat.rules");
    std::fs::write(&path, rules).expect("writing the rules");
    node.netns().exec_ok(tool, &[path.to_str().unwrap()]);
}

/// Whether the datapath flagged `pod` as taking part in a flow netfilter
/// translated (`cni-ebpfd endpoints --json`).
fn flagged(node: &Node, pod: &Pod<'_>, family: Family) -> bool {
    let ip = pod.addr(family);
    node.endpoints()
        .iter()
        .find(|e| e["ip"] == ip.to_string())
        .and_then(|e| e["netfilterFlows"].as_bool())
        .unwrap_or_else(|| panic!("no endpoint row for {ip}"))
}

fn exchange(from: &Netns, to: SocketAddr, bytes: u64) -> PeerClient {
    let client = from
        .run(|| PeerClient::connect(to, CONNECT_TIMEOUT))
        .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
    assert_eq!(client.stream.peer_addr().unwrap(), to);
    let copy = PeerClient {
        stream: client.stream.try_clone().unwrap(),
        seen_as: client.seen_as,
    };
    let exchange = client.exchange(bytes, 7).expect("exchange");
    assert!(exchange.intact(), "{to}: {exchange:?}");
    copy
}

/// Forwarding for what arrives on `interface`: IPv4's per-interface
/// switch, IPv6's `force_forwarding`.
fn forwards(node: &Node, family: Family, interface: &str) -> bool {
    let key = match family {
        Family::V4 => format!("net.ipv4.conf.{interface}.forwarding"),
        Family::V6 => format!("net.ipv6.conf.{interface}.force_forwarding"),
    };
    node.netns().sysctl(&key) == "1"
}

#[test]
fn service_flows_go_to_netfilter_and_direct_flows_stay_on_the_fast_path() {
    for family in Family::ALL {
        service_flows_of(family);
    }
}

fn service_flows_of(family: Family) {
    let node = Node::new();
    let _ext = uplink_with_default_route(&node);
    let conf = services_conf(&node, family);
    let client = node.add_pod_with(conf.clone());
    let backend = node.add_pod_with(conf.clone());
    let bystander = node.add_pod_with(conf);
    let (backend_ip, bystander_ip) = (backend.addr(family), bystander.addr(family));
    let _server = PeerServer::start(backend.netns(), SocketAddr::new(backend_ip, 8080))
        .expect("starting the backend");
    let _other = PeerServer::start(bystander.netns(), SocketAddr::new(bystander_ip, 8080))
        .expect("starting the bystander's server");
    dnat_vip_to(&node, backend_ip);
    for interface in ["uplink", &client.host_ifname()] {
        assert!(
            forwards(&node, family, interface),
            "{family:?}: {interface} does not forward"
        );
    }
    assert_eq!(node.netns().sysctl("net.ipv4.ip_forward"), "0");
    assert_eq!(node.netns().sysctl("net.ipv6.conf.all.forwarding"), "0");
    let vip = SocketAddr::new(vip(family), 80);

    // Through the service: handed to netfilter both ways, and the backend
    // (whose replies must go back through conntrack) is flagged.
    let handed = node.verdict_bytes("to-netfilter");
    let seen = exchange(client.netns(), vip, 256 << 10);
    assert_eq!(seen.seen_as.ip(), client.addr(family), "{family:?}");
    assert!(
        node.verdict_bytes("to-netfilter") - handed >= 256 << 10,
        "{family:?}: the service flow did not go to netfilter"
    );
    assert!(
        flagged(&node, &backend, family),
        "{family:?}: the backend is not flagged"
    );

    // Directly, between pods that never took part in a service flow: the
    // fast path, nothing handed to netfilter.
    let (handed, delivered) = (
        node.verdict_bytes("to-netfilter"),
        node.verdict_bytes("local-delivery"),
    );
    exchange(client.netns(), SocketAddr::new(bystander_ip, 8080), 4 << 20);
    assert_eq!(node.verdict_bytes("to-netfilter"), handed, "{family:?}");
    assert!(node.verdict_bytes("local-delivery") - delivered >= 4 << 20);
    assert!(
        !flagged(&node, &bystander, family),
        "{family:?}: the bystander is flagged"
    );

    // The flagged backend, reached directly on a new connection: the fast
    // path too (its flagged state only costs a lookup).
    let (handed, delivered) = (
        node.verdict_bytes("to-netfilter"),
        node.verdict_bytes("local-delivery"),
    );
    exchange(client.netns(), SocketAddr::new(backend_ip, 8080), 4 << 20);
    assert_eq!(node.verdict_bytes("to-netfilter"), handed, "{family:?}");
    assert!(node.verdict_bytes("local-delivery") - delivered >= 4 << 20);

    // The node itself reaches the service (OUTPUT DNAT), unchanged.
    exchange(node.netns(), vip, 64 << 10);

    // The backend's ICMP port unreachable goes through conntrack, which
    // quotes the service address the client used: its connected socket
    // sees the refusal.
    let dns = SocketAddr::new(vip.ip(), 53);
    let refused = client.netns().run(|| {
        let any: SocketAddr = match family {
            Family::V4 => "0.0.0.0:0".parse().unwrap(),
            Family::V6 => "[::]:0".parse().unwrap(),
        };
        let socket = UdpSocket::bind(any).unwrap();
        socket.connect(dns).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (0..3).any(|_| {
            let _ = socket.send(b"query");
            matches!(socket.recv(&mut [0u8; 64]), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
        })
    });
    assert!(
        refused,
        "{family:?}: the client never saw the backend's port unreachable"
    );
}

/// A second network behind the node, which `ext` routes to through it:
/// `10.251.0.0/24` and `fd00:251::/64`.
fn far_network(node: &Node) -> Netns {
    let far = Netns::with_loopback("far");
    let far_path = far.path().to_string_lossy().into_owned();
    node.netns().ip(&[
        "link", "add", "farlink", "type", "veth", "peer", "name", "eth0", "netns", &far_path,
    ]);
    node.netns()
        .ip(&["addr", "add", "10.251.0.1/24", "dev", "farlink"]);
    node.netns()
        .ip(&["addr", "add", "fd00:251::1/64", "dev", "farlink", "nodad"]);
    node.netns().ip(&["link", "set", "farlink", "up"]);
    far.ip(&["addr", "add", "10.251.0.2/24", "dev", "eth0"]);
    far.ip(&["addr", "add", "fd00:251::2/64", "dev", "eth0", "nodad"]);
    far.ip(&["link", "set", "eth0", "up"]);
    far.ip(&["route", "add", "default", "via", "10.251.0.1"]);
    far.ip(&["-6", "route", "add", "default", "via", "fd00:251::1"]);
    far
}

#[test]
fn the_uplink_forwards_only_for_pods_and_services_on_a_node_that_does_not_forward() {
    for family in Family::ALL {
        uplink_guard_of(family);
    }
}

fn uplink_guard_of(family: Family) {
    let node = Node::new();
    let ext = uplink_with_default_route(&node);
    let _far = far_network(&node);
    let (far_cidr, far_ip): (&str, IpAddr) = match family {
        Family::V4 => ("10.251.0.0/24", Ipv4Addr::new(10, 251, 0, 2).into()),
        Family::V6 => (
            "fd00:251::/64",
            Ipv6Addr::new(0xfd00, 0x251, 0, 0, 0, 0, 0, 2).into(),
        ),
    };
    ext.netns.ip(&[
        family.flag(),
        "route",
        "add",
        far_cidr,
        "via",
        &ext.node_addr(family).to_string(),
    ]);
    let conf = services_conf(&node, family);
    let _pod = node.add_pod_with(conf.clone());
    assert!(forwards(&node, family, "uplink"), "{family:?}");

    // The uplink forwards now, but not for transit traffic.
    let dropped = node.dropped_packets(&["transit"], "to-pod");
    assert!(
        !traffic::ping(&ext.netns, far_ip, 2),
        "{family:?}: transit got through"
    );
    assert!(
        node.dropped_packets(&["transit"], "to-pod") - dropped >= 2,
        "{family:?}: transit was not counted"
    );

    // A node that forwards everywhere (as a kubeadm node) routes on, and
    // the next ADD lifts the guard.
    node.netns().set_sysctl("net.ipv4.conf.all.forwarding", "1");
    node.netns().set_sysctl("net.ipv6.conf.all.forwarding", "1");
    let _second = node.add_pod_with(conf);
    let dropped = node.dropped_packets(&["transit"], "to-pod");
    assert!(
        traffic::ping(&ext.netns, far_ip, 2),
        "{family:?}: the forwarding node dropped transit"
    );
    assert_eq!(
        node.dropped_packets(&["transit"], "to-pod"),
        dropped,
        "{family:?}"
    );
}
