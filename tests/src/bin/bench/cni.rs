//! Calling a CNI plugin the way a runtime does, for ours and the reference
//! plugins alike: `CNI_*` environment, config on stdin, the process spawned
//! inside the node namespace (setns in `pre_exec`, never `ip netns exec`),
//! timed from spawn to exit.

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use cni_ebpf_tests::{Netns, Node, names};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::exec::{self, Finished, OnStop};

/// Where the reference plugins live, and what runtimes pass as `CNI_PATH`.
pub const CNI_PATH: &str = "/usr/lib/cni";
/// The interface name inside pods.
pub const POD_IFNAME: &str = "eth0";
/// A first ADD loads BPF programs; anything past this is a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The network name every contender's config uses.
pub const NETWORK: &str = "benchnet";
/// The bridge device the reference `bridge` plugin makes in its node.
pub const BRIDGE_DEVICE: &str = "cni0";

/// A node namespace with one CNI network: the plugin binary, its config,
/// and the directories the plugin keeps state in.
pub struct PluginNode {
    host: Host,
    binary: PathBuf,
    conf: Value,
}

enum Host {
    /// Our plugin: the harness's node (`ip_forward=0`, own bpffs mount).
    Ebpf(Node),
    /// A reference plugin: a node namespace with `ip_forward=1` and a temp
    /// dir for host-local's `dataDir`.
    Reference { netns: Netns, dir: TempDir },
}

impl PluginNode {
    /// A harness node running `$CNI_EBPF_BIN_DIR/cni-ebpf` with host-local
    /// IPAM on `subnet`.
    pub fn cni_ebpf(subnet: &str) -> Self {
        let node = Node::new();
        let conf = node.conf().name(NETWORK).subnet(subnet).mtu(1500).build();
        Self {
            binary: node.plugin().binary().to_path_buf(),
            host: Host::Ebpf(node),
            conf,
        }
    }

    /// A node running the reference `plugin_type` (`bridge` or `ptp`) from
    /// [`CNI_PATH`] with host-local IPAM on `subnet` and `ipMasq` on.
    pub fn reference(plugin_type: &str, subnet: &str) -> Result<Self> {
        let binary = Path::new(CNI_PATH).join(plugin_type);
        if !binary.is_file() {
            bail!(
                "{} is missing: install containernetworking-plugins",
                binary.display()
            );
        }
        let netns = Netns::with_loopback("node");
        netns.set_sysctl("net.ipv4.ip_forward", "1");
        let ipv6 = subnet.contains(':');
        if ipv6 {
            // The bridge and ptp nodes route pods' IPv6 through the stack.
            netns.set_sysctl("net.ipv6.conf.all.forwarding", "1");
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", netns.name()))
            .tempdir()
            .context("creating the node's temp dir")?;
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "type": plugin_type,
            "ipMasq": true,
            "mtu": 1500,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet }]],
                "routes": [{ "dst": if ipv6 { "::/0" } else { "0.0.0.0/0" } }],
                "dataDir": dir.path().join("ipam"),
            },
        });
        if plugin_type == "bridge" {
            conf["bridge"] = json!(BRIDGE_DEVICE);
            conf["isGateway"] = json!(true);
        }
        Ok(Self {
            host: Host::Reference { netns, dir },
            binary,
            conf,
        })
    }

    /// Sets our plugin's `attachMode` (`auto`, `tcx`, `clsact`).
    pub fn set_attach_mode(&mut self, mode: &str) {
        self.conf["attachMode"] = json!(mode);
    }

    pub fn netns(&self) -> &Netns {
        match &self.host {
            Host::Ebpf(node) => node.netns(),
            Host::Reference { netns, .. } => netns,
        }
    }

    /// The harness node, for our plugin only.
    pub fn ebpf_node(&self) -> Option<&Node> {
        match &self.host {
            Host::Ebpf(node) => Some(node),
            Host::Reference { .. } => None,
        }
    }

    /// host-local's directory of this network: `<dataDir>/<network>`.
    pub fn ipam_network_dir(&self) -> PathBuf {
        match &self.host {
            Host::Ebpf(node) => node.ipam_dir(),
            Host::Reference { dir, .. } => dir.path().join("ipam"),
        }
        .join(NETWORK)
    }

    /// The plugin binary this node's network runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The network config every ADD of [`Attachment`] passes.
    pub fn conf(&self) -> &Value {
        &self.conf
    }

    /// One plugin call about the pod namespace `netns`.
    pub fn call(
        &self,
        command: &str,
        container_id: &str,
        netns: &Path,
        stdin: &Value,
    ) -> Result<Finished> {
        self.call_binary(&self.binary, command, container_id, netns, stdin)
    }

    /// [`PluginNode::call`] with another plugin binary (the next plugin of
    /// a chain), in this node's namespace.
    pub fn call_binary(
        &self,
        binary: &Path,
        command: &str,
        container_id: &str,
        netns: &Path,
        stdin: &Value,
    ) -> Result<Finished> {
        let stdin = stdin.to_string();
        let mut plugin = self.netns().command(binary);
        plugin
            .env_clear()
            .env("PATH", search_path())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", POD_IFNAME)
            .env("CNI_PATH", CNI_PATH);
        exec::run(
            &mut plugin,
            Some(stdin.as_bytes()),
            CALL_TIMEOUT,
            OnStop::Finish,
        )
        .with_context(|| format!("{command} with {}", binary.display()))
    }
}

/// The caller's `PATH` with the sbin directories a non-login root may lack:
/// the reference plugins run `iptables` for `ipMasq`.
fn search_path() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        if !dirs.iter().any(|d| d == Path::new(extra)) {
            dirs.push(PathBuf::from(extra));
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// A pod namespace attached by ADD; DEL (with the ADD result as
/// `prevResult`) runs on [`Attachment::del`] or when dropped.
pub struct Attachment<'n> {
    network: &'n PluginNode,
    container_id: String,
    netns: PathBuf,
    result: Value,
    addr: IpAddr,
    add_time: Duration,
    deleted: bool,
}

impl<'n> Attachment<'n> {
    pub fn add(network: &'n PluginNode, pod: &Netns) -> Result<Self> {
        let container_id = names::unique("bench");
        let output = network.call("ADD", &container_id, pod.path(), &network.conf)?;
        if !output.success() {
            bail!("ADD into {} failed: {}", pod.name(), output.describe());
        }
        let result: Value = serde_json::from_str(&output.stdout)
            .with_context(|| format!("ADD result is not JSON: {}", output.stdout))?;
        // From here on the drop deletes what ADD made, whatever fails next.
        let mut attachment = Self {
            network,
            container_id,
            netns: pod.path().to_path_buf(),
            result,
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            add_time: output.elapsed,
            deleted: false,
        };
        attachment.addr = first_address(&attachment.result)?;
        Ok(attachment)
    }

    /// The pod's first address from the ADD result, of either family.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// How long ADD took, spawn to exit.
    pub fn add_time(&self) -> Duration {
        self.add_time
    }

    /// DEL; returns how long it took.
    pub fn del(mut self) -> Result<Duration> {
        self.delete()
    }

    fn delete(&mut self) -> Result<Duration> {
        let mut conf = self.network.conf.clone();
        conf["prevResult"] = self.result.clone();
        let output = self
            .network
            .call("DEL", &self.container_id, &self.netns, &conf)?;
        // Whatever DEL said, a second one from the drop would not help.
        self.deleted = true;
        if !output.success() {
            bail!("DEL of {} failed: {}", self.container_id, output.describe());
        }
        Ok(output.elapsed)
    }
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        if !self.deleted
            && let Err(e) = self.delete()
        {
            eprintln!("[bench] {e:#}");
        }
    }
}

/// `ips[0].address` of a result, without the prefix length.
fn first_address(result: &Value) -> Result<IpAddr> {
    let address = result["ips"][0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("ADD result without ips[0].address: {result}"))?;
    let ip = address.split_once('/').map_or(address, |(ip, _)| ip);
    ip.parse()
        .with_context(|| format!("ips[0].address {address:?}"))
}
