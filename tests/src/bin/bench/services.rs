//! Pod → ClusterIP on a Kubernetes-shaped node (issue 12): kube-proxy's
//! iptables-mode rules (written by the harness's `kube_proxy`, as
//! kube-proxy's proxier writes them: `KUBE-SERVICES` from `PREROUTING` and
//! `OUTPUT` → `KUBE-SVC-*` → `KUBE-SEP-*` DNAT, `KUBE-MARK-MASQ`,
//! `KUBE-POSTROUTING`) in each node, the same Services for both plugins.
//!
//! One node per plugin, its uplink to a peer that plays node B: a pod of
//! node B is an address on the peer's loopback, in node B's pod CIDR
//! (routed via the peer). Two Services, each with one port per measure
//! (service port = target port): **same node**, whose endpoint is a second
//! pod of the node, and **other node**, whose endpoint is node B's pod.
//!
//! Rows: **limit** = the client namespace joined to a server namespace by a
//! veth (no node, no service); **cni-ebpf → pod** = our client pod to the
//! endpoint's own address (the fast path, no service); **cni-ebpf →
//! ClusterIP** = our plugin with `serviceCIDRs`, `ipMasq` and the cluster
//! CIDR in `nonMasqueradeCIDRs` (service traffic goes through the node's
//! stack and netfilter, replies back through conntrack; node
//! `ip_forward=0`, the plugin turns forwarding on per interface);
//! **bridge → ClusterIP** = reference `bridge` + `host-local` (`isGateway`,
//! `ipMasq`, node `ip_forward=1` as on a kubeadm node; its `ipMasq`
//! masquerades what leaves for node B, ours does not).

use std::net::Ipv4Addr;

use anyhow::{Result, anyhow};
use cni_ebpf_tests::{
    Ext, Netns,
    kube_proxy::{self, ClusterSettings, Mode, Protocol, Service},
    uplink,
};
use serde_json::json;

use crate::{
    Plan,
    chain::{Chain, ChainedPod},
    cni::PluginNode,
    flows::{self, CRR_PORT, IPERF3_PORT, Path, SOCKPERF_PORT},
    metric::Metric,
    stop,
    topology::{self, Contender},
};

pub const SCENARIO: &str = "services";
pub const HEADING: &str =
    "pod → ClusterIP through kube-proxy's iptables rules, endpoint on the node and off it";

const LIMIT: Contender = Contender::Limit;
const OURS_POD_LOCAL: Contender = Contender::Named("cni-ebpf → pod, same node");
const OURS_SVC_LOCAL: Contender = Contender::Named("cni-ebpf → ClusterIP, same node");
const BRIDGE_SVC_LOCAL: Contender = Contender::Named("bridge → ClusterIP, same node");
const OURS_POD_REMOTE: Contender = Contender::Named("cni-ebpf → pod, other node");
const OURS_SVC_REMOTE: Contender = Contender::Named("cni-ebpf → ClusterIP, other node");
const BRIDGE_SVC_REMOTE: Contender = Contender::Named("bridge → ClusterIP, other node");

/// kubeadm's default service CIDR, and the two ClusterIPs in it.
const SERVICE_CIDR: &str = "10.96.0.0/12";
const LOCAL_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const REMOTE_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

/// Every measure's port, service port and target port alike.
const PORTS: [(&str, u16); 3] = [
    ("iperf3", IPERF3_PORT),
    ("sockperf", SOCKPERF_PORT),
    ("crr", CRR_PORT),
];

/// A plugin's cluster: its CIDR, this node's pod CIDR in it, and node B's
/// pods behind the peer.
struct Cluster {
    cidr: &'static str,
    node_pods: &'static str,
    remote_pods: &'static str,
    /// The other-node Service's endpoint.
    remote_pod: Ipv4Addr,
    /// The pod the no-service row reaches: another than the endpoint, so
    /// that the server never holds a TIME_WAIT socket of one row with the
    /// reply tuple of another's connection (the client picks the same
    /// ports for the ClusterIP and for the pod address, with timestamps of
    /// another offset: PAWS drops the SYN, the client waits out its 1 s
    /// retransmit; measured: CRR to the ClusterIP right after a run to the
    /// same endpoint directly fell from ~4 000 to ~200/s).
    remote_direct_pod: Ipv4Addr,
}

const OURS: Cluster = Cluster {
    cidr: "10.241.0.0/16",
    node_pods: "10.241.1.0/24",
    remote_pods: "10.241.2.0/24",
    remote_pod: Ipv4Addr::new(10, 241, 2, 10),
    remote_direct_pod: Ipv4Addr::new(10, 241, 2, 11),
};

const BRIDGE: Cluster = Cluster {
    cidr: "10.242.0.0/16",
    node_pods: "10.242.1.0/24",
    remote_pods: "10.242.2.0/24",
    remote_pod: Ipv4Addr::new(10, 242, 2, 10),
    remote_direct_pod: Ipv4Addr::new(10, 242, 2, 11),
};

/// One plugin's node, its peer (node B and its pod) and the chain its pods
/// are added with.
struct SvcNode {
    // Field order is drop order: the node before its peer.
    plugin: PluginNode,
    peer: Ext,
    chain: Chain,
}

impl SvcNode {
    fn ours() -> Self {
        let plugin = PluginNode::cni_ebpf(OURS.node_pods);
        let peer = uplink::add_uplink_with_default_route(plugin.netns());
        let chain = Chain::new(
            &plugin,
            json!({
                "ipMasq": true,
                "nonMasqueradeCIDRs": [OURS.cidr],
                "serviceCIDRs": [SERVICE_CIDR],
                "uplink": "uplink",
                "nodeRoutes": [{ "dst": OURS.remote_pods, "gw": peer.ext_ip.to_string() }],
            }),
        );
        let node = Self {
            plugin,
            peer,
            chain,
        };
        node.add_remote_pods(&OURS);
        node
    }

    fn bridge() -> Result<Self> {
        let plugin = PluginNode::reference("bridge", BRIDGE.node_pods)?;
        let peer = uplink::add_uplink_with_default_route(plugin.netns());
        // Ours installs this route from `nodeRoutes`.
        plugin.netns().ip(&[
            "route",
            "add",
            BRIDGE.remote_pods,
            "via",
            &peer.ext_ip.to_string(),
        ]);
        let chain = Chain::new(&plugin, json!({}));
        let node = Self {
            plugin,
            peer,
            chain,
        };
        node.add_remote_pods(&BRIDGE);
        Ok(node)
    }

    /// Node B's pods on the peer's loopback; the peer routes this node's
    /// pod CIDR back to it.
    fn add_remote_pods(&self, cluster: &Cluster) {
        let peer = &self.peer.netns;
        for pod in [cluster.remote_pod, cluster.remote_direct_pod] {
            peer.ip(&["addr", "add", &format!("{pod}/32"), "dev", "lo"]);
        }
        peer.ip(&[
            "route",
            "add",
            cluster.node_pods,
            "via",
            &self.peer.node_ip.to_string(),
        ]);
    }

    fn add_pod(&self, role: &str) -> Result<ChainedPod<'_>> {
        ChainedPod::new(&self.plugin, &self.chain, role)
    }

    /// kube-proxy's iptables rules for the two Services: one to `local`
    /// (a pod of this node), one to node B's pod.
    fn apply_services(&self, cluster: &Cluster, local: Ipv4Addr) -> Result<()> {
        let services: Vec<Service> = [
            ("bench/same-node", LOCAL_CLUSTER_IP, local, true),
            (
                "bench/other-node",
                REMOTE_CLUSTER_IP,
                cluster.remote_pod,
                false,
            ),
        ]
        .into_iter()
        .flat_map(|(name, cluster_ip, endpoint, on_node)| {
            PORTS.map(|(port_name, port)| {
                Service::new(name, cluster_ip, port, Protocol::Tcp)
                    .port_name(port_name)
                    .endpoint(endpoint, port, on_node)
            })
        })
        .collect();
        let settings = ClusterSettings::new(cluster.cidr);
        let netns = self.plugin.netns();
        // `apply` panics when iptables-restore refuses the rules.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            kube_proxy::apply(netns, Mode::Iptables, &settings, &services)
        }))
        .map_err(|_| anyhow!("writing kube-proxy's rules into {} failed", netns.name()))
    }
}

pub fn run(plan: &Plan) -> Result<Vec<Metric>> {
    let limit_client = Netns::with_loopback("bench-limit");
    let limit_server = Netns::with_loopback("bench-limit");
    topology::join_by_veth(
        &limit_client,
        &limit_server,
        "10.240.0.1/24",
        "10.240.0.2/24",
    );

    let ours = SvcNode::ours();
    let ours_client = ours.add_pod("bench-cni-ebpf")?;
    let ours_server = ours.add_pod("bench-cni-ebpf")?;
    // Reached by its address: another server than the endpoint (see
    // `Cluster::remote_direct_pod`).
    let ours_direct_server = ours.add_pod("bench-cni-ebpf")?;
    ours.apply_services(&OURS, ours_server.ip())?;
    stop::check()?;

    let bridge = SvcNode::bridge()?;
    let bridge_client = bridge.add_pod("bench-bridge")?;
    let bridge_server = bridge.add_pod("bench-bridge")?;
    bridge.apply_services(&BRIDGE, bridge_server.ip())?;

    let paths = [
        Path {
            row: LIMIT,
            client: &limit_client,
            server: &limit_server,
            server_ip: Ipv4Addr::new(10, 240, 0, 2).into(),
            connect_ip: Ipv4Addr::new(10, 240, 0, 2).into(),
            mapped: None,
        },
        pod_path(
            OURS_POD_LOCAL,
            &ours_client,
            &ours_direct_server.netns,
            ours_direct_server.ip(),
            ours_direct_server.ip(),
        ),
        pod_path(
            OURS_SVC_LOCAL,
            &ours_client,
            &ours_server.netns,
            ours_server.ip(),
            LOCAL_CLUSTER_IP,
        ),
        pod_path(
            BRIDGE_SVC_LOCAL,
            &bridge_client,
            &bridge_server.netns,
            bridge_server.ip(),
            LOCAL_CLUSTER_IP,
        ),
        pod_path(
            OURS_POD_REMOTE,
            &ours_client,
            &ours.peer.netns,
            OURS.remote_direct_pod,
            OURS.remote_direct_pod,
        ),
        pod_path(
            OURS_SVC_REMOTE,
            &ours_client,
            &ours.peer.netns,
            OURS.remote_pod,
            REMOTE_CLUSTER_IP,
        ),
        pod_path(
            BRIDGE_SVC_REMOTE,
            &bridge_client,
            &bridge.peer.netns,
            BRIDGE.remote_pod,
            REMOTE_CLUSTER_IP,
        ),
    ];
    for path in &paths {
        flows::check_reaches(path, CRR_PORT)?;
    }
    flows::measure(SCENARIO, "", &paths, LIMIT, plan, &())
}

/// From the pod `client` to `connect_ip`, served in `server` at `server_ip`.
fn pod_path<'a>(
    row: Contender,
    client: &'a ChainedPod<'_>,
    server: &'a Netns,
    server_ip: Ipv4Addr,
    connect_ip: Ipv4Addr,
) -> Path<'a> {
    Path {
        row,
        client: &client.netns,
        server,
        server_ip: server_ip.into(),
        connect_ip: connect_ip.into(),
        mapped: None,
    }
}
