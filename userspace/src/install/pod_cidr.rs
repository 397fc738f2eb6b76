//! Where the node's pod CIDR comes from, besides the command line: the node
//! state file of the cluster-mode agent (`<state-dir>/cluster/node.json`,
//! the lease it holds in etcd), or a Kubernetes Node object
//! (`spec.podCIDRs`, as the controller manager's `--allocate-node-cidrs`
//! fills it).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

use super::{InstallError, Result};
use crate::cluster::node_state;

/// `<state_dir>/cluster/node.json`, the cluster-mode agent's file.
pub fn node_state_path(state_dir: &Path) -> PathBuf {
    node_state::path(state_dir)
}

/// The pod CIDR the cluster-mode agent leased for this node.
pub fn from_node_state(state_dir: &Path) -> Result<Ipv4Net> {
    let path = node_state::path(state_dir);
    node_state::read_file(&path)
        .map(|state| state.pod_cidr)
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

/// The IPv4 pod CIDR of a Node object (JSON, as `kubectl get node -o json`
/// prints it): the first IPv4 entry of `spec.podCIDRs` (dual-stack nodes
/// list one per family; the datapath forwards IPv4), else `spec.podCIDR`.
pub fn from_node_object(json: &str) -> Result<Ipv4Net> {
    let node: Node = serde_json::from_str(json)
        .map_err(|e| InstallError::PodCidr(format!("not a Node object: {e}")))?;
    let listed = node.spec.pod_cidrs.iter().chain(node.spec.pod_cidr.iter());
    let mut parsed = Vec::new();
    for cidr in listed {
        let net: IpNet = cidr.parse().map_err(|e| {
            InstallError::PodCidr(format!(
                "node {}: podCIDR {cidr:?}: {e}",
                node.metadata.name
            ))
        })?;
        parsed.push(net);
    }
    parsed
        .into_iter()
        .find_map(|net| match net {
            IpNet::V4(v4) => Some(v4),
            IpNet::V6(_) => None,
        })
        .ok_or_else(|| {
            InstallError::PodCidr(format!(
                "node {} has no IPv4 pod CIDR in spec.podCIDRs: the controller manager allocates them with --allocate-node-cidrs and --cluster-cidr",
                node.metadata.name
            ))
        })
}

/// The Node object of `node_name` from the Kubernetes API, through
/// `kubectl get node <name> -o json` (inside a pod kubectl uses the pod's
/// service account and the in-cluster API address; the ServiceAccount needs
/// `get` on nodes). A kubectl that does not answer within `timeout` is killed.
pub fn fetch_node_object(kubectl: &Path, node_name: &str, timeout: Duration) -> Result<String> {
    let mut child = Command::new(kubectl)
        .args(["get", "node", node_name, "--output", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| InstallError::io("running", kubectl, e))?;
    let deadline = Instant::now() + timeout;
    while child
        .try_wait()
        .map_err(|e| InstallError::io("waiting for", kubectl, e))?
        .is_none()
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(InstallError::PodCidr(format!(
                "{} get node {node_name}: no answer within {timeout:?}",
                kubectl.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child
        .wait_with_output()
        .map_err(|e| InstallError::io("reading", kubectl, e))?;
    if !output.status.success() {
        return Err(InstallError::PodCidr(format!(
            "{} get node {node_name}: {}: {}",
            kubectl.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    String::from_utf8(output.stdout)
        .map_err(|e| InstallError::PodCidr(format!("kubectl's output: {e}")))
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

    #[test]
    fn the_ipv4_entry_of_pod_cidrs_is_the_nodes() {
        assert_eq!(
            from_node_object(DUAL_STACK_NODE).unwrap(),
            "10.244.1.0/24".parse::<Ipv4Net>().unwrap()
        );
    }

    #[test]
    fn an_old_node_with_pod_cidr_only_still_has_one() {
        let node = r#"{"kind":"Node","metadata":{"name":"n"},"spec":{"podCIDR":"10.244.9.0/24"}}"#;
        assert_eq!(from_node_object(node).unwrap().to_string(), "10.244.9.0/24");
    }

    #[test]
    fn a_node_without_one_says_who_allocates_them() {
        let node = r#"{"kind":"Node","metadata":{"name":"n2"},"spec":{}}"#;
        let err = from_node_object(node).unwrap_err().to_string();
        assert!(
            err.contains("n2") && err.contains("--allocate-node-cidrs"),
            "{err}"
        );
        let v6 = r#"{"metadata":{"name":"n3"},"spec":{"podCIDRs":["fd00::/64"]}}"#;
        assert!(from_node_object(v6).is_err());
        let bad = r#"{"metadata":{"name":"n4"},"spec":{"podCIDRs":["10.244.1.0/33"]}}"#;
        assert!(
            from_node_object(bad)
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
        assert_eq!(from_node_state(&dir).unwrap().to_string(), "10.244.7.0/24");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(from_node_state(&dir).is_err());
    }
}
