//! The `portMappings` capability: host ports published by the pod, as the
//! reference portmap plugin reads them from `runtimeConfig`, but served by
//! the datapath (one hash lookup per packet whatever the number of mappings)
//! and by cgroup socket hooks for connections from the node itself.
//!
//! The conflist declares `"capabilities": {"portMappings": true}` on the
//! cni-ebpf plugin itself; no second plugin. Config key `cgroupRoot`: the
//! cgroup v2 directory whose processes may reach host ports at the node's
//! addresses and 127.0.0.1 (default: the cgroup v2 mount).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use cni_ebpf_userspace::host_ports::PortMapping;

use crate::error::{CniError, CniResult};

/// A `portMappings` entry before the pod's address is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPortRequest {
    pub proto: u8,
    pub host_port: u16,
    pub container_port: u16,
    /// `None`: every node address of every family the pod has; an
    /// unspecified address (`0.0.0.0`, `::`): every one of its family.
    pub host_ip: Option<IpAddr>,
}

impl HostPortRequest {
    /// The mappings onto a pod with `pod_addrs` (at most one per family):
    /// one per family the request covers. A request for a family the pod
    /// lacks is an error naming `hostIP`; without `hostIP`, at least one
    /// family must be there.
    pub fn for_pod(&self, pod_addrs: &[IpAddr]) -> CniResult<Vec<PortMapping>> {
        let mapping = |pod_addr: IpAddr| PortMapping {
            proto: self.proto,
            host_port: self.host_port,
            host_ip: self.host_ip.filter(|ip| !ip.is_unspecified()),
            pod_addr,
            pod_port: self.container_port,
        };
        let mappings: Vec<PortMapping> = match self.host_ip {
            None => pod_addrs.iter().copied().map(mapping).collect(),
            Some(ip) => pod_addrs
                .iter()
                .copied()
                .filter(|pod| pod.is_ipv6() == ip.is_ipv6())
                .take(1)
                .map(mapping)
                .collect(),
        };
        if mappings.is_empty() {
            let family = match self.host_ip {
                Some(IpAddr::V6(_)) => "IPv6",
                Some(IpAddr::V4(_)) => "IPv4",
                None => "IP",
            };
            let host_ip = self.host_ip.map(|ip| format!(" {ip}")).unwrap_or_default();
            return Err(CniError::invalid_config(format!(
                "runtimeConfig.portMappings hostIP{host_ip} (hostPort {}): the pod has no {family} address",
                self.host_port
            )));
        }
        Ok(mappings)
    }
}

/// Where the hooks on the node's own sockets (host ports reached from the
/// node, TCP pacing) attach, or why they cannot: only connections from the
/// node itself need them, so a node without a cgroup v2 hierarchy still
/// serves host ports to the outside and to pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeHooks {
    Cgroup(PathBuf),
    Unavailable(String),
}

/// `cgroupRoot` (absolute: the config checked it), or the cgroup v2
/// mount point; either must be a cgroup v2 directory to be used.
pub fn node_hooks(cgroup_root: Option<&Path>) -> CniResult<NodeHooks> {
    if let Some(path) = cgroup_root {
        return Ok(match cni_ebpf_userspace::node::check_cgroup2(path) {
            Ok(()) => NodeHooks::Cgroup(path.to_path_buf()),
            Err(why) => NodeHooks::Unavailable(format!("cgroupRoot {why}")),
        });
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CniError::io("reading /proc/self/mountinfo", e))?;
    Ok(
        match cni_ebpf_userspace::node::cgroup2_mount_in(&mountinfo) {
            Some(path) => NodeHooks::Cgroup(path),
            None => NodeHooks::Unavailable(
                "no cgroup v2 mount found (set cgroupRoot to a cgroup v2 directory)".to_string(),
            ),
        },
    )
}

/// What a pod without the node hooks lacks, for logs and CHECK.
pub fn missing_hooks_warning(why: &str) -> String {
    format!(
        "{why}: host ports are not reachable from the node's own processes and TCP senders \
         are not paced (the policer still limits); traffic from outside and from pods is served"
    )
}
