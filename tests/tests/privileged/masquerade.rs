//! Pod traffic leaving the node through its uplink is masqueraded in BPF:
//! the outside sees the node's address, replies (and ICMP errors) find the
//! pod, nothing else gets in, and idle flows expire.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use cni_ebpf_tests::{
    Family, Node, Pod,
    ext::{
        self, PacketWatch, PeerClient, PeerServer, UdpEcho, assert_node_untouched, nat_gc,
        nat_table, udp_request,
    },
    node::Ext,
    traffic,
};
use nix::sys::socket::SockProtocol;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Where masqueraded flows get a port when their own is taken (the
/// plugin's default `natPortRange`).
const NAT_PORTS: std::ops::RangeInclusive<u16> = 61_000..=65_535;

/// A node whose default route leaves through an uplink to `ext`.
fn node_with_ext() -> (Node, Ext) {
    let node = Node::new();
    let ext = ext::uplink_with_default_route(&node);
    (node, ext)
}

fn masquerading_pod(node: &Node) -> Pod<'_> {
    node.add_pod_with(ext::masquerade_conf(node))
}

/// A server in `ext` on its own address.
fn ext_server(ext: &Ext) -> PeerServer {
    PeerServer::start(&ext.netns, SocketAddrV4::new(ext.ext_ip, 0)).expect("starting the server")
}

fn connect(pod: &Pod<'_>, server: SocketAddr) -> PeerClient {
    pod.netns()
        .run(|| PeerClient::connect(server, CONNECT_TIMEOUT))
        .unwrap_or_else(|e| panic!("pod {:?} -> {server}: {e}", pod.addrs()))
}

/// A UDP socket of the pod connected to `remote`.
fn pod_udp(pod: &Pod<'_>, remote: SocketAddr) -> UdpSocket {
    let any: IpAddr = match remote {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    pod.netns()
        .run(|| {
            let socket = UdpSocket::bind((any, 0))?;
            socket.connect(remote)?;
            io::Result::Ok(socket)
        })
        .expect("a UDP socket in the pod")
}

/// The ICMP flows' protocol as `cni-ebpfd nat` names it.
fn icmp_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "icmp",
        Family::V6 => "icmp6",
    }
}

#[test]
fn pod_reaches_ext_over_tcp_udp_and_ping_seen_as_the_node() {
    for family in Family::ALL {
        let (node, ext) = node_with_ext();
        let pod = node.add_pod_with(ext::masquerading(node.conf().family(family).build()));
        let pod_ip = pod.addr(family);
        let node_ip = ext.node_addr(family);
        let ext_ip = ext.ext_addr(family);
        let new_flows_before = node.verdict_packets("nat-new-flow");
        let replies_before = node.verdict_packets("nat-reply");

        // TCP: the server sees the node, and the stream arrives intact.
        let server =
            PeerServer::start(&ext.netns, SocketAddr::new(ext_ip, 0)).expect("starting the server");
        let client = connect(&pod, server.addr());
        let pod_side = client.stream.local_addr().unwrap();
        let seen_as = client.seen_as;
        assert_eq!(pod_side.ip(), pod_ip);
        assert_eq!(
            seen_as.ip(),
            node_ip,
            "{family:?}: the server saw the TCP client as {seen_as}"
        );
        let exchange = client.exchange(4 << 20, 1).expect("TCP exchange");
        assert!(exchange.intact(), "stream corrupted: {exchange:?}");
        assert_eq!(exchange.server_bytes, 4 << 20);
        assert!(ext::wait_until(ANSWER_TIMEOUT, || server
            .conns()
            .iter()
            .all(|c| c.received.is_some())));
        let conns = server.conns();
        assert_eq!(conns.len(), 1, "{conns:?}");
        assert_eq!(
            conns[0].received,
            Some((exchange.sent_bytes, exchange.sent_hash))
        );

        // UDP: the same, and the answer comes back.
        let echo = UdpEcho::start(&ext.netns, SocketAddr::new(ext_ip, 0), false)
            .expect("starting the UDP echo");
        let socket = pod_udp(&pod, echo.addr());
        let (seen, echoed) =
            udp_request(&socket, b"masquerade me", ANSWER_TIMEOUT).expect("UDP request answered");
        assert_eq!(seen.ip(), node_ip, "{family:?}: the UDP server saw {seen}");
        assert_eq!(echoed, b"masquerade me");
        assert!(
            echo.seen().iter().all(|from| from.ip() == node_ip),
            "{:?}",
            echo.seen()
        );

        // Ping: every echo request arrives from the node's address (seen
        // on the wire for IPv4; for IPv6, the translated flow below).
        let watch = (family == Family::V4)
            .then(|| PacketWatch::start(&ext.netns, SockProtocol::Icmp).expect("ICMP watch"));
        assert!(
            traffic::ping(pod.netns(), ext_ip, 3),
            "{family:?}: pod -> ext ping failed"
        );
        if let Some(watch) = watch {
            let requests = watch.wait_for(3, ANSWER_TIMEOUT, |p| p.l4.first() == Some(&8));
            assert!(requests.len() >= 3, "ext saw {requests:?}");
            assert!(
                requests.iter().all(|p| p.src == ext.node_ip),
                "echo requests not from the node: {requests:?}"
            );
        }

        // One translated flow per protocol, all to the node's address.
        let table = nat_table(&node);
        for proto in ["tcp", "udp", icmp_name(family)] {
            let flows: Vec<_> = table.flows.iter().filter(|f| f.proto == proto).collect();
            assert!(!flows.is_empty(), "no {proto} flow in {table:?}");
            assert!(
                flows
                    .iter()
                    .all(|f| f.pod.ip() == pod_ip && f.translated.ip() == node_ip),
                "{flows:?}"
            );
        }
        assert_eq!(conns[0].peer, seen_as);
        assert!(
            table
                .flows
                .iter()
                .any(|f| f.pod == pod_side && f.remote == server.addr() && f.translated == seen_as),
            "no flow {pod_side} -> {seen_as} in {table:?}"
        );
        assert!(node.verdict_packets("nat-new-flow") >= new_flows_before + 3);
        assert!(node.verdict_packets("nat-reply") > replies_before);
        assert_node_untouched(&node);
    }
}

#[test]
fn a_pod_flow_never_takes_the_port_of_the_nodes_own_connection() {
    // In the node's ephemeral range (32768-60999 by default), where the
    // node's own connections get their ports without the NAT table
    // knowing; the pod uses the same port towards the same server.
    const PORT: u16 = 40_123;
    for family in Family::ALL {
        let (node, ext) = node_with_ext();
        let pod = node.add_pod_with(ext::masquerading(node.conf().family(family).build()));
        let node_ip = ext.node_addr(family);
        let any = match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let retries_before = node.verdict_packets("nat-port-retry");

        // TCP: both connections stay whole, the pod's under another port.
        let server = PeerServer::start(&ext.netns, SocketAddr::new(ext.ext_addr(family), 0))
            .expect("starting the server");
        let connect_from = |ns: &cni_ebpf_tests::Netns, local: SocketAddr| {
            ns.run(|| {
                ext::tcp_connect_from(local, server.addr(), CONNECT_TIMEOUT)
                    .and_then(PeerClient::from_stream)
            })
        };
        let node_client = connect_from(node.netns(), SocketAddr::new(node_ip, PORT))
            .expect("the node's own connection");
        assert_eq!(node_client.seen_as, SocketAddr::new(node_ip, PORT));
        let pod_client = connect_from(pod.netns(), SocketAddr::new(any, PORT))
            .unwrap_or_else(|e| panic!("{family:?}: the pod's connection from the same port: {e}"));
        assert_eq!(pod_client.seen_as.ip(), node_ip);
        assert!(
            NAT_PORTS.contains(&pod_client.seen_as.port()),
            "{family:?}: the pod's flow kept port {PORT} of the node's connection: {pod_client:?}"
        );
        for (who, client, seed) in [("node", node_client, 1), ("pod", pod_client, 2)] {
            let exchange = client
                .exchange(1 << 20, seed)
                .unwrap_or_else(|e| panic!("{family:?}: {who}'s connection: {e}"));
            assert!(
                exchange.intact(),
                "{family:?}: {who}'s connection: {exchange:?}"
            );
        }

        // UDP: the node's socket and the pod's, from the same port to the
        // same server, each get their own answers.
        let echo = UdpEcho::start(&ext.netns, SocketAddr::new(ext.ext_addr(family), 0), false)
            .expect("starting the UDP echo");
        let node_udp = node
            .netns()
            .run(|| {
                let socket = UdpSocket::bind((node_ip, PORT))?;
                socket.connect(echo.addr())?;
                io::Result::Ok(socket)
            })
            .expect("the node's UDP socket");
        let pod_udp = pod_udp_from(&pod, PORT, echo.addr());
        let (pod_seen, echoed) =
            udp_request(&pod_udp, b"pod", ANSWER_TIMEOUT).expect("the pod's UDP request answered");
        assert_eq!(echoed, b"pod");
        assert_eq!(pod_seen.ip(), node_ip);
        assert!(
            NAT_PORTS.contains(&pod_seen.port()),
            "{family:?}: the pod's UDP flow kept port {PORT} of the node's socket: {pod_seen}"
        );
        let (node_seen, echoed) = udp_request(&node_udp, b"node", ANSWER_TIMEOUT)
            .expect("the node's UDP request answered to the node");
        assert_eq!(
            (node_seen, echoed.as_slice()),
            (SocketAddr::new(node_ip, PORT), &b"node"[..])
        );
        assert!(node.verdict_packets("nat-port-retry") >= retries_before + 2);
        assert_node_untouched(&node);
    }
}

#[test]
#[ignore = "known gap: the kernel picks the node's own port without looking at the NAT table, so a node connection may clash with a pod flow that holds the port first; see README Masquerade"]
fn the_nodes_own_connection_never_clashes_with_a_pod_flow_holding_its_port() {
    // The reverse order of the test above: the pod's flow holds
    // node:PORT -> server first, then the node connects from PORT (bound
    // here; the kernel's own pick may land on it just the same).
    const PORT: u16 = 40_124;
    let (node, ext) = node_with_ext();
    let pod = masquerading_pod(&node);
    let server = ext_server(&ext);
    let pod_client = pod
        .netns()
        .run(|| {
            ext::tcp_connect_from(
                (Ipv4Addr::UNSPECIFIED, PORT),
                server.addr(),
                CONNECT_TIMEOUT,
            )
            .and_then(PeerClient::from_stream)
        })
        .expect("the pod's connection");
    assert_eq!(pod_client.seen_as, SocketAddr::from((ext.node_ip, PORT)));
    let node_client = node
        .netns()
        .run(|| {
            ext::tcp_connect_from((ext.node_ip, PORT), server.addr(), Duration::from_secs(3))
                .and_then(PeerClient::from_stream)
        })
        .expect("the node's own connection from the pod flow's port");
    for (who, client, seed) in [("node", node_client, 1), ("pod", pod_client, 2)] {
        let exchange = client
            .exchange(1 << 20, seed)
            .unwrap_or_else(|e| panic!("{who}'s connection: {e}"));
        assert!(exchange.intact(), "{who}'s connection: {exchange:?}");
    }
    assert_node_untouched(&node);
}

/// Connects `n` clients from `pod` and keeps them open.
fn connect_many(pod: &Pod<'_>, server: SocketAddr, n: usize) -> Vec<PeerClient> {
    pod.netns().run(|| {
        (0..n)
            .map(|i| {
                PeerClient::connect(server, CONNECT_TIMEOUT)
                    .unwrap_or_else(|e| panic!("pod {}: connection {i} of {n}: {e}", pod.ip()))
            })
            .collect()
    })
}

#[test]
fn five_hundred_concurrent_connections_from_two_pods_get_distinct_translations() {
    const PER_POD: usize = 250;
    let (node, ext) = node_with_ext();
    let a = masquerading_pod(&node);
    let b = masquerading_pod(&node);
    // Both pods pick their source ports from the same 301, so many of
    // their flows collide at the node address and must be given another.
    // The 301 lie below the node's ephemeral range, whose ports a flow
    // never keeps (see the test above): here they are kept when free.
    for pod in [&a, &b] {
        pod.netns()
            .set_sysctl("net.ipv4.ip_local_port_range", "20000 20300");
    }
    let server = ext_server(&ext);
    let node_ip = IpAddr::V4(ext.node_ip);
    let retries_before = node.verdict_packets("nat-port-retry");
    let refused_before =
        node.dropped_packets(&["nat-ports-exhausted", "nat-table-full"], "from-pod");

    let started = Instant::now();
    let (clients_a, clients_b) = thread::scope(|scope| {
        let from_a = scope.spawn(|| connect_many(&a, server.addr(), PER_POD));
        let from_b = scope.spawn(|| connect_many(&b, server.addr(), PER_POD));
        (from_a.join().unwrap(), from_b.join().unwrap())
    });
    eprintln!("500 connections open after {:?}", started.elapsed());
    assert!(server.wait_accepted(2 * PER_POD, CONNECT_TIMEOUT));

    let pod_ports = |clients: &[PeerClient]| -> BTreeSet<u16> {
        clients
            .iter()
            .map(|c| c.stream.local_addr().unwrap().port())
            .collect()
    };
    let (ports_a, ports_b) = (pod_ports(&clients_a), pod_ports(&clients_b));
    assert!(
        ports_a
            .iter()
            .chain(&ports_b)
            .all(|p| (20_000..=20_300).contains(p)),
        "the pods did not use the narrow port range"
    );
    let overlap = ports_a.intersection(&ports_b).count() as u64;
    assert!(overlap > 0, "no source port in common: no collision forced");

    // Everything the clients were told, and everything the server saw:
    // 500 distinct ports of the node's address.
    let all: Vec<&PeerClient> = clients_a.iter().chain(&clients_b).collect();
    let seen: BTreeSet<SocketAddr> = all.iter().map(|c| c.seen_as).collect();
    assert_eq!(seen.len(), 2 * PER_POD, "translations shared by clients");
    assert!(seen.iter().all(|s| s.ip() == node_ip), "{seen:?}");
    let server_peers: BTreeSet<SocketAddr> = server.conns().iter().map(|c| c.peer).collect();
    assert_eq!(server_peers, seen);
    for client in &all {
        let own = client.stream.local_addr().unwrap().port();
        let translated = client.seen_as.port();
        assert!(
            translated == own || NAT_PORTS.contains(&translated),
            "port {own} translated to {translated}, outside natPortRange"
        );
    }

    // The table agrees with what the server saw, flow by flow.
    let table = nat_table(&node);
    assert!(table.count >= 2 * PER_POD as u64, "count {}", table.count);
    let to_server: BTreeMap<SocketAddr, SocketAddr> = table
        .flows
        .iter()
        .filter(|f| f.proto == "tcp" && f.remote == server.addr())
        .map(|f| (f.pod, f.translated))
        .collect();
    assert_eq!(to_server.len(), 2 * PER_POD);
    let translated: BTreeSet<SocketAddr> = to_server.values().copied().collect();
    assert_eq!(translated, seen, "nat --json lists other translations");
    for client in &all {
        let pod_side = client.stream.local_addr().unwrap();
        assert_eq!(
            to_server.get(&pod_side),
            Some(&client.seen_as),
            "{pod_side}"
        );
    }

    let retries = node.verdict_packets("nat-port-retry") - retries_before;
    assert!(
        retries >= overlap,
        "{overlap} pod ports shared by both pods but only {retries} nat-port-retry"
    );
    assert_eq!(
        node.dropped_packets(&["nat-ports-exhausted", "nat-table-full"], "from-pod"),
        refused_before
    );

    // Every connection still carries data both ways while all are open.
    for (i, client) in clients_a.into_iter().chain(clients_b).enumerate() {
        let exchange = client
            .exchange(1024, i as u64)
            .unwrap_or_else(|e| panic!("exchange on connection {i}: {e}"));
        assert!(exchange.intact(), "connection {i}: {exchange:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    assert_node_untouched(&node);
}

#[test]
fn connection_from_outside_to_a_translated_port_is_not_let_in() {
    let (node, ext) = node_with_ext();
    let pod = masquerading_pod(&node);
    let server = ext_server(&ext);
    let SocketAddr::V4(server_v4) = server.addr() else {
        unreachable!()
    };

    // The pod listens on the very port its outgoing flow uses: a wrongly
    // translated connection from outside would land on this listener.
    let (listener, client) = pod
        .netns()
        .run(|| {
            let listener = ext::tcp_listen(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), true)?;
            let port = listener.local_addr()?.port();
            let stream = ext::tcp_connect_from(
                SocketAddrV4::new(pod.ip(), port),
                server_v4,
                CONNECT_TIMEOUT,
            )?;
            io::Result::Ok((listener, PeerClient::from_stream(stream)?))
        })
        .expect("pod listener and flow on one port");
    assert_eq!(
        client.stream.local_addr().unwrap().port(),
        listener.local_addr().unwrap().port()
    );
    let translated = client.seen_as;
    assert_eq!(translated.ip(), IpAddr::V4(ext.node_ip));

    // The same for UDP: an unconnected socket would take any datagram.
    let echo = UdpEcho::start(&ext.netns, SocketAddrV4::new(ext.ext_ip, 0), false)
        .expect("starting the UDP echo");
    let udp = pod
        .netns()
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("UDP socket in the pod");
    udp.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    udp.send_to(b"hello", echo.addr()).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = traffic::recv_from(&udp, &mut buf).expect("echo answer");
    assert_eq!(from, echo.addr());
    let udp_translated: SocketAddr = String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .expect("echo answer names the source");
    assert_eq!(udp_translated.ip(), IpAddr::V4(ext.node_ip));

    // ext opens its own connection to the translated port: refused (or
    // dropped) by the node, quickly, and nothing reaches the pod.
    let (attempt, took) = ext.netns.run(|| {
        let started = Instant::now();
        let attempt = TcpStream::connect_timeout(&translated, Duration::from_secs(3));
        (attempt, started.elapsed())
    });
    match attempt {
        Ok(stream) => panic!(
            "ext connected to {translated} ({:?} -> {:?})",
            stream.local_addr(),
            stream.peer_addr()
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut
            ),
            "ext connect to {translated}: {e}"
        ),
    }
    assert!(took < Duration::from_secs(4), "connect took {took:?}");
    ext.netns
        .run(|| -> io::Result<()> {
            let intruder = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            intruder.send_to(b"intruder", udp_translated)?;
            Ok(())
        })
        .unwrap();

    listener.set_nonblocking(true).unwrap();
    let let_in = ext::wait_until(Duration::from_secs(1), || listener.accept().is_ok());
    assert!(!let_in, "a connection from ext reached the pod's listener");
    udp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    match traffic::recv_from(&udp, &mut buf) {
        Ok((n, from)) => panic!(
            "the pod received {:?} from {from}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }

    // The pod's own flows are unharmed.
    let exchange = client.exchange(256 * 1024, 3).expect("TCP exchange after");
    assert!(exchange.intact(), "{exchange:?}");
    udp.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    udp.send_to(b"again", echo.addr()).unwrap();
    let (n, from) = traffic::recv_from(&udp, &mut buf).expect("echo answer after");
    assert_eq!(from, echo.addr());
    assert!(buf[..n].ends_with(b"again"));
    assert_node_untouched(&node);
}

#[test]
fn gc_expires_closed_and_idle_flows_and_keeps_open_ones() {
    let (node, ext) = node_with_ext();
    let pod = masquerading_pod(&node);
    let server = ext_server(&ext);
    let echo = UdpEcho::start(&ext.netns, SocketAddrV4::new(ext.ext_ip, 0), false)
        .expect("starting the UDP echo");

    // A TCP flow that ends, one that stays open, a UDP and an ICMP flow.
    let closed = connect(&pod, server.addr());
    let closed_side = closed.stream.local_addr().unwrap();
    assert!(closed.exchange(1024, 1).expect("closed flow").intact());
    let open = connect(&pod, server.addr());
    let open_side = open.stream.local_addr().unwrap();
    let socket = pod_udp(&pod, echo.addr());
    udp_request(&socket, b"once", ANSWER_TIMEOUT).expect("UDP answered");
    drop(socket);
    assert!(traffic::ping(pod.netns(), IpAddr::V4(ext.ext_ip), 1));

    let state_of = |pod_side: SocketAddr| {
        nat_table(&node)
            .flows
            .into_iter()
            .find(|f| f.pod == pod_side)
            .and_then(|f| f.state)
    };
    assert!(
        ext::wait_until(ANSWER_TIMEOUT, || state_of(closed_side).as_deref()
            == Some("closing")),
        "the closed flow is {:?}",
        state_of(closed_side)
    );
    let table = nat_table(&node);
    assert_eq!(table.count, 4, "{table:?}");
    assert_eq!(state_of(open_side).as_deref(), Some("established"));
    let protos: BTreeSet<&str> = table.flows.iter().map(|f| f.proto.as_str()).collect();
    assert_eq!(protos, BTreeSet::from(["icmp", "tcp", "udp"]));

    // Idle for a while, but within every default timeout: nothing goes.
    thread::sleep(Duration::from_millis(1100));
    let kept = nat_gc(&node, &[]);
    assert_eq!(
        (kept.scanned, kept.expired, kept.live),
        (4, 0, 4),
        "{kept:?}"
    );
    assert!(
        nat_table(&node).flows.iter().all(|f| f.idle_ms >= 1000),
        "flows not idle"
    );

    // Zero timeouts for everything but live TCP: only the open flow stays.
    let swept = nat_gc(
        &node,
        &[
            "--tcp-closing-timeout",
            "0",
            "--udp-timeout",
            "0",
            "--icmp-timeout",
            "0",
        ],
    );
    assert_eq!(
        (swept.scanned, swept.expired, swept.live),
        (4, 3, 1),
        "{swept:?}"
    );
    let table = nat_table(&node);
    assert_eq!(table.count, 1, "{table:?}");
    assert_eq!(table.flows[0].pod, open_side);
    assert_eq!(table.flows[0].state.as_deref(), Some("established"));

    // The survivor still works, under the same translation.
    let translated = table.flows[0].translated;
    let exchange = open.exchange(64 * 1024, 2).expect("open flow after gc");
    assert!(exchange.intact(), "{exchange:?}");
    assert_eq!(nat_table(&node).flows[0].translated, translated);
    assert_node_untouched(&node);
}

/// A UDP socket of the pod bound to `port`, connected to `remote`.
fn pod_udp_from(pod: &Pod<'_>, port: u16, remote: SocketAddr) -> UdpSocket {
    pod.netns()
        .run(|| {
            let any: IpAddr = match remote {
                SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
            };
            let socket = UdpSocket::bind((any, port))?;
            socket.connect(remote)?;
            io::Result::Ok(socket)
        })
        .unwrap_or_else(|e| panic!("UDP socket on port {port} in pod {}: {e}", pod.ip()))
}

#[test]
fn icmp_port_unreachable_reaches_the_pod_translated() {
    let (node, ext) = node_with_ext();
    // Two pods send from the same port, so the second flow's port is
    // translated too and the error's quoted port must be put back.
    let first = masquerading_pod(&node);
    let second = masquerading_pod(&node);
    for pod in [&first, &second] {
        // A complete checksum on the wire, not a veth's offloaded partial
        // one, so the quote in the error can be checked.
        pod.netns().exec_ok("ethtool", &["-K", "eth0", "tx", "off"]);
    }
    let replies_before = node.verdict_packets("nat-reply");
    // Nothing listens in the fresh ext namespace.
    let closed = SocketAddr::new(IpAddr::V4(ext.ext_ip), 33_434);
    let socket = pod_udp(&first, closed);
    let port = socket.local_addr().unwrap().port();
    let sockets = [socket, pod_udp_from(&second, port, closed)];

    for (pod, socket) in [&first, &second].into_iter().zip(&sockets) {
        let watch = PacketWatch::start(pod.netns(), SockProtocol::Icmp).expect("ICMP watch");
        socket.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        socket.send(b"anyone there?").unwrap();
        let mut buf = [0u8; 64];
        match socket.recv(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            other => panic!(
                "pod {}: expected ECONNREFUSED from the port unreachable, got {other:?}",
                pod.ip()
            ),
        }

        // What arrived: a port unreachable to the pod, quoting the pod's
        // own datagram, with a valid checksum.
        let unreachable = watch.wait_for(1, ANSWER_TIMEOUT, |p| p.l4.first() == Some(&3));
        assert_eq!(unreachable.len(), 1, "{unreachable:?}");
        let error = &unreachable[0];
        assert_eq!(error.dst, pod.ip());
        assert_eq!(error.l4[1], 3, "not a port unreachable: {error:?}");
        assert!(error.icmp_checksum_ok(), "bad ICMP checksum: {error:?}");
        let inner = &error.l4[8..];
        let inner_ihl = usize::from(inner[0] & 0x0f) * 4;
        assert_eq!(inner[12..16], pod.ip().octets(), "inner source");
        assert_eq!(inner[16..20], ext.ext_ip.octets(), "inner destination");
        let inner_port = u16::from_be_bytes([inner[inner_ihl], inner[inner_ihl + 1]]);
        assert_eq!(inner_port, port, "inner source port");
        // The quoted datagram's own checksum is right for the pod's
        // address and port again, as netfilter's NAT leaves it.
        assert!(
            ext::udp_checksum_ok(pod.ip(), ext.ext_ip, &inner[inner_ihl..]),
            "pod {}: the quoted UDP checksum was not translated: {error:?}",
            pod.ip()
        );
    }

    let translated: Vec<u16> = nat_table(&node)
        .flows
        .iter()
        .filter(|f| f.remote == closed)
        .map(|f| f.translated.port())
        .collect();
    assert_eq!(translated.len(), 2, "{translated:?}");
    assert!(
        translated.iter().any(|&t| t != port),
        "no flow got another port: {translated:?}"
    );
    assert!(node.verdict_packets("nat-reply") >= replies_before + 2);
    assert_node_untouched(&node);
}

#[test]
fn udp_without_checksum_passes_and_is_answered() {
    let (node, ext) = node_with_ext();
    let pod = masquerading_pod(&node);
    // The echo answers without a checksum too, so both translations see one.
    let echo = UdpEcho::start(&ext.netns, SocketAddrV4::new(ext.ext_ip, 0), true)
        .expect("starting the UDP echo");
    let at_ext = PacketWatch::start(&ext.netns, SockProtocol::Udp).expect("UDP watch in ext");
    let at_pod = PacketWatch::start(pod.netns(), SockProtocol::Udp).expect("UDP watch in pod");

    let socket = pod_udp(&pod, echo.addr());
    ext::set_udp_no_check(&socket).expect("SO_NO_CHECK");
    let (seen, echoed) = udp_request(&socket, b"no checksum", ANSWER_TIMEOUT)
        .expect("answer to a checksum-less datagram");
    assert_eq!(seen.ip(), IpAddr::V4(ext.node_ip));
    assert_eq!(echoed, b"no checksum");

    let echo_port = echo.addr().port();
    let requests = at_ext.wait_for(1, ANSWER_TIMEOUT, |p| p.word(1) == Some(echo_port));
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].src, ext.node_ip);
    assert_eq!(
        requests[0].word(3),
        Some(0),
        "the datagram arrived with a checksum"
    );
    let answers = at_pod.wait_for(1, ANSWER_TIMEOUT, |p| p.word(0) == Some(echo_port));
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].dst, pod.ip());
    assert_eq!(
        answers[0].word(3),
        Some(0),
        "the answer arrived with a checksum"
    );
    assert_node_untouched(&node);
}

#[test]
fn xdp_on_the_uplink_translates_replies_back_and_leaves_icmp_to_tc() {
    for family in Family::ALL {
        let (node, ext) = node_with_ext();
        // A NIC's whole checksums (see `ext::full_checksums`).
        ext::full_checksums(&ext.netns, "eth0");
        let mut conf = ext::masquerading(node.conf().family(family).build());
        conf["uplinkXdp"] = serde_json::json!(true);
        let pod = node.add_pod_with(conf);
        let ext_ip = ext.ext_addr(family);
        let xdp_before = node.verdict_packets("xdp-delivered");
        let replies_before = node.verdict_packets("nat-reply");

        // The server streams to the pod: the data comes back through XDP.
        let server =
            PeerServer::start(&ext.netns, SocketAddr::new(ext_ip, 0)).expect("starting the server");
        let client = connect(&pod, server.addr());
        assert_eq!(client.seen_as.ip(), ext.node_addr(family), "{family:?}");
        let exchange = client.exchange(1 << 20, 7).expect("TCP exchange");
        assert!(
            exchange.intact(),
            "{family:?}: stream corrupted: {exchange:?}"
        );
        let echo = UdpEcho::start(&ext.netns, SocketAddr::new(ext_ip, 0), false)
            .expect("starting the UDP echo");
        let socket = pod_udp(&pod, echo.addr());
        let (_, echoed) =
            udp_request(&socket, b"xdp", ANSWER_TIMEOUT).expect("UDP request answered");
        assert_eq!(echoed, b"xdp");
        let tcp_udp = node.verdict_packets("xdp-delivered") - xdp_before;
        assert!(tcp_udp >= 3, "{family:?}: XDP delivered {tcp_udp} packets");
        assert!(node.verdict_packets("nat-reply") >= replies_before + tcp_udp);

        // Echo replies are ICMP: the tc program translates them. The TCP
        // connection's last packets (its close) are XDP's: let them pass
        // first.
        drop(server);
        let mut settled = node.verdict_packets("xdp-delivered");
        ext::wait_until(Duration::from_secs(3), || {
            std::thread::sleep(Duration::from_millis(200));
            let now = node.verdict_packets("xdp-delivered");
            std::mem::replace(&mut settled, now) == now
        });
        assert!(traffic::ping(pod.netns(), ext_ip, 2), "{family:?}: ping");
        assert_eq!(
            node.verdict_packets("xdp-delivered"),
            settled,
            "{family:?}: XDP took ICMP"
        );
        assert_node_untouched(&node);
    }
}

/// The uplink is the default route's device even when another device has
/// a route for the address the plugin looks the default route up with
/// (192.0.2.1): that answer is no default route, and the plugin reads the
/// table instead. Taken for the uplink, the decoy (no IPv4 address) would
/// leave nothing to masquerade to.
#[test]
fn the_default_route_is_found_past_a_route_covering_its_lookup_address() {
    let (node, ext) = node_with_ext();
    let ns = node.netns();
    ns.ip(&[
        "link", "add", "decoy0", "type", "veth", "peer", "name", "decoy1",
    ]);
    ns.ip(&["link", "set", "decoy0", "up"]);
    ns.ip(&["link", "set", "decoy1", "up"]);
    ns.ip(&["route", "add", "192.0.2.0/24", "dev", "decoy0"]);
    let pod = masquerading_pod(&node);
    let server = ext_server(&ext);
    let client = connect(&pod, server.addr());
    assert_eq!(client.seen_as.ip(), IpAddr::V4(ext.node_ip));
}
