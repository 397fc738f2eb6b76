//! The conflist install writes: one `cni-ebpf` plugin with host-local IPAM
//! on the node's pod CIDR, the pod MTU, masquerade and the cluster's
//! settings (README "Configuration").

use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::PLUGIN_NAME;

/// The version STATUS exists in; install asks it whatever the conflist says.
pub const STATUS_CNI_VERSION: &str = "1.1.0";

/// The subnets host-local allocates from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodCidr {
    /// Written into the conflist: one range set per CIDR (host-local's
    /// layout: one inner array per family), IPv4 first.
    Cidrs(Vec<IpNet>),
    /// `"subnet": "usePodCidr"`: the plugin reads the CIDR the cluster-mode
    /// agent leased (`<stateDir>/cluster/node.json`) at every ADD; with
    /// `dual_stack`, `"usePodCidrIPv6"` in a second range set too.
    FromNodeState { dual_stack: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflistSettings {
    pub cni_version: String,
    /// The network's `name` (runtimes key cached results by it).
    pub network_name: String,
    pub pod_cidr: PodCidr,
    /// The pods' MTU; without one the plugin takes the cluster agent's
    /// (with `usePodCidr`) or the default route device's.
    pub mtu: Option<u32>,
    pub bpffs_root: PathBuf,
    pub state_dir: PathBuf,
    /// host-local's `dataDir` (its default, `/var/lib/cni/networks`, when unset).
    pub ipam_data_dir: Option<PathBuf>,
    /// `ipMasq`: pod traffic leaving the cluster CIDRs is masqueraded.
    pub masquerade: bool,
    /// `nonMasqueradeCIDRs`: every pod CIDR of the cluster.
    pub cluster_cidrs: Vec<IpNet>,
    /// `serviceCIDRs`: what kube-proxy translates on the node.
    pub service_cidrs: Vec<IpNet>,
    /// `cgroupRoot` (the plugin's default: the cgroup v2 mount).
    pub cgroup_root: Option<PathBuf>,
}

/// The conflist as JSON.
pub fn render(settings: &ConflistSettings) -> Value {
    let (ranges, routes): (Vec<Value>, Vec<Value>) = match &settings.pod_cidr {
        PodCidr::Cidrs(cidrs) => cidrs
            .iter()
            .map(|cidr| {
                let default = match cidr {
                    IpNet::V4(_) => "0.0.0.0/0",
                    IpNet::V6(_) => "::/0",
                };
                (
                    json!([{ "subnet": cidr.to_string() }]),
                    json!({ "dst": default }),
                )
            })
            .unzip(),
        PodCidr::FromNodeState { dual_stack } => {
            let mut families = vec![("usePodCidr", "0.0.0.0/0")];
            if *dual_stack {
                families.push(("usePodCidrIPv6", "::/0"));
            }
            families
                .into_iter()
                .map(|(subnet, default)| (json!([{ "subnet": subnet }]), json!({ "dst": default })))
                .unzip()
        }
    };
    let mut ipam = json!({
        "type": "host-local",
        "ranges": ranges,
        "routes": routes,
    });
    if let Some(dir) = &settings.ipam_data_dir {
        ipam["dataDir"] = json!(dir);
    }
    let mut plugin = json!({
        "type": PLUGIN_NAME,
        "bpffsRoot": settings.bpffs_root,
        "stateDir": settings.state_dir,
        "ipMasq": settings.masquerade,
        "capabilities": { "portMappings": true, "bandwidth": true },
        "ipam": ipam,
    });
    if let Some(mtu) = settings.mtu {
        plugin["mtu"] = json!(mtu);
    }
    if !settings.cluster_cidrs.is_empty() {
        plugin["nonMasqueradeCIDRs"] = cidrs(&settings.cluster_cidrs);
    }
    if !settings.service_cidrs.is_empty() {
        plugin["serviceCIDRs"] = cidrs(&settings.service_cidrs);
    }
    if let Some(root) = &settings.cgroup_root {
        plugin["cgroupRoot"] = json!(root);
    }
    json!({
        "cniVersion": settings.cni_version,
        "name": settings.network_name,
        "plugins": [plugin],
    })
}

fn cidrs(nets: &[IpNet]) -> Value {
    nets.iter().map(|n| n.to_string()).collect()
}

/// The network config a runtime hands the plugin for STATUS: the conflist's
/// one plugin with `name` and `cniVersion` (1.1.0, where STATUS is) added.
pub fn status_conf(conflist: &Value) -> Value {
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = json!(STATUS_CNI_VERSION);
    conf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ConflistSettings {
        ConflistSettings {
            cni_version: "1.0.0".into(),
            network_name: "cni-ebpf".into(),
            pod_cidr: PodCidr::Cidrs(vec!["10.244.3.0/24".parse().unwrap()]),
            mtu: Some(1450),
            bpffs_root: "/sys/fs/bpf/cni-ebpf".into(),
            state_dir: "/run/cni-ebpf".into(),
            ipam_data_dir: None,
            masquerade: true,
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            cgroup_root: None,
        }
    }

    #[test]
    fn renders_the_plugin_with_every_setting() {
        let conflist = render(&settings());
        assert_eq!(
            conflist,
            json!({
                "cniVersion": "1.0.0",
                "name": "cni-ebpf",
                "plugins": [{
                    "type": "cni-ebpf",
                    "mtu": 1450,
                    "bpffsRoot": "/sys/fs/bpf/cni-ebpf",
                    "stateDir": "/run/cni-ebpf",
                    "ipMasq": true,
                    "nonMasqueradeCIDRs": ["10.244.0.0/16"],
                    "serviceCIDRs": ["10.96.0.0/12"],
                    "capabilities": { "portMappings": true, "bandwidth": true },
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": "10.244.3.0/24" }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                    },
                }],
            })
        );
    }

    #[test]
    fn optional_keys_stay_out_and_use_pod_cidr_is_spelled_as_the_plugin_reads_it() {
        let mut s = settings();
        s.pod_cidr = PodCidr::FromNodeState { dual_stack: false };
        s.cluster_cidrs.clear();
        s.service_cidrs.clear();
        s.ipam_data_dir = Some("/var/lib/cni-ebpf/ipam".into());
        s.mtu = None;
        let plugin = &render(&s)["plugins"][0];
        assert!(plugin.get("mtu").is_none());
        assert_eq!(plugin["ipam"]["ranges"][0][0]["subnet"], "usePodCidr");
        assert_eq!(plugin["ipam"]["dataDir"], "/var/lib/cni-ebpf/ipam");
        assert!(plugin.get("serviceCIDRs").is_none());
        assert!(plugin.get("nonMasqueradeCIDRs").is_none());
    }

    #[test]
    fn dual_stack_writes_one_range_set_and_one_default_route_per_family() {
        let mut s = settings();
        s.pod_cidr = PodCidr::Cidrs(vec![
            "10.244.3.0/24".parse().unwrap(),
            "fd00:10:244:3::/64".parse().unwrap(),
        ]);
        let ipam = &render(&s)["plugins"][0]["ipam"];
        assert_eq!(
            ipam["ranges"],
            json!([[{ "subnet": "10.244.3.0/24" }], [{ "subnet": "fd00:10:244:3::/64" }]])
        );
        assert_eq!(
            ipam["routes"],
            json!([{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }])
        );
    }

    #[test]
    fn a_dual_stack_cluster_nodes_conflist_reads_both_of_its_cidrs() {
        let mut s = settings();
        s.pod_cidr = PodCidr::FromNodeState { dual_stack: true };
        let ipam = &render(&s)["plugins"][0]["ipam"];
        assert_eq!(
            ipam["ranges"],
            json!([[{ "subnet": "usePodCidr" }], [{ "subnet": "usePodCidrIPv6" }]])
        );
        assert_eq!(
            ipam["routes"],
            json!([{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }])
        );
    }

    #[test]
    fn status_gets_the_plugin_with_name_and_version() {
        let conf = status_conf(&render(&settings()));
        assert_eq!(conf["type"], "cni-ebpf");
        assert_eq!(conf["name"], "cni-ebpf");
        assert_eq!(conf["cniVersion"], "1.1.0");
    }
}
