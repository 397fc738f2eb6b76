//! `cni-ebpfd install`: the plugin into the CNI bin dir, the conflist into
//! the CNI conf dir once the datapath answers STATUS (the DaemonSet's init
//! step; README "Install on Kubernetes").

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use cni_ebpf_userspace::{
    BpffsLayout,
    install::{self, Backend, ConflistSettings, InstallPlan, NodeDirs, PodCidr, pod_cidr, uplink},
};
use ipnet::{IpNet, Ipv4Net};

/// How long one `kubectl get node` may take.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the CNI files go; shared with `uninstall`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeDirArgs {
    /// The CNI bin dir runtimes execute plugins from.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The CNI conf dir runtimes read networks from.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The conflist's file name (runtimes take the lexically first config).
    #[arg(long, default_value = install::DEFAULT_CONFLIST_NAME)]
    pub conflist_name: String,
}

impl NodeDirArgs {
    pub fn to_dirs(&self) -> NodeDirs {
        NodeDirs {
            cni_bin_dir: self.cni_bin_dir.clone(),
            cni_conf_dir: self.cni_conf_dir.clone(),
            conflist_name: self.conflist_name.clone(),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("pod-cidr-source").required(true).args([
    "pod_cidr", "pod_cidr_from_node_state", "use_pod_cidr", "node_object", "pod_cidr_from_api",
])))]
pub struct InstallArgs {
    #[command(flatten)]
    pub dirs: NodeDirArgs,
    /// The plugin binary to install (default: `cni-ebpf` next to this binary).
    #[arg(long)]
    pub plugin_binary: Option<PathBuf>,
    /// The node's pod CIDR, written into the conflist.
    #[arg(long)]
    pub pod_cidr: Option<Ipv4Net>,
    /// Read the pod CIDR the cluster-mode agent leased
    /// (`<state-dir>/cluster/node.json`) and write it into the conflist.
    #[arg(long)]
    pub pod_cidr_from_node_state: bool,
    /// Write `"subnet": "usePodCidr"`: the plugin reads the cluster-mode
    /// agent's node state file at every ADD.
    #[arg(long)]
    pub use_pod_cidr: bool,
    /// A Kubernetes Node object (JSON) whose `spec.podCIDRs` holds the pod CIDR.
    #[arg(long)]
    pub node_object: Option<PathBuf>,
    /// Read this node's `spec.podCIDRs` from the Kubernetes API (through
    /// `kubectl get node <--node-name> -o json`; in a pod, kubectl uses its
    /// service account).
    #[arg(long, requires = "node_name")]
    pub pod_cidr_from_api: bool,
    /// This node's name in Kubernetes (the DaemonSet passes spec.nodeName).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The kubectl --pod-cidr-from-api runs.
    #[arg(long, default_value = "kubectl")]
    pub kubectl: PathBuf,
    /// The plugin's `stateDir`.
    #[arg(long, default_value = "/run/cni-ebpf")]
    pub state_dir: PathBuf,
    /// host-local's `dataDir` (default: host-local's own, /var/lib/cni/networks).
    #[arg(long)]
    pub ipam_data_dir: Option<PathBuf>,
    /// The network's name in the conflist.
    #[arg(long, default_value = "cni-ebpf")]
    pub network_name: String,
    /// The conflist's cniVersion (1.1.0 makes runtimes that speak it ask
    /// STATUS before pod creation; 1.0.0 suits older runtimes).
    #[arg(long, default_value = "1.0.0")]
    pub cni_version: String,
    /// Pods' MTU (default: the uplink's, less 50 with --backend vxlan).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// The uplink whose MTU pods get (default: the IPv4 default route's device).
    #[arg(long)]
    pub uplink: Option<String>,
    /// How pods on other nodes are reached: only the pod MTU depends on it.
    #[arg(long, value_enum, default_value = "native")]
    pub backend: Backend,
    /// Masquerade pod traffic leaving the cluster CIDRs (`ipMasq`).
    #[arg(long)]
    pub masquerade: bool,
    /// The cluster's pod CIDR(s), which keep pods' source addresses
    /// (`nonMasqueradeCIDRs`); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// Service CIDR(s) kube-proxy translates (`serviceCIDRs`; kubeadm's
    /// default is 10.96.0.0/12); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    pub service_cidr: Vec<IpNet>,
    /// The plugin's `cgroupRoot` (default: the cgroup v2 mount).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Move every other network config in the conf dir aside
    /// (`<name>.cni-ebpf-bak`); uninstall moves them back.
    #[arg(long)]
    pub exclusive: bool,
    /// Seconds to wait for the plugin's STATUS to answer 0 before giving up
    /// without writing the conflist.
    #[arg(long, default_value_t = 120)]
    pub ready_timeout: u64,
}

pub fn run(layout: &BpffsLayout, args: &InstallArgs, as_json: bool) -> anyhow::Result<()> {
    let plan = InstallPlan {
        dirs: args.dirs.to_dirs(),
        plugin_source: plugin_source(args.plugin_binary.as_deref())?,
        conflist: ConflistSettings {
            cni_version: args.cni_version.clone(),
            network_name: args.network_name.clone(),
            pod_cidr: pod_cidr(args)?,
            mtu: mtu(args)?,
            bpffs_root: layout.root().to_path_buf(),
            state_dir: args.state_dir.clone(),
            ipam_data_dir: args.ipam_data_dir.clone(),
            masquerade: args.masquerade,
            cluster_cidrs: args.cluster_cidr.clone(),
            service_cidrs: args.service_cidr.clone(),
            cgroup_root: args.cgroup_root.clone(),
        },
        exclusive: args.exclusive,
        ready_timeout: Duration::from_secs(args.ready_timeout),
    };
    let installed = install::install(&plan)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&installed)?);
        return Ok(());
    }
    let verb = |replaced| if replaced { "installed" } else { "unchanged" };
    println!(
        "{} {}",
        verb(installed.plugin_replaced),
        installed.plugin.display()
    );
    println!(
        "datapath ready after {} ms (STATUS answered 0)",
        installed.waited_ms
    );
    println!(
        "{} {}",
        verb(installed.conflist_replaced),
        installed.conflist.display()
    );
    for moved in &installed.moved_aside {
        println!("moved aside {}", moved.display());
    }
    Ok(())
}

fn plugin_source(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let me = std::env::current_exe().context("locating cni-ebpfd")?;
    Ok(me.with_file_name(install::PLUGIN_NAME))
}

fn pod_cidr(args: &InstallArgs) -> anyhow::Result<PodCidr> {
    if let Some(cidr) = args.pod_cidr {
        return Ok(PodCidr::Cidr(cidr));
    }
    if args.use_pod_cidr {
        return Ok(PodCidr::FromNodeState);
    }
    if args.pod_cidr_from_node_state {
        return Ok(PodCidr::Cidr(pod_cidr::from_node_state(&args.state_dir)?));
    }
    if args.pod_cidr_from_api {
        let name = args
            .node_name
            .as_deref()
            .expect("clap requires --node-name");
        let json = pod_cidr::fetch_node_object(&args.kubectl, name, KUBECTL_TIMEOUT)?;
        return Ok(PodCidr::Cidr(pod_cidr::from_node_object(&json)?));
    }
    let file = args.node_object.as_ref().expect("clap requires one source");
    let json =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(PodCidr::Cidr(pod_cidr::from_node_object(&json)?))
}

fn mtu(args: &InstallArgs) -> anyhow::Result<u32> {
    if let Some(mtu) = args.mtu {
        return Ok(mtu);
    }
    let device = match &args.uplink {
        Some(device) => device.clone(),
        None => uplink::default_route_device()?,
    };
    Ok(uplink::pod_mtu(uplink::mtu_of(&device)?, args.backend))
}
