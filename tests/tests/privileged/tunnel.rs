//! The VXLAN overlay in BPF: two nodes on different segments behind a
//! router that knows nothing of pod CIDRs. Pods reach each other only
//! through the tunnel: `from_pod` keys and redirects into the node's
//! collect-metadata device, `from_tunnel` delivers straight into the pod,
//! neither node forwarding.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use cni_ebpf_tests::{
    Bpffs, Node, Pod,
    ext::{PeerClient, PeerServer, with_keys},
    netns::Netns,
    traffic,
};
use serde_json::{Value, json};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const UNDERLAY: &str = "underlay";

struct Side {
    underlay_ip: Ipv4Addr,
    router_ip: Ipv4Addr,
    pod_cidr: &'static str,
    /// The node's own address on its tunnel device (from its pod CIDR).
    tunnel_ip: Ipv4Addr,
}

const A: Side = Side {
    underlay_ip: Ipv4Addr::new(10, 98, 1, 2),
    router_ip: Ipv4Addr::new(10, 98, 1, 1),
    pod_cidr: "10.244.1.0/24",
    tunnel_ip: Ipv4Addr::new(10, 244, 1, 254),
};
const B: Side = Side {
    underlay_ip: Ipv4Addr::new(10, 98, 2, 2),
    router_ip: Ipv4Addr::new(10, 98, 2, 1),
    pod_cidr: "10.244.2.0/24",
    tunnel_ip: Ipv4Addr::new(10, 244, 2, 254),
};

/// Two nodes, each on its own segment to a router namespace.
struct Routed {
    a: Node,
    b: Node,
    _router: Netns,
}

impl Routed {
    fn new() -> Self {
        let bpffs = Arc::new(Bpffs::new());
        let a = Node::with_bpffs(bpffs.clone());
        let b = Node::with_bpffs(bpffs);
        let router = Netns::with_loopback("router");
        router.set_sysctl("net.ipv4.ip_forward", "1");
        for (node, side, port) in [(&a, &A, "to-a"), (&b, &B, "to-b")] {
            let path = node.netns().path().to_string_lossy().into_owned();
            router.ip(&[
                "link", "add", port, "type", "veth", "peer", "name", UNDERLAY, "netns", &path,
            ]);
            router.ip(&[
                "addr",
                "add",
                &format!("{}/24", side.router_ip),
                "dev",
                port,
            ]);
            router.ip(&["link", "set", port, "up"]);
            node.netns().ip(&[
                "addr",
                "add",
                &format!("{}/24", side.underlay_ip),
                "dev",
                UNDERLAY,
            ]);
            node.netns().ip(&["link", "set", UNDERLAY, "up"]);
            node.netns().ip(&[
                "route",
                "add",
                "default",
                "via",
                &side.router_ip.to_string(),
            ]);
        }
        Self {
            a,
            b,
            _router: router,
        }
    }
}

fn conf(node: &Node, side: &Side) -> Value {
    with_keys(
        node.conf().subnet(side.pod_cidr).mtu(1450).build(),
        json!({ "ipMasq": true, "nonMasqueradeCIDRs": ["10.244.0.0/16"], "uplink": UNDERLAY }),
    )
}

/// The node's tunnel device, and the other node as a VXLAN peer.
fn join(node: &Node, own: &Side, other: &Side) {
    node.agent(
        "peers",
        &[
            "tunnel",
            "--local",
            &own.underlay_ip.to_string(),
            "--underlay-dev",
            UNDERLAY,
            "--address",
            &own.tunnel_ip.to_string(),
        ],
    );
    node.agent(
        "peers",
        &[
            "add",
            "--pod-cidr",
            other.pod_cidr,
            "--underlay",
            &other.underlay_ip.to_string(),
            "--mode",
            "vxlan",
        ],
    );
}

fn transfer(from: &Netns, to: SocketAddr, bytes: u64) -> SocketAddr {
    let client = from
        .run(|| PeerClient::connect(to, CONNECT_TIMEOUT))
        .unwrap_or_else(|e| panic!("-> {to}: {e}"));
    let seen_as = client.seen_as;
    let exchange = client.exchange(bytes, 11).expect("exchange");
    assert!(exchange.intact(), "-> {to}: {exchange:?}");
    seen_as
}

fn server(pod: &Pod<'_>) -> PeerServer {
    PeerServer::start(pod.netns(), SocketAddrV4::new(pod.ip(), 0)).expect("starting a server")
}

#[test]
fn pods_behind_a_router_talk_through_the_vxlan_tunnel() {
    let nodes = Routed::new();
    let a = nodes.a.add_pod_with(conf(&nodes.a, &A));
    let b = nodes.b.add_pod_with(conf(&nodes.b, &B));
    // The router does not know the pod CIDRs: without the tunnel, nothing.
    assert!(!traffic::ping(a.netns(), IpAddr::V4(b.ip()), 1));

    join(&nodes.a, &A, &B);
    join(&nodes.b, &B, &A);
    let peers: Value = serde_json::from_str(&nodes.a.agent("peers", &["list", "--json"])).unwrap();
    assert_eq!(peers[0]["podCidr"], B.pod_cidr, "{peers}");
    assert_eq!(peers[0]["mode"], "vxlan", "{peers}");

    let before = [&nodes.a, &nodes.b].map(|n| {
        (
            n.verdict_bytes("tunneled"),
            n.verdict_bytes("local-delivery"),
        )
    });
    assert!(traffic::ping(a.netns(), IpAddr::V4(b.ip()), 3), "a -> b");
    assert!(traffic::ping(b.netns(), IpAddr::V4(a.ip()), 3), "b -> a");
    // Full-sized segments fit: the pods' MTU leaves room for the header.
    let server_b = server(&b);
    let seen = transfer(a.netns(), server_b.addr(), 8 << 20);
    assert_eq!(seen.ip(), IpAddr::V4(a.ip()), "b saw a translated source");
    let server_a = server(&a);
    assert_eq!(
        transfer(b.netns(), server_a.addr(), 8 << 20).ip(),
        IpAddr::V4(b.ip())
    );
    // UDP both ways.
    let echo = traffic::UdpReceiver::start(b.netns(), SocketAddr::new(IpAddr::V4(b.ip()), 0))
        .expect("udp receiver");
    traffic::udp_send(
        a.netns(),
        SocketAddr::new(IpAddr::V4(a.ip()), 0),
        echo.addr(),
        b"through the tunnel",
        3,
    )
    .expect("udp send");
    assert!(echo.wait_for(Duration::from_secs(5), |d| d.len() >= 3));

    // Both nodes moved it through the tunnel and delivered it themselves.
    for (node, (tunneled, delivered)) in [&nodes.a, &nodes.b].into_iter().zip(before) {
        assert!(
            node.verdict_bytes("tunneled") - tunneled >= 8 << 20,
            "{} tunneled too little",
            node.name()
        );
        assert!(
            node.verdict_bytes("local-delivery") - delivered >= 8 << 20,
            "{} delivered too little",
            node.name()
        );
        assert_eq!(node.netns().sysctl("net.ipv4.ip_forward"), "0");
    }

    // The node itself reaches the other node's pod (routed over the device,
    // keyed by to_tunnel), from its tunnel address.
    let seen = transfer(nodes.a.netns(), server_b.addr(), 1 << 20);
    assert_eq!(seen.ip(), IpAddr::V4(A.tunnel_ip));
}

#[test]
fn a_packet_from_an_address_the_peer_does_not_own_is_dropped() {
    let nodes = Routed::new();
    let _a = nodes.a.add_pod_with(conf(&nodes.a, &A));
    let b = nodes.b.add_pod_with(conf(&nodes.b, &B));
    join(&nodes.a, &A, &B);
    join(&nodes.b, &B, &A);
    // A claims a pod CIDR that is not its own toward B: B's from_tunnel
    // refuses the packets from there.
    nodes.a.agent(
        "peers",
        &[
            "add",
            "--pod-cidr",
            "10.244.9.0/24",
            "--underlay",
            &B.underlay_ip.to_string(),
            "--mode",
            "vxlan",
        ],
    );
    nodes
        .a
        .netns()
        .ip(&["addr", "add", "10.244.3.7/32", "dev", "cnie-vxlan"]);
    let dropped = nodes.b.dropped_packets(&["unknown-source"], "to-pod");
    let (sent, _) = traffic::ping_counts(
        nodes.a.netns(),
        Some("10.244.3.7".parse().unwrap()),
        IpAddr::V4(b.ip()),
        2,
    );
    assert_eq!(sent, 2);
    assert!(nodes.b.dropped_packets(&["unknown-source"], "to-pod") - dropped >= 2);
}

#[test]
fn native_peers_are_routes_that_come_and_go() {
    let nodes = cni_ebpf_tests::ext::TwoNodes::new();
    let side_a = cni_ebpf_tests::ext::SIDE_A;
    let side_b = cni_ebpf_tests::ext::SIDE_B;
    let without_routes = |node: &Node, cidr: &str| {
        with_keys(
            node.conf().subnet(cidr).build(),
            json!({ "ipMasq": true, "nonMasqueradeCIDRs": ["10.244.0.0/16"], "uplink": "underlay" }),
        )
    };
    let a = nodes
        .a
        .add_pod_with(without_routes(&nodes.a, side_a.pod_cidr));
    let b = nodes
        .b
        .add_pod_with(without_routes(&nodes.b, side_b.pod_cidr));
    assert!(!traffic::ping(a.netns(), IpAddr::V4(b.ip()), 1));
    for (node, other) in [(&nodes.a, side_b), (&nodes.b, side_a)] {
        node.agent(
            "peers",
            &[
                "add",
                "--pod-cidr",
                other.pod_cidr,
                "--underlay",
                &other.underlay_ip.to_string(),
            ],
        );
    }
    let route = nodes.a.netns().ip(&["route", "show", side_b.pod_cidr]);
    assert!(
        route.contains(&format!("via {}", side_b.underlay_ip)),
        "{route}"
    );
    assert!(
        traffic::ping(a.netns(), IpAddr::V4(b.ip()), 2),
        "a -> b natively"
    );
    let server_b = server(&b);
    assert_eq!(
        transfer(a.netns(), server_b.addr(), 1 << 20).ip(),
        IpAddr::V4(a.ip())
    );
    assert_eq!(nodes.a.verdict_bytes("tunneled"), 0);

    nodes
        .a
        .agent("peers", &["del", "--pod-cidr", side_b.pod_cidr]);
    assert_eq!(nodes.a.netns().ip(&["route", "show", side_b.pod_cidr]), "");
    assert!(nodes.a.agent("peers", &["list", "--json"]).trim() == "[]");
    assert!(!traffic::ping(a.netns(), IpAddr::V4(b.ip()), 1));
}

#[test]
fn the_agent_reattaches_the_tunnel_programs() {
    let nodes = Routed::new();
    let a = nodes.a.add_pod_with(conf(&nodes.a, &A));
    let b = nodes.b.add_pod_with(conf(&nodes.b, &B));
    join(&nodes.a, &A, &B);
    join(&nodes.b, &B, &A);
    assert!(traffic::ping(a.netns(), IpAddr::V4(b.ip()), 1), "baseline");
    for hook in ["ingress", "egress"] {
        nodes
            .b
            .netns()
            .exec_ok("tc", &["filter", "del", "dev", "cnie-vxlan", hook]);
    }
    assert!(
        !traffic::ping(a.netns(), IpAddr::V4(b.ip()), 2),
        "b reachable without from_tunnel: the test proves nothing"
    );
    let agent = cni_ebpf_tests::agent::Agent::start(&nodes.b, &["--gc-interval", "1"]);
    agent
        .wait_for_line(Duration::from_secs(10), |l| {
            l.contains("(cnie-vxlan, cnie-vxlan)")
        })
        .unwrap_or_else(|| panic!("no reattach:\n{}", agent.stderr().join("\n")));
    assert!(
        traffic::ping(a.netns(), IpAddr::V4(b.ip()), 2),
        "after reattach"
    );
}

#[test]
fn a_service_whose_endpoint_is_behind_the_tunnel_answers_from_its_address() {
    let nodes = Routed::new();
    let services = with_keys(
        conf(&nodes.a, &A),
        json!({ "serviceCIDRs": ["10.96.0.0/12"] }),
    );
    let a = nodes.a.add_pod_with(services);
    let b = nodes.b.add_pod_with(conf(&nodes.b, &B));
    join(&nodes.a, &A, &B);
    join(&nodes.b, &B, &A);
    let server_b = server(&b);
    let rules = format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n\
         -A PREROUTING -d 10.96.0.30/32 -p tcp --dport 80 -j DNAT --to-destination {}\n\
         COMMIT\n",
        server_b.addr()
    );
    let path = nodes.a.dir().join("tunnel-dnat.rules");
    std::fs::write(&path, rules).unwrap();
    nodes
        .a
        .netns()
        .exec_ok("iptables-restore", &[path.to_str().unwrap()]);
    let vip: SocketAddr = "10.96.0.30:80".parse().unwrap();
    let client = a
        .netns()
        .run(|| PeerClient::connect(vip, CONNECT_TIMEOUT))
        .expect("pod -> ClusterIP -> pod behind the tunnel");
    assert_eq!(client.stream.peer_addr().unwrap(), vip);
    assert_eq!(client.seen_as.ip(), IpAddr::V4(a.ip()));
    let exchange = client.exchange(1 << 20, 3).expect("exchange");
    assert!(exchange.intact(), "{exchange:?}");
    assert!(nodes.a.verdict_packets("to-netfilter") > 0);
}
