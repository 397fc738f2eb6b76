//! The VXLAN overlay in BPF: two nodes on different segments behind a
//! router that knows nothing of pod CIDRs. Pods reach each other only
//! through the tunnel: `from_pod` keys and redirects into the node's
//! collect-metadata device, `from_tunnel` delivers straight into the pod,
//! neither node forwarding. Tables over the pods' families (IPv4, IPv6,
//! dual stack) and the underlay's (IPv6 pods ride an IPv4 underlay as the
//! cluster agent sets it up, or an IPv6 one).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::Arc,
    time::Duration,
};

use cni_ebpf_tests::{
    Bpffs, Family, Node, Pod,
    ext::{PeerClient, PeerServer, UdpEcho, udp_request, with_keys},
    kube_proxy::{self, ClusterSettings, Mode, Protocol, Service},
    netns::Netns,
    packet_watch::{FrameSizes, LEGACY_GSO_MAX},
    tcp_counters::TcpSegments,
    traffic,
};
use serde_json::{Value, json};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const UNDERLAY: &str = "underlay";
/// VXLAN over IPv4 costs 50 bytes of the underlay's 1500, over IPv6 70.
const POD_MTU: (u32, u32) = (1450, 1430);

struct Side {
    underlay_ip: Ipv4Addr,
    router_ip: Ipv4Addr,
    underlay_ip6: Ipv6Addr,
    router_ip6: Ipv6Addr,
    pod_cidr: &'static str,
    pod_cidr6: &'static str,
    /// The node's own addresses on its tunnel device (from its pod CIDRs).
    tunnel_ip: Ipv4Addr,
    tunnel_ip6: Ipv6Addr,
}

impl Side {
    fn pod_cidr_of(&self, family: Family) -> &'static str {
        match family {
            Family::V4 => self.pod_cidr,
            Family::V6 => self.pod_cidr6,
        }
    }

    fn underlay_of(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.underlay_ip.into(),
            Family::V6 => self.underlay_ip6.into(),
        }
    }

    fn tunnel_ip_of(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.tunnel_ip.into(),
            Family::V6 => self.tunnel_ip6.into(),
        }
    }
}

const A: Side = Side {
    underlay_ip: Ipv4Addr::new(10, 98, 1, 2),
    router_ip: Ipv4Addr::new(10, 98, 1, 1),
    underlay_ip6: Ipv6Addr::new(0xfd00, 0x98, 1, 0, 0, 0, 0, 2),
    router_ip6: Ipv6Addr::new(0xfd00, 0x98, 1, 0, 0, 0, 0, 1),
    pod_cidr: "10.244.1.0/24",
    pod_cidr6: "fd00:10:244:1::/64",
    tunnel_ip: Ipv4Addr::new(10, 244, 1, 254),
    tunnel_ip6: Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0xfe),
};
const B: Side = Side {
    underlay_ip: Ipv4Addr::new(10, 98, 2, 2),
    router_ip: Ipv4Addr::new(10, 98, 2, 1),
    underlay_ip6: Ipv6Addr::new(0xfd00, 0x98, 2, 0, 0, 0, 0, 2),
    router_ip6: Ipv6Addr::new(0xfd00, 0x98, 2, 0, 0, 0, 0, 1),
    pod_cidr: "10.244.2.0/24",
    pod_cidr6: "fd00:10:244:2::/64",
    tunnel_ip: Ipv4Addr::new(10, 244, 2, 254),
    tunnel_ip6: Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0xfe),
};

/// Two nodes, each on its own segment (IPv4 and IPv6) to a router
/// namespace that forwards both families.
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
        router.set_sysctl("net.ipv6.conf.all.forwarding", "1");
        for (node, side, port) in [(&a, &A, "to-a"), (&b, &B, "to-b")] {
            let path = node.netns().path().to_string_lossy().into_owned();
            router.ip(&[
                "link", "add", port, "type", "veth", "peer", "name", UNDERLAY, "netns", &path,
            ]);
            for (address, prefix) in [
                (IpAddr::V4(side.router_ip), 24),
                (side.router_ip6.into(), 64),
            ] {
                router.ip(&[
                    "addr",
                    "add",
                    &format!("{address}/{prefix}"),
                    "dev",
                    port,
                    "nodad",
                ]);
            }
            router.ip(&["link", "set", port, "up"]);
            for (address, prefix) in [
                (IpAddr::V4(side.underlay_ip), 24),
                (side.underlay_ip6.into(), 64),
            ] {
                node.netns().ip(&[
                    "addr",
                    "add",
                    &format!("{address}/{prefix}"),
                    "dev",
                    UNDERLAY,
                    "nodad",
                ]);
            }
            node.netns().ip(&["link", "set", UNDERLAY, "up"]);
            for gateway in [IpAddr::V4(side.router_ip), side.router_ip6.into()] {
                node.netns()
                    .ip(&["route", "add", "default", "via", &gateway.to_string()]);
            }
        }
        Self {
            a,
            b,
            _router: router,
        }
    }
}

/// The node's config for pods of `families` (one range set each) with room
/// for the tunnel header over an `underlay` of that family.
fn conf_of(node: &Node, side: &Side, families: &[Family], underlay: Family) -> Value {
    let mut builder = node.conf().subnet(side.pod_cidr_of(families[0]));
    if let Some(second) = families.get(1) {
        builder = builder.second_subnet(side.pod_cidr_of(*second));
    }
    let mtu = match underlay {
        Family::V4 => POD_MTU.0,
        Family::V6 => POD_MTU.1,
    };
    with_keys(
        builder.mtu(mtu).build(),
        json!({
            "ipMasq": true,
            "nonMasqueradeCIDRs": ["10.244.0.0/16", "fd00:10:244::/48"],
            "uplink": UNDERLAY,
        }),
    )
}

fn conf(node: &Node, side: &Side) -> Value {
    conf_of(node, side, &[Family::V4], Family::V4)
}

/// The node's tunnel device, and the other node as a VXLAN peer for each
/// of `families`' pod CIDRs, tunneled to its address of `underlay`.
fn join_of(node: &Node, own: &Side, other: &Side, families: &[Family], underlay: Family) {
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
            "--address",
            &own.tunnel_ip6.to_string(),
        ],
    );
    for &family in families {
        node.agent(
            "peers",
            &[
                "add",
                "--pod-cidr",
                other.pod_cidr_of(family),
                "--underlay",
                &other.underlay_of(underlay).to_string(),
                "--mode",
                "vxlan",
            ],
        );
    }
}

/// The node's tunnel device, and the other node as a VXLAN peer.
fn join(node: &Node, own: &Side, other: &Side) {
    join_of(node, own, other, &[Family::V4], Family::V4);
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

fn server_of(pod: &Pod<'_>, family: Family) -> PeerServer {
    PeerServer::start(pod.netns(), SocketAddr::new(pod.addr(family), 0)).expect("starting a server")
}

/// IPv4, IPv6 and dual-stack pods over an IPv4 underlay, and IPv6 pods
/// over an IPv6 one.
#[test]
fn pods_behind_a_router_talk_through_the_vxlan_tunnel() {
    let cases: [(&[Family], Family); 4] = [
        (&[Family::V4], Family::V4),
        (&[Family::V6], Family::V4),
        (&Family::ALL, Family::V4),
        (&[Family::V6], Family::V6),
    ];
    for (families, underlay) in cases {
        pods_behind_a_router_talk_through_the_vxlan_tunnel_in(families, underlay);
    }
}

fn pods_behind_a_router_talk_through_the_vxlan_tunnel_in(families: &[Family], underlay: Family) {
    let case = format!("{families:?} pods over an {underlay:?} underlay");
    let nodes = Routed::new();
    let a = nodes
        .a
        .add_pod_with(conf_of(&nodes.a, &A, families, underlay));
    let b = nodes
        .b
        .add_pod_with(conf_of(&nodes.b, &B, families, underlay));
    // The router does not know the pod CIDRs: without the tunnel, nothing.
    for &family in families {
        assert!(!traffic::ping(a.netns(), b.addr(family), 1), "{case}");
    }

    join_of(&nodes.a, &A, &B, families, underlay);
    join_of(&nodes.b, &B, &A, families, underlay);
    let peers: Value = serde_json::from_str(&nodes.a.agent("peers", &["list", "--json"])).unwrap();
    for &family in families {
        let peer = peers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["podCidr"] == B.pod_cidr_of(family))
            .unwrap_or_else(|| panic!("{case}: no peer {}: {peers}", B.pod_cidr_of(family)));
        assert_eq!(peer["mode"], "vxlan", "{case}: {peers}");
        assert_eq!(
            peer["underlay"],
            B.underlay_of(underlay).to_string(),
            "{case}"
        );
    }

    let before = [&nodes.a, &nodes.b].map(|n| {
        (
            n.verdict_bytes("tunneled"),
            n.verdict_bytes("local-delivery"),
        )
    });
    for &family in families {
        let (a_ip, b_ip) = (a.addr(family), b.addr(family));
        assert!(traffic::ping(a.netns(), b_ip, 3), "{case}: a -> {b_ip}");
        assert!(traffic::ping(b.netns(), a_ip, 3), "{case}: b -> {a_ip}");
        // Full-sized segments fit: the pods' MTU leaves room for the header.
        let server_b = server_of(&b, family);
        let seen = transfer(a.netns(), server_b.addr(), 8 << 20);
        assert_eq!(seen.ip(), a_ip, "{case}: b saw a translated source");
        let server_a = server_of(&a, family);
        assert_eq!(transfer(b.netns(), server_a.addr(), 8 << 20).ip(), b_ip);
        // UDP.
        let echo =
            traffic::UdpReceiver::start(b.netns(), SocketAddr::new(b_ip, 0)).expect("udp receiver");
        traffic::udp_send(
            a.netns(),
            SocketAddr::new(a_ip, 0),
            echo.addr(),
            b"through the tunnel",
            3,
        )
        .expect("udp send");
        assert!(
            echo.wait_for(Duration::from_secs(5), |d| d.len() >= 3),
            "{case}: UDP"
        );
        assert!(echo.received().iter().all(|(from, _)| from.ip() == a_ip));

        // The node itself reaches the other node's pod (routed over the
        // device, keyed by to_tunnel), from its tunnel address.
        let seen = transfer(nodes.a.netns(), server_b.addr(), 1 << 20);
        assert_eq!(seen.ip(), A.tunnel_ip_of(family), "{case}");
    }

    // Both nodes moved it through the tunnel and delivered it themselves.
    let streams = families.len() as u64 * (8 << 20);
    for (node, (tunneled, delivered)) in [&nodes.a, &nodes.b].into_iter().zip(before) {
        assert!(
            node.verdict_bytes("tunneled") - tunneled >= streams,
            "{case}: {} tunneled too little",
            node.name()
        );
        assert!(
            node.verdict_bytes("local-delivery") - delivered >= streams,
            "{case}: {} delivered too little",
            node.name()
        );
        assert_eq!(node.netns().sysctl("net.ipv4.ip_forward"), "0");
        assert_eq!(node.netns().sysctl("net.ipv6.conf.all.forwarding"), "0");
    }
}

#[test]
fn a_packet_from_an_address_the_peer_does_not_own_is_dropped() {
    for family in Family::ALL {
        a_packet_from_an_address_the_peer_does_not_own_is_dropped_in(family);
    }
}

fn a_packet_from_an_address_the_peer_does_not_own_is_dropped_in(family: Family) {
    let nodes = Routed::new();
    let families = [family];
    let _a = nodes
        .a
        .add_pod_with(conf_of(&nodes.a, &A, &families, Family::V4));
    let b = nodes
        .b
        .add_pod_with(conf_of(&nodes.b, &B, &families, Family::V4));
    join_of(&nodes.a, &A, &B, &families, Family::V4);
    join_of(&nodes.b, &B, &A, &families, Family::V4);
    // A sends from an address of a pod CIDR that is not its own toward B:
    // B's from_tunnel refuses the packets from there.
    let (foreign, prefix) = match family {
        Family::V4 => ("10.244.3.7", "32"),
        Family::V6 => ("fd00:10:244:3::7", "128"),
    };
    nodes.a.netns().ip(&[
        "addr",
        "add",
        &format!("{foreign}/{prefix}"),
        "dev",
        "cnie-vxlan",
        "nodad",
    ]);
    let dropped = nodes.b.dropped_packets(&["unknown-source"], "to-pod");
    let (sent, received) = traffic::ping_counts(
        nodes.a.netns(),
        Some(foreign.parse().unwrap()),
        b.addr(family),
        2,
    );
    assert_eq!((sent, received), (2, 0), "{family:?}");
    assert!(
        nodes.b.dropped_packets(&["unknown-source"], "to-pod") - dropped >= 2,
        "{family:?}"
    );
    // From its own tunnel address it is answered.
    let (sent, received) = traffic::ping_counts(
        nodes.a.netns(),
        Some(A.tunnel_ip_of(family)),
        b.addr(family),
        2,
    );
    assert_eq!((sent, received), (2, 2), "{family:?}");
}

#[test]
fn native_peers_are_routes_that_come_and_go() {
    for family in Family::ALL {
        native_peers_are_routes_that_come_and_go_in(family);
    }
}

fn native_peers_are_routes_that_come_and_go_in(family: Family) {
    let nodes = cni_ebpf_tests::ext::TwoNodes::new();
    let side_a = cni_ebpf_tests::ext::SIDE_A;
    let side_b = cni_ebpf_tests::ext::SIDE_B;
    let without_routes = |node: &Node, cidr: &str| {
        with_keys(
            node.conf().subnet(cidr).build(),
            json!({
                "ipMasq": true,
                "nonMasqueradeCIDRs": ["10.244.0.0/16", "fd00:10:244::/48"],
                "uplink": "underlay",
            }),
        )
    };
    let a = nodes
        .a
        .add_pod_with(without_routes(&nodes.a, side_a.pod_cidr_of(family)));
    let b = nodes
        .b
        .add_pod_with(without_routes(&nodes.b, side_b.pod_cidr_of(family)));
    let (a_ip, b_ip) = (a.addr(family), b.addr(family));
    assert!(!traffic::ping(a.netns(), b_ip, 1), "{family:?}");
    for (node, other) in [(&nodes.a, side_b), (&nodes.b, side_a)] {
        node.agent(
            "peers",
            &[
                "add",
                "--pod-cidr",
                other.pod_cidr_of(family),
                "--underlay",
                &other.underlay_of(family).to_string(),
            ],
        );
    }
    let route_to_b = || {
        nodes
            .a
            .netns()
            .ip(&[family.flag(), "route", "show", side_b.pod_cidr_of(family)])
    };
    let route = route_to_b();
    assert!(
        route.contains(&format!("via {}", side_b.underlay_of(family))),
        "{route}"
    );
    assert!(traffic::ping(a.netns(), b_ip, 2), "a -> {b_ip} natively");
    let server_b = server_of(&b, family);
    assert_eq!(transfer(a.netns(), server_b.addr(), 1 << 20).ip(), a_ip);
    assert_eq!(nodes.a.verdict_bytes("tunneled"), 0);

    nodes
        .a
        .agent("peers", &["del", "--pod-cidr", side_b.pod_cidr_of(family)]);
    assert_eq!(route_to_b(), "");
    assert!(nodes.a.agent("peers", &["list", "--json"]).trim() == "[]");
    assert!(!traffic::ping(a.netns(), b_ip, 1), "{family:?}");
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

/// kube-proxy's rules on node A (both modes, each family's proxier) send a
/// pod's ClusterIP flows to an endpoint pod on node B, reached only
/// through the tunnel: the stack forwards the DNATed request into the
/// device (`to_tunnel` records its replies), and `from_tunnel` hands the
/// endpoint's replies back to the stack, whose conntrack makes them come
/// from the ClusterIP. The endpoint sees the client pod's own address.
#[test]
fn a_service_whose_endpoint_is_behind_the_tunnel_answers_from_its_address() {
    for family in Family::ALL {
        a_service_whose_endpoint_is_behind_the_tunnel_answers_in(family);
    }
}

fn a_service_whose_endpoint_is_behind_the_tunnel_answers_in(family: Family) {
    let (cluster_cidr, vip) = match family {
        Family::V4 => ("10.244.0.0/16", IpAddr::V4(Ipv4Addr::new(10, 96, 0, 30))),
        Family::V6 => (
            "fd00:10:244::/48",
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x30)),
        ),
    };
    let families = [family];
    let nodes = Routed::new();
    let services = with_keys(
        conf_of(&nodes.a, &A, &families, Family::V4),
        json!({ "serviceCIDRs": ["10.96.0.0/12", "fd00:10:96::/112"] }),
    );
    let a = nodes.a.add_pod_with(services);
    let b = nodes
        .b
        .add_pod_with(conf_of(&nodes.b, &B, &families, Family::V4));
    join_of(&nodes.a, &A, &B, &families, Family::V4);
    join_of(&nodes.b, &B, &A, &families, Family::V4);
    let server_b = server_of(&b, family);
    let echo_b =
        UdpEcho::start(b.netns(), SocketAddr::new(b.addr(family), 0), false).expect("udp echo");
    let rules = [
        Service::new("default/web", vip, 80, Protocol::Tcp).endpoint(
            b.addr(family),
            server_b.addr().port(),
            false,
        ),
        Service::new("kube-system/dns", vip, 53, Protocol::Udp).endpoint(
            b.addr(family),
            echo_b.addr().port(),
            false,
        ),
    ];
    let settings = ClusterSettings::new(cluster_cidr);
    for mode in [Mode::Iptables, Mode::Nftables] {
        let case = format!("{family:?}, {mode}");
        kube_proxy::apply(nodes.a.netns(), mode, &settings, &rules);
        let to_netfilter = nodes.a.verdict_packets("to-netfilter");
        let tunneled = nodes.b.verdict_packets("tunneled");

        let tcp = SocketAddr::new(vip, 80);
        let client = a
            .netns()
            .run(|| PeerClient::connect(tcp, CONNECT_TIMEOUT))
            .unwrap_or_else(|e| panic!("{case}: pod -> ClusterIP -> pod behind the tunnel: {e}"));
        assert_eq!(client.stream.peer_addr().unwrap(), tcp, "{case}");
        assert_eq!(client.seen_as.ip(), a.addr(family), "{case}");
        let exchange = client.exchange(1 << 20, 3).expect("exchange");
        assert!(exchange.intact(), "{case}: {exchange:?}");

        // A connected socket takes answers from the ClusterIP alone.
        let udp = SocketAddr::new(vip, 53);
        let (seen_as, echoed) = a
            .netns()
            .run(|| {
                let socket = UdpSocket::bind(SocketAddr::new(a.addr(family), 0))?;
                socket.connect(udp)?;
                udp_request(&socket, b"through the tunnel", Duration::from_secs(3))
            })
            .unwrap_or_else(|e| panic!("{case}: udp to {udp}: {e}"));
        assert_eq!(seen_as.ip(), a.addr(family), "{case}");
        assert_eq!(echoed, b"through the tunnel", "{case}");

        // The flows went to netfilter on A, and the endpoint's replies rode
        // the tunnel back (B's from_pod keyed them).
        assert!(nodes.b.verdict_packets("tunneled") > tunneled, "{case}");
        assert!(
            nodes.a.verdict_packets("to-netfilter") > to_netfilter,
            "{case}"
        );
        kube_proxy::flush(nodes.a.netns(), mode);
    }
}

/// BIG TCP pods (`bigTcp`) on both nodes, IPv4 and IPv6 over an IPv4
/// underlay: the pod sends packets over 64 KiB, `from_pod` keys them whole,
/// and the VXLAN device (GSO maximum 64 KiB) segments them in software
/// before it encapsulates, so no packet over 64 KiB crosses the underlay;
/// the bytes arrive intact. (The receiving device's GRO merges them again,
/// up to its own 64 KiB.)
#[test]
fn big_tcp_pods_talk_through_the_vxlan_tunnel() {
    for family in Family::ALL {
        big_tcp_pods_talk_through_the_vxlan_tunnel_in(family);
    }
}

fn big_tcp_pods_talk_through_the_vxlan_tunnel_in(family: Family) {
    const BYTES: u64 = 64 << 20;
    let nodes = Routed::new();
    let big = json!({ "bigTcp": true });
    let a = nodes.a.add_pod_with(with_keys(
        conf_of(&nodes.a, &A, &[family], Family::V4),
        big.clone(),
    ));
    let b = nodes
        .b
        .add_pod_with(with_keys(conf_of(&nodes.b, &B, &[family], Family::V4), big));
    join_of(&nodes.a, &A, &B, &[family], Family::V4);
    join_of(&nodes.b, &B, &A, &[family], Family::V4);
    // TCP sizes packets to at most half the peer's window.
    b.netns()
        .set_sysctl("net.ipv4.tcp_rmem", "4096 1048576 6291456");
    let server_b = server_of(&b, family);
    let from_pod = FrameSizes::start(nodes.a.netns(), &a.host_ifname()).unwrap();
    let watched = [
        ("a's tunnel device", nodes.a.netns(), "cnie-vxlan"),
        ("a's underlay", nodes.a.netns(), UNDERLAY),
        ("b's underlay", nodes.b.netns(), UNDERLAY),
        ("b's tunnel device", nodes.b.netns(), "cnie-vxlan"),
        ("b's pod", b.netns(), "eth0"),
    ]
    .map(|(name, ns, ifname)| (name, FrameSizes::start(ns, ifname).unwrap()));
    let before = (
        nodes.a.verdict_bytes("tunneled"),
        nodes.a.verdict_bytes("to-stack"),
        TcpSegments::of(a.netns()),
    );

    let seen = transfer(a.netns(), server_b.addr(), BYTES);
    assert_eq!(seen.ip(), a.addr(family), "{family:?}");
    // `from_pod` keyed the stream itself, and TCP hardly sent a segment
    // twice (a BIG TCP packet handed to the stack is lost and resent in
    // small pieces).
    let tunneled = nodes.a.verdict_bytes("tunneled") - before.0;
    let to_stack = nodes.a.verdict_bytes("to-stack") - before.1;
    let segments = TcpSegments::of(a.netns()).since(before.2);
    assert!(tunneled >= BYTES, "{family:?}: {tunneled} bytes tunneled");
    assert!(
        to_stack < BYTES / 100,
        "{family:?}: {to_stack} bytes to the stack"
    );
    assert!(
        segments.retransmitted * 50 < segments.out,
        "{family:?}: {segments:?}"
    );
    assert!(
        from_pod.larger_than(LEGACY_GSO_MAX) > 0,
        "{family:?}: the pod sent no packet over 64 KiB ({})",
        from_pod.summary()
    );
    for (name, frames) in &watched {
        assert!(frames.count() > 0, "{family:?}: nothing seen on {name}");
        assert_eq!(
            frames.larger_than(LEGACY_GSO_MAX),
            0,
            "{family:?}: a packet over 64 KiB crossed {name} ({})",
            frames.summary()
        );
    }
}
