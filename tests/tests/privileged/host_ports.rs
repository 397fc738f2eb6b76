//! hostPort (`portMappings`): a pod's published ports are reached from
//! outside through the uplink, from other pods, from the pod itself
//! (hairpin) and from the node (cgroup socket hooks, at its address and at
//! 127.0.0.1), all with `ip_forward=0` and no firewall rules; `hostIP`
//! restricts; conflicts are refused; DEL, CHECK and GC handle mappings; a
//! remapped UDP port reaches the new pod at once.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

use cni_ebpf_tests::{
    CniOutput, CniRequest, Family, Netns, Pod,
    agent::Agent,
    ext::{
        Exchange, PeerClient, PeerServer, UdpEcho, assert_node_untouched, parse_echo_answer,
        wait_until, with_keys,
    },
    hostports::{
        HostPort, HostPortNode, NodeTcp, NodeTcpOutcome, at, delete_map_entry, dump_map,
        host_port_key, node_tcp_exchange, published, sock, with_port_mappings,
    },
    links,
    node::DEFAULT_NETWORK,
    spec::{Footprint, Sandbox},
    traffic::{self, UdpReceiver},
};
use serde_json::{Value, json};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
const HOST_PORT: u16 = 8080;
const POD_PORT: u16 = 80;
/// A second address of the node (on its uplink), for `hostIP`.
const OTHER_NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 252, 0, 1);
const ANY: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

/// A TCP [`PeerServer`] and a [`UdpEcho`] on the pod's port.
struct Servers {
    tcp: PeerServer,
    udp: UdpEcho,
}

fn start_servers(pod: &Pod<'_>, port: u16) -> Servers {
    // `[::]` takes both families (`bindv6only` is 0); IPv4 clients show as
    // IPv4-mapped addresses, which [`canonical`] undoes.
    let any = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
    let any = if pod.addrs().iter().any(IpAddr::is_ipv6) {
        any
    } else {
        at(ANY, port).into()
    };
    Servers {
        tcp: PeerServer::start(pod.netns(), any).expect("starting the TCP server"),
        udp: UdpEcho::start(pod.netns(), any, false).expect("starting the UDP echo"),
    }
}

/// `addr` with an IPv4-mapped address as the IPv4 one.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The unspecified address of `dest`'s family, to bind a client to.
fn any_of(dest: SocketAddr) -> IpAddr {
    match dest {
        SocketAddr::V4(_) => ANY.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// One TCP exchange of 1 MiB from `ns` to `dest`: the client's own
/// address, its peer, and what the server saw and received.
struct TcpOutcome {
    local: SocketAddr,
    peer: SocketAddr,
    seen_as: SocketAddr,
    exchange: Exchange,
}

fn tcp_exchange(ns: &Netns, dest: SocketAddr, seed: u64) -> io::Result<TcpOutcome> {
    ns.run(|| {
        let client = PeerClient::connect(dest, CONNECT_TIMEOUT)?;
        let local = client.stream.local_addr()?;
        let peer = client.stream.peer_addr()?;
        let seen_as = client.seen_as;
        let exchange = client.exchange(1 << 20, seed)?;
        Ok(TcpOutcome {
            local,
            peer,
            seen_as,
            exchange,
        })
    })
}

/// Panics unless a TCP exchange from `from` to `dest` reaches `servers`
/// intact, seen from `seen_ip` with the client's own port, and the client
/// talks to `dest` all along.
fn assert_tcp_reaches(
    servers: &Servers,
    from: &Netns,
    dest: SocketAddr,
    seen_ip: impl Into<IpAddr>,
) {
    let seen_ip = seen_ip.into();
    let before = servers.tcp.conns().len();
    let outcome = tcp_exchange(from, dest, u64::from(dest.port()))
        .unwrap_or_else(|e| panic!("TCP {} -> {dest}: {e}", from.name()));
    assert_eq!(outcome.peer, dest, "the client's peer");
    assert_eq!(
        canonical(outcome.seen_as),
        SocketAddr::new(seen_ip, outcome.local.port()),
        "the pod saw the client (at {}) as {}",
        outcome.local,
        outcome.seen_as
    );
    assert!(outcome.exchange.intact(), "{:?}", outcome.exchange);
    assert!(
        wait_until(ANSWER_TIMEOUT, || servers.tcp.conns().len() > before),
        "the pod's server saw no connection"
    );
    let conns = servers.tcp.conns();
    assert_eq!(conns.len(), before + 1, "{conns:?}");
    assert_eq!(conns[before].peer, outcome.seen_as);
    assert_eq!(Family::of(outcome.local.ip()), Family::of(dest.ip()));
}

/// One datagram from `ns` to `dest` and its echo: the client's port,
/// where the answer came from, what the server saw and echoed.
fn udp_exchange(
    ns: &Netns,
    dest: SocketAddr,
    payload: &[u8],
) -> io::Result<(u16, SocketAddr, SocketAddr, Vec<u8>)> {
    ns.run(|| {
        let socket = UdpSocket::bind((any_of(dest), 0))?;
        socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        socket.send_to(payload, dest)?;
        let mut buf = [0u8; 2048];
        let (n, from) = traffic::recv_from(&socket, &mut buf)?;
        let (seen, echoed) = parse_echo_answer(&buf[..n])?;
        Ok((socket.local_addr()?.port(), from, seen, echoed))
    })
}

/// Panics unless a datagram from `from` to `dest` reaches `servers`, seen
/// from `seen_ip` with the client's port, and the answer comes from `dest`.
fn assert_udp_reaches(
    servers: &Servers,
    from: &Netns,
    dest: SocketAddr,
    seen_ip: impl Into<IpAddr>,
) {
    let seen_ip = seen_ip.into();
    let payload = format!("to {dest} from {}", from.name());
    let (port, answered_from, seen, echoed) = udp_exchange(from, dest, payload.as_bytes())
        .unwrap_or_else(|e| panic!("UDP {} -> {dest}: {e}", from.name()));
    assert_eq!(answered_from, dest, "the answer's source");
    assert_eq!(
        canonical(seen),
        SocketAddr::new(seen_ip, port),
        "the pod saw the client as {seen}"
    );
    assert_eq!(echoed, payload.as_bytes());
    assert!(
        servers.udp.seen().contains(&seen),
        "{:?}",
        servers.udp.seen()
    );
}

/// Panics unless a TCP connection from `from` to `dest` is refused.
fn assert_tcp_refused(from: &Netns, dest: SocketAddr) {
    let result = from.run(|| TcpStream::connect_timeout(&dest, CONNECT_TIMEOUT));
    match result {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        other => panic!(
            "TCP {} -> {dest}: expected a refusal, got {other:?}",
            from.name()
        ),
    }
}

/// Panics if datagrams from `from` to `dest` reach `servers` (sends three,
/// waits half a second).
fn assert_udp_not_forwarded(servers: &Servers, from: &Netns, dest: SocketAddr) {
    let before = servers.udp.seen().len();
    from.run(|| -> io::Result<()> {
        let socket = UdpSocket::bind((any_of(dest), 0))?;
        for _ in 0..3 {
            socket.send_to(b"not for you", dest)?;
        }
        Ok(())
    })
    .expect("sending the datagrams");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        servers.udp.seen().len(),
        before,
        "datagrams to {dest} reached the pod: {:?}",
        servers.udp.seen()
    );
}

fn expect_node_tcp(outcome: NodeTcp, what: &str) -> NodeTcpOutcome {
    outcome.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn expect_node_refused(outcome: NodeTcp, what: &str) {
    match outcome {
        Err(e) if e.contains("refused") => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn published_port_is_reached_from_outside_with_the_clients_address() {
    // With and without masquerade: its reverse translation on the uplink
    // must leave connections to host ports alone.
    for masquerade in [false, true] {
        let hp = HostPortNode::new();
        let mut conf = hp.conf(&[
            HostPort::tcp(HOST_PORT, POD_PORT),
            HostPort::udp(HOST_PORT, POD_PORT),
        ]);
        conf["ipMasq"] = json!(masquerade);
        let pod = hp.node.add_pod_with(conf);
        let servers = start_servers(&pod, POD_PORT);
        let dest = sock(hp.node_ip(), HOST_PORT);

        assert_tcp_reaches(&servers, &hp.ext.netns, dest, hp.ext.ext_ip);
        assert_udp_reaches(&servers, &hp.ext.netns, dest, hp.ext.ext_ip);
        // A second connection while the first one's entry is still there.
        assert_tcp_reaches(&servers, &hp.ext.netns, dest, hp.ext.ext_ip);
        // The pod's port itself is not published on the node.
        assert_tcp_refused(&hp.ext.netns, sock(hp.node_ip(), POD_PORT));
        assert_node_untouched(&hp.node);
    }
}

/// A dual-stack pod's port mappings without `hostIP` are published on
/// both families: reached from outside at the node's IPv4 and IPv6
/// addresses, from a dual-stack pod over each family, and from the pod
/// itself (hairpin), each with the right client address.
#[test]
fn dual_stack_pod_is_published_on_both_families() {
    let hp = HostPortNode::new();
    let conf = |mappings: &[HostPort]| {
        with_port_mappings(hp.node.conf().dual_stack().build(), &hp.cgroup, mappings)
    };
    let mut server_conf = conf(&[
        HostPort::tcp(HOST_PORT, POD_PORT),
        HostPort::udp(HOST_PORT, POD_PORT),
    ]);
    server_conf["ipMasq"] = json!(true);
    let pod = hp.node.add_pod_with(server_conf);
    let client_pod = hp.node.add_pod_with(conf(&[]));
    let servers = start_servers(&pod, POD_PORT);
    for family in Family::ALL {
        let node_ip = hp.ext.node_addr(family);
        let dest = SocketAddr::new(node_ip, HOST_PORT);
        let ext_ip = hp.ext.ext_addr(family);
        assert_tcp_reaches(&servers, &hp.ext.netns, dest, ext_ip);
        assert_udp_reaches(&servers, &hp.ext.netns, dest, ext_ip);
        assert_tcp_reaches(&servers, client_pod.netns(), dest, client_pod.addr(family));
        assert_udp_reaches(&servers, client_pod.netns(), dest, client_pod.addr(family));
        assert_tcp_reaches(&servers, pod.netns(), dest, node_ip);
        assert_udp_reaches(&servers, pod.netns(), dest, node_ip);
        // The pod's port itself is not published on the node.
        assert_tcp_refused(&hp.ext.netns, SocketAddr::new(node_ip, POD_PORT));
    }
    // TCP and UDP on every address of each family: four keys, the IPv6
    // ones marked as such (`HostPortKey::wildcard`).
    let keys: Vec<Vec<u8>> = dump_map(&hp.node, "HOST_PORTS")
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(keys.len(), 4, "{keys:02x?}");
    assert_eq!(
        keys.iter().filter(|key| key[19] == 6).count(),
        2,
        "{keys:02x?}"
    );
    assert_node_untouched(&hp.node);
}

#[test]
fn published_port_is_reached_from_another_pod() {
    let hp = HostPortNode::new();
    let server_pod = hp.add_pod(&[
        HostPort::tcp(HOST_PORT, POD_PORT),
        HostPort::udp(HOST_PORT, POD_PORT),
    ]);
    let client_pod = hp.node.add_pod();
    let servers = start_servers(&server_pod, POD_PORT);
    let dest = sock(hp.node_ip(), HOST_PORT);

    assert_tcp_reaches(&servers, client_pod.netns(), dest, client_pod.ip());
    assert_udp_reaches(&servers, client_pod.netns(), dest, client_pod.ip());
    assert_node_untouched(&hp.node);
}

#[test]
fn pod_reaches_its_own_published_port_seen_from_the_node_address() {
    let hp = HostPortNode::new();
    let pod = hp.add_pod(&[
        HostPort::tcp(HOST_PORT, POD_PORT),
        HostPort::udp(HOST_PORT, POD_PORT),
    ]);
    let servers = start_servers(&pod, POD_PORT);
    let dest = sock(hp.node_ip(), HOST_PORT);

    // A packet from its own address would be dropped by the pod's stack:
    // the hairpin shows the node's address instead.
    assert_tcp_reaches(&servers, pod.netns(), dest, hp.node_ip());
    assert_udp_reaches(&servers, pod.netns(), dest, hp.node_ip());
    assert_tcp_reaches(&servers, pod.netns(), dest, hp.node_ip());
    assert_node_untouched(&hp.node);
}

#[test]
fn node_reaches_published_port_at_its_address_and_at_loopback() {
    // A dual-stack pod: connect4/sendmsg4/recvmsg4 for IPv4, the `6` hooks
    // for IPv6 (at the node's IPv6 address and at ::1).
    let hp = HostPortNode::new();
    let pod = hp.node.add_pod_with(with_port_mappings(
        hp.node.conf().dual_stack().build(),
        &hp.cgroup,
        &[
            HostPort::tcp(HOST_PORT, POD_PORT),
            HostPort::udp(HOST_PORT, POD_PORT),
        ],
    ));
    let servers = start_servers(&pod, POD_PORT);
    for family in Family::ALL {
        let node_ip = hp.ext.node_addr(family);
        let loopback: IpAddr = match family {
            Family::V4 => Ipv4Addr::LOCALHOST.into(),
            Family::V6 => Ipv6Addr::LOCALHOST.into(),
        };
        for (i, ip) in [node_ip, loopback].into_iter().enumerate() {
            let dest = SocketAddr::new(ip, HOST_PORT);
            let before = servers.tcp.conns().len();
            let outcome = expect_node_tcp(
                hp.tcp_from_node(dest, 1 << 20, i as u64),
                &format!("TCP node -> {dest}"),
            );
            assert!(outcome.intact(), "{outcome:?}");
            // The socket was sent to the pod before any packet existed: the
            // pod sees the node's own address, no loopback address leaves lo.
            assert_eq!(canonical(outcome.seen_as), outcome.local, "{outcome:?}");
            assert_eq!(outcome.local.ip(), node_ip);
            assert_eq!(servers.tcp.conns().len(), before + 1);

            for connected in [true, false] {
                let payload = format!("node to {dest} connected={connected}");
                let answer = hp
                    .udp_from_node(dest, &payload, connected)
                    .unwrap_or_else(|e| panic!("UDP node -> {dest}: {e}"));
                assert_eq!(answer.echoed, payload.as_bytes());
                assert_eq!(answer.seen_as.ip().to_canonical(), node_ip);
                assert_eq!(answer.seen_as.port(), answer.local.port());
                // The answer seems to come from where the node sent to.
                assert_eq!(answer.from, dest, "{answer:?}");
            }
        }

        // Only the test's cgroup is hooked: a node process outside it
        // reaches the node's own (empty) port.
        expect_node_refused(
            node_tcp_exchange(
                hp.node.netns(),
                None,
                SocketAddr::new(node_ip, HOST_PORT),
                16,
                0,
            ),
            &format!("TCP node -> {node_ip}:{HOST_PORT} from outside the cgroup"),
        );
    }
    assert_eq!(
        hp.node.netns().sysctl("net.ipv4.conf.all.route_localnet"),
        "0"
    );
    assert_node_untouched(&hp.node);
}

#[test]
fn node_udp_answers_come_from_the_address_the_node_sent_to() {
    // An unconnected socket (a resolver, say) drops answers from elsewhere.
    let mut wrong = Vec::new();
    for masquerade in [false, true] {
        let hp = HostPortNode::new();
        let mut conf = hp.conf(&[HostPort::udp(HOST_PORT, POD_PORT)]);
        conf["ipMasq"] = json!(masquerade);
        let pod = hp.node.add_pod_with(conf);
        let _servers = start_servers(&pod, POD_PORT);
        // The pod's own address and port are no host port: answers from
        // there stay as they are.
        let targets = [
            at(hp.node_ip(), HOST_PORT),
            at(Ipv4Addr::LOCALHOST, HOST_PORT),
            at(pod.ip(), POD_PORT),
        ];
        for dest in targets {
            for connected in [true, false] {
                let answer = hp
                    .udp_from_node(dest, "where from?", connected)
                    .unwrap_or_else(|e| panic!("UDP node -> {dest}: {e}"));
                if answer.from != SocketAddr::V4(dest) {
                    wrong.push(format!(
                        "ipMasq={masquerade} connected={connected}: sent to {dest}, \
                         answer from {}",
                        answer.from
                    ));
                }
            }
        }
        assert_node_untouched(&hp.node);
    }
    assert!(
        wrong.is_empty(),
        "answers from the wrong address:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn host_ip_restricts_the_port_to_that_address() {
    let hp = HostPortNode::new();
    hp.add_node_address(OTHER_NODE_IP);
    let node_ip = hp.node_ip();
    let pod = hp.add_pod(&[
        HostPort::tcp(HOST_PORT, POD_PORT).on(node_ip),
        HostPort::udp(HOST_PORT, POD_PORT).on(node_ip),
    ]);
    let client_pod = hp.node.add_pod();
    let servers = start_servers(&pod, POD_PORT);
    let published_at = sock(node_ip, HOST_PORT);
    let elsewhere = sock(OTHER_NODE_IP, HOST_PORT);

    // From outside.
    assert_tcp_reaches(&servers, &hp.ext.netns, published_at, hp.ext.ext_ip);
    assert_udp_reaches(&servers, &hp.ext.netns, published_at, hp.ext.ext_ip);
    assert_tcp_refused(&hp.ext.netns, elsewhere);
    assert_udp_not_forwarded(&servers, &hp.ext.netns, elsewhere);
    // From another pod.
    assert_tcp_reaches(&servers, client_pod.netns(), published_at, client_pod.ip());
    assert_tcp_refused(client_pod.netns(), elsewhere);
    assert_udp_not_forwarded(&servers, client_pod.netns(), elsewhere);
    // From the node: 127.0.0.1 is none of the node's published addresses.
    let conns = servers.tcp.conns().len();
    let outcome = expect_node_tcp(
        hp.tcp_from_node(at(node_ip, HOST_PORT), 4096, 1),
        "TCP node -> hostIP",
    );
    assert!(outcome.intact(), "{outcome:?}");
    expect_node_refused(
        hp.tcp_from_node(at(OTHER_NODE_IP, HOST_PORT), 16, 2),
        "TCP node -> other node address",
    );
    expect_node_refused(
        hp.tcp_from_node(at(Ipv4Addr::LOCALHOST, HOST_PORT), 16, 3),
        "TCP node -> 127.0.0.1",
    );
    assert_eq!(
        servers.tcp.conns().len(),
        conns + 1,
        "{:?}",
        servers.tcp.conns()
    );

    // A port published on every address answers at each from that address.
    let wildcard = hp.add_pod(&[HostPort::tcp(9090, POD_PORT), HostPort::udp(9090, POD_PORT)]);
    let wildcard_servers = start_servers(&wildcard, POD_PORT);
    for ip in [node_ip, OTHER_NODE_IP] {
        assert_tcp_reaches(
            &wildcard_servers,
            &hp.ext.netns,
            sock(ip, 9090),
            hp.ext.ext_ip,
        );
        assert_udp_reaches(
            &wildcard_servers,
            &hp.ext.netns,
            sock(ip, 9090),
            hp.ext.ext_ip,
        );
        assert_tcp_reaches(
            &wildcard_servers,
            client_pod.netns(),
            sock(ip, 9090),
            client_pod.ip(),
        );
    }
    assert_node_untouched(&hp.node);
}

/// ADD of a new sandbox with `conf`; panics unless it fails with 111
/// naming the port, and leaves the node and the sandbox as they were.
fn assert_add_conflicts(hp: &HostPortNode, conf: &Value, port: u16, what: &str) {
    let node = &hp.node;
    let footprint = Footprint::of(node, DEFAULT_NETWORK);
    let ports = published(node);
    let mut sandbox = Sandbox::new(node);
    let msg = sandbox.add(conf).expect_error(what, 111);
    assert!(
        msg.contains(&port.to_string()),
        "{what}: {msg:?} does not name port {port}"
    );
    assert_eq!(Footprint::of(node, DEFAULT_NETWORK), footprint, "{what}");
    assert_eq!(published(node), ports, "{what}: HOST_PORTS changed");
    let left: Vec<String> = links::names(sandbox.netns())
        .into_iter()
        .filter(|l| l != "lo")
        .collect();
    assert!(
        left.is_empty(),
        "{what}: links left in the sandbox: {left:?}"
    );
}

#[test]
fn conflicting_host_ports_are_refused_and_leave_nothing_behind() {
    let hp = HostPortNode::new();
    hp.add_node_address(OTHER_NODE_IP);
    let node_ip = hp.node_ip();
    let first = hp.add_pod(&[HostPort::tcp(HOST_PORT, POD_PORT)]);
    let first_servers = start_servers(&first, POD_PORT);
    let dest = sock(node_ip, HOST_PORT);

    // Same port and protocol, on every address or on one of them.
    assert_add_conflicts(
        &hp,
        &hp.conf(&[HostPort::tcp(HOST_PORT, 81)]),
        HOST_PORT,
        "same",
    );
    assert_add_conflicts(
        &hp,
        &hp.conf(&[HostPort::tcp(HOST_PORT, 81).on(node_ip)]),
        HOST_PORT,
        "specific after wildcard",
    );
    // A free port listed before the taken one is not published either.
    assert_add_conflicts(
        &hp,
        &hp.conf(&[HostPort::tcp(9090, 90), HostPort::tcp(HOST_PORT, 80)]),
        HOST_PORT,
        "second mapping taken",
    );

    // Specific first: a wildcard on the same port is refused, another
    // specific address is fine.
    let specific = hp.add_pod(&[HostPort::tcp(7070, POD_PORT).on(node_ip)]);
    assert_add_conflicts(
        &hp,
        &hp.conf(&[HostPort::tcp(7070, POD_PORT)]),
        7070,
        "wildcard after specific",
    );
    assert_add_conflicts(
        &hp,
        &hp.conf(&[HostPort::tcp(7070, 81).on(node_ip)]),
        7070,
        "same specific",
    );
    let other_specific = hp.add_pod(&[HostPort::tcp(7070, POD_PORT).on(OTHER_NODE_IP)]);
    let specific_servers = start_servers(&specific, POD_PORT);
    let other_servers = start_servers(&other_specific, POD_PORT);
    assert_tcp_reaches(
        &specific_servers,
        &hp.ext.netns,
        sock(node_ip, 7070),
        hp.ext.ext_ip,
    );
    assert_tcp_reaches(
        &other_servers,
        &hp.ext.netns,
        sock(OTHER_NODE_IP, 7070),
        hp.ext.ext_ip,
    );

    // Same port, other protocol: fine, and each goes to its own pod.
    let udp_pod = hp.add_pod(&[HostPort::udp(HOST_PORT, POD_PORT)]);
    let udp_servers = start_servers(&udp_pod, POD_PORT);
    assert_udp_reaches(&udp_servers, &hp.ext.netns, dest, hp.ext.ext_ip);
    assert!(first_servers.udp.seen().is_empty());

    // The first pod kept its port through all of it.
    assert_tcp_reaches(&first_servers, &hp.ext.netns, dest, hp.ext.ext_ip);
    assert!(udp_servers.tcp.conns().is_empty());
    first
        .check("1.0.0")
        .expect_success("CHECK of the first pod");
    assert_node_untouched(&hp.node);
}

#[test]
fn del_frees_the_port_and_check_finds_a_mapping_removed() {
    let hp = HostPortNode::new();
    let mapping = [HostPort::tcp(HOST_PORT, POD_PORT)];
    let dest = sock(hp.node_ip(), HOST_PORT);
    let mut first = hp.add_pod(&mapping);
    first
        .check("1.0.0")
        .expect_success("CHECK with the mapping");
    let ports = published(&hp.node);
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(
        (
            ports[0].host_port,
            ports[0].pod_ip,
            ports[0].pod_port,
            ports[0].host_ip
        ),
        (HOST_PORT, first.ip(), POD_PORT, None)
    );
    {
        let first_servers = start_servers(&first, POD_PORT);
        assert_tcp_reaches(&first_servers, &hp.ext.netns, dest, hp.ext.ext_ip);
    }

    first.del().expect_success("DEL");
    assert_eq!(published(&hp.node), Vec::new(), "HOST_PORTS after DEL");
    assert_tcp_refused(&hp.ext.netns, dest);
    first.del().expect_success("second DEL");

    let second = hp.add_pod(&mapping);
    let second_servers = start_servers(&second, POD_PORT);
    assert_tcp_reaches(&second_servers, &hp.ext.netns, dest, hp.ext.ext_ip);
    second
        .check("1.0.0")
        .expect_success("CHECK of the second pod");

    delete_map_entry(&hp.node, "HOST_PORTS", &host_port_key(&mapping[0]));
    assert_eq!(published(&hp.node), Vec::new(), "bpftool did not delete it");
    let msg = second
        .check("1.0.0")
        .expect_error("CHECK after the mapping was removed", 112);
    assert!(
        msg.contains("hostPort") && msg.contains(&HOST_PORT.to_string()),
        "{msg}"
    );
    assert_node_untouched(&hp.node);
}

/// GC of the network, listing `valid` as the attachments to keep.
fn gc(hp: &HostPortNode, valid: &[&Pod<'_>]) -> CniOutput {
    let mut conf = hp.node.conf().cni_version("1.1.0").build();
    conf["cni.dev/valid-attachments"] = valid
        .iter()
        .map(|pod| json!({ "containerID": pod.container_id(), "ifname": "eth0" }))
        .collect();
    let stdin = conf.to_string();
    hp.node.cni(&CniRequest {
        command: "GC",
        container_id: "",
        netns: None,
        ifname: "",
        args: None,
        stdin: stdin.as_bytes(),
    })
}

#[test]
fn gc_removes_the_mappings_of_unlisted_attachments() {
    let hp = HostPortNode::new();
    let gone = hp.add_pod(&[HostPort::tcp(HOST_PORT, POD_PORT)]);
    let kept = hp.add_pod(&[HostPort::udp(9090, 90)]);
    assert_eq!(published(&hp.node).len(), 2);

    gc(&hp, &[&kept]).expect_success("GC");
    let ports = published(&hp.node);
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!((ports[0].host_port, ports[0].pod_ip), (9090, kept.ip()));
    kept.check("1.0.0").expect_success("CHECK of the kept pod");

    let taker = hp.add_pod(&[HostPort::tcp(HOST_PORT, POD_PORT)]);
    let taker_servers = start_servers(&taker, POD_PORT);
    assert_tcp_reaches(
        &taker_servers,
        &hp.ext.netns,
        sock(hp.node_ip(), HOST_PORT),
        hp.ext.ext_ip,
    );
    drop(gone);
    assert_eq!(published(&hp.node).len(), 2, "the late DEL took a port");
    assert_node_untouched(&hp.node);
}

#[test]
fn remapped_udp_port_reaches_the_new_pod_at_once() {
    const INTERVAL: Duration = Duration::from_millis(50);
    const MAX_DATAGRAMS: u32 = 400;
    let hp = HostPortNode::new();
    let mapping = [HostPort::udp(5353, 53)];
    let mut first = hp.add_pod(&mapping);
    let first_rx = UdpReceiver::start(first.netns(), sock(ANY, 53)).expect("receiver 1");

    let sent = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let dest = sock(hp.node_ip(), 5353);
    let source = sock(hp.ext.ext_ip, 0);
    let sender = {
        let (sent, stop) = (sent.clone(), stop.clone());
        hp.ext.netns.spawn(move || -> io::Result<SocketAddr> {
            let socket = UdpSocket::bind(source)?;
            for seq in 0..MAX_DATAGRAMS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Refusals while no pod holds the port are expected.
                let _ = socket.send_to(&seq.to_be_bytes(), dest);
                sent.store(seq + 1, Ordering::Relaxed);
                thread::sleep(INTERVAL);
            }
            socket.local_addr()
        })
    };
    let got_first = first_rx.wait_for(ANSWER_TIMEOUT, |d| d.len() >= 3);

    first.del().expect_success("DEL of the first pod");
    // Datagrams to the unmapped port for a while, as while a pod restarts:
    // with iptables DNAT they would leave a conntrack entry that keeps
    // sending the flow nowhere after the new mapping exists.
    let deleted_at = sent.load(Ordering::Relaxed);
    let unmapped = wait_until(ANSWER_TIMEOUT, || {
        sent.load(Ordering::Relaxed) >= deleted_at + 3
    });
    assert!(unmapped, "the sender stalled");
    let second = hp.add_pod(&mapping);
    let added_at = sent.load(Ordering::Relaxed);
    let second_rx = UdpReceiver::start(second.netns(), sock(ANY, 53)).expect("receiver 2");
    let got_second = second_rx.wait_for(ANSWER_TIMEOUT, |d| d.len() >= 5);
    stop.store(true, Ordering::Relaxed);
    let client = sender
        .join()
        .expect("sender panicked")
        .expect("sending datagrams");
    assert!(got_first, "the first pod got {:?}", first_rx.received());
    assert!(got_second, "the second pod got {:?}", second_rx.received());

    let seqs = |rx: &UdpReceiver| -> Vec<u32> {
        rx.received()
            .iter()
            .map(|(from, data)| {
                assert_eq!(*from, client, "datagram from {from}");
                u32::from_be_bytes(data[..4].try_into().unwrap())
            })
            .collect()
    };
    let second_seqs = seqs(&second_rx);
    let first_seqs = seqs(&first_rx);
    eprintln!(
        "remap: first pod got {first_seqs:?}, DEL returned at #{deleted_at}, ADD of the \
         second at #{added_at}, second pod got {second_seqs:?}"
    );
    assert!(
        first_seqs.iter().all(|&s| s <= deleted_at),
        "the first pod got datagrams after its DEL: {first_seqs:?}"
    );
    // The receiver binds a moment after ADD returns: allow two intervals.
    assert!(
        second_seqs[0] <= added_at + 2,
        "the second pod's first datagram was #{}, ADD returned at #{added_at}",
        second_seqs[0]
    );
    let expected: Vec<u32> = (second_seqs[0]..second_seqs[0] + second_seqs.len() as u32).collect();
    assert_eq!(second_seqs, expected, "datagrams lost after the remap");
    assert_node_untouched(&hp.node);
}

/// One client socket (one source port) alternating between two published
/// ports of the same pod port gets each answer from the port it sent to:
/// the connection table must take the new mapping, not keep the first one.
#[test]
fn answers_come_from_the_published_port_the_client_used() {
    let hp = HostPortNode::new();
    let pod = hp.node.add_pod_with(hp.conf(&[
        HostPort::udp(HOST_PORT, POD_PORT),
        HostPort::udp(HOST_PORT + 1, POD_PORT),
    ]));
    let _servers = start_servers(&pod, POD_PORT);
    let node_ip = hp.node_ip();
    let sent_to = [HOST_PORT, HOST_PORT + 1, HOST_PORT];
    let answered_from: Vec<SocketAddr> = hp.ext.netns.run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind in ext");
        socket
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .expect("read timeout");
        sent_to
            .iter()
            .map(|port| {
                socket
                    .send_to(b"which port?", sock(node_ip, *port))
                    .expect("send");
                let mut buf = [0u8; 512];
                traffic::recv_from(&socket, &mut buf).expect("an answer").1
            })
            .collect()
    });
    let expected: Vec<SocketAddr> = sent_to.iter().map(|p| sock(node_ip, *p)).collect();
    assert_eq!(answered_from, expected);
    assert_node_untouched(&hp.node);
}

/// Whether `NODE_ADDRS` of `hp`'s node holds `ip`.
fn node_addrs_hold(hp: &HostPortNode, ip: Ipv4Addr) -> bool {
    dump_map(&hp.node, "NODE_ADDRS")
        .iter()
        .any(|(key, _)| key[12..16] == ip.octets())
}

#[test]
fn agent_follows_node_addresses_that_change_after_the_pods() {
    let hp = HostPortNode::new();
    let pod = hp.add_pod(&[HostPort::tcp(HOST_PORT, POD_PORT)]);
    let servers = start_servers(&pod, POD_PORT);
    // An address the node gains after every ADD: only the agent sees it.
    let late = Ipv4Addr::new(10, 250, 0, 9);
    hp.add_node_address(late);
    assert!(
        !node_addrs_hold(&hp, late),
        "NODE_ADDRS already holds {late}: the test proves nothing"
    );

    let agent = Agent::start(&hp.node, &["--gc-interval", "1"]);
    let changed = |agent: &Agent| {
        agent.wait_for_line(Duration::from_secs(10), |l| {
            l.contains("node addresses changed")
        })
    };
    changed(&agent).unwrap_or_else(|| {
        panic!(
            "the agent did not pick up {late}:\n{}",
            agent.stderr().join("\n")
        )
    });
    assert!(node_addrs_hold(&hp, late));
    let outcome = expect_node_tcp(
        hp.tcp_from_node(at(late, HOST_PORT), 64 * 1024, 7),
        &format!("TCP node -> {late}:{HOST_PORT}"),
    );
    assert!(outcome.intact(), "{outcome:?}");
    assert_eq!(servers.tcp.conns().len(), 1);

    // And forgets it when it goes.
    hp.node
        .netns()
        .ip(&["addr", "del", &format!("{late}/32"), "dev", "uplink"]);
    assert!(
        wait_until(Duration::from_secs(10), || !node_addrs_hold(&hp, late)),
        "NODE_ADDRS still holds {late} after it was removed"
    );
}

#[test]
fn agent_reattaches_cgroup_hooks_whose_links_are_gone() {
    let hp = HostPortNode::new();
    let pod = hp.add_pod(&[HostPort::tcp(HOST_PORT, POD_PORT)]);
    let servers = start_servers(&pod, POD_PORT);
    let limited = hp.node.add_pod_with(with_keys(
        hp.conf(&[]),
        json!({ "egressRate": 20_000_000, "egressBurst": 2_000_000 }),
    ));
    let hooks = hp.node.bpffs_root().join("cgroup");
    let mut pins: Vec<String> = std::fs::read_dir(&hooks)
        .expect("the cgroup link pins")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pins.sort();
    assert_eq!(
        pins,
        [
            "host_connect4",
            "host_connect6",
            "host_recvmsg4",
            "host_recvmsg6",
            "host_sendmsg4",
            "host_sendmsg6",
            "pace_tcp"
        ]
    );
    // Unpinning a link detaches its program.
    for pin in &pins {
        std::fs::remove_file(hooks.join(pin)).unwrap();
    }
    expect_node_refused(
        hp.tcp_from_node(at(hp.node_ip(), HOST_PORT), 16, 0),
        "TCP node -> node:8080 without the socket hooks",
    );
    limited
        .check("1.0.0")
        .expect_error("CHECK without TCP pacing", 112);

    let cgroup = hp.cgroup.path().to_string_lossy().into_owned();
    let agent = Agent::start(&hp.node, &["--gc-interval", "1", "--cgroup-root", &cgroup]);
    let line = agent
        .wait_for_line(Duration::from_secs(10), |l| l.contains("reconciled:"))
        .expect("no reconcile report");
    assert!(
        line.contains("socket hooks") && line.contains("pace_tcp"),
        "{line}"
    );
    for pin in &pins {
        assert!(hooks.join(pin).exists(), "{pin} not pinned again");
    }
    let outcome = expect_node_tcp(
        hp.tcp_from_node(at(hp.node_ip(), HOST_PORT), 64 * 1024, 3),
        "TCP node -> node:8080 after the agent reattached the hooks",
    );
    assert!(outcome.intact(), "{outcome:?}");
    assert_eq!(servers.tcp.conns().len(), 1);
    limited
        .check("1.0.0")
        .expect_success("CHECK after the agent reattached pacing");
    pod.check("1.0.0")
        .expect_success("CHECK of the published pod");
}

/// A STATUS call (no attachment variables) on `hp`'s node.
fn status(hp: &HostPortNode, conf: &Value) -> CniOutput {
    let stdin = conf.to_string();
    hp.node.cni(&CniRequest {
        command: "STATUS",
        container_id: "",
        netns: None,
        ifname: "",
        args: None,
        stdin: stdin.as_bytes(),
    })
}

#[test]
fn node_without_cgroup_v2_serves_host_ports_and_limits_and_says_what_it_lacks() {
    // As on a cgroup v1 node (or one whose cgroup v2 is mounted out of the
    // plugin's sight): `cgroupRoot` is a directory but no cgroup v2 one.
    let hp = HostPortNode::new();
    let not_cgroup2 = tempfile::tempdir().expect("a temporary directory");
    let conf = with_keys(
        hp.conf(&[
            HostPort::tcp(HOST_PORT, POD_PORT),
            HostPort::udp(HOST_PORT, POD_PORT),
        ]),
        json!({
            "cniVersion": "1.1.0",
            "cgroupRoot": not_cgroup2.path(),
            "egressRate": 100_000_000,
            "egressBurst": 10_000_000
        }),
    );
    let mut sandbox = Sandbox::new(&hp.node);
    let added = sandbox.add(&conf);
    added.expect_result("ADD of a pod with host ports on a node without cgroup v2");
    assert!(
        added.stderr.contains("not a cgroup v2 directory")
            && added.stderr.contains("not reachable from the node"),
        "ADD does not say what the pod lacks: {}",
        added.stderr
    );
    // No hook was attached to anything.
    let hooks = hp.node.bpffs_root().join("cgroup");
    let pins = std::fs::read_dir(&hooks).map_or(0, |dir| dir.count());
    assert_eq!(pins, 0, "cgroup link pins under {}", hooks.display());

    let tcp = PeerServer::start(sandbox.netns(), at(ANY, POD_PORT)).expect("TCP server");
    let udp = UdpEcho::start(sandbox.netns(), at(ANY, POD_PORT), false).expect("UDP echo");
    let servers = Servers { tcp, udp };
    let dest = sock(hp.node_ip(), HOST_PORT);
    assert_tcp_reaches(&servers, &hp.ext.netns, dest, hp.ext.ext_ip);
    assert_udp_reaches(&servers, &hp.ext.netns, dest, hp.ext.ext_ip);
    let client = hp.node.add_pod();
    assert_tcp_reaches(&servers, client.netns(), dest, client.ip());
    assert_udp_reaches(&servers, client.netns(), dest, client.ip());

    let checked = sandbox.check();
    checked.expect_success("CHECK of the pod without node hooks");
    assert!(
        checked.stderr.contains("not a cgroup v2 directory"),
        "CHECK does not mention it: {}",
        checked.stderr
    );
    let status = status(&hp, &conf);
    status.expect_success("STATUS with a pod without node hooks");
    assert!(
        status.stderr.contains("not a cgroup v2 directory"),
        "STATUS does not mention it: {}",
        status.stderr
    );
    let not_cgroup2_arg = not_cgroup2.path().to_string_lossy().into_owned();
    let agent = Agent::start(
        &hp.node,
        &["--gc-interval", "60", "--cgroup-root", &not_cgroup2_arg],
    );
    let metrics = agent.scrape();
    for hook in ["host-ports", "tcp-pacing"] {
        assert_eq!(
            metrics.value("cni_ebpf_node_hooks_missing", &[("hook", hook)]),
            1.0,
            "{hook} not reported missing"
        );
    }
    drop(agent);
    sandbox.del().expect_success("DEL");
    assert!(published(&hp.node).is_empty(), "{:?}", published(&hp.node));
}

#[test]
fn xdp_on_the_uplink_delivers_connections_to_host_ports() {
    let hp = HostPortNode::new();
    // A dual-stack pod: published on the node's IPv4 and IPv6 addresses.
    let mut conf = with_port_mappings(
        hp.node.conf().dual_stack().build(),
        &hp.cgroup,
        &[
            HostPort::tcp(HOST_PORT, POD_PORT),
            HostPort::udp(HOST_PORT, POD_PORT),
        ],
    );
    conf["uplinkXdp"] = json!(true);
    let pod = hp.node.add_pod_with(conf);
    let servers = start_servers(&pod, POD_PORT);
    // A NIC puts whole checksums on the wire; a veth leaves TCP's to the
    // receiver (CHECKSUM_PARTIAL), which an XDP frame does not carry.
    cni_ebpf_tests::ext::full_checksums(&hp.ext.netns, "eth0");
    for family in Family::ALL {
        let dest = SocketAddr::new(hp.ext.node_addr(family), HOST_PORT);
        let ext_ip = hp.ext.ext_addr(family);
        let before = hp.node.verdict_packets("xdp-delivered");

        assert_tcp_reaches(&servers, &hp.ext.netns, dest, ext_ip);
        assert_udp_reaches(&servers, &hp.ext.netns, dest, ext_ip);
        assert_tcp_reaches(&servers, &hp.ext.netns, dest, ext_ip);
        // XDP, not the tc program, translated and delivered them: every
        // packet of the exchanges (handshakes, data, the datagram) at least.
        let delivered = hp.node.verdict_packets("xdp-delivered") - before;
        assert!(
            delivered >= 8,
            "{family:?}: only {delivered} packets delivered by XDP: {:?}",
            hp.node.stats()
        );
        assert_tcp_refused(
            &hp.ext.netns,
            SocketAddr::new(hp.ext.node_addr(family), POD_PORT),
        );
    }
    assert_node_untouched(&hp.node);
}
