//! The `portMappings` capability: host ports published by the pod, as the
//! reference portmap plugin reads them from `runtimeConfig`, but served by
//! the datapath (one hash lookup per packet whatever the number of mappings)
//! and by cgroup socket hooks for connections from the node itself.
//!
//! The conflist declares `"capabilities": {"portMappings": true}` on the
//! cni-ebpf plugin itself; no second plugin. Config key `cgroupRoot`: the
//! cgroup v2 directory whose processes may reach host ports at the node's
//! addresses and 127.0.0.1 (default: the cgroup v2 mount).

use std::{net::IpAddr, path::PathBuf};

use cni_ebpf_common::{IPPROTO_TCP, IPPROTO_UDP};
use cni_ebpf_userspace::host_ports::PortMapping;
use serde_json::{Map, Value};

use crate::error::{CniError, CniResult};

/// A `portMappings` entry before the pod's address is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPortRequest {
    pub proto: u8,
    pub host_port: u16,
    pub container_port: u16,
    pub host_ip: Option<IpAddr>,
}

impl HostPortRequest {
    pub fn for_pod(&self, pod_addr: IpAddr) -> PortMapping {
        PortMapping {
            proto: self.proto,
            host_port: self.host_port,
            host_ip: self.host_ip,
            pod_addr,
            pod_port: self.container_port,
        }
    }
}

fn invalid(field: &str, why: impl std::fmt::Display) -> CniError {
    CniError::invalid_config(format!("invalid field \"{field}\": {why}"))
}

fn port(entry: &Map<String, Value>, field: &str) -> CniResult<u16> {
    entry
        .get(field.rsplit('.').next().unwrap_or(field))
        .and_then(Value::as_u64)
        .filter(|p| (1..=65_535).contains(p))
        .map(|p| p as u16)
        .ok_or_else(|| invalid(field, "missing or not a port number (1-65535)"))
}

/// A string field: absent and `null` are `None`, another type an error.
fn text<'a>(entry: &'a Map<String, Value>, field: &str) -> CniResult<Option<&'a str>> {
    match entry.get(field.rsplit('.').next().unwrap_or(field)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(invalid(field, format!("{other}: not a string"))),
    }
}

/// Reads `runtimeConfig.portMappings` (absent: none). Keys arrive in their
/// canonical spelling (containerd writes `HostPort`: see `cni::keys`);
/// fields other than these four are ignored, as portmap ignores them.
pub fn requests(runtime_config: &Value) -> CniResult<Vec<HostPortRequest>> {
    let Some(list) = runtime_config.get("portMappings") else {
        return Ok(Vec::new());
    };
    if list.is_null() {
        return Ok(Vec::new());
    }
    let list = list
        .as_array()
        .ok_or_else(|| invalid("runtimeConfig.portMappings", "not an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let field = |name: &str| format!("runtimeConfig.portMappings[{i}].{name}");
        let entry = entry
            .as_object()
            .ok_or_else(|| invalid(&format!("runtimeConfig.portMappings[{i}]"), "not an object"))?;
        let proto = match text(entry, &field("protocol"))? {
            // Absent or empty: TCP, the CRI's default protocol.
            None | Some("") => IPPROTO_TCP,
            Some(p) if p.eq_ignore_ascii_case("tcp") => IPPROTO_TCP,
            Some(p) if p.eq_ignore_ascii_case("udp") => IPPROTO_UDP,
            Some(p) => {
                return Err(invalid(
                    &field("protocol"),
                    format!("{p:?}: expected \"tcp\" or \"udp\""),
                ));
            }
        };
        // Empty (containerd's and CRI-O's "unset"): every node address.
        let host_ip = match text(entry, &field("hostIP"))? {
            None | Some("") | Some("0.0.0.0") => None,
            Some(text) => {
                let ip: IpAddr = text.parse().map_err(|e| invalid(&field("hostIP"), e))?;
                if ip.is_ipv6() {
                    return Err(invalid(
                        &field("hostIP"),
                        "IPv6 host ports are not supported yet",
                    ));
                }
                Some(ip)
            }
        };
        let request = HostPortRequest {
            proto,
            host_port: port(entry, &field("hostPort"))?,
            container_port: port(entry, &field("containerPort"))?,
            host_ip,
        };
        if out.iter().any(|r: &HostPortRequest| {
            r.proto == request.proto
                && r.host_port == request.host_port
                && r.host_ip == request.host_ip
        }) {
            return Err(invalid(&field("hostPort"), "listed twice"));
        }
        out.push(request);
    }
    Ok(out)
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

/// `cgroupRoot` (it must be absolute: code 7 otherwise), or the cgroup v2
/// mount point; either must be a cgroup v2 directory to be used.
pub fn node_hooks(raw: &Value) -> CniResult<NodeHooks> {
    if let Some(v) = raw.get("cgroupRoot") {
        let path = v
            .as_str()
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .ok_or_else(|| invalid("cgroupRoot", "not an absolute path"))?;
        return Ok(match cni_ebpf_userspace::node::check_cgroup2(&path) {
            Ok(()) => NodeHooks::Cgroup(path),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_port_mappings_like_portmap() {
        let got = requests(&json!({"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"},
            {"hostPort": 9090, "containerPort": 90, "hostIP": ""}
        ]}))
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].proto, IPPROTO_TCP);
        assert_eq!(got[1].proto, IPPROTO_UDP);
        assert_eq!(got[1].host_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(got[2].host_ip, None);
    }

    #[test]
    fn reads_containerd_keys_once_canonical() {
        let mut conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "cni-ebpf",
        "ipam": {"type": "host-local"},
        "runtimeConfig": {"portMappings": [
            {"HostPort": 30088, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""},
            {"HostPort": 30089, "ContainerPort": 53, "Protocol": "UDP", "HostIP": "10.0.0.1",
             "Name": "dns", "SomethingNew": {"x": 1}}
        ]}});
        crate::cni::keys::canonicalize(&mut conf, &crate::cni::keys::NETWORK);
        let got = requests(&conf["runtimeConfig"]).unwrap();
        assert_eq!(
            got,
            [
                HostPortRequest {
                    proto: IPPROTO_TCP,
                    host_port: 30088,
                    container_port: 8080,
                    host_ip: None
                },
                HostPortRequest {
                    proto: IPPROTO_UDP,
                    host_port: 30089,
                    container_port: 53,
                    host_ip: Some("10.0.0.1".parse().unwrap())
                }
            ]
        );
    }

    #[test]
    fn errors_name_the_entry_and_field() {
        for (raw, field) in [
            (
                json!({"portMappings": [{"containerPort": 80}]}),
                "portMappings[0].hostPort",
            ),
            (
                json!({"portMappings": [{"hostPort": 70000, "containerPort": 80}]}),
                "portMappings[0].hostPort",
            ),
            (
                json!({"portMappings": [{"hostPort": 1, "containerPort": 80, "protocol": "sctp"}]}),
                "portMappings[0].protocol",
            ),
            (
                json!({"portMappings": [{"hostPort": 1, "containerPort": 2, "hostIP": "x"}]}),
                "portMappings[0].hostIP",
            ),
            (
                json!({"portMappings": [{"hostPort": 1, "containerPort": 2, "hostIP": 10}]}),
                "portMappings[0].hostIP",
            ),
            (
                json!({"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": 6}]}),
                "portMappings[0].protocol",
            ),
            (
                json!({"portMappings": [{"hostPort": "80", "containerPort": 2}]}),
                "portMappings[0].hostPort",
            ),
            (json!({"portMappings": [8080]}), "portMappings[0]"),
            (json!({"portMappings": {"hostPort": 1}}), "portMappings"),
        ] {
            let err = requests(&raw).unwrap_err();
            assert!(err.msg.contains(field), "{} does not name {field}", err.msg);
        }
    }
}
