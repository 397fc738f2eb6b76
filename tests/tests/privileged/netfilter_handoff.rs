//! The datapath's side of living beside kube-proxy (`serviceCIDRs`): what
//! it hands to netfilter and what stays on the fast path, which pods it
//! flags, and the uplink that forwards only for pods and services. The
//! Service cases with kube-proxy's own rule shapes are in `services`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use cni_ebpf_tests::{
    Node, Pod,
    ext::{PeerClient, PeerServer, masquerade_conf, uplink_with_default_route, with_keys},
    netns::Netns,
    traffic,
};
use serde_json::{Value, json};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const VIP: &str = "10.96.0.20:80";

fn services_conf(node: &Node) -> Value {
    with_keys(
        masquerade_conf(node),
        json!({ "serviceCIDRs": ["10.96.0.0/12"], "nonMasqueradeCIDRs": ["10.244.0.0/16"] }),
    )
}

/// A DNAT of `VIP` to `backend:8080`, from pods (PREROUTING) and the node
/// (OUTPUT), and of UDP `VIP:53` to `backend:5353`, where nothing listens:
/// the smallest rule set of kube-proxy's shape.
fn dnat_vip_to(node: &Node, backend: Ipv4Addr) {
    let rules = format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         -A PREROUTING -d 10.96.0.20/32 -p tcp --dport 80 -j DNAT --to-destination {backend}:8080\n\
         -A OUTPUT -d 10.96.0.20/32 -p tcp --dport 80 -j DNAT --to-destination {backend}:8080\n\
         -A PREROUTING -d 10.96.0.20/32 -p udp --dport 53 -j DNAT --to-destination {backend}:5353\n\
         COMMIT\n"
    );
    let path = node.dir().join("dnat.rules");
    std::fs::write(&path, rules).expect("writing the rules");
    node.netns()
        .exec_ok("iptables-restore", &[path.to_str().unwrap()]);
}

/// Whether the datapath flagged `pod` as taking part in a flow netfilter
/// translated (`cni-ebpfd endpoints --json`).
fn flagged(node: &Node, pod: &Pod<'_>) -> bool {
    node.endpoints()
        .iter()
        .find(|e| e["ip"] == pod.ip().to_string())
        .and_then(|e| e["netfilterFlows"].as_bool())
        .unwrap_or_else(|| panic!("no endpoint row for {}", pod.ip()))
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

#[test]
fn service_flows_go_to_netfilter_and_direct_flows_stay_on_the_fast_path() {
    let node = Node::new();
    let _ext = uplink_with_default_route(&node);
    let conf = services_conf(&node);
    let client = node.add_pod_with(conf.clone());
    let backend = node.add_pod_with(conf.clone());
    let bystander = node.add_pod_with(conf);
    let _server = PeerServer::start(backend.netns(), SocketAddrV4::new(backend.ip(), 8080))
        .expect("starting the backend");
    let _other = PeerServer::start(bystander.netns(), SocketAddrV4::new(bystander.ip(), 8080))
        .expect("starting the bystander's server");
    dnat_vip_to(&node, backend.ip());
    for interface in ["uplink", &client.host_ifname()] {
        assert_eq!(
            node.netns()
                .sysctl(&format!("net.ipv4.conf.{interface}.forwarding")),
            "1",
            "{interface} does not forward"
        );
    }
    assert_eq!(node.netns().sysctl("net.ipv4.ip_forward"), "0");

    // Through the service: handed to netfilter both ways, and the backend
    // (whose replies must go back through conntrack) is flagged.
    let handed = node.verdict_bytes("to-netfilter");
    let seen = exchange(client.netns(), VIP.parse().unwrap(), 256 << 10);
    assert_eq!(seen.seen_as.ip(), IpAddr::V4(client.ip()));
    assert!(
        node.verdict_bytes("to-netfilter") - handed >= 256 << 10,
        "the service flow did not go to netfilter"
    );
    assert!(flagged(&node, &backend), "the backend is not flagged");

    // Directly, between pods that never took part in a service flow: the
    // fast path, nothing handed to netfilter.
    let (handed, delivered) = (
        node.verdict_bytes("to-netfilter"),
        node.verdict_bytes("local-delivery"),
    );
    exchange(
        client.netns(),
        SocketAddr::new(IpAddr::V4(bystander.ip()), 8080),
        4 << 20,
    );
    assert_eq!(node.verdict_bytes("to-netfilter"), handed);
    assert!(node.verdict_bytes("local-delivery") - delivered >= 4 << 20);
    assert!(!flagged(&node, &bystander), "the bystander is flagged");

    // The flagged backend, reached directly on a new connection: the fast
    // path too (its flagged state only costs a lookup).
    let (handed, delivered) = (
        node.verdict_bytes("to-netfilter"),
        node.verdict_bytes("local-delivery"),
    );
    exchange(
        client.netns(),
        SocketAddr::new(IpAddr::V4(backend.ip()), 8080),
        4 << 20,
    );
    assert_eq!(node.verdict_bytes("to-netfilter"), handed);
    assert!(node.verdict_bytes("local-delivery") - delivered >= 4 << 20);

    // The node itself reaches the service (OUTPUT DNAT), unchanged.
    exchange(node.netns(), VIP.parse().unwrap(), 64 << 10);

    // The backend's ICMP port unreachable goes through conntrack, which
    // quotes the service address the client used: its connected socket
    // sees the refusal.
    let refused = client.netns().run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.connect("10.96.0.20:53").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (0..3).any(|_| {
            let _ = socket.send(b"query");
            matches!(socket.recv(&mut [0u8; 64]), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
        })
    });
    assert!(
        refused,
        "the client never saw the backend's port unreachable"
    );
}

/// A second network behind the node, which `ext` routes to through it.
fn far_network(node: &Node) -> Netns {
    let far = Netns::with_loopback("far");
    let far_path = far.path().to_string_lossy().into_owned();
    node.netns().ip(&[
        "link", "add", "farlink", "type", "veth", "peer", "name", "eth0", "netns", &far_path,
    ]);
    node.netns()
        .ip(&["addr", "add", "10.251.0.1/24", "dev", "farlink"]);
    node.netns().ip(&["link", "set", "farlink", "up"]);
    far.ip(&["addr", "add", "10.251.0.2/24", "dev", "eth0"]);
    far.ip(&["link", "set", "eth0", "up"]);
    far.ip(&["route", "add", "default", "via", "10.251.0.1"]);
    far
}

#[test]
fn the_uplink_forwards_only_for_pods_and_services_on_a_node_that_does_not_forward() {
    let node = Node::new();
    let ext = uplink_with_default_route(&node);
    let _far = far_network(&node);
    ext.netns.ip(&[
        "route",
        "add",
        "10.251.0.0/24",
        "via",
        &ext.node_ip.to_string(),
    ]);
    let far_ip = IpAddr::V4(Ipv4Addr::new(10, 251, 0, 2));
    let conf = services_conf(&node);
    let _pod = node.add_pod_with(conf.clone());
    assert_eq!(node.netns().sysctl("net.ipv4.conf.uplink.forwarding"), "1");

    // The uplink forwards now, but not for transit traffic.
    let dropped = node.dropped_packets(&["transit"], "to-pod");
    assert!(!traffic::ping(&ext.netns, far_ip, 2), "transit got through");
    assert!(node.dropped_packets(&["transit"], "to-pod") - dropped >= 2);

    // A node that forwards everywhere (as a kubeadm node) routes on, and
    // the next ADD lifts the guard.
    node.netns().set_sysctl("net.ipv4.conf.all.forwarding", "1");
    let _second = node.add_pod_with(conf);
    let dropped = node.dropped_packets(&["transit"], "to-pod");
    assert!(
        traffic::ping(&ext.netns, far_ip, 2),
        "the forwarding node dropped transit"
    );
    assert_eq!(node.dropped_packets(&["transit"], "to-pod"), dropped);
}
