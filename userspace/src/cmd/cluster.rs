//! `cni-ebpfd run`'s cluster flags: with `--etcd-endpoints` the agent joins
//! the cluster (see the library's `cluster` module).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use cni_ebpf_userspace::{
    BpffsLayout,
    cluster::{self, Backend, ClusterSettings, EtcdTls, Vtep},
};
use ipnet::IpNet;

#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// etcd client URLs (comma-separated); joins the cluster when set.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// PEM CA certificate(s) that signed etcd's server certificate; needed
    /// by https:// endpoints. Read again at every reconnection.
    #[arg(long, value_name = "FILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// This node's PEM client certificate, for an etcd that checks them
    /// (--client-cert-auth).
    #[arg(long, value_name = "FILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// The client certificate's PEM private key.
    #[arg(long, value_name = "FILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// The cluster's name: its keys live under /cni-ebpf/<name>.
    #[arg(long, default_value = "default")]
    pub cluster_name: String,
    /// The key prefix instead of /cni-ebpf/<cluster-name>.
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    /// Pod CIDR of the whole cluster, split into node CIDRs (used by the
    /// node that creates the cluster; later nodes take the stored one).
    /// One per family, comma-separated (as install takes it): with an
    /// IPv6 one the cluster is dual-stack, and every node leases a CIDR of
    /// each family.
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// Prefix length of each node's IPv4 pod CIDR.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_prefix: u8,
    /// Prefix length of each node's IPv6 pod CIDR.
    #[arg(long, default_value_t = 64)]
    pub node_cidr_prefix_v6: u8,
    /// This node's pod CIDR(s), given instead of leased (one per family).
    #[arg(long, value_delimiter = ',')]
    pub pod_cidr: Vec<IpNet>,
    /// This node's name in the cluster (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The address(es) other nodes reach this one at, one per family
    /// (default: the first IPv4 of the default route's device, and that
    /// device's first global IPv6, the next hop of native IPv6 routes).
    #[arg(long, value_delimiter = ',')]
    pub underlay_address: Vec<IpAddr>,
    /// How pods reach other nodes: native routes, the VXLAN overlay, or
    /// native to peers on this node's subnets and VXLAN to the others.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,
    /// VXLAN network identifier of the overlay.
    #[arg(long, default_value_t = 1)]
    pub vxlan_vni: u32,
    /// UDP port of the overlay.
    #[arg(long, default_value_t = 8472)]
    pub vxlan_port: u16,
    /// Seconds a node's subnet outlives its agent (renewed every third).
    #[arg(long, default_value_t = 20)]
    pub lease_ttl: u64,
    /// The plugin's stateDir: the node's pod CIDR goes to
    /// <state-dir>/cluster/node.json.
    #[arg(long, default_value = "/run/cni-ebpf")]
    pub state_dir: PathBuf,
}

impl ClusterArgs {
    /// The endpoints given; an empty value (`--etcd-endpoints=`, as a
    /// manifest passes an unset ConfigMap key) means none.
    fn endpoints(&self) -> Vec<String> {
        self.etcd_endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect()
    }

    /// In cluster mode, the node state file the agent writes after each
    /// claim (`<state-dir>/cluster/node.json`).
    pub fn node_state_file(&self) -> Option<PathBuf> {
        (!self.endpoints().is_empty()).then(|| cluster::node_state::path(&self.state_dir))
    }

    /// Joins the cluster on a thread of its own, or does nothing without
    /// `--etcd-endpoints`.
    pub fn start(&self, layout: &BpffsLayout) -> anyhow::Result<Option<cluster::Handle>> {
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            return Ok(None);
        }
        let node_name = match &self.node_name {
            Some(name) => name.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("reading the hostname for --node-name")?
                .trim()
                .to_string(),
        };
        let settings = ClusterSettings {
            endpoints,
            tls: EtcdTls {
                ca_file: non_empty(&self.etcd_cafile),
                cert_file: non_empty(&self.etcd_certfile),
                key_file: non_empty(&self.etcd_keyfile),
            },
            prefix: self
                .etcd_prefix
                .clone()
                .unwrap_or_else(|| format!("/cni-ebpf/{}", self.cluster_name)),
            cluster_cidr: self.cluster_cidr.iter().find_map(|net| match net {
                IpNet::V4(v4) => Some(*v4),
                IpNet::V6(_) => None,
            }),
            node_cidr_prefix: self.node_cidr_prefix,
            cluster_cidr_v6: self.cluster_cidr.iter().find_map(|net| match net {
                IpNet::V6(v6) => Some(*v6),
                IpNet::V4(_) => None,
            }),
            node_cidr_prefix_v6: self.node_cidr_prefix_v6,
            pod_cidr: self.pod_cidr.iter().find_map(|net| match net {
                IpNet::V4(v4) => Some(*v4),
                IpNet::V6(_) => None,
            }),
            pod_cidr_v6: self.pod_cidr.iter().find_map(|net| match net {
                IpNet::V6(v6) => Some(*v6),
                IpNet::V4(_) => None,
            }),
            node_name,
            underlay_address: self.underlay_address.iter().find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            }),
            underlay_address_v6: self.underlay_address.iter().find_map(|ip| match ip {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            }),
            backend: self.backend,
            vtep: Vtep {
                vni: self.vxlan_vni,
                port: self.vxlan_port,
            },
            lease_ttl: Duration::from_secs(self.lease_ttl.max(1)),
            state_dir: self.state_dir.clone(),
        };
        Ok(Some(
            cluster::spawn(settings, layout.clone()).context("joining the cluster")?,
        ))
    }
}

/// A path flag, where an empty value (`--etcd-cafile=`, as a manifest
/// passes an unset ConfigMap key) means none.
fn non_empty(path: &Option<PathBuf>) -> Option<PathBuf> {
    path.clone().filter(|p| !p.as_os_str().is_empty())
}
