//! Cluster mode: agents in node namespaces join a cluster in etcd, lease
//! pod CIDRs, and program each other as peers; pods take their addresses
//! from the node's lease (`usePodCidr`). Four nodes on two segments behind
//! a router (native routes on a segment, the VXLAN overlay across it), and
//! the failure cases: a node that leaves, an agent restart, etcd down and
//! back, a compacted watch, concurrent joins and colliding CIDRs. Tables
//! over the cluster's families: IPv4, and dual stack (every node leases a
//! CIDR of each family; IPv6 pods go natively via the peers' IPv6 underlay
//! addresses on a segment and through the tunnel over IPv4 across it).

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use cni_ebpf_tests::{
    Family, Pod,
    agent::Agent,
    cluster::{CLUSTER_CIDR, ClusterNode, DUAL_STACK_CIDRS, LEASE_TTL, Underlay},
    ext::{PeerClient, PeerServer, UdpEcho, udp_request, wait_until},
    traffic,
};

/// The cluster's families: IPv4, and dual stack.
const TABLE: [&[Family]; 2] = [&[Family::V4], &Family::ALL];

/// `--cluster-cidr` for a cluster of `families`.
fn cluster_cidrs(families: &[Family]) -> &'static str {
    if families.contains(&Family::V6) {
        DUAL_STACK_CIDRS
    } else {
        CLUSTER_CIDR
    }
}

/// How long joining and learning a peer may take.
pub(crate) const JOIN: Duration = Duration::from_secs(20);
/// How long a stopped node may stay in the others' datapath: its TTL and
/// the time etcd takes to notice, with room for a busy machine.
const LEAVE: Duration = Duration::from_secs(LEASE_TTL + 10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const TEN_MB: u64 = 10 << 20;

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let net: IpAddr = net.parse().unwrap();
    let len: u32 = len.parse().unwrap();
    // Both families as the top bits of a u128.
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => u128::from(v4.to_bits()) << 96,
        IpAddr::V6(v6) => v6.to_bits(),
    };
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    ip.is_ipv4() == net.is_ipv4() && bits(ip) & mask == bits(net) & mask
}

/// The family of a CIDR's text.
fn family_of(cidr: &str) -> Family {
    if cidr.contains(':') {
        Family::V6
    } else {
        Family::V4
    }
}

/// Waits until `agent` logs that it programmed `other` (at `cidr`) in
/// `mode`: natively via its underlay address of the CIDR's family, through
/// the tunnel to its IPv4 one.
pub(crate) fn wait_peer(agent: &Agent, other: &ClusterNode, cidr: &str, mode: &str) {
    let via = match mode {
        "native" => other.ip_of(family_of(cidr)),
        _ => other.ip.into(),
    };
    let line = format!("peer {} {cidr} via {via} ({mode})", other.name);
    assert!(
        agent.wait_for_line(JOIN, |l| l.contains(&line)).is_some(),
        "no `{line}` within {JOIN:?}:\n{}",
        agent.stderr().join("\n")
    );
}

/// Waits until `node` routes `cidr` via `gateway`.
fn wait_route(node: &ClusterNode, cidr: &str, gateway: IpAddr) {
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
/// pod's own source address, and a UDP exchange, over `family`.
pub(crate) fn pods_talk(a: &Pod<'_>, b: &Pod<'_>, family: Family) {
    let (a_ip, b_ip) = (a.addr(family), b.addr(family));
    for (from, to) in [(a, b), (b, a)] {
        assert!(
            traffic::ping(from.netns(), to.addr(family), 3),
            "ping {} -> {} failed; drops {:?} and {:?}; verdicts {:?} and {:?}",
            from.addr(family),
            to.addr(family),
            nonzero(from.node().drops()),
            nonzero(to.node().drops()),
            nonzero(from.node().stats()),
            nonzero(to.node().stats()),
        );
        transfer(from, to, family);
    }
    let echo =
        UdpEcho::start(b.netns(), SocketAddr::new(b_ip, 0), false).expect("starting the UDP echo");
    let (seen, payload) = a
        .netns()
        .run(|| {
            let socket = UdpSocket::bind(SocketAddr::new(a_ip, 0))?;
            socket.connect(echo.addr())?;
            udp_request(&socket, b"across nodes", CONNECT_TIMEOUT)
        })
        .unwrap_or_else(|e| panic!("UDP {a_ip} -> {b_ip}: {e}"));
    assert_eq!(seen.ip(), a_ip, "the echo saw {seen}");
    assert_eq!(payload, b"across nodes");
}

/// The rows of a counter table that counted something.
fn nonzero(rows: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    rows.into_iter()
        .filter(|r| r["packets"].as_u64() > Some(0))
        .collect()
}

/// [`pods_talk`] over every family of the pods.
fn pods_talk_over(a: &Pod<'_>, b: &Pod<'_>, families: &[Family]) {
    for &family in families {
        pods_talk(a, b, family);
    }
}

fn transfer(from: &Pod<'_>, to: &Pod<'_>, family: Family) {
    let server = PeerServer::start(to.netns(), SocketAddr::new(to.addr(family), 0))
        .expect("starting the server in the pod");
    let client = from
        .netns()
        .run(|| PeerClient::connect(server.addr(), CONNECT_TIMEOUT))
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.addr(family), server.addr()));
    let local = client.stream.local_addr().unwrap();
    assert_eq!(client.seen_as, local, "{} saw {}", to.ip(), client.seen_as);
    let exchange = client
        .exchange(TEN_MB, u64::from(local.port()))
        .expect("exchange");
    assert!(
        exchange.intact(),
        "{} -> {}: {exchange:?}",
        from.addr(family),
        to.addr(family)
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
    for families in TABLE {
        four_nodes_on_two_segments_reach_every_pod_in(families);
    }
}

fn four_nodes_on_two_segments_reach_every_pod_in(families: &[Family]) {
    let underlay = Underlay::new();
    let nodes: Vec<ClusterNode> = [0, 0, 1, 1].map(|s| underlay.add_node(s)).into();
    let agents: Vec<Agent> = nodes
        .iter()
        .map(|n| n.start_agent_in(cluster_cidrs(families), &[]))
        .collect();
    // cidrs[family][node]
    let cidrs: Vec<Vec<String>> = families
        .iter()
        .map(|&f| nodes.iter().map(|n| n.wait_pod_cidr_of(f, JOIN)).collect())
        .collect();
    let records = underlay.subnets();
    assert_eq!(records.len(), 4 * families.len(), "{records:?}");
    for (f, &family) in families.iter().enumerate() {
        let mut distinct = cidrs[f].clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{family:?}: {:?}", cidrs[f]);
        for (node, cidr) in nodes.iter().zip(&cidrs[f]) {
            let record = &records.iter().find(|(c, _)| c == cidr).unwrap().1;
            assert_eq!(record["nodeName"], node.name.as_str());
            assert_eq!(record["underlay"], node.ip.to_string());
            assert_eq!(record["underlayV6"], node.ip6.to_string());
        }
    }
    for node in &nodes {
        let state = node.node_state().unwrap();
        // auto may tunnel: pods leave room for the VXLAN header.
        assert_eq!(state["mtu"], 1450, "{state}");
        assert_eq!(node.node.netns().sysctl("net.ipv4.ip_forward"), "0");
        assert_eq!(
            node.node.netns().sysctl("net.ipv6.conf.all.forwarding"),
            "0"
        );
    }

    let pods: Vec<Pod<'_>> = nodes
        .iter()
        .map(|n| n.node.add_pod_with(n.conf_of(families)))
        .collect();
    for (i, (pod, node)) in pods.iter().zip(&nodes).enumerate() {
        for (f, &family) in families.iter().enumerate() {
            let ip = pod.addr(family);
            assert!(in_cidr(ip, &cidrs[f][i]), "{}: pod got {ip}", node.name);
        }
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
            for (f, &family) in families.iter().enumerate() {
                wait_peer(&agents[x], &nodes[y], &cidrs[f][y], "native");
                wait_route(&nodes[x], &cidrs[f][y], nodes[y].ip_of(family));
            }
        }
        pods_talk_over(&pods[i], &pods[j], families);
    }
    // Across the router: the overlay (over the IPv4 underlay).
    for (i, j) in pairs(false) {
        for (x, y) in [(i, j), (j, i)] {
            for cidrs in &cidrs {
                wait_peer(&agents[x], &nodes[y], &cidrs[y], "vxlan");
            }
        }
        pods_talk_over(&pods[i], &pods[j], families);
    }
}

#[test]
fn a_node_that_stops_is_forgotten_after_its_ttl_and_keeps_its_cidr_when_back() {
    for families in TABLE {
        a_node_that_stops_is_forgotten_after_its_ttl_and_keeps_its_cidr_when_back_in(families);
    }
}

fn a_node_that_stops_is_forgotten_after_its_ttl_and_keeps_its_cidr_when_back_in(
    families: &[Family],
) {
    let underlay = Underlay::new();
    let cidr_flag = cluster_cidrs(families);
    let (a, b) = (underlay.add_node(0), underlay.add_node(0));
    let agent_a = a.start_agent_in(cidr_flag, &[]);
    let mut agent_b = Some(b.start_agent_in(cidr_flag, &[]));
    // Per family: (A's CIDR, B's CIDR).
    let cidrs: Vec<(Family, String, String)> = families
        .iter()
        .map(|&f| (f, a.wait_pod_cidr_of(f, JOIN), b.wait_pod_cidr_of(f, JOIN)))
        .collect();
    for (family, cidr_a, cidr_b) in &cidrs {
        wait_route(&a, cidr_b, b.ip_of(*family));
        wait_route(&b, cidr_a, a.ip_of(*family));
    }
    let leased = |node: &ClusterNode, cidr: &str| {
        underlay
            .subnets()
            .iter()
            .any(|(c, r)| c == cidr && r["nodeName"] == node.name.as_str())
    };
    for (_, cidr_a, cidr_b) in &cidrs {
        assert!(
            leased(&a, cidr_a) && leased(&b, cidr_b),
            "{:?}",
            underlay.subnets()
        );
    }
    let pod_a = a.node.add_pod_with(a.conf_of(families));
    let pod_b = b.node.add_pod_with(b.conf_of(families));
    let ping_b = |count| {
        families
            .iter()
            .all(|&f| traffic::ping(pod_a.netns(), pod_b.addr(f), count))
    };
    assert!(ping_b(2));

    // A restart within the TTL takes the same keys back.
    drop(agent_b.take());
    let restarted = b.start_agent_in(cidr_flag, &[]);
    let holds = format!("node {} holds {}", b.name, cidrs[0].2);
    let holds_line = restarted
        .wait_for_line(JOIN, |l| l.contains(&holds))
        .unwrap_or_else(|| panic!("{}", restarted.stderr().join("\n")));
    for (family, _, cidr_b) in &cidrs {
        assert!(holds_line.contains(cidr_b.as_str()), "{holds_line}");
        assert_eq!(&b.wait_pod_cidr_of(*family, JOIN), cidr_b);
    }

    // Stopped: the leases run out, both keys leave etcd, and A takes B out
    // of its datapath for each family.
    drop(restarted);
    for (_, _, cidr_b) in &cidrs {
        let removed = format!("peer {cidr_b} removed");
        assert!(
            agent_a
                .wait_for_line(LEAVE, |l| l.contains(&removed))
                .is_some(),
            "{}",
            agent_a.stderr().join("\n")
        );
        assert_eq!(
            a.route_to(cidr_b).trim(),
            "",
            "the route to B's pods stayed"
        );
        assert!(!leased(&b, cidr_b), "{:?}", underlay.subnets());
    }
    // The pods on B keep working on their own node meanwhile, and B's
    // agent, back after its lease expired, takes its old CIDRs from its
    // state file.
    agent_b = Some(b.start_agent_in(cidr_flag, &[]));
    assert!(
        agent_b
            .as_ref()
            .unwrap()
            .wait_for_line(JOIN, |l| l.contains(&holds))
            .is_some()
    );
    for (family, _, cidr_b) in &cidrs {
        wait_route(&a, cidr_b, b.ip_of(*family));
        assert!(leased(&b, cidr_b), "{:?}", underlay.subnets());
    }
    assert!(ping_b(2));

    // B leaves while A's agent is down too: A, back, finds B in its
    // datapath but not in etcd, and takes it out.
    drop(agent_a);
    drop(agent_b);
    let gone = wait_until(LEAVE, || cidrs.iter().all(|(_, _, c)| !leased(&b, c)));
    assert!(gone, "{:?}", underlay.subnets());
    for (family, _, cidr_b) in &cidrs {
        assert!(a.route_to(cidr_b).contains(&b.ip_of(*family).to_string()));
    }
    let agent_a = a.start_agent_in(cidr_flag, &[]);
    for (family, cidr_a, cidr_b) in &cidrs {
        let removed = format!("peer {cidr_b} removed");
        assert!(
            agent_a
                .wait_for_line(JOIN, |l| l.contains(&removed))
                .is_some(),
            "{}",
            agent_a.stderr().join("\n")
        );
        assert_eq!(a.route_to(cidr_b).trim(), "");
        assert_eq!(&a.wait_pod_cidr_of(*family, JOIN), cidr_a);
    }
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
    wait_route(&a, &cidr_b, b.ip.into());
    wait_route(&b, &cidr_a, a.ip.into());
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
    pods_talk(&pod_a, &pod_b, Family::V4);
    let late = a.node.add_pod_with(a.conf());
    assert!(in_cidr(IpAddr::V4(late.ip()), &cidr_a), "{}", late.ip());
    assert!(traffic::ping(late.netns(), IpAddr::V4(pod_b.ip()), 2));

    // Back: C joins, A and B learn it.
    underlay.etcd.restart();
    let _agent_c = c.start_agent(&[]);
    let cidr_c = c.wait_pod_cidr(JOIN);
    wait_route(&a, &cidr_c, c.ip.into());
    wait_route(&b, &cidr_c, c.ip.into());
    let pod_c = c.node.add_pod_with(c.conf());
    pods_talk(&pod_c, &pod_a, Family::V4);
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
    wait_route(&a, &cidr_b, b.ip.into());

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
    wait_route(&a, &cidr_c, c.ip.into());
    wait_route(&a, &cidr_b, b.ip.into());
    assert_eq!(a.wait_pod_cidr(JOIN), cidr_a);
    wait_route(&c, &cidr_a, a.ip.into());
}

#[test]
fn concurrent_joins_never_share_a_cidr_and_collisions_are_refused() {
    for families in TABLE {
        concurrent_joins_never_share_a_cidr_and_collisions_are_refused_in(families);
    }
}

fn concurrent_joins_never_share_a_cidr_and_collisions_are_refused_in(families: &[Family]) {
    // Four node CIDRs for four nodes joining at once: IPv4 /24s, or (dual
    // stack) IPv6 /64s beside eight IPv4 ones, so that a fifth node finds
    // an IPv4 CIDR but no IPv6 one.
    let dual_stack = families.contains(&Family::V6);
    let small = if dual_stack {
        "10.244.0.0/21,fd00:10:244::/62"
    } else {
        "10.244.0.0/22"
    };
    let underlay = Underlay::new();
    let nodes: Vec<ClusterNode> = (0..4).map(|_| underlay.add_node(0)).collect();
    let _agents: Vec<Agent> = std::thread::scope(|scope| {
        let starting: Vec<_> = nodes
            .iter()
            .map(|n| scope.spawn(|| n.start_agent_in(small, &[])))
            .collect();
        starting.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let records = underlay.subnets();
    let mut held = Vec::new();
    for &family in families {
        let mut cidrs: Vec<String> = nodes
            .iter()
            .map(|n| n.wait_pod_cidr_of(family, JOIN))
            .collect();
        cidrs.sort();
        cidrs.dedup();
        assert_eq!(cidrs.len(), 4, "two nodes share a CIDR: {records:?}");
        held.push(cidrs);
    }
    let records = underlay.subnets();
    assert_eq!(records.len(), 4 * families.len(), "{records:?}");
    let mut holders: Vec<String> = records
        .iter()
        .map(|(_, r)| r["nodeName"].as_str().unwrap().to_string())
        .collect();
    holders.sort();
    let mut names: Vec<String> = nodes
        .iter()
        .flat_map(|n| families.iter().map(|_| n.name.clone()))
        .collect();
    names.sort();
    assert_eq!(holders, names, "{records:?}");

    // A fifth finds none free (and, dual-stack, holds no IPv4 CIDR
    // either); a node given a held CIDR of either family is refused.
    let fifth = underlay.add_node(0);
    let mut agent = fifth.start_agent_in(small, &[]);
    assert!(agent.wait_exit(JOIN).is_some_and(|s| !s.success()));
    let exhausted = if dual_stack {
        "no free /64 left in the cluster CIDR fd00:10:244::/62"
    } else {
        "no free /24 left in the cluster CIDR 10.244.0.0/22"
    };
    assert!(
        agent.stderr().iter().any(|l| l.contains(exhausted)),
        "{}",
        agent.stderr().join("\n")
    );
    // Revoked on the way out, not left to expire: the IPv4 key it took
    // is gone as soon as it ended.
    let records = underlay.subnets();
    assert_eq!(records.len(), 4 * families.len(), "{records:?}");
    for cidrs in &held {
        let sixth = underlay.add_node(0);
        let mut agent = sixth.start_agent_in(small, &["--pod-cidr", &cidrs[0]]);
        assert!(agent.wait_exit(JOIN).is_some_and(|s| !s.success()));
        let refused = format!("pod CIDR {} is held by node", cidrs[0]);
        assert!(
            agent.stderr().iter().any(|l| l.contains(&refused)),
            "{}",
            agent.stderr().join("\n")
        );
        let records = underlay.subnets();
        assert_eq!(records.len(), 4 * families.len(), "{records:?}");
    }
}
