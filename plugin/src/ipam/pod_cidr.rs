//! `"subnet": "usePodCidr"` in host-local's ranges (as Calico's host-local
//! reads it): the node's pod CIDR, which the cluster agent (`cni-ebpfd run
//! --etcd-endpoints ...`) leases and writes to `<dir>/node.json`, where
//! `<dir>` is `ipam.clusterStateDir` or `<stateDir>/cluster`; and
//! `"usePodCidrIPv6"` (Calico's name too), the IPv6 pod CIDR of a
//! dual-stack cluster. The plugin itself never talks to the datastore.

use std::{
    io,
    path::{Path, PathBuf},
};

use cni_ebpf_userspace::cluster::node_state::{self, NodeState};
use serde_json::Value;

use crate::{
    cni::Command,
    error::{CniError, CniResult, code},
};

pub const USE_POD_CIDR: &str = "usePodCidr";
pub const USE_POD_CIDR_V6: &str = "usePodCidrIPv6";
/// The `ipam` key naming the directory of `node.json`.
pub const STATE_DIR_KEY: &str = "clusterStateDir";

/// Stands in for the pod CIDR on verbs that never allocate (DEL, GC,
/// CHECK) when the node has none: they find reservations by container,
/// whatever the range, and must work before the agent ever ran.
const PLACEHOLDER: &str = "0.0.0.0/30";
const PLACEHOLDER_V6: &str = "fd00::/126";

/// The `ipam` object with every `usePodCidr` replaced by the node's pod
/// CIDR, and the node state it came from (`None` when none is used).
pub fn resolve(
    ipam: &Value,
    state_dir: &Path,
    verb: Command,
) -> CniResult<(Value, Option<NodeState>)> {
    let mut ipam = ipam.clone();
    let fields = subnet_fields(&mut ipam);
    if fields.is_empty() {
        return Ok((ipam, None));
    }
    let file = state_file(&ipam, state_dir)?;
    let node = match node_state::read_file(&file) {
        Ok(node) => Some(node),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !allocates(verb) => None,
        Err(e) => return Err(unavailable(&file, &e)),
    };
    let cidr = node
        .as_ref()
        .map_or(PLACEHOLDER.to_string(), |n| n.pod_cidr.to_string());
    let wants_v6 = |field: &Value| field.as_str() == Some(USE_POD_CIDR_V6);
    let asks_v6 = subnet_fields(&mut ipam).into_iter().any(|f| wants_v6(f));
    let cidr_v6 = match node.as_ref().and_then(|n| n.pod_cidr_v6) {
        Some(v6) => v6.to_string(),
        None if !allocates(verb) || !asks_v6 => PLACEHOLDER_V6.to_string(),
        None => return Err(no_ipv6(&file)),
    };
    for field in subnet_fields(&mut ipam) {
        let value = if wants_v6(field) { &cidr_v6 } else { &cidr };
        *field = Value::String(value.clone());
    }
    Ok((ipam, node))
}

fn allocates(verb: Command) -> bool {
    matches!(verb, Command::Add | Command::Status)
}

/// The `subnet` values that say `usePodCidr`: the legacy top-level one and
/// those of `ranges`.
fn subnet_fields(ipam: &mut Value) -> Vec<&mut Value> {
    let Some(ipam) = ipam.as_object_mut() else {
        return Vec::new();
    };
    let mut fields = Vec::new();
    for (key, value) in ipam.iter_mut() {
        match key.as_str() {
            "subnet" => fields.push(value),
            "ranges" => {
                let sets = value.as_array_mut().into_iter().flatten();
                let ranges = sets.flat_map(|set| set.as_array_mut().into_iter().flatten());
                fields.extend(ranges.filter_map(|range| range.get_mut("subnet")));
            }
            _ => {}
        }
    }
    fields.retain(|f| matches!(f.as_str(), Some(USE_POD_CIDR | USE_POD_CIDR_V6)));
    fields
}

fn state_file(ipam: &Value, state_dir: &Path) -> CniResult<PathBuf> {
    let dir = match ipam.get(STATE_DIR_KEY) {
        None | Some(Value::Null) => state_dir.join("cluster"),
        Some(Value::String(dir)) if Path::new(dir).is_absolute() => PathBuf::from(dir),
        Some(other) => {
            return Err(CniError::invalid_config(format!(
                "ipam.{STATE_DIR_KEY}: {other} is not an absolute path"
            )));
        }
    };
    Ok(dir.join(node_state::FILE_NAME))
}

fn no_ipv6(file: &Path) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!(
            "ipam.ranges: subnet \"{USE_POD_CIDR_V6}\": the node has no IPv6 pod CIDR ({} names none): \
             is the cluster dual-stack (cni-ebpfd run --cluster-cidr with an IPv6 CIDR)?",
            file.display()
        ),
    )
}

fn unavailable(file: &Path, e: &io::Error) -> CniError {
    let msg = if e.kind() == io::ErrorKind::NotFound {
        format!(
            "ipam.ranges: subnet \"{USE_POD_CIDR}\": the node has no pod CIDR yet \
             ({} does not exist): is cni-ebpfd running in cluster mode?",
            file.display()
        )
    } else {
        format!(
            "ipam.ranges: subnet \"{USE_POD_CIDR}\": reading the node's pod CIDR from {}: {e}",
            file.display()
        )
    };
    CniError::new(code::TRY_AGAIN_LATER, msg)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn state_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn use_pod_cidr_becomes_the_node_cidr_and_other_ranges_stay() {
        let dir = state_dir();
        let node = NodeState {
            node_name: "n1".into(),
            pod_cidr: "10.244.5.0/24".parse().unwrap(),
            pod_cidr_v6: None,
            mtu: 1450,
            backend: cni_ebpf_userspace::cluster::Backend::Vxlan,
            underlay: "10.99.1.11".parse().unwrap(),
            underlay_v6: None,
        };
        node_state::write(dir.path(), &node).unwrap();
        let ipam = json!({
            "type": "host-local",
            "ranges": [[{ "subnet": "usePodCidr", "rangeStart": "10.244.5.10" }], [{ "subnet": "fd00::/64" }]],
        });
        let (resolved, found) = resolve(&ipam, dir.path(), Command::Add).unwrap();
        assert_eq!(found, Some(node));
        assert_eq!(resolved["ranges"][0][0]["subnet"], "10.244.5.0/24");
        assert_eq!(resolved["ranges"][0][0]["rangeStart"], "10.244.5.10");
        assert_eq!(resolved["ranges"][1][0]["subnet"], "fd00::/64");
    }

    #[test]
    fn use_pod_cidr_ipv6_becomes_the_nodes_ipv6_cidr() {
        let dir = state_dir();
        let mut node = NodeState {
            node_name: "n1".into(),
            pod_cidr: "10.244.5.0/24".parse().unwrap(),
            pod_cidr_v6: None,
            mtu: 1450,
            backend: cni_ebpf_userspace::cluster::Backend::Auto,
            underlay: "10.99.1.11".parse().unwrap(),
            underlay_v6: None,
        };
        node_state::write(dir.path(), &node).unwrap();
        let ipam = json!({
            "type": "host-local",
            "ranges": [[{ "subnet": "usePodCidr" }], [{ "subnet": "usePodCidrIPv6" }]],
        });
        // An IPv4 cluster's node: ADD is refused, naming the key; DEL works.
        let err = resolve(&ipam, dir.path(), Command::Add).unwrap_err();
        assert_eq!(err.code, code::TRY_AGAIN_LATER);
        assert!(
            err.msg.contains("usePodCidrIPv6") && err.msg.contains("no IPv6 pod CIDR"),
            "{}",
            err.msg
        );
        let (resolved, _) = resolve(&ipam, dir.path(), Command::Del).unwrap();
        assert_eq!(resolved["ranges"][1][0]["subnet"], PLACEHOLDER_V6);

        node.pod_cidr_v6 = Some("fd00:10:244:5::/64".parse().unwrap());
        node_state::write(dir.path(), &node).unwrap();
        let (resolved, found) = resolve(&ipam, dir.path(), Command::Add).unwrap();
        assert_eq!(found, Some(node));
        assert_eq!(resolved["ranges"][0][0]["subnet"], "10.244.5.0/24");
        assert_eq!(resolved["ranges"][1][0]["subnet"], "fd00:10:244:5::/64");
    }

    #[test]
    fn without_a_node_cidr_add_is_told_to_try_later_and_del_still_works() {
        let dir = state_dir();
        let ipam = json!({ "type": "host-local", "ranges": [[{ "subnet": "usePodCidr" }]] });
        let err = resolve(&ipam, dir.path(), Command::Add).unwrap_err();
        assert_eq!(err.code, code::TRY_AGAIN_LATER);
        assert!(
            err.msg.contains("the node has no pod CIDR yet")
                && err.msg.contains("is cni-ebpfd running in cluster mode?")
                && err.msg.contains("ipam.ranges"),
            "{}",
            err.msg
        );
        let (resolved, found) = resolve(&ipam, dir.path(), Command::Del).unwrap();
        assert_eq!(found, None);
        assert_eq!(resolved["ranges"][0][0]["subnet"], PLACEHOLDER);
    }

    #[test]
    fn the_state_dir_key_moves_the_file() {
        let dir = state_dir();
        let ipam = json!({ "subnet": "usePodCidr", STATE_DIR_KEY: dir.path() });
        let err = resolve(&ipam, Path::new("/nonexistent"), Command::Add).unwrap_err();
        assert!(
            err.msg
                .contains(&dir.path().join("node.json").display().to_string()),
            "{}",
            err.msg
        );
        let bad = json!({ "subnet": "usePodCidr", STATE_DIR_KEY: "relative" });
        assert_eq!(
            resolve(&bad, dir.path(), Command::Add).unwrap_err().code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn configs_without_it_are_untouched() {
        let ipam = json!({ "ranges": [[{ "subnet": "10.1.0.0/24" }]] });
        let (resolved, found) = resolve(&ipam, Path::new("/nonexistent"), Command::Add).unwrap();
        assert_eq!((resolved, found), (ipam, None));
    }
}
