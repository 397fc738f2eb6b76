//! Where the node's pod CIDR comes from, besides the command line: the node
//! state file of the cluster-mode agent (`<state-dir>/cluster/node.json`,
//! the lease it holds in etcd), or a Kubernetes Node object
//! (`spec.podCIDRs`, as the controller manager's `--allocate-node-cidrs`
//! fills it: one CIDR per family on a dual-stack cluster).

use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use super::{InstallError, Result};
use crate::cluster::node_state;

/// `<state_dir>/cluster/node.json`, the cluster-mode agent's file.
pub fn node_state_path(state_dir: &Path) -> PathBuf {
    node_state::path(state_dir)
}

/// The pod CIDRs the cluster-mode agent leased for this node (an IPv6 one
/// in a dual-stack cluster).
pub fn from_node_state(state_dir: &Path) -> Result<NodePodCidrs> {
    let path = node_state::path(state_dir);
    node_state::read_file(&path)
        .map(|state| NodePodCidrs {
            ipv4: Some(state.pod_cidr),
            ipv6: state.pod_cidr_v6,
        })
        .map_err(|e| InstallError::io("reading", &path, e))
}

#[derive(Deserialize)]
struct Node {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: NodeSpec,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeSpec {
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs", default)]
    pod_cidrs: Vec<String>,
}

/// A node's pod CIDRs: at most one per family, as the controller manager
/// allocates them (`spec.podCIDRs` of a dual-stack node lists both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodePodCidrs {
    pub ipv4: Option<Ipv4Net>,
    pub ipv6: Option<Ipv6Net>,
}

impl NodePodCidrs {
    /// The CIDRs for the conflist, IPv4 first: IPv4 alone for
    /// [`IpFamilies::Ipv4`], both for [`IpFamilies::DualStack`]; an error
    /// naming the node when a family asked for is missing.
    pub fn select(&self, node: &str, families: IpFamilies) -> Result<Vec<IpNet>> {
        let ipv4 = self.ipv4.ok_or_else(|| {
            InstallError::PodCidr(format!(
                "node {node} has no IPv4 pod CIDR in spec.podCIDRs ({}): the controller manager allocates them with --allocate-node-cidrs and --cluster-cidr",
                self.listed()
            ))
        })?;
        match families {
            IpFamilies::Ipv4 => {
                if let Some(v6) = self.ipv6 {
                    log::info!("node {node}: IPv6 pod CIDR {v6} left out (--ip-families ipv4)");
                }
                Ok(vec![IpNet::V4(ipv4)])
            }
            IpFamilies::DualStack => {
                let ipv6 = self.ipv6.ok_or_else(|| {
                    InstallError::PodCidr(format!(
                        "node {node} has no IPv6 pod CIDR in spec.podCIDRs ({}), and --ip-families dual-stack asks for one: the controller manager's --cluster-cidr lists one CIDR per family on a dual-stack cluster",
                        self.listed()
                    ))
                })?;
                Ok(vec![IpNet::V4(ipv4), IpNet::V6(ipv6)])
            }
        }
    }

    fn listed(&self) -> String {
        let listed: Vec<String> = self
            .ipv4
            .map(|n| n.to_string())
            .into_iter()
            .chain(self.ipv6.map(|n| n.to_string()))
            .collect();
        if listed.is_empty() {
            "none".into()
        } else {
            listed.join(", ")
        }
    }
}

/// Which families of the node's pod CIDRs the conflist gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IpFamilies {
    /// The IPv4 pod CIDR alone (an IPv6 one is left out).
    #[default]
    Ipv4,
    /// One range set per family, IPv4 then IPv6 (host-local's layout); the
    /// plugin's STATUS must accept it before the conflist is written.
    DualStack,
}

/// The pod CIDRs of a node's `spec.podCIDRs` (else `spec.podCIDR`): the
/// first of each family.
pub fn from_spec(node: &str, pod_cidrs: &[String], pod_cidr: Option<&str>) -> Result<NodePodCidrs> {
    let listed: Vec<&str> = if pod_cidrs.is_empty() {
        pod_cidr.into_iter().collect()
    } else {
        pod_cidrs.iter().map(String::as_str).collect()
    };
    let mut cidrs = NodePodCidrs::default();
    for cidr in listed {
        let net: IpNet = cidr
            .parse()
            .map_err(|e| InstallError::PodCidr(format!("node {node}: podCIDR {cidr:?}: {e}")))?;
        match net {
            IpNet::V4(v4) => {
                cidrs.ipv4.get_or_insert(v4);
            }
            IpNet::V6(v6) => {
                cidrs.ipv6.get_or_insert(v6);
            }
        }
    }
    Ok(cidrs)
}

/// The pod CIDRs of a Node object (JSON, as `kubectl get node -o json`
/// prints it); the node's name for messages.
pub fn from_node_object(json: &str) -> Result<(String, NodePodCidrs)> {
    let node: Node = serde_json::from_str(json)
        .map_err(|e| InstallError::PodCidr(format!("not a Node object: {e}")))?;
    let cidrs = from_spec(
        &node.metadata.name,
        &node.spec.pod_cidrs,
        node.spec.pod_cidr.as_deref(),
    )?;
    Ok((node.metadata.name, cidrs))
}

/// The pod CIDRs of a Node read from the API ([`super::kube_api`]).
#[cfg(feature = "kube-api")]
pub fn from_api_node(node: &k8s_openapi::api::core::v1::Node) -> Result<NodePodCidrs> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let spec = node.spec.as_ref();
    from_spec(
        name,
        spec.and_then(|s| s.pod_cidrs.as_deref())
            .unwrap_or_default(),
        spec.and_then(|s| s.pod_cidr.as_deref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Node as the API server returns it (trimmed), dual-stack, IPv6 first.
    const DUAL_STACK_NODE: &str = r#"{
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": "worker-1", "labels": { "kubernetes.io/os": "linux" } },
        "spec": {
            "podCIDR": "fd00:10:244:1::/64",
            "podCIDRs": ["fd00:10:244:1::/64", "10.244.1.0/24"],
            "providerID": "kind://docker/kind/worker-1"
        },
        "status": { "addresses": [{ "type": "InternalIP", "address": "172.18.0.3" }] }
    }"#;

    fn cidrs(json: &str, families: IpFamilies) -> Result<Vec<String>> {
        let (name, cidrs) = from_node_object(json)?;
        Ok(cidrs
            .select(&name, families)?
            .iter()
            .map(ToString::to_string)
            .collect())
    }

    #[test]
    fn the_ipv4_entry_of_pod_cidrs_is_the_nodes() {
        assert_eq!(
            cidrs(DUAL_STACK_NODE, IpFamilies::Ipv4).unwrap(),
            ["10.244.1.0/24"]
        );
    }

    #[test]
    fn dual_stack_gives_one_cidr_per_family_ipv4_first() {
        assert_eq!(
            cidrs(DUAL_STACK_NODE, IpFamilies::DualStack).unwrap(),
            ["10.244.1.0/24", "fd00:10:244:1::/64"]
        );
        let v4_only = r#"{"metadata":{"name":"n5"},"spec":{"podCIDRs":["10.244.5.0/24"]}}"#;
        let err = cidrs(v4_only, IpFamilies::DualStack)
            .unwrap_err()
            .to_string();
        assert!(err.contains("n5") && err.contains("no IPv6"), "{err}");
        // A second CIDR of a family (not something Kubernetes allocates)
        // does not replace the first.
        let two =
            r#"{"metadata":{"name":"n6"},"spec":{"podCIDRs":["10.244.6.0/24","10.245.6.0/24"]}}"#;
        assert_eq!(cidrs(two, IpFamilies::Ipv4).unwrap(), ["10.244.6.0/24"]);
    }

    #[test]
    fn an_old_node_with_pod_cidr_only_still_has_one() {
        let node = r#"{"kind":"Node","metadata":{"name":"n"},"spec":{"podCIDR":"10.244.9.0/24"}}"#;
        assert_eq!(cidrs(node, IpFamilies::Ipv4).unwrap(), ["10.244.9.0/24"]);
    }

    #[test]
    fn a_node_without_one_says_who_allocates_them() {
        let node = r#"{"kind":"Node","metadata":{"name":"n2"},"spec":{}}"#;
        let err = cidrs(node, IpFamilies::Ipv4).unwrap_err().to_string();
        assert!(
            err.contains("n2") && err.contains("--allocate-node-cidrs"),
            "{err}"
        );
        let v6 = r#"{"metadata":{"name":"n3"},"spec":{"podCIDRs":["fd00::/64"]}}"#;
        assert!(cidrs(v6, IpFamilies::Ipv4).is_err());
        let bad = r#"{"metadata":{"name":"n4"},"spec":{"podCIDRs":["10.244.1.0/33"]}}"#;
        assert!(
            cidrs(bad, IpFamilies::Ipv4)
                .unwrap_err()
                .to_string()
                .contains("n4")
        );
    }

    #[test]
    fn the_cluster_agents_node_state_file_gives_its_lease() {
        let dir =
            std::env::temp_dir().join(format!("cni-ebpf-install-state-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("cluster")).unwrap();
        // The file as the cluster-mode agent writes it (branch `cluster`,
        // userspace/src/cluster/node_state.rs).
        std::fs::write(
            node_state_path(&dir),
            r#"{"nodeName":"n1","podCIDR":"10.244.7.0/24","mtu":1450,"backend":"vxlan","underlay":"10.99.2.13"}"#,
        )
        .unwrap();
        assert_eq!(
            from_node_state(&dir).unwrap().ipv4.unwrap().to_string(),
            "10.244.7.0/24"
        );
        std::fs::write(
            node_state_path(&dir),
            r#"{"nodeName":"n1","podCIDR":"10.244.7.0/24","podCIDRv6":"fd00:10:244:7::/64","mtu":1450,"backend":"vxlan","underlay":"10.99.2.13"}"#,
        )
        .unwrap();
        let both = from_node_state(&dir).unwrap();
        assert_eq!(
            both.select("n1", IpFamilies::DualStack).unwrap(),
            [
                "10.244.7.0/24".parse::<IpNet>().unwrap(),
                "fd00:10:244:7::/64".parse().unwrap()
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(from_node_state(&dir).is_err());
    }
}
