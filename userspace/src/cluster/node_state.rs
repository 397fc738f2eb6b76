//! The node's cluster state on local disk: `<state-dir>/cluster/node.json`,
//! which the plugin's host-local IPAM reads for `"subnet": "usePodCidr"`
//! (and `"usePodCidrIPv6"`), and which remembers the node's last pod CIDRs
//! across agent restarts.

use std::{
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{
    error::{ClusterError, Result},
    records::Backend,
};

/// The file's name inside `<state-dir>/cluster/`.
pub const FILE_NAME: &str = "node.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    pub node_name: String,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    /// The IPv6 pod CIDR of a dual-stack cluster.
    #[serde(rename = "podCIDRv6", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<Ipv6Net>,
    /// The MTU pods should get: the underlay's, less the tunnel header when
    /// the node may tunnel.
    pub mtu: u32,
    pub backend: Backend,
    pub underlay: Ipv4Addr,
    #[serde(
        rename = "underlayV6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub underlay_v6: Option<Ipv6Addr>,
}

/// `<state_dir>/cluster/node.json`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster").join(FILE_NAME)
}

/// The state a previous run left, if any; an unreadable file counts as none.
pub fn read(state_dir: &Path) -> Option<NodeState> {
    read_file(&path(state_dir)).ok()
}

/// The state in `file`: `NotFound` when there is none, `InvalidData` when
/// it is not a node state.
pub fn read_file(file: &Path) -> std::io::Result<NodeState> {
    let bytes = std::fs::read(file)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Replaces the file in one rename, so a reader sees the old state or the
/// new one, never half of either.
pub fn write(state_dir: &Path, state: &NodeState) -> Result<()> {
    let path = path(state_dir);
    let dir = path.parent().expect("the path has a directory");
    std::fs::create_dir_all(dir).map_err(|e| ClusterError::io("creating", dir, e))?;
    let staging = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let mut file =
        std::fs::File::create(&staging).map_err(|e| ClusterError::io("creating", &staging, e))?;
    let json = serde_json::to_vec_pretty(state).expect("a node state always serializes");
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .map_err(|e| ClusterError::io("writing", &staging, e))?;
    std::fs::rename(&staging, &path).map_err(|e| ClusterError::io("renaming onto", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_state_reads_back() {
        let dir = std::env::temp_dir().join(format!("cni-ebpf-node-state-{}", std::process::id()));
        let state = NodeState {
            node_name: "n1".into(),
            pod_cidr: "10.244.7.0/24".parse().unwrap(),
            pod_cidr_v6: Some("fd00:10:244:7::/64".parse().unwrap()),
            mtu: 1450,
            backend: Backend::Vxlan,
            underlay: Ipv4Addr::new(10, 99, 2, 13),
            underlay_v6: None,
        };
        assert_eq!(read(&dir), None);
        write(&dir, &state).unwrap();
        assert_eq!(read(&dir), Some(state));
        let text = std::fs::read_to_string(path(&dir)).unwrap();
        assert!(text.contains(r#""podCIDR": "10.244.7.0/24""#), "{text}");
        assert!(
            text.contains(r#""podCIDRv6": "fd00:10:244:7::/64""#),
            "{text}"
        );
        assert!(!text.contains("underlayV6"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
