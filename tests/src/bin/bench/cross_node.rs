//! Pods on two nodes (issue 15): a client pod on node A, its server pod on
//! node B, the nodes joined by an underlay veth pair (one L2 segment,
//! MTU 1500). Every row has its own pair of nodes, built alike.
//!
//! Rows: **limit** = two bare namespaces joined by the same kind of
//! underlay veth, node ↔ node on their underlay addresses (no pods, no
//! datapath); **cni-ebpf native** = our plugin, the other node's pod CIDR
//! programmed with `cni-ebpfd peers add --mode native` (a route via the
//! peer's underlay address, `bpf_redirect_neigh` out, `from_uplink` into
//! the pod), nodes `ip_forward=0`; **host-gw** = reference `bridge` +
//! `host-local`, a static route to the other node's pod CIDR via its
//! underlay address, nodes `ip_forward=1` (flannel's host-gw backend);
//! **cni-ebpf vxlan** = our plugin with `cni-ebpfd peers tunnel` and
//! `peers add --mode vxlan` (collect-metadata device, `from_pod` sets the
//! tunnel key, `from_tunnel` delivers into the pod), pods' MTU 1450;
//! **flannel vxlan** = reference `bridge` + `host-local` (MTU 1450) and a
//! kernel VXLAN device `flannel.1` set up as flannel's vxlan backend does
//! (`nolearning`, port 8472, the node's `x.y.z.0/32`, per peer an `onlink`
//! route, a permanent neighbour and an FDB entry), nodes `ip_forward=1`.
//!
//! Neither the bridge rows nor ours masquerade pod ↔ pod: ours has
//! `ipMasq` with the cluster CIDR in `nonMasqueradeCIDRs`, the bridges run
//! with `ipMasq: false` (as flannel's CNI delegates to bridge; flannel's
//! own POSTROUTING masquerade rules are not installed here).

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use cni_ebpf_tests::{
    Netns, traffic,
    veth::{self, VethEnd},
};
use serde_json::{Value, json};

use crate::{
    Plan,
    chain::{Chain, ChainedPod},
    cni::PluginNode,
    flows::{self, Path},
    masquerade::AgentGc,
    metric::Metric,
    topology::Contender,
};

pub const SCENARIO: &str = "cross-node";
pub const HEADING: &str = "pod on node A → pod on node B over one L2 underlay (native and VXLAN)";
pub const NOTE: &str = "Rows, each on its own pair of node namespaces joined by an underlay veth \
pair (MTU 1500): **limit** = node ↔ node on the underlay addresses (no pods, no datapath); \
**cni-ebpf native** = our plugin, peer programmed with `cni-ebpfd peers add --mode native`, \
`ip_forward=0`; **host-gw** = reference `bridge` + `host-local` with a static route to the \
other node's pod CIDR via its underlay address, `ip_forward=1`; **cni-ebpf vxlan** = our \
plugin with `cni-ebpfd peers tunnel` + `peers add --mode vxlan`, pods' MTU 1450, \
`ip_forward=0`; **flannel vxlan** = reference `bridge` (MTU 1450) and a kernel VXLAN device \
`flannel.1` with the route, permanent neighbour and FDB entry flannel's vxlan backend \
writes, `ip_forward=1`. No masquerade between pods. \"vs counterpart\" is the paired ratio \
of cni-ebpf native to host-gw and of cni-ebpf vxlan to flannel vxlan.";

const LIMIT: Contender = Contender::Limit;
const NATIVE: Contender = Contender::Named("cni-ebpf native");
const HOST_GW: Contender = Contender::Named("host-gw");
const VXLAN: Contender = Contender::Named("cni-ebpf vxlan");
const FLANNEL: Contender = Contender::Named("flannel vxlan");

/// cni-ebpf native vs host-gw, cni-ebpf vxlan vs flannel vxlan.
pub const COUNTERPARTS: [(Contender, Contender); 2] = [(NATIVE, HOST_GW), (VXLAN, FLANNEL)];

/// The underlay device's name in every node.
const UNDERLAY: &str = "underlay";
const UNDERLAY_MTU: u32 = 1500;
/// VXLAN's 50 bytes of headers (outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8).
const TUNNEL_OVERHEAD: u32 = 50;
const VXLAN_PORT: &str = "8472";

/// One row's addresses: `10.<underlay>.0.{1,2}` on the underlay, pod CIDRs
/// `10.<pods>.{1,2}.0/24` out of the cluster CIDR `10.<pods>.0.0/16`.
#[derive(Clone, Copy)]
struct Addresses {
    underlay: u8,
    pods: u8,
}

impl Addresses {
    fn underlay_ip(self, node: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.underlay, 0, node)
    }

    fn pod_cidr(self, node: u8) -> String {
        format!("10.{}.{node}.0/24", self.pods)
    }

    fn cluster_cidr(self) -> String {
        format!("10.{}.0.0/16", self.pods)
    }

    /// The first address of a node's pod CIDR (the pods' gateway, never
    /// handed out by host-local): our tunnel device's address.
    fn gateway(self, node: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.pods, node, 1)
    }

    /// flannel's VTEP address: the pod CIDR's network address, as a /32.
    fn vtep_ip(self, node: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.pods, node, 0)
    }
}

const LIMIT_ADDRESSES: Addresses = Addresses {
    underlay: 230,
    pods: 240,
};
const NATIVE_ADDRESSES: Addresses = Addresses {
    underlay: 231,
    pods: 241,
};
const HOST_GW_ADDRESSES: Addresses = Addresses {
    underlay: 232,
    pods: 242,
};
const VXLAN_ADDRESSES: Addresses = Addresses {
    underlay: 233,
    pods: 243,
};
const FLANNEL_ADDRESSES: Addresses = Addresses {
    underlay: 234,
    pods: 245,
};

/// Joins `a` and `b` by a veth pair named [`UNDERLAY`] on both sides with
/// `plan`'s underlay addresses, both up.
fn underlay(a: &Netns, b: &Netns, plan: Addresses) {
    veth::add_veth(
        VethEnd::new(a, UNDERLAY, &format!("{}/24", plan.underlay_ip(1))),
        VethEnd::new(b, UNDERLAY, &format!("{}/24", plan.underlay_ip(2))),
        Some(UNDERLAY_MTU),
    );
}

/// `cni-ebpfd --bpffs-root <node's root> <args>` in `node`'s namespace.
fn agent(node: &PluginNode, args: &[&str]) -> Result<String> {
    let ebpf = node.ebpf_node().context("not a cni-ebpf node")?;
    let output = ebpf.agent_output(args);
    if !output.status.success() {
        bail!(
            "cni-ebpfd {}: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Our node's config keys: the underlay as uplink, pod ↔ pod unmasqueraded.
fn ours_conf(plan: Addresses, mtu: u32) -> Value {
    json!({
        "uplink": UNDERLAY,
        "ipMasq": true,
        "nonMasqueradeCIDRs": [plan.cluster_cidr()],
        "mtu": mtu,
    })
}

/// The reference bridge's keys: no masquerade (flannel's delegate).
fn bridge_conf(mtu: u32) -> Value {
    json!({ "ipMasq": false, "mtu": mtu })
}

fn pods<'n>(
    nodes: &'n [PluginNode; 2],
    chains: [Chain; 2],
    role: &str,
) -> Result<(ChainedPod<'n>, ChainedPod<'n>)> {
    let [a_chain, b_chain] = chains;
    Ok((
        ChainedPod::new(&nodes[0], &a_chain, role)?,
        ChainedPod::new(&nodes[1], &b_chain, role)?,
    ))
}

/// Our two nodes on `plan`'s underlay, each with its pod CIDR.
fn ours_nodes(plan: Addresses) -> [PluginNode; 2] {
    let nodes = [1, 2].map(|n| PluginNode::cni_ebpf(&plan.pod_cidr(n)));
    underlay(nodes[0].netns(), nodes[1].netns(), plan);
    nodes
}

fn bridge_nodes(plan: Addresses) -> Result<[PluginNode; 2]> {
    let a = PluginNode::reference("bridge", &plan.pod_cidr(1))?;
    let b = PluginNode::reference("bridge", &plan.pod_cidr(2))?;
    underlay(a.netns(), b.netns(), plan);
    Ok([a, b])
}

/// `node` learns the other node (1 or 2) as a peer of `mode`.
fn add_peer(node: &PluginNode, plan: Addresses, other: u8, mode: &str) -> Result<()> {
    agent(
        node,
        &[
            "peers",
            "add",
            "--pod-cidr",
            &plan.pod_cidr(other),
            "--underlay",
            &plan.underlay_ip(other).to_string(),
            "--mode",
            mode,
        ],
    )
    .map(drop)
}

/// Native peers: each node routes the other's pod CIDR via its underlay
/// address (what `nodeRoutes` or cluster mode's native backend program).
fn native_peers(nodes: &[PluginNode; 2], plan: Addresses) -> Result<()> {
    for (node, other) in nodes.iter().zip([2, 1]) {
        add_peer(node, plan, other, "native")?;
    }
    Ok(())
}

/// Each node's tunnel device, and the other node as a VXLAN peer (as the
/// tunnel tests and cluster mode's vxlan backend do).
fn vxlan_peers(nodes: &[PluginNode; 2], plan: Addresses) -> Result<()> {
    for (node, (own, other)) in nodes.iter().zip([(1, 2), (2, 1)]) {
        agent(
            node,
            &[
                "peers",
                "tunnel",
                "--local",
                &plan.underlay_ip(own).to_string(),
                "--underlay-dev",
                UNDERLAY,
                "--underlay-mtu",
                &UNDERLAY_MTU.to_string(),
                "--address",
                &plan.gateway(own).to_string(),
            ],
        )?;
        add_peer(node, plan, other, "vxlan")?;
    }
    Ok(())
}

/// host-gw: a static route to the other node's pod CIDR via its address.
fn host_gw_routes(nodes: &[PluginNode; 2], plan: Addresses) {
    for (node, other) in nodes.iter().zip([2, 1]) {
        node.netns().ip(&[
            "route",
            "add",
            &plan.pod_cidr(other),
            "via",
            &plan.underlay_ip(other).to_string(),
            "dev",
            UNDERLAY,
        ]);
    }
}

/// flannel.1's MAC on node `node` (fixed, so the peer's entries can name it).
fn vtep_mac(node: u8) -> String {
    format!("0e:fa:00:00:00:{node:02x}")
}

/// flannel's vxlan backend by hand: the device, its address, and per peer
/// an onlink route, a permanent neighbour and an FDB entry.
fn flannel_vxlan(nodes: &[PluginNode; 2], plan: Addresses) {
    for (node, own) in nodes.iter().zip([1, 2]) {
        let ns = node.netns();
        ns.ip(&[
            "link",
            "add",
            "flannel.1",
            "address",
            &vtep_mac(own),
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &plan.underlay_ip(own).to_string(),
            "dev",
            UNDERLAY,
            "dstport",
            VXLAN_PORT,
            "nolearning",
        ]);
        ns.ip(&[
            "link",
            "set",
            "flannel.1",
            "mtu",
            &(UNDERLAY_MTU - TUNNEL_OVERHEAD).to_string(),
        ]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/32", plan.vtep_ip(own)),
            "dev",
            "flannel.1",
        ]);
        ns.ip(&["link", "set", "flannel.1", "up"]);
    }
    for (node, other) in nodes.iter().zip([2, 1]) {
        let ns = node.netns();
        let peer_vtep = plan.vtep_ip(other).to_string();
        ns.ip(&[
            "route",
            "add",
            &plan.pod_cidr(other),
            "via",
            &peer_vtep,
            "dev",
            "flannel.1",
            "onlink",
        ]);
        ns.ip(&[
            "neigh",
            "add",
            &peer_vtep,
            "lladdr",
            &vtep_mac(other),
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ]);
        ns.exec_ok(
            "bridge",
            &[
                "fdb",
                "append",
                &vtep_mac(other),
                "dev",
                "flannel.1",
                "dst",
                &plan.underlay_ip(other).to_string(),
            ],
        );
    }
}

pub fn run(plan: &Plan) -> Result<Vec<Metric>> {
    // limit: node ↔ node, no pods.
    let limit_a = Netns::with_loopback("bench-node");
    let limit_b = Netns::with_loopback("bench-node");
    underlay(&limit_a, &limit_b, LIMIT_ADDRESSES);

    let native_nodes = ours_nodes(NATIVE_ADDRESSES);
    let (native_client, native_server) = pods(
        &native_nodes,
        [0, 1].map(|i| Chain::new(&native_nodes[i], ours_conf(NATIVE_ADDRESSES, UNDERLAY_MTU))),
        "bench-native",
    )?;
    native_peers(&native_nodes, NATIVE_ADDRESSES)?;

    let host_gw_nodes = bridge_nodes(HOST_GW_ADDRESSES)?;
    let (host_gw_client, host_gw_server) = pods(
        &host_gw_nodes,
        [0, 1].map(|i| Chain::new(&host_gw_nodes[i], bridge_conf(UNDERLAY_MTU))),
        "bench-host-gw",
    )?;
    host_gw_routes(&host_gw_nodes, HOST_GW_ADDRESSES);

    let pod_mtu = UNDERLAY_MTU - TUNNEL_OVERHEAD;
    let vxlan_nodes = ours_nodes(VXLAN_ADDRESSES);
    let (vxlan_client, vxlan_server) = pods(
        &vxlan_nodes,
        [0, 1].map(|i| Chain::new(&vxlan_nodes[i], ours_conf(VXLAN_ADDRESSES, pod_mtu))),
        "bench-vxlan",
    )?;
    vxlan_peers(&vxlan_nodes, VXLAN_ADDRESSES)?;

    let flannel_nodes = bridge_nodes(FLANNEL_ADDRESSES)?;
    let (flannel_client, flannel_server) = pods(
        &flannel_nodes,
        [0, 1].map(|i| Chain::new(&flannel_nodes[i], bridge_conf(pod_mtu))),
        "bench-flannel",
    )?;
    flannel_vxlan(&flannel_nodes, FLANNEL_ADDRESSES);

    let paths = [
        Path {
            row: LIMIT,
            client: &limit_a,
            server: &limit_b,
            server_ip: LIMIT_ADDRESSES.underlay_ip(2).into(),
            connect_ip: LIMIT_ADDRESSES.underlay_ip(2).into(),
            mapped: None,
        },
        pod_to_pod(NATIVE, &native_client, &native_server),
        pod_to_pod(HOST_GW, &host_gw_client, &host_gw_server),
        pod_to_pod(VXLAN, &vxlan_client, &vxlan_server),
        pod_to_pod(FLANNEL, &flannel_client, &flannel_server),
    ];
    for path in &paths {
        if !traffic::ping(path.client, path.connect_ip, 2) {
            bail!(
                "{}: the client does not reach {}",
                path.row.name(),
                path.connect_ip
            );
        }
    }
    check_datapaths(&native_nodes, &vxlan_nodes, &flannel_nodes)?;
    let gc = AgentGc {
        nodes: native_nodes
            .iter()
            .map(|n| (NATIVE, n))
            .chain(vxlan_nodes.iter().map(|n| (VXLAN, n)))
            .collect(),
    };
    let mut metrics = flows::measure(SCENARIO, "", &paths, LIMIT, plan, &gc)?;
    for metric in &mut metrics {
        metric.counterparts = COUNTERPARTS.to_vec();
    }
    Ok(metrics)
}

/// After the pings: each row's packets took the path it is named for
/// (our native node sent none through the tunnel and forwarded some, our
/// vxlan node tunneled and the other side delivered, flannel.1 carried
/// packets), so that no row measures another's path by accident.
fn check_datapaths(
    native: &[PluginNode; 2],
    vxlan: &[PluginNode; 2],
    flannel: &[PluginNode; 2],
) -> Result<()> {
    fn ebpf(node: &PluginNode) -> Result<&cni_ebpf_tests::Node> {
        node.ebpf_node().context("not a cni-ebpf node")
    }
    let (native_a, native_b) = (ebpf(&native[0])?, ebpf(&native[1])?);
    let native_counts = (
        native_a.verdict_bytes("tunneled"),
        native_a.verdict_bytes("forwarded"),
        native_b.verdict_bytes("local-delivery"),
    );
    if native_counts.0 != 0 || native_counts.1 == 0 || native_counts.2 == 0 {
        bail!(
            "{}: (tunneled, forwarded on A, delivered on B) = {native_counts:?} bytes: not the native path",
            NATIVE.name()
        );
    }
    let (vxlan_a, vxlan_b) = (ebpf(&vxlan[0])?, ebpf(&vxlan[1])?);
    let vxlan_counts = (
        vxlan_a.verdict_bytes("tunneled"),
        vxlan_b.verdict_bytes("local-delivery"),
    );
    if vxlan_counts.0 == 0 || vxlan_counts.1 == 0 {
        bail!(
            "{}: (tunneled on A, delivered on B) = {vxlan_counts:?} bytes: not the BPF tunnel",
            VXLAN.name()
        );
    }
    let stats = flannel[0]
        .netns()
        .ip(&["-s", "-j", "link", "show", "dev", "flannel.1"]);
    let stats: Value = serde_json::from_str(&stats).context("ip -s -j link show flannel.1")?;
    let sent = stats[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or(0);
    if sent == 0 {
        bail!("{}: flannel.1 sent nothing: {stats}", FLANNEL.name());
    }
    eprintln!(
        "[{SCENARIO}] paths checked: native (tunneled, forwarded, delivered) {native_counts:?} B; \
         vxlan (tunneled, delivered) {vxlan_counts:?} B; flannel.1 sent {sent} packets"
    );
    Ok(())
}

fn pod_to_pod<'a>(
    row: Contender,
    client: &'a ChainedPod<'_>,
    server: &'a ChainedPod<'_>,
) -> Path<'a> {
    Path {
        row,
        client: &client.netns,
        server: &server.netns,
        server_ip: server.ip().into(),
        connect_ip: server.ip().into(),
        mapped: None,
    }
}
