//! A simulated node: its own network namespace (the "host"), bpffs root,
//! IPAM data dir and state dir; the plugin runs inside it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{
    Family, binaries,
    bpffs::Bpffs,
    links,
    netns::Netns,
    plugin::{CniOutput, CniRequest, Plugin},
    pod::Pod,
    process::{self, DEFAULT_TIMEOUT},
};

/// The network name [`Node::conf`] uses unless told otherwise.
pub const DEFAULT_NETWORK: &str = "testnet";
/// The pod subnet [`Node::conf`] uses unless told otherwise.
pub const DEFAULT_SUBNET: &str = "10.244.1.0/24";
/// The IPv6 pod subnet of [`ConfBuilder::family`] and
/// [`ConfBuilder::dual_stack`].
pub const DEFAULT_SUBNET_V6: &str = "fd00:10:244:1::/64";
/// The spec version [`Node::conf`] uses unless told otherwise.
pub const DEFAULT_CNI_VERSION: &str = "1.0.0";

/// A node namespace with `lo` up and `net.ipv4.ip_forward=0`: the datapath
/// must move pod traffic without the kernel forwarding it.
pub struct Node {
    // Dropped in this order: the namespace, then files, then bpffs.
    netns: Netns,
    dir: TempDir,
    bpffs_root: PathBuf,
    plugin: Plugin,
    bpffs: Arc<Bpffs>,
}

impl Node {
    /// A node with its own bpffs mount.
    pub fn new() -> Self {
        Self::with_bpffs(Arc::new(Bpffs::new()))
    }

    /// A node whose `bpffsRoot` is a fresh directory in a shared mount.
    pub fn with_bpffs(bpffs: Arc<Bpffs>) -> Self {
        let plugin = Plugin::locate();
        let netns = Netns::with_loopback("node");
        netns.set_sysctl("net.ipv4.ip_forward", "0");
        let bpffs_root = bpffs.root(netns.name());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", netns.name()))
            .tempdir()
            .expect("creating the node's temp dir");
        Self {
            netns,
            dir,
            bpffs_root,
            plugin,
            bpffs,
        }
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn name(&self) -> &str {
        self.netns.name()
    }

    pub fn bpffs(&self) -> &Arc<Bpffs> {
        &self.bpffs
    }

    /// The plugin's `bpffsRoot` for this node.
    pub fn bpffs_root(&self) -> &Path {
        &self.bpffs_root
    }

    /// The node's temp dir, holding `stateDir` and the IPAM `dataDir`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The plugin's `stateDir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The IPAM `dataDir`.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// Where host-local keeps the reservation of `ip` in `network`.
    pub fn ipam_file(&self, network: &str, ip: IpAddr) -> PathBuf {
        self.ipam_dir().join(network).join(ip.to_string())
    }

    /// Addresses reserved in `network`: the IPAM files named as addresses.
    pub fn ipam_reservations(&self, network: &str) -> BTreeSet<IpAddr> {
        let Ok(entries) = std::fs::read_dir(self.ipam_dir().join(network)) else {
            return BTreeSet::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// A config builder with this node's directories filled in.
    pub fn conf(&self) -> ConfBuilder {
        ConfBuilder {
            cni_version: DEFAULT_CNI_VERSION.to_string(),
            name: DEFAULT_NETWORK.to_string(),
            subnet: DEFAULT_SUBNET.to_string(),
            second_subnet: None,
            range: None,
            mtu: 1500,
            bpffs_root: self.bpffs_root.clone(),
            state_dir: self.state_dir(),
            ipam_dir: self.ipam_dir(),
        }
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// One raw plugin call inside this node.
    pub fn cni(&self, request: &CniRequest<'_>) -> CniOutput {
        self.plugin.call(&self.netns, request)
    }

    /// A pod on the default network; panics if ADD fails.
    pub fn add_pod(&self) -> Pod<'_> {
        self.add_pod_with(self.conf().build())
    }

    /// A pod on the default network of `family` alone; panics if ADD fails.
    pub fn add_pod_of(&self, family: Family) -> Pod<'_> {
        self.add_pod_with(self.conf().family(family).build())
    }

    /// A pod attached with `conf`; panics if ADD fails.
    pub fn add_pod_with(&self, conf: Value) -> Pod<'_> {
        match Pod::add(self, conf) {
            Ok(pod) => pod,
            Err(output) => panic!("ADD on node {}: {}", self.name(), output.describe()),
        }
    }

    /// Link names in the node namespace.
    pub fn links(&self) -> Vec<String> {
        links::names(&self.netns)
    }

    /// Runs `cni-ebpfd --bpffs-root <root> <subcommand> [args]` in the node
    /// namespace; panics unless it succeeds, returns stdout.
    pub fn agent(&self, subcommand: &str, args: &[&str]) -> String {
        let mut command = self.netns.command(binaries::path(binaries::AGENT));
        command
            .arg("--bpffs-root")
            .arg(&self.bpffs_root)
            .arg(subcommand)
            .args(args);
        let output = process::output_with_timeout(&mut command, None, DEFAULT_TIMEOUT)
            .expect("spawning cni-ebpfd");
        process::expect_success(
            &format!("cni-ebpfd {subcommand} {}", args.join(" ")),
            &output,
        )
    }

    fn agent_json(&self, subcommand: &str) -> Vec<Value> {
        let stdout = self.agent(subcommand, &["--json"]);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("cni-ebpfd {subcommand} --json: {e}: {stdout}"))
    }

    /// `cni-ebpfd endpoints --json`.
    pub fn endpoints(&self) -> Vec<Value> {
        self.agent_json("endpoints")
    }

    /// The `ip` of every entry of the endpoints map.
    pub fn endpoint_ips(&self) -> BTreeSet<String> {
        self.endpoints()
            .iter()
            .filter_map(|e| Some(e.get("ip")?.as_str()?.to_string()))
            .collect()
    }

    /// `cni-ebpfd drops --json`.
    pub fn drops(&self) -> Vec<Value> {
        self.agent_json("drops")
    }

    /// Dropped packets summed over `reasons` in `direction`.
    pub fn dropped_packets(&self, reasons: &[&str], direction: &str) -> u64 {
        sum_field(&self.drops(), "packets", |row| {
            reasons.contains(&row["reason"].as_str().unwrap_or_default())
                && row["direction"] == direction
        })
    }

    /// `cni-ebpfd stats --json`.
    pub fn stats(&self) -> Vec<Value> {
        self.agent_json("stats")
    }

    /// Packets counted under `verdict`.
    pub fn verdict_packets(&self, verdict: &str) -> u64 {
        sum_field(&self.stats(), "packets", |row| row["verdict"] == verdict)
    }

    /// Bytes counted under `verdict` (a GSO packet counts once, with all
    /// its bytes).
    pub fn verdict_bytes(&self, verdict: &str) -> u64 {
        sum_field(&self.stats(), "bytes", |row| row["verdict"] == verdict)
    }

    /// A veth from this node to a new `ext` namespace, addressed
    /// `10.250.0.1/24` and `fd00:250::1/64` (node), `10.250.0.2/24` and
    /// `fd00:250::2/64` (ext): gives the node addresses of its own, as a
    /// real node's uplink does.
    pub fn add_uplink(&self) -> Ext {
        let ext = Netns::with_loopback("ext");
        let node_ip = Ipv4Addr::new(10, 250, 0, 1);
        let ext_ip = Ipv4Addr::new(10, 250, 0, 2);
        let node_ip6 = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1);
        let ext_ip6 = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 2);
        let ext_path = ext.path().to_string_lossy().into_owned();
        self.netns.ip(&[
            "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", &ext_path,
        ]);
        self.netns
            .ip(&["addr", "add", &format!("{node_ip}/24"), "dev", "uplink"]);
        self.netns.ip(&[
            "addr",
            "add",
            &format!("{node_ip6}/64"),
            "dev",
            "uplink",
            "nodad",
        ]);
        self.netns.ip(&["link", "set", "uplink", "up"]);
        ext.ip(&["addr", "add", &format!("{ext_ip}/24"), "dev", "eth0"]);
        ext.ip(&[
            "addr",
            "add",
            &format!("{ext_ip6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ext.ip(&["link", "set", "eth0", "up"]);
        Ext {
            netns: ext,
            node_ip,
            ext_ip,
            node_ip6,
            ext_ip6,
        }
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

fn sum_field(rows: &[Value], field: &str, filter: impl Fn(&Value) -> bool) -> u64 {
    rows.iter()
        .filter(|row| filter(row))
        .map(|row| row[field].as_u64().unwrap_or(0))
        .sum()
}

/// The outside world behind a node's uplink.
pub struct Ext {
    pub netns: Netns,
    /// The node's address on the uplink.
    pub node_ip: Ipv4Addr,
    /// This namespace's address.
    pub ext_ip: Ipv4Addr,
    pub node_ip6: Ipv6Addr,
    pub ext_ip6: Ipv6Addr,
}

impl Ext {
    /// The node's uplink address of `family`.
    pub fn node_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.node_ip.into(),
            Family::V6 => self.node_ip6.into(),
        }
    }

    /// This namespace's address of `family`.
    pub fn ext_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ext_ip.into(),
            Family::V6 => self.ext_ip6.into(),
        }
    }
}

/// The plugin's network config, with this node's directories.
#[derive(Debug, Clone)]
pub struct ConfBuilder {
    cni_version: String,
    name: String,
    subnet: String,
    /// A second range set (of the other family, for dual stack).
    second_subnet: Option<String>,
    range: Option<(String, String)>,
    mtu: u32,
    bpffs_root: PathBuf,
    state_dir: PathBuf,
    ipam_dir: PathBuf,
}

impl ConfBuilder {
    pub fn cni_version(mut self, version: &str) -> Self {
        self.cni_version = version.to_string();
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub fn subnet(mut self, subnet: &str) -> Self {
        self.subnet = subnet.to_string();
        self
    }

    /// The one range set from `family`'s subnet.
    pub fn family(self, family: Family) -> Self {
        self.subnet(family.subnet())
    }

    /// Two range sets, the IPv4 and the IPv6 subnet: every pod gets an
    /// address of each family, and a default route of each.
    pub fn dual_stack(mut self) -> Self {
        self.subnet = DEFAULT_SUBNET.to_string();
        self.second_subnet = Some(DEFAULT_SUBNET_V6.to_string());
        self
    }

    /// A second range set from `subnet` (of the other family: dual stack).
    pub fn second_subnet(mut self, subnet: &str) -> Self {
        self.second_subnet = Some(subnet.to_string());
        self
    }

    /// `rangeStart` and `rangeEnd` of the one range.
    pub fn range(mut self, start: &str, end: &str) -> Self {
        self.range = Some((start.to_string(), end.to_string()));
        self
    }

    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    pub fn build(self) -> Value {
        let mut range = json!({ "subnet": self.subnet });
        if let Some((start, end)) = self.range {
            range["rangeStart"] = json!(start);
            range["rangeEnd"] = json!(end);
        }
        let mut ranges = vec![json!([range])];
        let mut subnets = vec![self.subnet.clone()];
        if let Some(second) = &self.second_subnet {
            ranges.push(json!([{ "subnet": second }]));
            subnets.push(second.clone());
        }
        let routes: Vec<Value> = subnets
            .iter()
            .map(|subnet| {
                // `usePodCidr` and other non-CIDRs: the IPv4 default route.
                let family = subnet
                    .split('/')
                    .next()
                    .and_then(|ip| ip.parse().ok())
                    .map_or(Family::V4, Family::of);
                json!({ "dst": family.default_route() })
            })
            .collect();
        json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "type": "cni-ebpf",
            "mtu": self.mtu,
            "bpffsRoot": self.bpffs_root,
            "stateDir": self.state_dir,
            "ipam": {
                "type": "host-local",
                "ranges": ranges,
                "routes": routes,
                "dataDir": self.ipam_dir,
            },
        })
    }
}
