//! The `ipam` object of a host-local network config, validated the way the
//! reference plugin's `LoadIPAMConfig` and `Range.Canonicalize` do.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::{Map, Value};

use super::dns;
use super::range::{AddressRange, RangeSet, ip_to_u128, u128_to_ip};
use crate::cni::Dns;
use crate::error::{CniError, CniResult};

/// host-local's data directory when `dataDir` is absent or empty.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLocalConfig {
    /// The network's name: its files live in `<data_dir>/<network>/`.
    pub network: String,
    /// One address is allocated from each set, in order.
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<RouteConf>,
    pub data_dir: PathBuf,
    /// resolv.conf to take the result's DNS settings from.
    pub resolv_conf: Option<PathBuf>,
    /// The pod MTU of the node state a `usePodCidr` range came from.
    pub pod_mtu: Option<u32>,
}

/// A route for the result, as written in `ipam.routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteConf {
    pub dst: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

impl HostLocalConfig {
    /// Parses the `ipam` object of network `network`. A top-level `subnet`
    /// (the legacy single-range form) becomes range set 0, ahead of `ranges`,
    /// as in host-local.
    pub fn parse(ipam: &Value, network: &str) -> CniResult<Self> {
        let ipam = ipam
            .as_object()
            .ok_or_else(|| CniError::invalid_config("ipam: must be an object"))?;
        check_network_name(network)?;

        let mut sets: Vec<(String, RangeSet)> = Vec::new();
        if !ipam.get("subnet").unwrap_or(&Value::Null).is_null() {
            let range = parse_range(ipam, "ipam")?;
            sets.push((
                "ipam".to_owned(),
                RangeSet {
                    ranges: vec![range],
                },
            ));
        } else if ["rangeStart", "rangeEnd", "gateway"]
            .iter()
            .any(|k| ipam.contains_key(*k))
        {
            log::warn!("ipam: rangeStart/rangeEnd/gateway without subnet are ignored");
        }
        if let Some(ranges) = non_null(ipam, "ranges") {
            let ranges = ranges
                .as_array()
                .ok_or_else(|| invalid("ipam.ranges", "must be an array of range sets"))?;
            for (i, set) in ranges.iter().enumerate() {
                let path = format!("ipam.ranges[{i}]");
                sets.push((path.clone(), parse_range_set(set, &path)?));
            }
        }
        if sets.is_empty() {
            return Err(invalid("ipam.ranges", "no IP ranges specified"));
        }
        for (i, (path_a, a)) in sets.iter().enumerate() {
            for (path_b, b) in &sets[i + 1..] {
                if let Some((ra, rb)) = overlap(a, b) {
                    return Err(invalid(
                        path_b,
                        format!("range {rb} overlaps with range {ra} of {path_a}"),
                    ));
                }
            }
        }

        Ok(Self {
            network: network.to_owned(),
            range_sets: sets.into_iter().map(|(_, set)| set).collect(),
            routes: parse_routes(ipam)?,
            data_dir: match string_field(ipam, "dataDir", "ipam")? {
                Some(dir) if !dir.is_empty() => PathBuf::from(dir),
                _ => PathBuf::from(DEFAULT_DATA_DIR),
            },
            resolv_conf: string_field(ipam, "resolvConf", "ipam")?
                .filter(|path| !path.is_empty())
                .map(PathBuf::from),
            pod_mtu: None,
        })
    }

    /// The directory holding this network's reservations.
    pub fn network_dir(&self) -> PathBuf {
        self.data_dir.join(&self.network)
    }

    /// DNS settings read from `resolvConf`, if one is configured.
    pub fn dns(&self) -> CniResult<Option<Dns>> {
        self.resolv_conf
            .as_deref()
            .map(dns::read_resolv_conf)
            .transpose()
    }
}

/// The name becomes a directory under `dataDir`, so it must be exactly one
/// path component; anything else host-local would accept is kept working.
fn check_network_name(network: &str) -> CniResult<()> {
    let valid =
        !network.is_empty() && network != "." && network != ".." && !network.contains(['/', '\0']);
    if valid {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("network name {network:?} is not usable as a directory name"),
        ))
    }
}

fn parse_range_set(value: &Value, path: &str) -> CniResult<RangeSet> {
    let entries = value
        .as_array()
        .ok_or_else(|| invalid(path, "must be an array of ranges"))?;
    if entries.is_empty() {
        return Err(invalid(path, "empty range set"));
    }
    let mut ranges: Vec<AddressRange> = Vec::with_capacity(entries.len());
    for (j, entry) in entries.iter().enumerate() {
        let path = format!("{path}[{j}]");
        let object = entry
            .as_object()
            .ok_or_else(|| invalid(&path, "must be an object"))?;
        let range = parse_range(object, &path)?;
        if let Some(first) = ranges.first()
            && first.is_ipv4() != range.is_ipv4()
        {
            return Err(invalid(&path, "mixed address families in one range set"));
        }
        if let Some(other) = ranges.iter().find(|r| r.overlaps(&range)) {
            return Err(invalid(
                &path,
                format!("range {range} overlaps with range {other} of the same set"),
            ));
        }
        ranges.push(range);
    }
    Ok(RangeSet { ranges })
}

/// One range with host-local's defaults: start = network + 1, end = the last
/// address before the IPv4 broadcast (the last address for IPv6), gateway =
/// network + 1 (skipped when allocating).
fn parse_range(object: &Map<String, Value>, path: &str) -> CniResult<AddressRange> {
    let subnet_path = format!("{path}.subnet");
    let subnet_text =
        string_field(object, "subnet", path)?.ok_or_else(|| invalid(&subnet_path, "missing"))?;
    let subnet: IpNet = subnet_text
        .parse()
        .map_err(|_| invalid(&subnet_path, format!("{subnet_text:?} is not a CIDR")))?;
    // As in host-local, where Go reads such an address as IPv4 and then
    // finds the mask's family does not match: one spelling per family.
    if let IpNet::V6(v6) = subnet
        && v6.addr().to_ipv4_mapped().is_some()
    {
        return Err(invalid(
            &subnet_path,
            format!("{subnet} is an IPv4-mapped IPv6 network; write it as IPv4"),
        ));
    }
    if subnet.addr() != subnet.network() {
        return Err(invalid(
            &subnet_path,
            format!(
                "{subnet} has host bits set; the network address is {}",
                subnet.network()
            ),
        ));
    }
    if subnet.prefix_len() > subnet.max_prefix_len() - 2 {
        return Err(invalid(
            &subnet_path,
            format!("network {subnet} too small to allocate from"),
        ));
    }

    let ipv4 = subnet.addr().is_ipv4();
    let network = ip_to_u128(subnet.network());
    let after_network = u128_to_ip(network + 1, ipv4);
    let last = match subnet {
        IpNet::V4(net) => IpAddr::V4((u32::from(net.broadcast()) - 1).into()),
        IpNet::V6(net) => IpAddr::V6(net.broadcast()),
    };
    let in_subnet = |key: &str, default: IpAddr| -> CniResult<IpAddr> {
        let Some(ip) = ip_field(object, key, path)? else {
            return Ok(default);
        };
        if ip.is_ipv4() != ipv4 || !subnet.contains(&ip) {
            return Err(invalid(
                &format!("{path}.{key}"),
                format!("{ip} not in network {subnet}"),
            ));
        }
        Ok(ip)
    };

    let range = AddressRange {
        subnet,
        gateway: in_subnet("gateway", after_network)?,
        range_start: in_subnet("rangeStart", after_network)?,
        range_end: in_subnet("rangeEnd", last)?,
    };
    if ip_to_u128(range.range_start) > ip_to_u128(range.range_end) {
        return Err(invalid(
            &format!("{path}.rangeEnd"),
            format!(
                "{} is before rangeStart {}",
                range.range_end, range.range_start
            ),
        ));
    }
    Ok(range)
}

fn parse_routes(ipam: &Map<String, Value>) -> CniResult<Vec<RouteConf>> {
    let Some(routes) = non_null(ipam, "routes") else {
        return Ok(Vec::new());
    };
    let routes = routes
        .as_array()
        .ok_or_else(|| invalid("ipam.routes", "must be an array"))?;
    routes
        .iter()
        .enumerate()
        .map(|(i, route)| {
            let path = format!("ipam.routes[{i}]");
            let object = route
                .as_object()
                .ok_or_else(|| invalid(&path, "must be an object"))?;
            let dst_text = string_field(object, "dst", &path)?
                .ok_or_else(|| invalid(&format!("{path}.dst"), "missing"))?;
            let dst = dst_text.parse().map_err(|_| {
                invalid(
                    &format!("{path}.dst"),
                    format!("{dst_text:?} is not a CIDR"),
                )
            })?;
            Ok(RouteConf {
                dst,
                gw: ip_field(object, "gw", &path)?,
            })
        })
        .collect()
}

fn non_null<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|v| !v.is_null())
}

fn string_field<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> CniResult<Option<&'a str>> {
    non_null(object, key)
        .map(|v| {
            v.as_str()
                .ok_or_else(|| invalid(&format!("{path}.{key}"), "must be a string"))
        })
        .transpose()
}

/// An address field; IPv4-mapped IPv6 addresses count as IPv4, as in Go.
fn ip_field(object: &Map<String, Value>, key: &str, path: &str) -> CniResult<Option<IpAddr>> {
    let Some(text) = string_field(object, key, path)?.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    text.parse::<IpAddr>()
        .map(|ip| Some(ip.to_canonical()))
        .map_err(|_| {
            invalid(
                &format!("{path}.{key}"),
                format!("{text:?} is not an IP address"),
            )
        })
}

fn overlap<'a>(a: &'a RangeSet, b: &'a RangeSet) -> Option<(&'a AddressRange, &'a AddressRange)> {
    a.ranges.iter().find_map(|ra| {
        b.ranges
            .iter()
            .find(|rb| ra.overlaps(rb))
            .map(|rb| (ra, rb))
    })
}

fn invalid(path: &str, msg: impl std::fmt::Display) -> CniError {
    CniError::invalid_config(format!("{path}: {msg}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::code;

    fn parse(ipam: Value) -> CniResult<HostLocalConfig> {
        HostLocalConfig::parse(&ipam, "net1")
    }

    fn parse_err(ipam: Value) -> String {
        let err = parse(ipam).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG, "{err}");
        err.msg
    }

    #[test]
    fn ipv4_defaults() {
        let cfg =
            parse(json!({"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]})).unwrap();
        let r = &cfg.range_sets[0].ranges[0];
        assert_eq!(r.range_start.to_string(), "10.1.0.1");
        assert_eq!(r.range_end.to_string(), "10.1.0.254");
        assert_eq!(r.gateway.to_string(), "10.1.0.1");
        assert_eq!(cfg.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(
            cfg.network_dir(),
            PathBuf::from("/var/lib/cni/networks/net1")
        );
        assert_eq!(cfg.resolv_conf, None);
        assert!(cfg.routes.is_empty());
    }

    #[test]
    fn ipv6_defaults_end_at_last_address() {
        let cfg = parse(json!({"ranges": [[{"subnet": "fd00:1::/64"}]]})).unwrap();
        let mapped = parse(json!({"ranges": [[{"subnet": "::ffff:10.0.0.0/120"}]]})).unwrap_err();
        assert!(
            mapped.msg.contains("ranges[0][0].subnet") && mapped.msg.contains("IPv4-mapped"),
            "{mapped:?}"
        );
        let r = &cfg.range_sets[0].ranges[0];
        assert_eq!(r.range_start.to_string(), "fd00:1::1");
        assert_eq!(r.range_end.to_string(), "fd00:1::ffff:ffff:ffff:ffff");
        assert_eq!(r.gateway.to_string(), "fd00:1::1");
    }

    #[test]
    fn legacy_form_is_range_set_zero() {
        let cfg = parse(json!({
            "subnet": "10.2.0.0/16",
            "rangeStart": "10.2.1.10",
            "rangeEnd": "10.2.1.20",
            "gateway": "10.2.0.254",
            "ranges": [[{"subnet": "fd00::/120"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.2.0.1"}],
            "dataDir": "/tmp/x",
            "resolvConf": "/etc/resolv.conf",
        }))
        .unwrap();
        assert_eq!(cfg.range_sets.len(), 2);
        let r = &cfg.range_sets[0].ranges[0];
        assert_eq!(r.to_string(), "10.2.1.10-10.2.1.20");
        assert_eq!(r.gateway.to_string(), "10.2.0.254");
        assert!(!cfg.range_sets[1].is_ipv4());
        assert_eq!(cfg.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(cfg.routes[0].gw, None);
        assert_eq!(cfg.routes[1].gw, Some("10.2.0.1".parse().unwrap()));
        assert_eq!(cfg.network_dir(), PathBuf::from("/tmp/x/net1"));
        assert_eq!(cfg.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
    }

    #[test]
    fn multi_range_sets_and_sets_of_several_ranges() {
        let cfg = parse(json!({"ranges": [
            [{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10"}, {"subnet": "10.3.0.0/24"}],
            [{"subnet": "fd00::/64"}],
        ]}))
        .unwrap();
        assert_eq!(
            cfg.range_sets[0].to_string(),
            "10.1.0.10-10.1.0.254,10.3.0.1-10.3.0.254"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (json!({}), "ipam.ranges: no IP ranges specified"),
            (json!({"ranges": [[]]}), "ipam.ranges[0]: empty range set"),
            (
                json!({"ranges": [[{}]]}),
                "ipam.ranges[0][0].subnet: missing",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.0"}]]}),
                "ipam.ranges[0][0].subnet: \"10.1.0.0\" is not a CIDR",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.1/24"}]]}),
                "ipam.ranges[0][0].subnet: 10.1.0.1/24 has host bits set",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.0/31"}]]}),
                "ipam.ranges[0][0].subnet: network 10.1.0.0/31 too small",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.1"}]]}),
                "ipam.ranges[0][0].rangeStart: 10.2.0.1 not in network 10.1.0.0/24",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.0/24", "rangeEnd": "fd00::1"}]]}),
                "ipam.ranges[0][0].rangeEnd: fd00::1 not in network",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.9.0.1"}]]}),
                "ipam.ranges[0][0].gateway: 10.9.0.1 not in network 10.1.0.0/24",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9", "rangeEnd": "10.1.0.5"}]]}),
                "ipam.ranges[0][0].rangeEnd: 10.1.0.5 is before rangeStart 10.1.0.9",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/25"}]]}),
                "ipam.ranges[0][1]: range 10.1.0.1-10.1.0.126 overlaps with range 10.1.0.1-10.1.0.254",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]}),
                "ipam.ranges[0][1]: mixed address families",
            ),
            (
                json!({"subnet": "10.1.0.0/16", "ranges": [[{"subnet": "10.1.2.0/24"}]]}),
                "ipam.ranges[0]: range 10.1.2.1-10.1.2.254 overlaps with range 10.1.0.1-10.1.255.254 of ipam",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.0/24"}]], "routes": [{"gw": "10.1.0.1"}]}),
                "ipam.routes[0].dst: missing",
            ),
            (
                json!({"ranges": [[{"subnet": 5}]]}),
                "ipam.ranges[0][0].subnet: must be a string",
            ),
        ];
        for (ipam, want) in cases {
            let msg = parse_err(ipam.clone());
            assert!(msg.starts_with(want), "{ipam}: got {msg:?}, want {want:?}");
        }
    }

    #[test]
    fn network_name_must_be_one_path_component() {
        let ipam = json!({"ranges": [[{"subnet": "10.1.0.0/24"}]]});
        for name in ["", "..", "a/b", "a\0b"] {
            let err = HostLocalConfig::parse(&ipam, name).unwrap_err();
            assert_eq!(err.code, code::INVALID_CONFIG);
        }
    }
}
