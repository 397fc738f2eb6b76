//! The network configuration a runtime streams on stdin.
//!
//! Keys are first brought to their canonical spelling as Go plugins match
//! them (exact, else without regard to case: see [`super::keys`]), so every
//! reader, here and in the modules that read `raw`, looks up one spelling.
//! Each field is read on its own so that every error names the field it is
//! about; serde's own messages say what was wrong but not where.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::env::is_valid_identifier;
use super::keys;
use super::result::{CniOutput, Dns, parse_mac};
use super::version;
use crate::error::{CniError, CniResult, code};

pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/cni-ebpf";
pub const DEFAULT_STATE_DIR: &str = "/run/cni-ebpf";

/// IPv4's minimum MTU (RFC 791) up to the largest an IP packet can be.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

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
    pub dns: Option<Dns>,
    /// The whole config as given, unknown keys included, known keys in
    /// their canonical spelling.
    pub raw: Value,
}

/// The `ipam` object; the IPAM module reads the rest of `raw` itself.
#[derive(Debug, Clone, PartialEq)]
pub struct IpamConf {
    pub ipam_type: String,
    pub raw: Value,
}

/// The capabilities a runtime passed in `runtimeConfig`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConfig {
    /// The `ips` capability: addresses, each with or without a prefix length.
    pub ips: Vec<String>,
    /// The `mac` capability.
    pub mac: Option<String>,
    /// The whole object (`Null` when absent), for capabilities read elsewhere.
    pub raw: Value,
}

impl NetConf {
    /// Code 6 when `bytes` is not a JSON object, code 1 for an unsupported
    /// `cniVersion`, code 7 naming the field for anything else wrong.
    pub fn parse(bytes: &[u8]) -> CniResult<NetConf> {
        let mut raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(code::DECODE_FAILURE, "error decoding network config").with_details(e)
        })?;
        keys::canonicalize(&mut raw, &keys::NETWORK);
        let Value::Object(fields) = &raw else {
            return Err(
                CniError::new(code::DECODE_FAILURE, "error decoding network config")
                    .with_details("expected a JSON object"),
            );
        };

        let cni_version: String = required(fields, "cniVersion")?;
        if !version::is_supported(&cni_version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "unsupported cniVersion {cni_version:?}: this plugin supports {}",
                    version::SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }

        let name: String = required(fields, "name")?;
        if !is_valid_identifier(&name) {
            return Err(invalid_field(
                "name",
                format!(
                    "{name:?} must start with a letter or digit and contain only \
                     letters, digits, '_', '.' and '-'"
                ),
            ));
        }

        let plugin_type: String = required(fields, "type")?;
        if plugin_type.is_empty() {
            return Err(invalid_field("type", "it is empty"));
        }

        let mtu: Option<u32> = optional(fields, "mtu")?;
        if let Some(mtu) = mtu.filter(|mtu| !MTU_RANGE.contains(mtu)) {
            return Err(invalid_field(
                "mtu",
                format!(
                    "{mtu} is outside {}..={}",
                    MTU_RANGE.start(),
                    MTU_RANGE.end()
                ),
            ));
        }

        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            mtu,
            bpffs_root: absolute_dir(fields, "bpffsRoot", DEFAULT_BPFFS_ROOT)?,
            state_dir: absolute_dir(fields, "stateDir", DEFAULT_STATE_DIR)?,
            ipam: IpamConf::parse(fields)?,
            runtime_config: RuntimeConfig::parse(fields)?,
            prev_result: optional(fields, "prevResult")?,
            args: optional(fields, "args")?,
            dns: optional(fields, "dns")?,
            raw,
        })
    }

    /// The `prevResult`, read whatever version it was written in.
    pub fn prev_output(&self) -> CniResult<Option<CniOutput>> {
        self.prev_result
            .as_ref()
            .map(CniOutput::from_json)
            .transpose()
    }
}

impl IpamConf {
    fn parse(fields: &Map<String, Value>) -> CniResult<IpamConf> {
        let ipam: Map<String, Value> = required(fields, "ipam")?;
        let ipam_type: String = required(&ipam, "ipam.type")?;
        if ipam_type.is_empty() {
            return Err(invalid_field("ipam.type", "it is empty"));
        }
        Ok(IpamConf {
            ipam_type,
            raw: Value::Object(ipam),
        })
    }
}

impl RuntimeConfig {
    fn parse(fields: &Map<String, Value>) -> CniResult<RuntimeConfig> {
        let Some(runtime) = optional::<Map<String, Value>>(fields, "runtimeConfig")? else {
            return Ok(RuntimeConfig {
                raw: Value::Null,
                ..RuntimeConfig::default()
            });
        };

        let ips: Vec<String> = optional(&runtime, "runtimeConfig.ips")?.unwrap_or_default();
        if let Some(bad) = ips.iter().find(|ip| !is_ip_with_optional_prefix(ip)) {
            return Err(invalid_field(
                "runtimeConfig.ips",
                format!("{bad:?} is not an IP address"),
            ));
        }
        let mac: Option<String> = optional(&runtime, "runtimeConfig.mac")?;
        if let Some(bad) = mac.as_deref().filter(|mac| parse_mac(mac).is_none()) {
            return Err(invalid_field(
                "runtimeConfig.mac",
                format!("{bad:?} is not a MAC address"),
            ));
        }
        // A capability we cannot honour is refused, never dropped: the pod
        // would get an address outside the ranges it asked for.
        if optional::<Value>(&runtime, "runtimeConfig.ipRanges")?
            .is_some_and(|ranges| ranges.as_array().is_none_or(|r| !r.is_empty()))
        {
            return Err(invalid_field(
                "runtimeConfig.ipRanges",
                "the ipRanges capability is not supported: set the ranges in \"ipam\" \
                 and do not declare it in \"capabilities\"",
            ));
        }
        Ok(RuntimeConfig {
            ips,
            mac,
            raw: Value::Object(runtime),
        })
    }
}

/// The field at `path` as a `T`; absent and `null` are `None`. `fields` is
/// the innermost object, so only the last segment of `path` is looked up
/// there; the whole path (`ipam.type`) names the field in errors.
fn optional<T: DeserializeOwned>(fields: &Map<String, Value>, path: &str) -> CniResult<Option<T>> {
    let key = path.rsplit('.').next().unwrap_or(path);
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value)
            .map(Some)
            .map_err(|e| invalid_field(path, e)),
    }
}

fn required<T: DeserializeOwned>(fields: &Map<String, Value>, path: &str) -> CniResult<T> {
    optional(fields, path)?
        .ok_or_else(|| CniError::invalid_config(format!("missing field \"{path}\"")))
}

fn absolute_dir(fields: &Map<String, Value>, key: &str, default: &str) -> CniResult<PathBuf> {
    let dir: PathBuf = optional(fields, key)?.unwrap_or_else(|| PathBuf::from(default));
    if dir.is_absolute() {
        Ok(dir)
    } else {
        Err(invalid_field(
            key,
            format!("{dir:?} is not an absolute path"),
        ))
    }
}

fn invalid_field(path: &str, reason: impl std::fmt::Display) -> CniError {
    CniError::invalid_config(format!("invalid field \"{path}\": {reason}"))
}

fn is_ip_with_optional_prefix(text: &str) -> bool {
    text.parse::<IpAddr>().is_ok() || text.parse::<IpNet>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
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
                raw: Value::Null
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
        assert_eq!(conf.runtime_config.raw, config["runtimeConfig"]);
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
        assert_eq!(conf.runtime_config.raw, json!({"bandwidth": {}}));
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
}
