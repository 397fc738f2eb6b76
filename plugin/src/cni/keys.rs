//! Keys matched as Go's `encoding/json` matches them: a key that names no
//! known field exactly names the field it equals without regard to case.
//!
//! Every reference plugin and every runtime's CNI library is written in Go,
//! so `{"HostPort": 8080}` (containerd's go-cni writes capability arguments
//! with Go's field names) means `hostPort` to all of them. This module knows
//! the field names the plugin reads, as a tree ([`NETWORK`]), and rewrites
//! the keys of an incoming config to their canonical spelling once, before
//! anything reads it; every reader then looks up the canonical key only.
//! Keys it does not know are left as they are (another plugin's, or a map's:
//! Go matches map keys exactly).

use serde_json::{Map, Value};

/// What the plugin knows about a JSON value's keys.
#[derive(Debug)]
pub enum Shape {
    /// A value whose keys (if any) are left alone.
    Opaque,
    /// An object with these fields, each with the shape of its value.
    Object(&'static [(&'static str, Shape)]),
    /// An array whose items have this shape.
    Array(&'static Shape),
}

const ROUTE: Shape = Shape::Object(&[
    ("dst", Shape::Opaque),
    ("gw", Shape::Opaque),
    ("mtu", Shape::Opaque),
    ("advmss", Shape::Opaque),
    ("priority", Shape::Opaque),
    ("table", Shape::Opaque),
    ("scope", Shape::Opaque),
]);

const DNS: Shape = Shape::Object(&[
    ("nameservers", Shape::Opaque),
    ("domain", Shape::Opaque),
    ("search", Shape::Opaque),
    ("options", Shape::Opaque),
]);

/// host-local's fields (read by the built-in allocator; a delegated IPAM
/// is a Go binary and reads the canonical spelling the same).
const RANGE: Shape = Shape::Object(&[
    ("subnet", Shape::Opaque),
    ("rangeStart", Shape::Opaque),
    ("rangeEnd", Shape::Opaque),
    ("gateway", Shape::Opaque),
]);

const IPAM: Shape = Shape::Object(&[
    ("type", Shape::Opaque),
    ("ranges", Shape::Array(&Shape::Array(&RANGE))),
    ("subnet", Shape::Opaque),
    ("rangeStart", Shape::Opaque),
    ("rangeEnd", Shape::Opaque),
    ("gateway", Shape::Opaque),
    ("routes", Shape::Array(&ROUTE)),
    ("dataDir", Shape::Opaque),
    ("resolvConf", Shape::Opaque),
]);

/// The capability arguments (`runtimeConfig`) the plugin knows.
const RUNTIME_CONFIG: Shape = Shape::Object(&[
    ("ips", Shape::Opaque),
    ("mac", Shape::Opaque),
    (
        "portMappings",
        Shape::Array(&Shape::Object(&[
            ("hostPort", Shape::Opaque),
            ("containerPort", Shape::Opaque),
            ("protocol", Shape::Opaque),
            ("hostIP", Shape::Opaque),
        ])),
    ),
    (
        "bandwidth",
        Shape::Object(&[
            ("ingressRate", Shape::Opaque),
            ("ingressBurst", Shape::Opaque),
            ("egressRate", Shape::Opaque),
            ("egressBurst", Shape::Opaque),
        ]),
    ),
    ("ipRanges", Shape::Opaque),
]);

const ARGS: Shape = Shape::Object(&[(
    "cni",
    Shape::Object(&[("ips", Shape::Opaque), ("mac", Shape::Opaque)]),
)]);

/// A result of any supported version, as `prevResult`.
const RESULT: Shape = Shape::Object(&[
    ("cniVersion", Shape::Opaque),
    (
        "interfaces",
        Shape::Array(&Shape::Object(&[
            ("name", Shape::Opaque),
            ("mac", Shape::Opaque),
            ("mtu", Shape::Opaque),
            ("sandbox", Shape::Opaque),
            ("socketPath", Shape::Opaque),
            ("pciID", Shape::Opaque),
        ])),
    ),
    (
        "ips",
        Shape::Array(&Shape::Object(&[
            ("version", Shape::Opaque),
            ("address", Shape::Opaque),
            ("gateway", Shape::Opaque),
            ("interface", Shape::Opaque),
        ])),
    ),
    ("routes", Shape::Array(&ROUTE)),
    ("dns", DNS),
]);

const ATTACHMENTS: Shape = Shape::Array(&Shape::Object(&[
    ("containerID", Shape::Opaque),
    ("ifname", Shape::Opaque),
]));

/// Every key of the network configuration the plugin reads. A new config
/// key belongs here, or it is matched exactly only; `cni::config`'s struct
/// tree reads the same keys (a test there holds the two equal).
pub const NETWORK: Shape = Shape::Object(&[
    ("cniVersion", Shape::Opaque),
    ("name", Shape::Opaque),
    ("type", Shape::Opaque),
    // A map in libcni: capability names are matched exactly.
    ("capabilities", Shape::Opaque),
    ("mtu", Shape::Opaque),
    ("bpffsRoot", Shape::Opaque),
    ("stateDir", Shape::Opaque),
    ("attachMode", Shape::Opaque),
    ("delegateHostLocal", Shape::Opaque),
    ("ipMasq", Shape::Opaque),
    ("ipMasqV6", Shape::Opaque),
    ("nonMasqueradeCIDRs", Shape::Opaque),
    ("uplink", Shape::Opaque),
    ("masqueradeAddress", Shape::Opaque),
    ("masqueradeAddressV6", Shape::Opaque),
    ("nodeRoutes", Shape::Array(&ROUTE)),
    ("natPortRange", Shape::Opaque),
    ("serviceCIDRs", Shape::Opaque),
    ("cgroupRoot", Shape::Opaque),
    ("ingressRate", Shape::Opaque),
    ("ingressBurst", Shape::Opaque),
    ("egressRate", Shape::Opaque),
    ("egressBurst", Shape::Opaque),
    ("bigTcp", Shape::Opaque),
    ("uplinkXdp", Shape::Opaque),
    ("ipam", IPAM),
    ("dns", DNS),
    ("runtimeConfig", RUNTIME_CONFIG),
    ("args", ARGS),
    ("prevResult", RESULT),
    ("cni.dev/valid-attachments", ATTACHMENTS),
    ("cni.dev/attachments", ATTACHMENTS),
]);

/// Rewrites, at every level `shape` describes, each key that matches no
/// field exactly but one without regard to case to that field's name. When
/// both spellings are present the exact one is kept and the other dropped
/// (Go would let the later one in the document win; the order of keys is
/// not kept here, so the exact spelling is the rule).
pub fn canonicalize(value: &mut Value, shape: &Shape) {
    match (shape, value) {
        (Shape::Object(fields), Value::Object(object)) => {
            rename_keys(object, fields);
            for (name, field_shape) in fields.iter() {
                if let Some(child) = object.get_mut(*name) {
                    canonicalize(child, field_shape);
                }
            }
        }
        (Shape::Array(item_shape), Value::Array(items)) => {
            for item in items {
                canonicalize(item, item_shape);
            }
        }
        _ => {}
    }
}

fn rename_keys(object: &mut Map<String, Value>, fields: &[(&'static str, Shape)]) {
    let folded: Vec<(String, &'static str)> = object
        .keys()
        .filter(|key| !fields.iter().any(|(name, _)| name == key))
        .filter_map(|key| {
            fields
                .iter()
                .find(|(name, _)| equal_fold(name, key))
                .map(|(name, _)| (key.clone(), *name))
        })
        .collect();
    for (key, name) in folded {
        if let Some(value) = object.remove(&key)
            && !object.contains_key(name)
        {
            object.insert(name.to_string(), value);
        }
    }
}

/// Go's `strings.EqualFold` for the names here: equal under Unicode
/// simple case folding (lower-casing each character).
fn equal_fold(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn canonical(mut value: Value) -> Value {
        canonicalize(&mut value, &NETWORK);
        value
    }

    #[test]
    fn containerd_capability_arguments_get_canonical_keys() {
        let got = canonical(json!({
            "runtimeConfig": {
                "portMappings": [{"HostPort": 30088, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""}],
                "bandwidth": {"IngressRate": 1, "IngressBurst": 2, "EgressRate": 3, "EgressBurst": 4}
            }
        }));
        assert_eq!(
            got,
            json!({
                "runtimeConfig": {
                    "portMappings": [{"hostPort": 30088, "containerPort": 8080, "protocol": "tcp", "hostIP": ""}],
                    "bandwidth": {"ingressRate": 1, "ingressBurst": 2, "egressRate": 3, "egressBurst": 4}
                }
            })
        );
    }

    #[test]
    fn every_level_is_matched_and_unknown_keys_are_kept() {
        let got = canonical(json!({
            "CNIVERSION": "1.0.0",
            "Name": "pods",
            "TYPE": "cni-ebpf",
            "IPMasq": true,
            "NodeRoutes": [{"DST": "10.2.0.0/16", "GW": "10.0.0.2"}],
            "IPAM": {"Type": "host-local", "Ranges": [[{"Subnet": "10.1.0.0/24", "RangeStart": "10.1.0.10"}]], "DataDir": "/x"},
            "RuntimeConfig": {"IPs": ["10.1.0.5"], "MAC": "0a:58:0a:01:00:05", "SomethingElse": {"Keep": 1}},
            "Args": {"CNI": {"IPs": ["10.1.0.6"]}},
            "PrevResult": {"CNIVersion": "1.0.0", "IPs": [{"Address": "10.1.0.5/24", "Interface": 0}], "Interfaces": [{"Name": "eth0", "SocketPath": "/s"}]},
            "Capabilities": {"PortMappings": true},
            "otherPlugin": {"HostPort": 1},
            "CNI.dev/valid-attachments": [{"ContainerID": "c", "IfName": "eth0"}]
        }));
        assert_eq!(
            got,
            json!({
                "cniVersion": "1.0.0",
                "name": "pods",
                "type": "cni-ebpf",
                "ipMasq": true,
                "nodeRoutes": [{"dst": "10.2.0.0/16", "gw": "10.0.0.2"}],
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10"}]], "dataDir": "/x"},
                "runtimeConfig": {"ips": ["10.1.0.5"], "mac": "0a:58:0a:01:00:05", "SomethingElse": {"Keep": 1}},
                "args": {"cni": {"ips": ["10.1.0.6"]}},
                "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24", "interface": 0}], "interfaces": [{"name": "eth0", "socketPath": "/s"}]},
                // A map: libcni matches capability names exactly.
                "capabilities": {"PortMappings": true},
                "otherPlugin": {"HostPort": 1},
                "cni.dev/valid-attachments": [{"containerID": "c", "ifname": "eth0"}]
            })
        );
    }

    #[test]
    fn an_exact_match_wins_over_a_folded_one() {
        let got = canonical(json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 1, "HostPort": 2, "HOSTPORT": 3, "containerPort": 4}
        ]}}));
        assert_eq!(
            got,
            json!({"runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 4}]}})
        );
    }

    #[test]
    fn values_of_another_type_are_left_for_the_reader_to_refuse() {
        let value = json!({"runtimeConfig": {"PortMappings": {"HostPort": 1}}, "IPAM": "x"});
        assert_eq!(
            canonical(value),
            json!({"runtimeConfig": {"portMappings": {"HostPort": 1}}, "ipam": "x"})
        );
    }

    #[test]
    fn folding_is_unicode_simple_folding() {
        assert!(equal_fold("hostIP", "HOSTIP"));
        assert!(equal_fold("hostIP", "hostip"));
        assert!(!equal_fold("hostIP", "hostIP6"));
        // U+212A KELVIN SIGN folds to k, as in Go.
        assert!(equal_fold("mask", "mas\u{212A}"));
    }
}
