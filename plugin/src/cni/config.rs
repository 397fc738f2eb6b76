//! The network configuration a runtime streams on stdin, parsed once into
//! typed values.
//!
//! Keys are first brought to their canonical spelling as Go plugins match
//! them (exact, else without regard to case: see [`super::keys`]); serde then
//! reads one struct tree ([`NetworkKeys`], [`AddKeys`]) and every field error,
//! serde's or a validation's, names the field by its path
//! (`"nodeRoutes[0].gw"`): [`invalid_field`] is the only place they are made.
//! No other module reads a key from the JSON; `raw` is kept only to be
//! forwarded whole (a delegated IPAM plugin reads the config on its stdin).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use cni_ebpf_userspace::AttachMode;
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

use super::env::is_valid_identifier;
use super::keys;
use super::result::{CniOutput, Dns, parse_mac};
use super::version;
use crate::bandwidth::{self, Bandwidth, BandwidthError};
use crate::error::{CniError, CniResult, code};
use crate::host_ports::HostPortRequest;
use crate::uplink::{NodeRoute, UplinkConf};

pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/cni-ebpf";
pub const DEFAULT_STATE_DIR: &str = "/run/cni-ebpf";

/// IPv4's minimum MTU (RFC 791) up to the largest an IP packet can be.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

/// The longest interface name Linux takes (`IFNAMSIZ` - 1).
const MAX_IFNAME_LEN: usize = 15;

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub mtu: Option<u32>,
    pub bpffs_root: PathBuf,
    pub state_dir: PathBuf,
    pub ipam: IpamConf,
    pub runtime_config: RuntimeConfig,
    pub prev_result: Option<Value>,
    pub args: Option<Value>,
    /// `args.cni.ips`: addresses asked for, with or without a prefix length;
    /// entries that are not strings are skipped, as they always were.
    pub args_ips: Vec<String>,
    pub dns: Option<Dns>,
    /// `cni.dev/valid-attachments` (or the older `cni.dev/attachments`):
    /// GC's list of `(containerID, ifname)`; `None` when absent.
    pub valid_attachments: Option<Vec<(String, String)>>,
    /// The keys only ADD reads, or the error naming the first bad one. Kept
    /// apart so that DEL of a pod whose ADD was refused still cleans up.
    add: Result<AddConf, CniError>,
    /// The whole config as given, unknown keys included, known keys in
    /// their canonical spelling: forwarded to a delegated IPAM plugin.
    pub raw: Value,
}

/// The `ipam` object; the built-in allocator parses the rest of `raw`
/// itself (see `ipam::config`).
#[derive(Debug, Clone, PartialEq)]
pub struct IpamConf {
    pub ipam_type: String,
    /// Whether `routes` is present (`"routes": []` asks for none).
    pub routes_given: bool,
    /// Whether `delegateHostLocal` asks for the host-local binary.
    pub delegate_host_local: bool,
    pub raw: Value,
}

/// The capabilities a runtime passed in `runtimeConfig` that every verb
/// reads; `portMappings` and `bandwidth` are ADD's ([`AddConf`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConfig {
    /// The `ips` capability: addresses, each with or without a prefix length.
    pub ips: Vec<String>,
    /// The `mac` capability.
    pub mac: Option<String>,
}

/// What the plugin's own keys and ADD's capabilities ask for, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AddConf {
    pub attach_mode: AttachMode,
    /// `attachMode: auto`: attached through clsact now, moved onto tcx by
    /// the node agent later (`ENDPOINT_F_TCX_LATER`).
    pub tcx_later: bool,
    pub uplink: UplinkConf,
    /// `cgroupRoot`: where the hooks on the node's own sockets attach.
    pub cgroup_root: Option<PathBuf>,
    pub port_requests: Vec<HostPortRequest>,
    pub bandwidth: Bandwidth,
    /// `bigTcp`: the GSO and GRO maximum size of both veth ends, IPv4 and
    /// IPv6, when above 64 KiB (BIG TCP); `None` leaves the kernel's 64 KiB.
    pub big_tcp: Option<u32>,
}

/// What `"bigTcp": true` asks for: 192 KiB, Cilium's BIG TCP size (three
/// 64 KiB aggregates; about 45 segments of 4 KiB pages at MTU 1500).
pub const BIG_TCP_DEFAULT: u32 = 196_608;
/// Above the legacy 64 KiB, up to the kernel's `GSO_MAX_SIZE` (512 KiB).
const BIG_TCP_RANGE: std::ops::RangeInclusive<u32> = 65_537..=524_280;

// The struct tree serde reads. Field names are the canonical keys, the same
// as in `keys::NETWORK` and the README's table (tests below hold them equal).

/// The keys every verb reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkKeys {
    cni_version: String,
    name: String,
    #[serde(rename = "type")]
    plugin_type: String,
    mtu: Option<u32>,
    bpffs_root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    ipam: IpamKeys,
    delegate_host_local: Option<bool>,
    runtime_config: Option<RuntimeKeys>,
    prev_result: Option<Value>,
    args: Option<Value>,
    /// Read whole so that its errors name `dns`, as before.
    dns: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<AttachmentKeys>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<AttachmentKeys>>,
}

#[derive(Deserialize)]
struct IpamKeys {
    #[serde(rename = "type")]
    ipam_type: String,
    /// Present, whatever its value (the allocator reads it).
    #[serde(default, deserialize_with = "present")]
    routes: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeKeys {
    ips: Option<Vec<String>>,
    mac: Option<String>,
    ip_ranges: Option<Value>,
}

#[derive(Deserialize)]
struct AttachmentKeys {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The keys only ADD reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddKeys {
    attach_mode: Option<String>,
    ip_masq: Option<bool>,
    #[serde(rename = "ipMasqV6")]
    ip_masq_v6: Option<bool>,
    #[serde(rename = "nonMasqueradeCIDRs")]
    non_masquerade_cidrs: Option<Vec<IpNet>>,
    uplink: Option<String>,
    masquerade_address: Option<Ipv4Addr>,
    #[serde(rename = "masqueradeAddressV6")]
    masquerade_address_v6: Option<Ipv6Addr>,
    node_routes: Option<Vec<NodeRoute>>,
    nat_port_range: Option<String>,
    #[serde(rename = "serviceCIDRs")]
    service_cidrs: Option<Vec<IpNet>>,
    cgroup_root: Option<PathBuf>,
    ingress_rate: Option<u64>,
    ingress_burst: Option<u64>,
    egress_rate: Option<u64>,
    egress_burst: Option<u64>,
    /// `true`, `false` or a size in bytes.
    big_tcp: Option<Value>,
    uplink_xdp: Option<bool>,
    runtime_config: Option<AddCapabilities>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddCapabilities {
    port_mappings: Option<Vec<PortMappingKeys>>,
    bandwidth: Option<BandwidthKeys>,
}

/// A `portMappings` entry; other fields are ignored, as portmap does.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortMappingKeys {
    host_port: u16,
    container_port: u16,
    protocol: Option<String>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
}

/// A limit pair per direction, statically or as `runtimeConfig.bandwidth`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct BandwidthKeys {
    ingress_rate: Option<u64>,
    ingress_burst: Option<u64>,
    egress_rate: Option<u64>,
    egress_burst: Option<u64>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer).map(|_| true)
}

impl NetConf {
    /// Code 6 when `bytes` is not a JSON object, code 1 for an unsupported
    /// `cniVersion`, code 7 naming the field for anything else wrong.
    pub fn parse(bytes: &[u8]) -> CniResult<NetConf> {
        let mut raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(code::DECODE_FAILURE, "error decoding network config").with_details(e)
        })?;
        keys::canonicalize(&mut raw, &keys::NETWORK);
        if !raw.is_object() {
            return Err(
                CniError::new(code::DECODE_FAILURE, "error decoding network config")
                    .with_details("expected a JSON object"),
            );
        }
        let keys: NetworkKeys = deserialize(&raw)?;
        let add = deserialize::<AddKeys>(&raw).and_then(AddKeys::validate);
        keys.validate(add, raw)
    }

    /// The `prevResult`, read whatever version it was written in.
    pub fn prev_output(&self) -> CniResult<Option<CniOutput>> {
        self.prev_result
            .as_ref()
            .map(CniOutput::from_json)
            .transpose()
    }

    /// The keys ADD reads, or the error naming the first invalid one.
    pub fn add_conf(&self) -> CniResult<&AddConf> {
        self.add.as_ref().map_err(Clone::clone)
    }
}

/// `value` as a `T`, every error naming the field by its path.
fn deserialize<T: DeserializeOwned>(value: &Value) -> CniResult<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde puts a missing field's error on the object that lacks it.
        if let Some(key) = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            let field = if path == "." {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
            return CniError::invalid_config(format!("missing field \"{field}\""));
        }
        invalid_field(&path, inner)
    })
}

/// The one field error: code 7, naming the field by its path.
pub(crate) fn invalid_field(path: &str, reason: impl std::fmt::Display) -> CniError {
    CniError::invalid_config(format!("invalid field \"{path}\": {reason}"))
}

impl NetworkKeys {
    fn validate(self, add: CniResult<AddConf>, raw: Value) -> CniResult<NetConf> {
        let cni_version = self.cni_version;
        if !version::is_supported(&cni_version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "unsupported cniVersion {cni_version:?}: this plugin supports {}",
                    version::SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if !is_valid_identifier(&self.name) {
            return Err(invalid_field(
                "name",
                format!(
                    "{:?} must start with a letter or digit and contain only \
                     letters, digits, '_', '.' and '-'",
                    self.name
                ),
            ));
        }
        if self.plugin_type.is_empty() {
            return Err(invalid_field("type", "it is empty"));
        }
        if let Some(mtu) = self.mtu.filter(|mtu| !MTU_RANGE.contains(mtu)) {
            return Err(invalid_field(
                "mtu",
                format!(
                    "{mtu} is outside {}..={}",
                    MTU_RANGE.start(),
                    MTU_RANGE.end()
                ),
            ));
        }
        let bpffs_root = absolute_dir("bpffsRoot", self.bpffs_root, DEFAULT_BPFFS_ROOT)?;
        let state_dir = absolute_dir("stateDir", self.state_dir, DEFAULT_STATE_DIR)?;
        if self.ipam.ipam_type.is_empty() {
            return Err(invalid_field("ipam.type", "it is empty"));
        }
        let runtime_config = self
            .runtime_config
            .map(RuntimeKeys::validate)
            .transpose()?
            .unwrap_or_default();
        let dns = self
            .dns
            .map(|dns| Dns::deserialize(dns).map_err(|e| invalid_field("dns", e)))
            .transpose()?;
        let args_ips = self
            .args
            .as_ref()
            .and_then(|args| args.pointer("/cni/ips"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        let valid_attachments = self.valid_attachments.or(self.attachments).map(|list| {
            list.into_iter()
                .map(|a| (a.container_id, a.ifname))
                .collect()
        });
        Ok(NetConf {
            cni_version,
            name: self.name,
            plugin_type: self.plugin_type,
            mtu: self.mtu,
            bpffs_root,
            state_dir,
            ipam: IpamConf {
                ipam_type: self.ipam.ipam_type,
                routes_given: self.ipam.routes,
                delegate_host_local: self.delegate_host_local.unwrap_or(false),
                raw: raw["ipam"].clone(),
            },
            runtime_config,
            prev_result: self.prev_result,
            args: self.args,
            args_ips,
            dns,
            valid_attachments,
            add,
            raw,
        })
    }
}

impl RuntimeKeys {
    fn validate(self) -> CniResult<RuntimeConfig> {
        let ips = self.ips.unwrap_or_default();
        if let Some(bad) = ips.iter().find(|ip| !is_ip_with_optional_prefix(ip)) {
            return Err(invalid_field(
                "runtimeConfig.ips",
                format!("{bad:?} is not an IP address"),
            ));
        }
        if let Some(bad) = self.mac.as_deref().filter(|mac| parse_mac(mac).is_none()) {
            return Err(invalid_field(
                "runtimeConfig.mac",
                format!("{bad:?} is not a MAC address"),
            ));
        }
        // A capability we cannot honour is refused, never dropped: the pod
        // would get an address outside the ranges it asked for.
        if self
            .ip_ranges
            .is_some_and(|ranges| ranges.as_array().is_none_or(|r| !r.is_empty()))
        {
            return Err(invalid_field(
                "runtimeConfig.ipRanges",
                "the ipRanges capability is not supported: set the ranges in \"ipam\" \
                 and do not declare it in \"capabilities\"",
            ));
        }
        Ok(RuntimeConfig { ips, mac: self.mac })
    }
}

impl AddKeys {
    fn validate(self) -> CniResult<AddConf> {
        // `auto` attaches through clsact and leaves tcx to the agent: see
        // `cni_ebpf_userspace::promote` for the measurement.
        let (attach_mode, tcx_later) = match self.attach_mode.as_deref() {
            None | Some("auto") => (AttachMode::Clsact, true),
            Some("clsact") => (AttachMode::Clsact, false),
            Some("tcx") => (AttachMode::Tcx, false),
            Some(other) => {
                return Err(invalid_field(
                    "attachMode",
                    format!("{other:?}: expected \"auto\", \"tcx\" or \"clsact\""),
                ));
            }
        };
        if let Some(name) = &self.uplink
            && (name.is_empty() || name.len() > MAX_IFNAME_LEN)
        {
            return Err(invalid_field("uplink", "not an interface name"));
        }
        let nat_ports = self.nat_port_range.as_deref().map(nat_ports).transpose()?;
        if let Some(root) = self.cgroup_root.as_ref().filter(|p| !p.is_absolute()) {
            return Err(invalid_field(
                "cgroupRoot",
                format!("{root:?}: not an absolute path"),
            ));
        }
        let capabilities = self.runtime_config.unwrap_or(AddCapabilities {
            port_mappings: None,
            bandwidth: None,
        });
        let port_requests = port_requests(capabilities.port_mappings.unwrap_or_default())?;
        // `runtimeConfig.bandwidth` wins over the static fields.
        let bandwidth = match capabilities.bandwidth {
            Some(limits) => bandwidth_limits(&limits, "runtimeConfig.bandwidth.")?,
            None => bandwidth_limits(
                &BandwidthKeys {
                    ingress_rate: self.ingress_rate,
                    ingress_burst: self.ingress_burst,
                    egress_rate: self.egress_rate,
                    egress_burst: self.egress_burst,
                },
                "",
            )?,
        };
        let node_routes = self.node_routes.unwrap_or_default();
        for (i, route) in node_routes.iter().enumerate() {
            if route.dst.addr().is_ipv4() != route.gw.is_ipv4() {
                return Err(invalid_field(
                    &format!("nodeRoutes[{i}].gw"),
                    format!("{} is not of the family of dst {}", route.gw, route.dst),
                ));
            }
        }
        let big_tcp = self.big_tcp.as_ref().map(big_tcp).transpose()?.flatten();
        Ok(AddConf {
            attach_mode,
            tcx_later,
            uplink: UplinkConf {
                masquerade: self.ip_masq.unwrap_or(false),
                masquerade_v6: self.ip_masq_v6.or(self.ip_masq).unwrap_or(false),
                no_masquerade: self.non_masquerade_cidrs.unwrap_or_default(),
                uplink: self.uplink,
                masquerade_address: self.masquerade_address,
                masquerade_address_v6: self.masquerade_address_v6,
                node_routes,
                nat_ports,
                service_cidrs: self.service_cidrs.unwrap_or_default(),
                xdp: self.uplink_xdp.unwrap_or(false),
            },
            cgroup_root: self.cgroup_root,
            port_requests,
            bandwidth,
            big_tcp,
        })
    }
}

/// `bigTcp`: `true` ([`BIG_TCP_DEFAULT`]), `false`, or a size in bytes
/// above 64 KiB.
fn big_tcp(value: &Value) -> CniResult<Option<u32>> {
    match value {
        Value::Bool(false) => Ok(None),
        Value::Bool(true) => Ok(Some(BIG_TCP_DEFAULT)),
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| BIG_TCP_RANGE.contains(n))
            .map(Some)
            .ok_or_else(|| {
                invalid_field(
                    "bigTcp",
                    format!(
                        "{n} is outside {}..={} bytes",
                        BIG_TCP_RANGE.start(),
                        BIG_TCP_RANGE.end()
                    ),
                )
            }),
        other => Err(invalid_field(
            "bigTcp",
            format!("{other}: expected true, false or a size in bytes"),
        )),
    }
}

/// `"LOW-HIGH"` with 0 < LOW <= HIGH.
fn nat_ports(text: &str) -> CniResult<(u16, u16)> {
    text.split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
        .filter(|(a, b)| 0 < *a && a <= b)
        .ok_or_else(|| invalid_field("natPortRange", "expected \"LOW-HIGH\" with 0 < LOW <= HIGH"))
}

/// `runtimeConfig.portMappings`, as the portmap plugin reads it.
fn port_requests(entries: Vec<PortMappingKeys>) -> CniResult<Vec<HostPortRequest>> {
    let mut out: Vec<HostPortRequest> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let field = |name: &str| format!("runtimeConfig.portMappings[{i}].{name}");
        let proto = match entry.protocol.as_deref() {
            // Absent or empty: TCP, the CRI's default protocol.
            None | Some("") => cni_ebpf_common::IPPROTO_TCP,
            Some(p) if p.eq_ignore_ascii_case("tcp") => cni_ebpf_common::IPPROTO_TCP,
            Some(p) if p.eq_ignore_ascii_case("udp") => cni_ebpf_common::IPPROTO_UDP,
            Some(p) => {
                return Err(invalid_field(
                    &field("protocol"),
                    format!("{p:?}: expected \"tcp\" or \"udp\""),
                ));
            }
        };
        // Empty (containerd's and CRI-O's "unset"): every node address of
        // every family the pod has; `0.0.0.0` / `::`: every one of that
        // family (kept as such, see `HostPortRequest::host_ip`).
        let host_ip = match entry.host_ip.as_deref() {
            None | Some("") => None,
            Some(text) => Some(
                text.parse::<IpAddr>()
                    .map_err(|e| invalid_field(&field("hostIP"), e))?,
            ),
        };
        for (name, port) in [
            ("hostPort", entry.host_port),
            ("containerPort", entry.container_port),
        ] {
            if port == 0 {
                return Err(invalid_field(&field(name), "not a port number (1-65535)"));
            }
        }
        let request = HostPortRequest {
            proto,
            host_port: entry.host_port,
            container_port: entry.container_port,
            host_ip,
        };
        if out.iter().any(|r| {
            r.proto == request.proto
                && r.host_port == request.host_port
                && r.host_ip == request.host_ip
        }) {
            return Err(invalid_field(&field("hostPort"), "listed twice"));
        }
        out.push(request);
    }
    Ok(out)
}

/// Both directions' limits; `prefix` is where the keys were read.
fn bandwidth_limits(keys: &BandwidthKeys, prefix: &str) -> CniResult<Bandwidth> {
    let direction = |rate: Option<u64>, burst: Option<u64>, rate_key: &str, burst_key: &str| {
        bandwidth::limit(rate.unwrap_or(0), burst.unwrap_or(0)).map_err(|e| match e {
            BandwidthError::BurstMissing => invalid_field(
                &format!("{prefix}{burst_key}"),
                "if the rate is set, the burst must be set too",
            ),
            BandwidthError::RateMissing => invalid_field(
                &format!("{prefix}{rate_key}"),
                "if the burst is set, the rate must be set too",
            ),
            BandwidthError::BurstTooLarge => invalid_field(
                &format!("{prefix}{burst_key}"),
                "the burst cannot be more than 4 GiB",
            ),
        })
    };
    Ok(Bandwidth {
        ingress: direction(
            keys.ingress_rate,
            keys.ingress_burst,
            "ingressRate",
            "ingressBurst",
        )?,
        egress: direction(
            keys.egress_rate,
            keys.egress_burst,
            "egressRate",
            "egressBurst",
        )?,
    })
}

fn absolute_dir(key: &str, dir: Option<PathBuf>, default: &str) -> CniResult<PathBuf> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(default));
    if dir.is_absolute() {
        Ok(dir)
    } else {
        Err(invalid_field(
            key,
            format!("{dir:?} is not an absolute path"),
        ))
    }
}

fn is_ip_with_optional_prefix(text: &str) -> bool {
    text.parse::<IpAddr>().is_ok() || text.parse::<IpNet>().is_ok()
}
#[cfg(test)]
mod tests {
    use super::*;
    use cni_ebpf_common::{IPPROTO_TCP, IPPROTO_UDP};
    use cni_ebpf_userspace::rate::Limit;
    use serde_json::json;

    fn minimal() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "pods",
            "type": "cni-ebpf",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]}
        })
    }

    fn parse(config: &Value) -> CniResult<NetConf> {
        NetConf::parse(config.to_string().as_bytes())
    }

    fn with(key: &str, value: Value) -> Value {
        let mut config = minimal();
        config[key] = value;
        config
    }

    fn without(key: &str) -> Value {
        let mut config = minimal();
        config.as_object_mut().unwrap().remove(key);
        config
    }

    fn assert_config_error(config: &Value, field: &str) {
        let err = parse(config).expect_err("must fail");
        assert_eq!(err.code, code::INVALID_CONFIG, "{err}");
        assert!(
            err.msg.contains(&format!("\"{field}\"")),
            "{field:?} not named in {:?}",
            err.msg
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let conf = parse(&minimal()).unwrap();
        assert_eq!(conf.cni_version, "1.0.0");
        assert_eq!(conf.name, "pods");
        assert_eq!(conf.plugin_type, "cni-ebpf");
        assert_eq!(conf.mtu, None);
        assert_eq!(conf.bpffs_root, PathBuf::from("/sys/fs/bpf/cni-ebpf"));
        assert_eq!(conf.state_dir, PathBuf::from("/run/cni-ebpf"));
        assert_eq!(conf.ipam.ipam_type, "host-local");
        assert_eq!(conf.ipam.raw, minimal()["ipam"]);
        assert_eq!(
            conf.runtime_config,
            RuntimeConfig {
                ips: vec![],
                mac: None,
            }
        );
        assert_eq!(conf.prev_result, None);
        assert_eq!(conf.prev_output().unwrap(), None);
        assert_eq!(conf.args, None);
        assert_eq!(conf.dns, None);
        assert_eq!(conf.raw, minimal());
    }

    #[test]
    fn every_supported_version_parses() {
        for v in version::SUPPORTED_VERSIONS {
            assert_eq!(
                parse(&with("cniVersion", json!(v))).unwrap().cni_version,
                *v
            );
        }
    }

    #[test]
    fn full_config_is_read() {
        let mut config = minimal();
        let extra = json!({
            "mtu": 1450,
            "bpffsRoot": "/sys/fs/bpf/other",
            "stateDir": "/var/lib/cni-ebpf",
            "runtimeConfig": {
                "ips": ["10.1.0.5/24", "fd00::5"],
                "mac": "0a:58:0a:01:00:05",
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
            },
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24"}]},
            "args": {"cni": {"ips": ["10.1.0.5"]}},
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
            "someOtherPluginsKey": {"anything": true}
        });
        for (key, value) in extra.as_object().unwrap() {
            config[key] = value.clone();
        }
        let conf = parse(&config).unwrap();
        assert_eq!(conf.mtu, Some(1450));
        assert_eq!(conf.bpffs_root, PathBuf::from("/sys/fs/bpf/other"));
        assert_eq!(conf.state_dir, PathBuf::from("/var/lib/cni-ebpf"));
        assert_eq!(conf.runtime_config.ips, vec!["10.1.0.5/24", "fd00::5"]);
        assert_eq!(
            conf.runtime_config.mac.as_deref(),
            Some("0a:58:0a:01:00:05")
        );
        assert_eq!(
            conf.add_conf().unwrap().port_requests[0].host_port,
            8080,
            "portMappings read from runtimeConfig"
        );
        assert_eq!(conf.prev_result.as_ref(), Some(&config["prevResult"]));
        let prev = conf.prev_output().unwrap().unwrap();
        assert_eq!(prev.ips[0].address, "10.1.0.5/24".parse::<IpNet>().unwrap());
        assert_eq!(conf.args.as_ref(), Some(&config["args"]));
        let dns = conf.dns.unwrap();
        assert_eq!(dns.nameservers, vec!["10.96.0.10"]);
        assert_eq!(dns.search, vec!["svc.cluster.local"]);
        assert_eq!(conf.raw, config);
    }

    #[test]
    fn null_optionals_read_as_absent() {
        let mut config = minimal();
        for key in [
            "mtu",
            "bpffsRoot",
            "runtimeConfig",
            "prevResult",
            "args",
            "dns",
        ] {
            config[key] = Value::Null;
        }
        let conf = parse(&config).unwrap();
        assert_eq!(conf.mtu, None);
        assert_eq!(conf.bpffs_root, PathBuf::from(DEFAULT_BPFFS_ROOT));
        assert_eq!(conf.prev_result, None);
    }

    #[test]
    fn malformed_json_is_code_6_with_serde_details() {
        for bad in [
            &b"{\"cniVersion\": "[..],
            b"",
            b"not json",
            b"[1, 2]",
            b"\"str\"",
        ] {
            let err = NetConf::parse(bad).unwrap_err();
            assert_eq!(err.code, code::DECODE_FAILURE, "{err}");
            assert!(!err.details.is_empty(), "{err}");
        }
        let err = NetConf::parse(b"{\"name\": ").unwrap_err();
        assert!(err.details.contains("EOF"), "{err}");
    }

    #[test]
    fn missing_required_fields_are_code_7_naming_the_field() {
        for field in ["cniVersion", "name", "type", "ipam"] {
            let err = parse(&without(field)).unwrap_err();
            assert_eq!(err.code, code::INVALID_CONFIG, "{err}");
            assert_eq!(err.msg, format!("missing field \"{field}\""));
        }
        assert_config_error(&with("ipam", json!({"subnet": "10.1.0.0/24"})), "ipam.type");
        assert_config_error(&with("name", Value::Null), "name");
    }

    #[test]
    fn wrongly_typed_fields_are_code_7_naming_the_field() {
        for (field, value) in [
            ("cniVersion", json!(1)),
            ("name", json!(5)),
            ("type", json!(["cni-ebpf"])),
            ("mtu", json!("1500")),
            ("mtu", json!(-1)),
            ("mtu", json!(1500.5)),
            ("bpffsRoot", json!(false)),
            ("stateDir", json!(7)),
            ("ipam", json!("host-local")),
            ("runtimeConfig", json!([])),
            ("dns", json!({"nameservers": "10.96.0.10"})),
        ] {
            assert_config_error(&with(field, value), field);
        }
        assert_config_error(&with("ipam", json!({"type": 3})), "ipam.type");
        assert_config_error(
            &with("runtimeConfig", json!({"ips": "10.1.0.5"})),
            "runtimeConfig.ips",
        );
        assert_config_error(
            &with("runtimeConfig", json!({"mac": 42})),
            "runtimeConfig.mac",
        );
    }

    #[test]
    fn unsupported_version_is_code_1_naming_it() {
        for v in ["0.1.0", "0.2.0", "1.0", "2.0.0"] {
            let err = parse(&with("cniVersion", json!(v))).unwrap_err();
            assert_eq!(err.code, code::INCOMPATIBLE_VERSION, "{err}");
            assert!(err.msg.contains(&format!("{v:?}")), "{err}");
        }
    }

    #[test]
    fn network_names_follow_the_spec_rule() {
        for name in ["a", "pods", "my-net_1.0", "0net"] {
            parse(&with("name", json!(name))).unwrap();
        }
        for name in ["", "-net", "_net", ".net", "my net", "net/1", "net:1", "ä"] {
            assert_config_error(&with("name", json!(name)), "name");
        }
        assert_config_error(&with("type", json!("")), "type");
        assert_config_error(&with("ipam", json!({"type": ""})), "ipam.type");
    }

    #[test]
    fn mtu_must_fit_ip() {
        for mtu in [68, 1500, 9000, 65535] {
            assert_eq!(parse(&with("mtu", json!(mtu))).unwrap().mtu, Some(mtu));
        }
        for mtu in [0, 67, 65536, 4_294_967_295u32] {
            assert_config_error(&with("mtu", json!(mtu)), "mtu");
        }
    }

    #[test]
    fn directories_must_be_absolute() {
        for field in ["bpffsRoot", "stateDir"] {
            assert_config_error(&with(field, json!("relative/dir")), field);
            assert_config_error(&with(field, json!("")), field);
        }
    }

    #[test]
    fn runtime_config_values_are_checked() {
        assert_config_error(
            &with("runtimeConfig", json!({"ips": ["10.1.0.5/24", "nope"]})),
            "runtimeConfig.ips",
        );
        assert_config_error(
            &with("runtimeConfig", json!({"mac": "0a:58:0a"})),
            "runtimeConfig.mac",
        );
        let conf = parse(&with("runtimeConfig", json!({"bandwidth": {}}))).unwrap();
        assert!(conf.runtime_config.ips.is_empty());
        assert!(!conf.add_conf().unwrap().bandwidth.is_limited());
    }

    #[test]
    fn keys_match_without_regard_to_case_as_in_go() {
        let conf = parse(&json!({
            "CNIVersion": "1.0.0",
            "Name": "pods",
            "Type": "cni-ebpf",
            "MTU": 1400,
            "BpffsRoot": "/sys/fs/bpf/x",
            "IPAM": {"Type": "host-local", "Subnet": "10.1.0.0/24"},
            "RuntimeConfig": {"IPs": ["10.1.0.5"], "Mac": "0a:58:0a:01:00:05"},
            "Args": {"Cni": {"Ips": ["10.1.0.6"]}},
            "PrevResult": {"CniVersion": "1.0.0", "Ips": [{"Address": "10.1.0.5/24"}]},
            "DNS": {"Nameservers": ["10.96.0.10"]}
        }))
        .unwrap();
        assert_eq!(conf.cni_version, "1.0.0");
        assert_eq!(conf.name, "pods");
        assert_eq!(conf.mtu, Some(1400));
        assert_eq!(conf.bpffs_root, PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(conf.ipam.ipam_type, "host-local");
        assert_eq!(conf.ipam.raw["subnet"], "10.1.0.0/24");
        assert_eq!(conf.runtime_config.ips, vec!["10.1.0.5"]);
        assert_eq!(
            conf.runtime_config.mac.as_deref(),
            Some("0a:58:0a:01:00:05")
        );
        assert_eq!(conf.args.as_ref().unwrap()["cni"]["ips"][0], "10.1.0.6");
        let prev = conf.prev_output().unwrap().unwrap();
        assert_eq!(prev.ips[0].address, "10.1.0.5/24".parse::<IpNet>().unwrap());
        assert_eq!(conf.dns.as_ref().unwrap().nameservers, vec!["10.96.0.10"]);
        assert_eq!(conf.raw["ipam"]["type"], "host-local");
    }

    #[test]
    fn errors_about_folded_keys_name_the_canonical_field() {
        assert_config_error(
            &with("RuntimeConfig", json!({"MAC": 42})),
            "runtimeConfig.mac",
        );
        assert_config_error(&with("MTU", json!("1500")), "mtu");
    }

    #[test]
    fn ip_ranges_capability_is_refused_not_dropped() {
        assert_config_error(
            &with(
                "runtimeConfig",
                json!({"ipRanges": [[{"subnet": "10.9.0.0/24"}]]}),
            ),
            "runtimeConfig.ipRanges",
        );
        assert_config_error(
            &with("runtimeConfig", json!({"IPRanges": "x"})),
            "runtimeConfig.ipRanges",
        );
        parse(&with("runtimeConfig", json!({"ipRanges": []}))).unwrap();
    }

    #[test]
    fn malformed_prev_result_is_reported_when_read() {
        let conf = parse(&with("prevResult", json!({"ips": [{"address": "x"}]}))).unwrap();
        let err = conf.prev_output().unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert!(err.msg.contains("\"prevResult\""), "{err}");
    }

    /// What ADD reads from `minimal()` with `extra`'s keys added.
    fn add_conf(extra: Value) -> CniResult<AddConf> {
        let mut config = minimal();
        for (key, value) in extra.as_object().unwrap() {
            config[key] = value.clone();
        }
        parse(&config)?.add_conf().cloned()
    }

    #[test]
    fn attach_mode_auto_is_clsact_now_and_tcx_later() {
        let mode = |extra: Value| {
            let conf = add_conf(extra).unwrap();
            (conf.attach_mode, conf.tcx_later)
        };
        assert_eq!(mode(json!({})), (AttachMode::Clsact, true));
        assert_eq!(
            mode(json!({"attachMode": "auto"})),
            (AttachMode::Clsact, true)
        );
        assert_eq!(
            mode(json!({"attachMode": "clsact"})),
            (AttachMode::Clsact, false)
        );
        assert_eq!(mode(json!({"attachMode": "tcx"})), (AttachMode::Tcx, false));
        let err = add_conf(json!({"attachMode": "xdp"})).unwrap_err();
        assert!(err.msg.contains("\"attachMode\""), "{err}");
    }

    fn uplink_of(keys: &Value) -> CniResult<UplinkConf> {
        add_conf(keys.clone()).map(|c| c.uplink)
    }

    fn port_requests_of(runtime_config: &Value) -> CniResult<Vec<HostPortRequest>> {
        add_conf(json!({"runtimeConfig": runtime_config})).map(|c| c.port_requests)
    }

    fn bandwidth_of(keys: &Value, runtime_config: &Value) -> CniResult<Bandwidth> {
        let mut extra = keys.clone();
        extra["runtimeConfig"] = runtime_config.clone();
        add_conf(extra).map(|c| c.bandwidth)
    }

    // Moved from `uplink.rs`, `host_ports.rs` and `bandwidth.rs` with the
    // parsing; the cases and assertions are theirs.

    #[test]
    fn parses_every_key() {
        let conf = uplink_of(&json!({
            "ipMasq": true,
            "nonMasqueradeCIDRs": ["10.244.0.0/16"],
            "uplink": "eth0",
            "masqueradeAddress": "192.0.2.1",
            "ipMasqV6": false,
            "masqueradeAddressV6": "2001:db8::1",
            "nodeRoutes": [{"dst": "10.244.2.0/24", "gw": "10.99.0.2"}],
            "natPortRange": "40000-40100",
            "serviceCIDRs": ["10.96.0.0/12", "192.0.2.10/32"]
        }))
        .unwrap();
        assert!(conf.services());
        assert_eq!(conf.service_cidrs.len(), 2);
        assert!(conf.masquerade);
        assert!(!conf.masquerade_v6);
        assert_eq!(
            conf.masquerade_address_v6,
            Some("2001:db8::1".parse().unwrap())
        );
        // IPv6 follows `ipMasq` unless told otherwise.
        assert!(uplink_of(&json!({"ipMasq": true})).unwrap().masquerade_v6);
        assert_eq!(
            conf.no_masquerade,
            vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(conf.uplink.as_deref(), Some("eth0"));
        assert_eq!(conf.nat_ports, Some((40000, 40100)));
        assert_eq!(
            conf.node_routes[0].gw,
            "10.99.0.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn uplink_errors_name_the_field() {
        for (raw, field) in [
            (json!({"ipMasq": "yes"}), "ipMasq"),
            (
                json!({"nonMasqueradeCIDRs": ["nope"]}),
                "nonMasqueradeCIDRs[0]",
            ),
            (
                json!({"nodeRoutes": [{"dst": "10.1.0.0/16"}]}),
                "nodeRoutes[0].gw",
            ),
            (
                json!({"nodeRoutes": [{"dst": "fd00:10:244:2::/64", "gw": "10.99.0.2"}]}),
                "nodeRoutes[0].gw",
            ),
            (json!({"natPortRange": "9-1"}), "natPortRange"),
            (json!({"serviceCIDRs": "10.96.0.0/12"}), "serviceCIDRs"),
            (json!({"serviceCIDRs": ["10.96.0.0/33"]}), "serviceCIDRs[0]"),
            (json!({"masqueradeAddress": "::1"}), "masqueradeAddress"),
            (
                json!({"masqueradeAddressV6": "192.0.2.1"}),
                "masqueradeAddressV6",
            ),
            (json!({"ipMasqV6": "no"}), "ipMasqV6"),
        ] {
            let err = uplink_of(&raw).unwrap_err();
            assert_eq!(err.code, crate::error::code::INVALID_CONFIG);
            assert!(err.msg.contains(field), "{} does not name {field}", err.msg);
        }
    }

    #[test]
    fn reads_port_mappings_like_portmap() {
        let got = port_requests_of(&json!({"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"},
            {"hostPort": 9090, "containerPort": 90, "hostIP": ""},
            {"hostPort": 9091, "containerPort": 91, "hostIP": "fd00::1"},
            {"hostPort": 9092, "containerPort": 92, "hostIP": "::"}
        ]}))
        .unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got[3].host_ip, Some("fd00::1".parse().unwrap()));
        assert_eq!(got[4].host_ip, Some("::".parse().unwrap()));
        assert_eq!(got[0].proto, IPPROTO_TCP);
        assert_eq!(got[1].proto, IPPROTO_UDP);
        assert_eq!(got[1].host_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(got[2].host_ip, None);
    }

    #[test]
    fn reads_containerd_keys_once_canonical() {
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "cni-ebpf",
        "ipam": {"type": "host-local"},
        "runtimeConfig": {"portMappings": [
            {"HostPort": 30088, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""},
            {"HostPort": 30089, "ContainerPort": 53, "Protocol": "UDP", "HostIP": "10.0.0.1",
             "Name": "dns", "SomethingNew": {"x": 1}}
        ]}});
        let got = add_conf(conf).map(|c| c.port_requests).unwrap();
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
            let err = port_requests_of(&raw).unwrap_err();
            assert!(err.msg.contains(field), "{} does not name {field}", err.msg);
        }
    }

    #[test]
    fn runtime_config_wins_and_directions_are_optional() {
        let bw = bandwidth_of(
            &json!({"ingressRate": 1, "ingressBurst": 1}),
            &json!({"bandwidth": {"egressRate": 100000000, "egressBurst": 1000000}}),
        )
        .unwrap();
        assert_eq!(bw.ingress, None);
        assert_eq!(
            bw.egress,
            Some(Limit {
                rate_bits: 100_000_000,
                burst_bits: 1_000_000
            })
        );
        assert!(!bandwidth_of(&json!({}), &json!({})).unwrap().is_limited());
    }

    #[test]
    fn containerds_unset_burst_is_100_ms_at_the_rate() {
        let conf = json!({"runtimeConfig": {"bandwidth": {
            "IngressRate": 20_000_000, "IngressBurst": 4_294_967_295u64,
            "EgressRate": 0, "EgressBurst": 4_294_967_295u64
        }}});
        let bw = add_conf(conf).map(|c| c.bandwidth).unwrap();
        assert_eq!(
            bw.ingress,
            Some(Limit {
                rate_bits: 20_000_000,
                burst_bits: 2_000_000
            })
        );
        assert_eq!(bw.egress, None);
        // CRI-O's and dockershim's "unset".
        for burst in [34_359_738_360u64, 34_359_738_359, 2_147_483_647] {
            let bw = bandwidth_of(
                &json!({}),
                &json!({"bandwidth": {"egressRate": 1_000_000, "egressBurst": burst}}),
            )
            .unwrap();
            assert_eq!(bw.egress.unwrap().burst_bits, 100_000, "{burst}");
        }
        // A burst one bit smaller is taken as given.
        let bw = bandwidth_of(
            &json!({"egressRate": 1_000_000, "egressBurst": 4_294_967_294u64}),
            &json!({}),
        )
        .unwrap();
        assert_eq!(bw.egress.unwrap().burst_bits, 4_294_967_294);
        // No annotation: containerd sends zeros.
        let bw = bandwidth_of(
            &json!({}),
            &json!({"bandwidth": {"ingressRate": 0, "ingressBurst": 0, "egressRate": 0, "egressBurst": 0}}),
        )
        .unwrap();
        assert!(!bw.is_limited());
    }

    #[test]
    fn bandwidth_errors_name_the_field() {
        for (raw, rc, field) in [
            (json!({"ingressRate": 1000}), json!({}), "ingressBurst"),
            (json!({"egressBurst": 1000}), json!({}), "egressRate"),
            (
                json!({"egressRate": -5, "egressBurst": 1}),
                json!({}),
                "egressRate",
            ),
            (
                json!({}),
                json!({"bandwidth": {"ingressRate": "fast", "ingressBurst": 1}}),
                "runtimeConfig.bandwidth.ingressRate",
            ),
            (
                json!({"ingressRate": 1, "ingressBurst": 40_000_000_000u64}),
                json!({}),
                "ingressBurst",
            ),
        ] {
            let err = bandwidth_of(&raw, &rc).unwrap_err();
            assert_eq!(err.code, crate::error::code::INVALID_CONFIG);
            assert!(err.msg.contains(field), "{} does not name {field}", err.msg);
        }
    }

    #[test]
    fn valid_attachments_accept_both_keys() {
        let new = parse(&with(
            "cni.dev/valid-attachments",
            json!([{"containerID": "a", "ifname": "eth0"}]),
        ))
        .unwrap();
        let old = parse(&with(
            "cni.dev/attachments",
            json!([{"containerID": "b", "ifname": "net1"}]),
        ))
        .unwrap();
        assert_eq!(
            new.valid_attachments,
            Some(vec![("a".into(), "eth0".into())])
        );
        assert_eq!(
            old.valid_attachments,
            Some(vec![("b".into(), "net1".into())])
        );
        assert_eq!(parse(&minimal()).unwrap().valid_attachments, None);
        assert_config_error(
            &with("cni.dev/valid-attachments", json!([{"containerID": "a"}])),
            "cni.dev/valid-attachments[0].ifname",
        );
    }

    #[test]
    fn keys_only_add_reads_do_not_fail_the_other_verbs() {
        let conf = parse(&with("ingressRate", json!(1000))).unwrap();
        let err = conf.add_conf().unwrap_err();
        assert!(err.msg.contains("\"ingressBurst\""), "{err}");
    }

    /// The field names serde reads for `T`, from the list its derive passes
    /// to `deserialize_struct`.
    fn field_names<T: DeserializeOwned>() -> Vec<&'static str> {
        use serde::de::{self, Visitor};
        struct Probe<'a>(&'a mut Vec<&'static str>);
        impl<'de> serde::Deserializer<'de> for Probe<'_> {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0.extend_from_slice(fields);
                Err(de::Error::custom("probed"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut names = Vec::new();
        let _ = T::deserialize(Probe(&mut names));
        names.sort_unstable();
        names
    }

    fn shape_names(shape: &keys::Shape) -> Vec<&'static str> {
        match shape {
            keys::Shape::Object(fields) => {
                let mut names: Vec<_> = fields.iter().map(|(name, _)| *name).collect();
                names.sort_unstable();
                names
            }
            keys::Shape::Array(item) => shape_names(item),
            keys::Shape::Opaque => Vec::new(),
        }
    }

    fn shape_of<'a>(shape: &'a keys::Shape, key: &str) -> &'a keys::Shape {
        match shape {
            keys::Shape::Object(fields) => &fields.iter().find(|(name, _)| *name == key).unwrap().1,
            keys::Shape::Array(item) => shape_of(item, key),
            keys::Shape::Opaque => panic!("{key}: opaque in keys::NETWORK"),
        }
    }

    fn union(mut a: Vec<&'static str>, b: Vec<&'static str>) -> Vec<&'static str> {
        a.extend(b);
        a.sort_unstable();
        a.dedup();
        a
    }

    /// `keys::NETWORK` canonicalises exactly the keys the struct tree reads
    /// (and, where another reader shares a shape, at least those).
    #[test]
    fn the_key_tree_and_the_struct_tree_name_the_same_keys() {
        // Canonicalised for libcni's sake; the plugin reads none of it.
        let unread = ["capabilities"];
        let network: Vec<_> = shape_names(&keys::NETWORK)
            .into_iter()
            .filter(|k| !unread.contains(k))
            .collect();
        assert_eq!(
            union(field_names::<NetworkKeys>(), field_names::<AddKeys>()),
            network
        );
        let runtime = shape_of(&keys::NETWORK, "runtimeConfig");
        assert_eq!(
            union(
                field_names::<RuntimeKeys>(),
                field_names::<AddCapabilities>()
            ),
            shape_names(runtime)
        );
        assert_eq!(
            field_names::<PortMappingKeys>(),
            shape_names(shape_of(runtime, "portMappings"))
        );
        assert_eq!(
            field_names::<BandwidthKeys>(),
            shape_names(shape_of(runtime, "bandwidth"))
        );
        assert_eq!(
            field_names::<AttachmentKeys>(),
            shape_names(shape_of(&keys::NETWORK, "cni.dev/valid-attachments"))
        );
        // Shared with results (routes) and the allocator (ipam).
        let subset = |read: Vec<&str>, known: Vec<&str>| read.iter().all(|k| known.contains(k));
        assert!(subset(
            field_names::<NodeRoute>(),
            shape_names(shape_of(&keys::NETWORK, "nodeRoutes"))
        ));
        assert!(subset(
            field_names::<IpamKeys>(),
            shape_names(shape_of(&keys::NETWORK, "ipam"))
        ));
    }

    #[test]
    fn big_tcp_is_a_switch_or_a_size() {
        let big_tcp = |value: Value| {
            parse(&with("bigTcp", value))
                .unwrap()
                .add_conf()
                .unwrap()
                .big_tcp
        };
        assert_eq!(big_tcp(json!(true)), Some(BIG_TCP_DEFAULT));
        assert_eq!(big_tcp(json!(false)), None);
        assert_eq!(big_tcp(json!(262_144)), Some(262_144));
        assert_eq!(parse(&minimal()).unwrap().add_conf().unwrap().big_tcp, None);
        for bad in [
            json!(65_536),
            json!(524_281),
            json!(-1),
            json!("yes"),
            json!(1.5),
        ] {
            let conf = parse(&with("bigTcp", bad)).unwrap();
            let error = conf.add_conf().unwrap_err();
            assert!(error.to_string().contains("bigTcp"), "{error}");
        }
    }

    /// The README's configuration table lists the plugin's own keys: every
    /// key the struct tree reads but those the CNI spec defines.
    #[test]
    fn the_readme_table_lists_the_plugin_keys() {
        let readme = include_str!("../../../README.md");
        let table = readme
            .split("### Configuration")
            .nth(1)
            .expect("a Configuration section")
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2);
        let mut listed: Vec<&str> = table
            .flat_map(|row| {
                let first = row.split('|').nth(1).unwrap_or("");
                first.split('`').skip(1).step_by(2)
            })
            .collect();
        listed.sort_unstable();
        let spec = [
            "cniVersion",
            "name",
            "type",
            "runtimeConfig",
            "prevResult",
            "args",
            "dns",
            "cni.dev/valid-attachments",
            "cni.dev/attachments",
        ];
        let own: Vec<_> = union(field_names::<NetworkKeys>(), field_names::<AddKeys>())
            .into_iter()
            .filter(|k| !spec.contains(k))
            .collect();
        assert_eq!(listed, own);
    }
}
