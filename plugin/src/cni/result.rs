//! The result an ADD prints, and the `prevResult` a runtime hands back.
//!
//! One set of types serves every supported version; only the JSON differs.
//! As libcni's `types/040` and `types/100` do, empty lists and unset fields
//! are left out while `dns` is always printed, `{}` when empty.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, de};
use serde_json::{Value, json};

use super::version;
use crate::error::{CniError, CniResult};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CniOutput {
    #[serde(default, deserialize_with = "null_as_default")]
    pub interfaces: Vec<Interface>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ips: Vec<IpConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub routes: Vec<Route>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub name: String,
    /// Lowercase `aa:bb:cc:dd:ee:ff`; see [`format_mac`].
    #[serde(default, deserialize_with = "empty_as_none")]
    pub mac: Option<String>,
    /// Printed from 1.0.0 on; `types/040` has no such field.
    pub mtu: Option<u32>,
    /// The netns path for a container interface; `None` on the host side.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// The address with the prefix length of its subnet, e.g. `10.1.0.5/24`.
    pub address: IpNet,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub gateway: Option<IpAddr>,
    /// Index into [`CniOutput::interfaces`].
    pub interface: Option<usize>,
}

/// A route; everything past `gw` came in 1.1.0 and is printed only when set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

/// DNS settings, both in a network config and in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub nameservers: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub domain: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub search: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

impl CniOutput {
    /// The result as `cni_version` spells it: before 1.0.0 every IP carries
    /// `"version": "4"|"6"` and interfaces have no `mtu`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let legacy = version::result_has_ip_version(cni_version);
        let mut out = json!({ "cniVersion": cni_version, "dns": self.dns });
        if !self.interfaces.is_empty() {
            out["interfaces"] = self
                .interfaces
                .iter()
                .map(|interface| interface.to_json(legacy))
                .collect();
        }
        if !self.ips.is_empty() {
            out["ips"] = self.ips.iter().map(|ip| ip.to_json(legacy)).collect();
        }
        if !self.routes.is_empty() {
            out["routes"] = json!(self.routes);
        }
        out
    }

    /// Reads a result of any supported version (`ips[].version` is accepted
    /// and ignored). Code 7 naming `prevResult` when it does not fit.
    pub fn from_json(value: &Value) -> CniResult<CniOutput> {
        CniOutput::deserialize(value)
            .map_err(|e| CniError::invalid_config(format!("invalid field \"prevResult\": {e}")))
    }
}

impl Interface {
    fn to_json(&self, legacy: bool) -> Value {
        let mut out = json!({ "name": self.name });
        if let Some(mac) = &self.mac {
            out["mac"] = json!(parse_mac(mac).map_or_else(|| mac.clone(), format_mac));
        }
        if let Some(mtu) = self.mtu.filter(|_| !legacy) {
            out["mtu"] = json!(mtu);
        }
        if let Some(sandbox) = &self.sandbox {
            out["sandbox"] = json!(sandbox);
        }
        out
    }
}

impl IpConfig {
    fn to_json(&self, legacy: bool) -> Value {
        let mut out = json!({ "address": self.address.to_string() });
        if legacy {
            let family = match self.address {
                IpNet::V4(_) => "4",
                IpNet::V6(_) => "6",
            };
            out["version"] = json!(family);
        }
        if let Some(gateway) = self.gateway {
            out["gateway"] = json!(gateway.to_string());
        }
        if let Some(interface) = self.interface {
            out["interface"] = json!(interface);
        }
        out
    }
}

/// `[0xaa, ..]` -> `"aa:bb:cc:dd:ee:ff"`.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Six two-digit hex groups separated by `:` or `-` (either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let separator = if text.contains('-') { '-' } else { ':' };
    let mut mac = [0u8; 6];
    let mut groups = text.split(separator);
    for byte in &mut mac {
        let group = groups.next()?;
        if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(group, 16).ok()?;
    }
    groups.next().is_none().then_some(mac)
}

/// `null` reads as the type's default, as Go's decoder treats it.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `""` and `null` read as `None`; Go prints unset strings and IPs as `""`.
fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => text.parse().map(Some).map_err(de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn dual_stack() -> CniOutput {
        CniOutput {
            interfaces: vec![
                Interface {
                    name: "veth1a2b3c".into(),
                    mac: Some("aa:bb:cc:00:11:22".into()),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some(format_mac([0x0a, 0x58, 0x0a, 0x01, 0x00, 0x05])),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/c1".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: net("10.1.0.5/24"),
                    gateway: Some(ip("10.1.0.1")),
                    interface: Some(1),
                },
                IpConfig {
                    address: net("fd00::5/64"),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![
                Route::new(net("0.0.0.0/0"), Some(ip("10.1.0.1"))),
                Route::new(net("::/0"), None),
            ],
            dns: Dns::default(),
        }
    }

    #[test]
    fn result_1_x_has_no_ip_version() {
        for v in ["1.0.0", "1.1.0"] {
            assert_eq!(
                dual_stack().to_json(v),
                json!({
                    "cniVersion": v,
                    "interfaces": [
                        {"name": "veth1a2b3c", "mac": "aa:bb:cc:00:11:22", "mtu": 1450},
                        {"name": "eth0", "mac": "0a:58:0a:01:00:05", "mtu": 1450,
                         "sandbox": "/var/run/netns/c1"}
                    ],
                    "ips": [
                        {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
                        {"address": "fd00::5/64", "interface": 1}
                    ],
                    "routes": [
                        {"dst": "0.0.0.0/0", "gw": "10.1.0.1"},
                        {"dst": "::/0"}
                    ],
                    "dns": {}
                })
            );
        }
    }

    #[test]
    fn result_before_1_0_0_has_ip_version_and_no_interface_mtu() {
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            assert_eq!(
                dual_stack().to_json(v),
                json!({
                    "cniVersion": v,
                    "interfaces": [
                        {"name": "veth1a2b3c", "mac": "aa:bb:cc:00:11:22"},
                        {"name": "eth0", "mac": "0a:58:0a:01:00:05",
                         "sandbox": "/var/run/netns/c1"}
                    ],
                    "ips": [
                        {"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1",
                         "interface": 1},
                        {"version": "6", "address": "fd00::5/64", "interface": 1}
                    ],
                    "routes": [
                        {"dst": "0.0.0.0/0", "gw": "10.1.0.1"},
                        {"dst": "::/0"}
                    ],
                    "dns": {}
                })
            );
        }
    }

    #[test]
    fn empty_result_prints_only_version_and_dns() {
        for v in version::SUPPORTED_VERSIONS {
            assert_eq!(
                CniOutput::default().to_json(v),
                json!({"cniVersion": v, "dns": {}})
            );
        }
    }

    #[test]
    fn interface_index_zero_is_printed() {
        let out = CniOutput {
            ips: vec![IpConfig {
                address: net("10.1.0.5/24"),
                gateway: None,
                interface: Some(0),
            }],
            ..CniOutput::default()
        };
        assert_eq!(out.to_json("1.0.0")["ips"][0]["interface"], 0);
    }

    #[test]
    fn route_and_dns_extras_are_printed_when_set() {
        let out = CniOutput {
            routes: vec![Route {
                mtu: Some(1400),
                advmss: Some(1360),
                priority: Some(100),
                table: Some(254),
                scope: Some(0),
                ..Route::new(net("10.2.0.0/16"), Some(ip("10.1.0.1")))
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                domain: Some("cluster.local".into()),
                search: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            },
            ..CniOutput::default()
        };
        let json = out.to_json("1.1.0");
        assert_eq!(
            json["routes"],
            json!([{"dst": "10.2.0.0/16", "gw": "10.1.0.1", "mtu": 1400, "advmss": 1360,
                    "priority": 100, "table": 254, "scope": 0}])
        );
        assert_eq!(
            json["dns"],
            json!({"nameservers": ["10.96.0.10"], "domain": "cluster.local",
                   "search": ["default.svc.cluster.local"], "options": ["ndots:5"]})
        );
        assert!(!out.dns.is_empty());
        assert!(Dns::default().is_empty());
    }

    #[test]
    fn prev_result_0_3_1_round_trips() {
        let prev = json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:01:00:05",
                            "sandbox": "/var/run/netns/c1"}],
            "ips": [{"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1",
                     "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.96.0.10"]}
        });
        let out = CniOutput::from_json(&prev).unwrap();
        assert_eq!(
            out.interfaces[0].sandbox.as_deref(),
            Some("/var/run/netns/c1")
        );
        assert_eq!(out.ips[0].address, net("10.1.0.5/24"));
        assert_eq!(out.ips[0].gateway, Some(ip("10.1.0.1")));
        assert_eq!(out.ips[0].interface, Some(0));
        assert_eq!(out.routes, vec![Route::new(net("0.0.0.0/0"), None)]);
        assert_eq!(out.dns.nameservers, vec!["10.96.0.10".to_string()]);
        assert_eq!(out.to_json("0.3.1"), prev);
    }

    #[test]
    fn prev_result_1_0_0_round_trips() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "veth1a2b3c", "mac": "aa:bb:cc:00:11:22", "mtu": 1450},
                {"name": "eth0", "mac": "0a:58:0a:01:00:05", "mtu": 1450,
                 "sandbox": "/var/run/netns/c1"}
            ],
            "ips": [
                {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
                {"address": "fd00::5/64", "interface": 1}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0"}],
            "dns": {}
        });
        let out = CniOutput::from_json(&prev).unwrap();
        assert_eq!(out, dual_stack());
        assert_eq!(out.to_json("1.0.0"), prev);
    }

    #[test]
    fn macs_are_printed_lowercase() {
        let out = CniOutput {
            interfaces: vec![
                Interface {
                    name: "eth0".into(),
                    mac: Some("0A-58-0A-01-00-05".into()),
                    ..Interface::default()
                },
                Interface {
                    name: "odd0".into(),
                    mac: Some("not-a-mac".into()),
                    ..Interface::default()
                },
            ],
            ..CniOutput::default()
        };
        let json = out.to_json("1.1.0");
        assert_eq!(json["interfaces"][0]["mac"], "0a:58:0a:01:00:05");
        // Anything unparsable is passed on as given rather than dropped.
        assert_eq!(json["interfaces"][1]["mac"], "not-a-mac");
    }

    #[test]
    fn prev_result_converts_between_versions() {
        let old = dual_stack().to_json("0.4.0");
        let out = CniOutput::from_json(&old).unwrap();
        assert_eq!(out.ips, dual_stack().ips);
        assert!(out.to_json("1.1.0")["ips"][0].get("version").is_none());
    }

    #[test]
    fn prev_result_tolerates_go_empties_and_unknown_keys() {
        let prev = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": "", "sandbox": "", "socketPath": "",
                            "pciID": ""}],
            "ips": [{"address": "10.1.0.5/24", "gateway": ""}],
            "routes": null,
            "dns": null,
            "somethingNew": true
        });
        let out = CniOutput::from_json(&prev).unwrap();
        assert_eq!(out.interfaces[0].mac, None);
        assert_eq!(out.interfaces[0].sandbox, None);
        assert_eq!(out.ips[0].gateway, None);
        assert!(out.routes.is_empty());
        assert!(out.dns.is_empty());
        assert_eq!(
            CniOutput::from_json(&json!({})).unwrap(),
            CniOutput::default()
        );
    }

    #[test]
    fn malformed_prev_result_is_code_7_naming_it() {
        for bad in [
            json!("not an object"),
            json!({"ips": [{"address": "10.1.0.5"}]}),
            json!({"ips": [{"address": "10.1.0.5/24", "gateway": "nope"}]}),
            json!({"interfaces": [{"mac": "aa:bb:cc:dd:ee:ff"}]}),
            json!({"routes": [{"gw": "10.1.0.1"}]}),
        ] {
            let err = CniOutput::from_json(&bad).unwrap_err();
            assert_eq!(err.code, code::INVALID_CONFIG, "{bad}");
            assert!(err.msg.contains("\"prevResult\""), "{err}");
        }
    }

    #[test]
    fn macs_format_lowercase_and_parse_either_case() {
        let mac = [0xaa, 0xbb, 0xcc, 0x0d, 0xe0, 0xff];
        assert_eq!(format_mac(mac), "aa:bb:cc:0d:e0:ff");
        assert_eq!(parse_mac("aa:bb:cc:0d:e0:ff"), Some(mac));
        assert_eq!(parse_mac("AA:BB:CC:0D:E0:FF"), Some(mac));
        assert_eq!(parse_mac("aa-bb-cc-0d-e0-ff"), Some(mac));
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "a:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:gg",
            "aa:bb-cc:dd:ee:ff",
            "+a:bb:cc:dd:ee:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
