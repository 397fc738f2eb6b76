//! Cluster topologies: nodes on two L2 segments (a bridge each, inside one
//! "switch" namespace) joined by a router namespace, and etcd in its own
//! namespace on the first segment. Every node runs the agent in cluster
//! mode and takes its pod CIDRs from it (`"subnet": "usePodCidr"`, and
//! `"usePodCidrIPv6"` in a dual-stack cluster). The segments carry both
//! families; the router forwards both.
//!
//! ```text
//!  segment 0: 10.99.1.0/24 (br0)            segment 1: 10.99.2.0/24 (br1)
//!             fd00:99:1::/64                           fd00:99:2::/64
//!   etcd .2   node .11 .12 ...   router .1 | .1 router   node .11 .12 ...
//! ```

use std::{
    cell::Cell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    Bpffs, Family, Node, agent::Agent, conf::with_keys, etcd::Etcd, names, netns::Netns, pki::Pki,
    wait::wait_until,
};

/// The pod CIDR of the whole cluster, split into /24s.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The IPv6 pod CIDR of a dual-stack cluster, split into /64s.
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/48";
/// Both, as `--cluster-cidr` takes them for a dual-stack cluster.
pub const DUAL_STACK_CIDRS: &str = "10.244.0.0/16,fd00:10:244::/48";
/// The underlay interface of every node.
pub const UNDERLAY: &str = "underlay";
/// The lease TTL the tests' agents use, seconds.
pub const LEASE_TTL: u64 = 3;
/// etcd's address, on segment 0.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 2);

/// The router's address on `segment`, the segment's default gateway.
pub fn router_ip(segment: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, segment + 1, 1)
}

/// The router's IPv6 address on `segment`.
pub fn router_ip6(segment: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x99, u16::from(segment) + 1, 0, 0, 0, 0, 1)
}

/// The underlay every node of a test is attached to, and its etcd.
pub struct Underlay {
    // Dropped first: etcd, then the router, then the switch.
    pub etcd: Etcd,
    router: Netns,
    switch: Netns,
    bpffs: Arc<Bpffs>,
    cluster_name: String,
    next_host: [Cell<u8>; 2],
    next_node: Cell<u32>,
}

impl Underlay {
    pub fn new() -> Self {
        Self::build(false)
    }

    /// An underlay whose etcd serves TLS only and wants client
    /// certificates of its CA ([`Etcd::start_tls`]; `etcd.pki()`).
    pub fn with_tls() -> Self {
        Self::build(true)
    }

    fn build(tls: bool) -> Self {
        assert!(
            crate::etcd::installed(),
            "etcd and etcdctl are missing: run `cargo xtask setup` (Debian etcd-server, etcd-client)"
        );
        let switch = Netns::with_loopback("switch");
        let router = Netns::with_loopback("router");
        router.set_sysctl("net.ipv4.ip_forward", "1");
        router.set_sysctl("net.ipv6.conf.all.forwarding", "1");
        for segment in 0..2u8 {
            let bridge = format!("br{segment}");
            switch.ip(&["link", "add", &bridge, "type", "bridge"]);
            switch.ip(&["link", "set", &bridge, "up"]);
            let ifname = format!("seg{segment}");
            attach(&switch, &bridge, &router, &format!("r{segment}"), &ifname);
            router.ip(&[
                "addr",
                "add",
                &format!("{}/24", router_ip(segment)),
                "dev",
                &ifname,
            ]);
            router.ip(&[
                "addr",
                "add",
                &format!("{}/64", router_ip6(segment)),
                "dev",
                &ifname,
                "nodad",
            ]);
            router.ip(&["link", "set", &ifname, "up"]);
        }
        let etcd_ns = Netns::with_loopback("etcd");
        attach(&switch, "br0", &etcd_ns, "etcd", "eth0");
        etcd_ns.ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "eth0"]);
        etcd_ns.ip(&["link", "set", "eth0", "up"]);
        etcd_ns.ip(&["route", "add", "default", "via", &router_ip(0).to_string()]);
        let etcd = if tls {
            Etcd::start_tls(etcd_ns, ETCD_IP, Pki::new(ETCD_IP.into()))
        } else {
            Etcd::start(etcd_ns, ETCD_IP)
        };
        Self {
            etcd,
            router,
            switch,
            bpffs: Arc::new(Bpffs::new()),
            cluster_name: names::unique("c"),
            next_host: [Cell::new(11), Cell::new(11)],
            next_node: Cell::new(1),
        }
    }

    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// The key prefix of this test's cluster.
    pub fn prefix(&self) -> String {
        format!("/cni-ebpf/{}", self.cluster_name)
    }

    /// Subnet keys and their records, by CIDR (`10.244.3.0/24`).
    pub fn subnets(&self) -> Vec<(String, Value)> {
        let prefix = format!("{}/subnets/", self.prefix());
        self.etcd
            .get_prefix(&prefix)
            .into_iter()
            .map(|(key, value)| {
                let cidr = key[prefix.len()..].replacen('-', "/", 1);
                let record =
                    serde_json::from_str(&value).unwrap_or_else(|e| panic!("{key}: {e}: {value}"));
                (cidr, record)
            })
            .collect()
    }

    /// A node on `segment` (0 or 1): its underlay veth on the segment's
    /// bridge, the next free address, a default route via the router.
    pub fn add_node(&self, segment: u8) -> ClusterNode {
        let node = Node::with_bpffs(self.bpffs.clone());
        let host = self.next_host[usize::from(segment)].get();
        self.next_host[usize::from(segment)].set(host + 1);
        let n = self.next_node.get();
        self.next_node.set(n + 1);
        let ip = Ipv4Addr::new(10, 99, segment + 1, host);
        let ip6 = Ipv6Addr::new(
            0xfd00,
            0x99,
            u16::from(segment) + 1,
            0,
            0,
            0,
            0,
            u16::from(host),
        );
        attach(
            &self.switch,
            &format!("br{segment}"),
            node.netns(),
            &format!("n{n}"),
            UNDERLAY,
        );
        node.netns()
            .ip(&["addr", "add", &format!("{ip}/24"), "dev", UNDERLAY]);
        node.netns().ip(&[
            "addr",
            "add",
            &format!("{ip6}/64"),
            "dev",
            UNDERLAY,
            "nodad",
        ]);
        node.netns().ip(&["link", "set", UNDERLAY, "up"]);
        node.netns().ip(&[
            "route",
            "add",
            "default",
            "via",
            &router_ip(segment).to_string(),
        ]);
        node.netns().ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &router_ip6(segment).to_string(),
        ]);
        ClusterNode {
            node,
            name: format!("node{n}"),
            ip,
            ip6,
            segment,
            endpoint: self.etcd.endpoint(),
            cluster_name: self.cluster_name.clone(),
        }
    }
}

impl Default for Underlay {
    fn default() -> Self {
        Self::new()
    }
}

/// A veth from `bridge` in the switch to `ifname` in `other` (the switch
/// end is `port`, up and enslaved).
fn attach(switch: &Netns, bridge: &str, other: &Netns, port: &str, ifname: &str) {
    let other_path = other.path().to_string_lossy().into_owned();
    switch.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        ifname,
        "netns",
        &other_path,
    ]);
    switch.ip(&["link", "set", port, "master", bridge, "up"]);
}

/// A node of a cluster test.
pub struct ClusterNode {
    pub node: Node,
    /// Its name in the cluster.
    pub name: String,
    /// Its underlay addresses.
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub segment: u8,
    endpoint: String,
    cluster_name: String,
}

impl ClusterNode {
    /// The agent's cluster flags (TTL [`LEASE_TTL`], backend auto).
    pub fn agent_args(&self, cluster_cidr: &str) -> Vec<String> {
        self.agent_args_at(&self.endpoint, cluster_cidr)
    }

    /// [`ClusterNode::agent_args`] with another etcd endpoint.
    pub fn agent_args_at(&self, endpoint: &str, cluster_cidr: &str) -> Vec<String> {
        [
            "--etcd-endpoints",
            endpoint,
            "--cluster-name",
            &self.cluster_name,
            "--cluster-cidr",
            cluster_cidr,
            "--node-name",
            &self.name,
            "--lease-ttl",
            &LEASE_TTL.to_string(),
            "--state-dir",
            &self.node.state_dir().to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Starts `cni-ebpfd run` in cluster mode with `extra` flags.
    pub fn start_agent(&self, extra: &[&str]) -> Agent {
        self.start_agent_in(CLUSTER_CIDR, extra)
    }

    /// [`ClusterNode::start_agent`] against `endpoint` instead of etcd's own.
    pub fn start_agent_at(&self, endpoint: &str, extra: &[&str]) -> Agent {
        let args = self.agent_args_at(endpoint, CLUSTER_CIDR);
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        Agent::start(&self.node, &all)
    }

    /// [`ClusterNode::start_agent`] with another cluster CIDR.
    pub fn start_agent_in(&self, cluster_cidr: &str, extra: &[&str]) -> Agent {
        let args = self.agent_args(cluster_cidr);
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        Agent::start(&self.node, &all)
    }

    /// The plugin config: the pod CIDR from the agent, its MTU, masquerade
    /// except inside the cluster, the underlay as uplink.
    pub fn conf(&self) -> Value {
        let mut conf = with_keys(
            self.node.conf().subnet("usePodCidr").build(),
            json!({
                "ipMasq": true,
                "nonMasqueradeCIDRs": [CLUSTER_CIDR],
                "uplink": UNDERLAY,
            }),
        );
        conf.as_object_mut().unwrap().remove("mtu");
        conf
    }

    /// The plugin config of a dual-stack cluster's node: both pod CIDRs
    /// from the agent (one range set and one default route per family).
    pub fn conf_dual_stack(&self) -> Value {
        let mut conf = self.conf();
        conf["ipam"]["ranges"] =
            json!([[{ "subnet": "usePodCidr" }], [{ "subnet": "usePodCidrIPv6" }]]);
        conf["ipam"]["routes"] = json!([{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }]);
        conf["nonMasqueradeCIDRs"] = json!([CLUSTER_CIDR, CLUSTER_CIDR_V6]);
        conf
    }

    /// The config for pods of `families` ([`ClusterNode::conf`] for IPv4,
    /// [`ClusterNode::conf_dual_stack`] for both).
    pub fn conf_of(&self, families: &[Family]) -> Value {
        if families.contains(&Family::V6) {
            self.conf_dual_stack()
        } else {
            self.conf()
        }
    }

    /// Its underlay address of `family`.
    pub fn ip_of(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ip.into(),
            Family::V6 => self.ip6.into(),
        }
    }

    /// `<stateDir>/cluster/node.json`.
    pub fn state_file(&self) -> PathBuf {
        self.node.state_dir().join("cluster").join("node.json")
    }

    /// The node state the agent wrote, if any.
    pub fn node_state(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.state_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The pod CIDR the agent wrote, waiting up to `timeout`.
    pub fn wait_pod_cidr(&self, timeout: Duration) -> String {
        self.wait_pod_cidr_of(Family::V4, timeout)
    }

    /// The pod CIDR of `family` the agent wrote, waiting up to `timeout`.
    pub fn wait_pod_cidr_of(&self, family: Family, timeout: Duration) -> String {
        let key = match family {
            Family::V4 => "podCIDR",
            Family::V6 => "podCIDRv6",
        };
        let mut cidr = None;
        wait_until(timeout, || {
            cidr = self
                .node_state()
                .and_then(|s| Some(s[key].as_str()?.to_string()));
            cidr.is_some()
        });
        cidr.unwrap_or_else(|| panic!("{}: no {key} within {timeout:?}", self.name))
    }

    /// `ip -4 route show <cidr>` (`-6` for an IPv6 one) in the node.
    pub fn route_to(&self, cidr: &str) -> String {
        let family = if cidr.contains(':') { "-6" } else { "-4" };
        self.node.netns().ip(&[family, "route", "show", cidr])
    }
}
