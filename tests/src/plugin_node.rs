//! Calling a CNI plugin the way a runtime does, for ours and the reference
//! plugins alike: `CNI_*` environment, config on stdin, the process spawned
//! inside the node namespace (setns in `pre_exec`, never `ip netns exec`),
//! timed from spawn to exit.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{
    Netns, Node,
    chain::{Chain, ChainPod},
    exec::{self, Finished, OnStop},
    plugin::CniRequest,
};

pub use crate::{plugin::CNI_PATH, pod::POD_IFNAME};

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

    /// Sets our plugin's `bigTcp`.
    pub fn set_big_tcp(&mut self, on: bool) {
        self.conf["bigTcp"] = json!(on);
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
        let request = CniRequest {
            command,
            container_id,
            netns: Some(netns),
            ifname: POD_IFNAME,
            args: None,
            stdin: stdin.as_bytes(),
        };
        let mut plugin = request.command(self.netns(), binary);
        exec::run(
            &mut plugin,
            Some(request.stdin),
            CALL_TIMEOUT,
            OnStop::Finish,
        )
        .with_context(|| format!("{command} with {}", binary.display()))
    }
}

/// A pod namespace attached by the node's own plugin alone (a chain of
/// one, with the node's config); DEL (with the ADD result as `prevResult`)
/// runs on [`Attachment::del`] or when dropped.
pub struct Attachment<'n>(ChainPod<'n>);

impl<'n> Attachment<'n> {
    pub fn add(network: &'n PluginNode, pod: &Netns) -> Result<Self> {
        ChainPod::add(network, &Chain::new(network, json!({})), pod).map(Self)
    }

    /// The pod's first address from the ADD result, of either family.
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }

    /// How long ADD took, spawn to exit.
    pub fn add_time(&self) -> Duration {
        self.0.add_time()
    }

    /// What the plugin wrote to stderr at ADD.
    pub fn add_log(&self) -> &str {
        self.0.add_log()
    }

    /// DEL; returns how long it took.
    pub fn del(self) -> Result<Duration> {
        self.0.del()
    }
}
