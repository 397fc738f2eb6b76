//! Cluster mode: agents in node namespaces join a cluster in etcd, lease
//! pod CIDRs, and program each other as peers; pods take their addresses
//! from the node's lease (`usePodCidr`). Four nodes on two segments behind
//! a router (native routes on a segment, the VXLAN overlay across it), and
//! the failure cases: a node that leaves, an agent restart, etcd down and
//! back, a compacted watch, concurrent joins and colliding CIDRs.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use cni_ebpf_tests::{
    Pod,
    agent::Agent,
    cluster::{ClusterNode, LEASE_TTL, Underlay},
    ext::{PeerClient, PeerServer, UdpEcho, udp_request, wait_until},
    traffic,
};

/// How long joining and learning a peer may take.
const JOIN: Duration = Duration::from_secs(20);
/// How long a stopped node may stay in the others' datapath: its TTL and
/// the time etcd takes to notice, with room for a busy machine.
const LEAVE: Duration = Duration::from_secs(LEASE_TTL + 10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const TEN_MB: u64 = 10 << 20;

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let net: Ipv4Addr = net.parse().unwrap();
    let mask = u32::MAX
        .checked_shl(32 - len.parse::<u32>().unwrap())
        .unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Waits until `agent` logs that it programmed `other` (at `cidr`) in `mode`.
fn wait_peer(agent: &Agent, other: &ClusterNode, cidr: &str, mode: &str) {
    let line = format!("peer {} {cidr} via {} ({mode})", other.name, other.ip);
    assert!(
        agent.wait_for_line(JOIN, |l| l.contains(&line)).is_some(),
        "no `{line}` within {JOIN:?}:\n{}",
        agent.stderr().join("\n")
    );
}

/// Waits until `node` routes `cidr` via `gateway`.
fn wait_route(node: &ClusterNode, cidr: &str, gateway: Ipv4Addr) {
    let want = format!("via {gateway} dev");
    let mut routes = String::new();
    let found = wait_until(JOIN, || {
        routes = node.route_to(cidr);
        routes.contains(&want)
    });
    assert!(
        found,
        "{}: route to {cidr}: {routes:?}, want {want}",
        node.name
    );
}

/// Ping both ways, a 10 MB transfer each way with matching hashes and the
/// pod's own source address, and a UDP exchange.
fn pods_talk(a: &Pod<'_>, b: &Pod<'_>) {
    for (from, to) in [(a, b), (b, a)] {
        assert!(
            traffic::ping(from.netns(), IpAddr::V4(to.ip()), 3),
            "ping {} -> {} failed",
            from.ip(),
            to.ip()
        );
        transfer(from, to);
    }
    let echo = UdpEcho::start(b.netns(), SocketAddrV4::new(b.ip(), 0), false)
        .expect("starting the UDP echo");
    let (seen, payload) = a
        .netns()
        .run(|| {
            let socket = UdpSocket::bind(SocketAddrV4::new(a.ip(), 0))?;
            socket.connect(echo.addr())?;
            udp_request(&socket, b"across nodes", CONNECT_TIMEOUT)
        })
        .unwrap_or_else(|e| panic!("UDP {} -> {}: {e}", a.ip(), b.ip()));
    assert_eq!(seen.ip(), IpAddr::V4(a.ip()), "the echo saw {seen}");
    assert_eq!(payload, b"across nodes");
}

fn transfer(from: &Pod<'_>, to: &Pod<'_>) {
    let server = PeerServer::start(to.netns(), SocketAddrV4::new(to.ip(), 0))
        .expect("starting the server in the pod");
    let client = from
        .netns()
        .run(|| PeerClient::connect(server.addr(), CONNECT_TIMEOUT))
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.ip(), server.addr()));
    let local = client.stream.local_addr().unwrap();
    assert_eq!(client.seen_as, local, "{} saw {}", to.ip(), client.seen_as);
    let exchange = client
        .exchange(TEN_MB, u64::from(local.port()))
        .expect("exchange");
    assert!(
        exchange.intact(),
        "{} -> {}: {exchange:?}",
        from.ip(),
        to.ip()
    );
    assert_eq!(exchange.server_bytes, TEN_MB);
}

fn mtu_of(pod: &Pod<'_>) -> String {
    let link = pod.netns().ip(&["-o", "link", "show", "eth0"]);
    let mtu = link.split_whitespace().skip_while(|w| *w != "mtu").nth(1);
    mtu.unwrap_or_default().to_string()
}

#[test]
fn four_nodes_on_two_segments_reach_every_pod() {
    let underlay = Underlay::new();
    let nodes: Vec<ClusterNode> = [0, 0, 1, 1].map(|s| underlay.add_node(s)).into();
    let agents: Vec<Agent> = nodes.iter().map(|n| n.start_agent(&[])).collect();
    let cidrs: Vec<String> = nodes.iter().map(|n| n.wait_pod_cidr(JOIN)).collect();
    let mut distinct = cidrs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{cidrs:?}");
    let records = underlay.subnets();
    assert_eq!(records.len(), 4, "{records:?}");
    for (node, cidr) in nodes.iter().zip(&cidrs) {
        let record = &records.iter().find(|(c, _)| c == cidr).unwrap().1;
        assert_eq!(record["nodeName"], node.name.as_str());
        assert_eq!(record["underlay"], node.ip.to_string());
        let state = node.node_state().unwrap();
        // auto may tunnel: pods leave room for the VXLAN header.
        assert_eq!(state["mtu"], 1450, "{state}");
        assert_eq!(node.node.netns().sysctl("net.ipv4.ip_forward"), "0");
    }

    let pods: Vec<Pod<'_>> = nodes
        .iter()
        .map(|n| n.node.add_pod_with(n.conf()))
        .collect();
    for ((pod, cidr), node) in pods.iter().zip(&cidrs).zip(&nodes) {
        assert!(
            in_cidr(pod.ip(), cidr),
            "{}: pod got {}",
            node.name,
            pod.ip()
        );
        assert_eq!(mtu_of(pod), "1450", "{}", node.name);
    }

    // Native on a segment: a route via the peer, then traffic.
    let pairs = |same: bool| {
        let nodes = &nodes;
        (0..4)
            .flat_map(move |i| (i + 1..4).map(move |j| (i, j)))
            .filter(move |&(i, j)| (nodes[i].segment == nodes[j].segment) == same)
    };
    for (i, j) in pairs(true) {
        for (x, y) in [(i, j), (j, i)] {
            wait_peer(&agents[x], &nodes[y], &cidrs[y], "native");
            wait_route(&nodes[x], &cidrs[y], nodes[y].ip);
        }
        pods_talk(&pods[i], &pods[j]);
    }
    // Across the router: the overlay.
    for (i, j) in pairs(false) {
        for (x, y) in [(i, j), (j, i)] {
            wait_peer(&agents[x], &nodes[y], &cidrs[y], "vxlan");
        }
        pods_talk(&pods[i], &pods[j]);
    }
}

#[test]
fn a_node_that_stops_is_forgotten_after_its_ttl_and_keeps_its_cidr_when_back() {
    let underlay = Underlay::new();
    let (a, b) = (underlay.add_node(0), underlay.add_node(0));
    let agent_a = a.start_agent(&[]);
    let mut agent_b = Some(b.start_agent(&[]));
    let cidr_b = b.wait_pod_cidr(JOIN);
    let cidr_a = a.wait_pod_cidr(JOIN);
    wait_route(&a, &cidr_b, b.ip);
    wait_route(&b, &cidr_a, a.ip);
    let pod_a = a.node.add_pod_with(a.conf());
    let pod_b = b.node.add_pod_with(b.conf());
    assert!(traffic::ping(pod_a.netns(), IpAddr::V4(pod_b.ip()), 2));

    // A restart within the TTL takes the same key back.
    drop(agent_b.take());
    let restarted = b.start_agent(&[]);
    let holds = format!("node {} holds {cidr_b}", b.name);
    assert!(
        restarted
            .wait_for_line(JOIN, |l| l.contains(&holds))
            .is_some(),
        "{}",
        restarted.stderr().join("\n")
    );
    assert_eq!(b.wait_pod_cidr(JOIN), cidr_b);

    // Stopped: the lease runs out and A takes B out of its datapath.
    drop(restarted);
    let removed = format!("peer {cidr_b} removed");
    assert!(
        agent_a
            .wait_for_line(LEAVE, |l| l.contains(&removed))
            .is_some(),
        "{}",
        agent_a.stderr().join("\n")
    );
    assert_eq!(
        a.route_to(&cidr_b).trim(),
        "",
        "the route to B's pods stayed"
    );
    assert!(
        underlay.subnets().iter().all(|(c, _)| *c != cidr_b),
        "{:?}",
        underlay.subnets()
    );
    // The pods on B keep working on their own node meanwhile, and B's
    // agent, back after its lease expired, takes its old CIDR from its
    // state file.
    agent_b = Some(b.start_agent(&[]));
    assert!(
        agent_b
            .as_ref()
            .unwrap()
            .wait_for_line(JOIN, |l| l.contains(&holds))
            .is_some()
    );
    wait_route(&a, &cidr_b, b.ip);
    assert!(traffic::ping(pod_a.netns(), IpAddr::V4(pod_b.ip()), 2));

    // B leaves while A's agent is down too: A, back, finds B in its
    // datapath but not in etcd, and takes it out.
    drop(agent_a);
    drop(agent_b);
    let gone = wait_until(LEAVE, || {
        underlay.subnets().iter().all(|(c, _)| *c != cidr_b)
    });
    assert!(gone, "{:?}", underlay.subnets());
    assert!(a.route_to(&cidr_b).contains(&b.ip.to_string()));
    let agent_a = a.start_agent(&[]);
    assert!(
        agent_a
            .wait_for_line(JOIN, |l| l.contains(&removed))
            .is_some(),
        "{}",
        agent_a.stderr().join("\n")
    );
    assert_eq!(a.route_to(&cidr_b).trim(), "");
    assert_eq!(a.wait_pod_cidr(JOIN), cidr_a);
}

#[test]
fn etcd_down_keeps_pods_talking_and_starting_and_agents_catch_up() {
    let mut underlay = Underlay::new();
    let (a, b, c) = (
        underlay.add_node(0),
        underlay.add_node(0),
        underlay.add_node(0),
    );
    let agent_a = a.start_agent(&[]);
    let agent_b = b.start_agent(&[]);
    let (cidr_a, cidr_b) = (a.wait_pod_cidr(JOIN), b.wait_pod_cidr(JOIN));
    wait_route(&a, &cidr_b, b.ip);
    wait_route(&b, &cidr_a, a.ip);
    let pod_a = a.node.add_pod_with(a.conf());
    let pod_b = b.node.add_pod_with(b.conf());

    underlay.etcd.stop();
    for agent in [&agent_a, &agent_b] {
        assert!(
            agent
                .wait_for_line(JOIN, |l| l.contains("etcd connection lost"))
                .is_some(),
            "{}",
            agent.stderr().join("\n")
        );
    }
    // Longer than the TTL: nothing expires while etcd is down.
    std::thread::sleep(Duration::from_secs(LEASE_TTL + 1));
    pods_talk(&pod_a, &pod_b);
    let late = a.node.add_pod_with(a.conf());
    assert!(in_cidr(late.ip(), &cidr_a), "{}", late.ip());
    assert!(traffic::ping(late.netns(), IpAddr::V4(pod_b.ip()), 2));

    // Back: C joins, A and B learn it.
    underlay.etcd.restart();
    let _agent_c = c.start_agent(&[]);
    let cidr_c = c.wait_pod_cidr(JOIN);
    wait_route(&a, &cidr_c, c.ip);
    wait_route(&b, &cidr_c, c.ip);
    let pod_c = c.node.add_pod_with(c.conf());
    pods_talk(&pod_c, &pod_a);
    assert!(traffic::ping(pod_c.netns(), IpAddr::V4(pod_b.ip()), 2));
    // Nobody lost its CIDR or a peer on the way.
    assert_eq!(a.wait_pod_cidr(JOIN), cidr_a);
    assert_eq!(b.wait_pod_cidr(JOIN), cidr_b);
    for agent in [&agent_a, &agent_b] {
        assert!(
            !agent
                .stderr()
                .iter()
                .any(|l| l.contains("cluster: peer") && l.contains("removed")),
            "{}",
            agent.stderr().join("\n")
        );
    }
}

#[test]
fn an_agent_whose_revision_was_compacted_lists_again() {
    let mut underlay = Underlay::new();
    let (a, b, c) = (
        underlay.add_node(0),
        underlay.add_node(0),
        underlay.add_node(0),
    );
    let agent_a = a.start_agent(&[]);
    let _agent_b = b.start_agent(&[]);
    let cidr_a = a.wait_pod_cidr(JOIN);
    let cidr_b = b.wait_pod_cidr(JOIN);
    wait_route(&a, &cidr_b, b.ip);

    // A hangs while etcd restarts, C joins and the history is compacted:
    // A's next watch starts at a revision etcd no longer has.
    agent_a.pause();
    underlay.etcd.stop();
    underlay.etcd.restart();
    let _agent_c = c.start_agent(&[]);
    let cidr_c = c.wait_pod_cidr(JOIN);
    // One more revision: compacting at C's would keep C's own (a watch
    // from exactly the compaction revision is still served).
    underlay.etcd.etcdctl(&["put", "/unrelated", "x"]);
    underlay.etcd.compact();
    agent_a.resume();

    assert!(
        agent_a
            .wait_for_line(JOIN, |l| l.contains("was compacted"))
            .is_some(),
        "{}",
        agent_a.stderr().join("\n")
    );
    wait_route(&a, &cidr_c, c.ip);
    wait_route(&a, &cidr_b, b.ip);
    assert_eq!(a.wait_pod_cidr(JOIN), cidr_a);
    wait_route(&c, &cidr_a, a.ip);
}

#[test]
fn concurrent_joins_never_share_a_cidr_and_collisions_are_refused() {
    // Four /24s for four nodes joining at once.
    const SMALL: &str = "10.244.0.0/22";
    let underlay = Underlay::new();
    let nodes: Vec<ClusterNode> = (0..4).map(|_| underlay.add_node(0)).collect();
    let _agents: Vec<Agent> = std::thread::scope(|scope| {
        let starting: Vec<_> = nodes
            .iter()
            .map(|n| scope.spawn(|| n.start_agent_in(SMALL, &[])))
            .collect();
        starting.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut cidrs: Vec<String> = nodes.iter().map(|n| n.wait_pod_cidr(JOIN)).collect();
    let records = underlay.subnets();
    cidrs.sort();
    cidrs.dedup();
    assert_eq!(cidrs.len(), 4, "two nodes share a CIDR: {records:?}");
    let mut holders: Vec<String> = records
        .iter()
        .map(|(_, r)| r["nodeName"].as_str().unwrap().to_string())
        .collect();
    holders.sort();
    let mut names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    assert_eq!(holders, names, "{records:?}");

    // A fifth finds none free; a node given a held CIDR is refused.
    let fifth = underlay.add_node(0);
    let mut agent = fifth.start_agent_in(SMALL, &[]);
    assert!(agent.wait_exit(JOIN).is_some_and(|s| !s.success()));
    assert!(
        agent
            .stderr()
            .iter()
            .any(|l| l.contains("no free /24 left in the cluster CIDR 10.244.0.0/22")),
        "{}",
        agent.stderr().join("\n")
    );
    let sixth = underlay.add_node(0);
    let mut agent = sixth.start_agent_in(SMALL, &["--pod-cidr", &cidrs[0]]);
    assert!(agent.wait_exit(JOIN).is_some_and(|s| !s.success()));
    let held = format!("pod CIDR {} is held by node", cidrs[0]);
    assert!(
        agent.stderr().iter().any(|l| l.contains(&held)),
        "{}",
        agent.stderr().join("\n")
    );
    assert_eq!(underlay.subnets().len(), 4);
}
