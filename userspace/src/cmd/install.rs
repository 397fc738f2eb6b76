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
    install::{
        self, Backend, ConflistSettings, InstallPlan, NodeDirs, PodCidr,
        pod_cidr::{self, IpFamilies, NodePodCidrs},
        uplink,
    },
};
use ipnet::IpNet;

/// How long connecting to the API server, and its answer, may each take.
#[cfg(feature = "kube-api")]
const API_TIMEOUT: Duration = Duration::from_secs(15);

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
    "pod_cidr_source",
])))]
pub struct InstallArgs {
    #[command(flatten)]
    pub dirs: NodeDirArgs,
    /// The plugin binary to install (default: `cni-ebpf` next to this binary).
    #[arg(long)]
    pub plugin_binary: Option<PathBuf>,
    /// The node's pod CIDR(s), written into the conflist: one per family
    /// (repeat or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub pod_cidr: Vec<IpNet>,
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
    /// Read this node's `spec.podCIDRs` from the Kubernetes API (GET
    /// /api/v1/nodes/<--node-name> with the pod's service account).
    #[arg(long, requires = "node_name")]
    pub pod_cidr_from_api: bool,
    /// The source as one value, for manifests: `api` is
    /// --pod-cidr-from-api, `cluster` is --use-pod-cidr --leave-to-agent.
    #[arg(long, value_enum)]
    pub pod_cidr_source: Option<PodCidrSource>,
    /// This node's name in Kubernetes (the DaemonSet passes spec.nodeName).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The API server (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT,
    /// as in every pod).
    #[arg(long)]
    pub api_server: Option<String>,
    /// The service account's mounted credentials (`token`, `ca.crt`).
    #[arg(long, default_value = "/var/run/secrets/kubernetes.io/serviceaccount")]
    pub service_account_dir: PathBuf,
    /// Which families of the node's pod CIDRs go into the conflist:
    /// `dual-stack` writes one range set per family (the plugin's STATUS
    /// must accept it).
    #[arg(long, value_enum, default_value = "ipv4")]
    pub ip_families: IpFamilies,
    /// If STATUS does not answer 0 at once, write the conflist withdrawn
    /// (`<name>.cni-ebpf-withdrawn`) instead of waiting: the agent (`run
    /// --cni-conflist`) publishes it once the datapath is usable and, in
    /// cluster mode, the node holds a pod CIDR.
    #[arg(long)]
    pub leave_to_agent: bool,
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
    /// Pods' MTU (default: the uplink's, less 50 with --backend vxlan or
    /// auto; with --use-pod-cidr none is written and the plugin takes the
    /// cluster agent's).
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

/// `--pod-cidr-source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodCidrSource {
    /// The Node's spec.podCIDRs from the Kubernetes API.
    Api,
    /// The cluster-mode agent's lease (usePodCidr), published by the agent.
    Cluster,
}

pub fn run(layout: &BpffsLayout, args: &InstallArgs, as_json: bool) -> anyhow::Result<()> {
    let pod_cidr = pod_cidr(args)?;
    let plan = InstallPlan {
        dirs: args.dirs.to_dirs(),
        plugin_source: plugin_source(args.plugin_binary.as_deref())?,
        conflist: ConflistSettings {
            cni_version: args.cni_version.clone(),
            network_name: args.network_name.clone(),
            mtu: mtu(args, &pod_cidr)?,
            pod_cidr,
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
        leave_to_agent: args.leave_to_agent || args.pod_cidr_source == Some(PodCidrSource::Cluster),
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
    if installed.left_to_agent {
        println!("datapath not ready yet: the agent publishes the conflist");
    } else {
        println!(
            "datapath ready after {} ms (STATUS answered 0)",
            installed.waited_ms
        );
    }
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
    let (node, cidrs) = if !args.pod_cidr.is_empty() {
        let mut cidrs = NodePodCidrs::default();
        for cidr in &args.pod_cidr {
            let twice = match cidr {
                IpNet::V4(v4) => cidrs.ipv4.replace(*v4).is_some(),
                IpNet::V6(v6) => cidrs.ipv6.replace(*v6).is_some(),
            };
            anyhow::ensure!(!twice, "--pod-cidr: at most one CIDR per family");
        }
        ("this node".to_string(), cidrs)
    } else if args.use_pod_cidr || args.pod_cidr_source == Some(PodCidrSource::Cluster) {
        return Ok(PodCidr::FromNodeState {
            dual_stack: args.ip_families == IpFamilies::DualStack,
        });
    } else if args.pod_cidr_from_node_state {
        (
            "this node".to_string(),
            pod_cidr::from_node_state(&args.state_dir)?,
        )
    } else if args.pod_cidr_from_api || args.pod_cidr_source == Some(PodCidrSource::Api) {
        let name = args
            .node_name
            .as_deref()
            .context("--pod-cidr-source api needs --node-name")?;
        (name.to_string(), from_api(args, name)?)
    } else {
        let file = args.node_object.as_ref().expect("clap requires one source");
        let json =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        pod_cidr::from_node_object(&json)?
    };
    Ok(PodCidr::Cidrs(cidrs.select(&node, args.ip_families)?))
}

#[cfg(feature = "kube-api")]
fn from_api(args: &InstallArgs, name: &str) -> anyhow::Result<NodePodCidrs> {
    use cni_ebpf_userspace::install::kube_api;
    let access =
        kube_api::ApiAccess::in_cluster(args.api_server.as_deref(), &args.service_account_dir)?;
    let node = kube_api::get_node(&access, name, API_TIMEOUT)?;
    Ok(pod_cidr::from_api_node(&node)?)
}

#[cfg(not(feature = "kube-api"))]
fn from_api(_: &InstallArgs, _: &str) -> anyhow::Result<NodePodCidrs> {
    anyhow::bail!(
        "this cni-ebpfd was built without the kube-api feature: give --pod-cidr or --node-object"
    )
}

fn mtu(args: &InstallArgs, pod_cidr: &PodCidr) -> anyhow::Result<Option<u32>> {
    if let Some(mtu) = args.mtu {
        return Ok(Some(mtu));
    }
    if matches!(pod_cidr, PodCidr::FromNodeState { .. }) {
        // The cluster agent's node.json holds the MTU for its backend.
        return Ok(None);
    }
    let device = match &args.uplink {
        Some(device) => device.clone(),
        None => uplink::default_route_device()?,
    };
    Ok(Some(uplink::pod_mtu(
        uplink::mtu_of(&device)?,
        args.backend,
    )))
}
