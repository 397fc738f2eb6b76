//! The `CNI_*` environment variables a runtime passes to the plugin.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::result::parse_mac;
use super::version;
use crate::error::{CniError, CniResult, code};

const CNI_COMMAND: &str = "CNI_COMMAND";
const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
const CNI_NETNS: &str = "CNI_NETNS";
const CNI_IFNAME: &str = "CNI_IFNAME";
const CNI_ARGS: &str = "CNI_ARGS";
const CNI_PATH: &str = "CNI_PATH";

/// The kernel's `IFNAMSIZ` (16) less the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// The `CNI_ARGS` keys this plugin understands; any other key is an error
/// unless `IgnoreUnknown` is set, as in libcni's `LoadArgs`.
const KNOWN_ARGS: &[&str] = &[
    ARG_IGNORE_UNKNOWN,
    ARG_IP,
    ARG_MAC,
    ARG_K8S_POD_NAME,
    ARG_K8S_POD_NAMESPACE,
    ARG_K8S_POD_INFRA_CONTAINER_ID,
    ARG_K8S_POD_UID,
];
const ARG_IGNORE_UNKNOWN: &str = "IgnoreUnknown";
const ARG_IP: &str = "IP";
const ARG_MAC: &str = "MAC";
const ARG_K8S_POD_NAME: &str = "K8S_POD_NAME";
const ARG_K8S_POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
const ARG_K8S_POD_INFRA_CONTAINER_ID: &str = "K8S_POD_INFRA_CONTAINER_ID";
const ARG_K8S_POD_UID: &str = "K8S_POD_UID";

/// The operation named by `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn from_name(name: &str) -> Option<Command> {
        match name {
            "ADD" => Some(Command::Add),
            "DEL" => Some(Command::Del),
            "CHECK" => Some(Command::Check),
            "GC" => Some(Command::Gc),
            "STATUS" => Some(Command::Status),
            "VERSION" => Some(Command::Version),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// Code 1 when the config's `cniVersion` predates this command
    /// (CHECK came in 0.4.0, GC and STATUS in 1.1.0), as skel reports it.
    pub fn ensure_allowed_in(self, cni_version: &str) -> CniResult<()> {
        let minimum = match self {
            Command::Check => "0.4.0",
            Command::Gc | Command::Status => "1.1.0",
            Command::Add | Command::Del | Command::Version => return Ok(()),
        };
        if version::at_least(cni_version, minimum) {
            Ok(())
        } else {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "config version {cni_version:?} does not allow {}: it needs {minimum} or newer",
                    self.name()
                ),
            ))
        }
    }

    /// The variables the spec requires for this command besides `CNI_COMMAND`.
    /// `CNI_PATH` is left out: this plugin never executes other plugins.
    fn required_vars(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &[CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME],
            Command::Del => &[CNI_CONTAINERID, CNI_IFNAME],
            Command::Gc | Command::Status | Command::Version => &[],
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The Kubernetes pod a runtime named in `CNI_ARGS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct K8sPod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub infra_container_id: Option<&'a str>,
    pub uid: Option<&'a str>,
}

/// What the runtime told the plugin through its environment. An empty
/// variable counts as unset, as in skel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// `CNI_ARGS` pairs in the order given.
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    pub fn from_env() -> CniResult<CniEnv> {
        // vars() would panic on a non-UTF-8 value anywhere in the environment.
        let vars = std::env::vars_os().filter_map(|(key, value)| {
            let key = key.into_string().ok()?;
            key.starts_with("CNI_")
                .then(|| (key, value.to_string_lossy().into_owned()))
        });
        CniEnv::from_vars(vars)
    }

    /// Reads and validates the `CNI_*` variables among `vars`. VERSION takes
    /// no parameters, so for it everything but `CNI_COMMAND` is ignored.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> CniResult<CniEnv> {
        let mut command = None;
        let mut container_id = None;
        let mut netns = None;
        let mut ifname = None;
        let mut args = None;
        let mut path = None;
        for (key, value) in vars {
            if value.is_empty() {
                continue;
            }
            let slot = match key.as_str() {
                CNI_COMMAND => &mut command,
                CNI_CONTAINERID => &mut container_id,
                CNI_NETNS => &mut netns,
                CNI_IFNAME => &mut ifname,
                CNI_ARGS => &mut args,
                CNI_PATH => &mut path,
                _ => continue,
            };
            *slot = Some(value);
        }

        let command = command.ok_or_else(|| missing_vars(&[CNI_COMMAND]))?;
        let command = Command::from_name(&command)
            .ok_or_else(|| CniError::invalid_env(format!("unknown {CNI_COMMAND} {command:?}")))?;
        if command == Command::Version {
            return Ok(CniEnv {
                command,
                container_id: None,
                netns: None,
                ifname: None,
                args: Vec::new(),
                path: Vec::new(),
            });
        }

        if let Some(id) = &container_id {
            validate_container_id(id)?;
        }
        if let Some(name) = &ifname {
            validate_ifname(name)?;
        }
        let env = CniEnv {
            command,
            container_id,
            netns: netns.map(PathBuf::from),
            ifname,
            args: parse_cni_args(args.as_deref().unwrap_or(""))?,
            path: path
                .as_deref()
                .unwrap_or("")
                .split(':')
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        env.validate_known_args()?;
        Ok(env)
    }

    /// Code 4 listing every variable this command needs that is unset.
    pub fn check_required(&self) -> CniResult<()> {
        let missing: Vec<&str> = self
            .command
            .required_vars()
            .iter()
            .copied()
            .filter(|var| match *var {
                CNI_CONTAINERID => self.container_id.is_none(),
                CNI_NETNS => self.netns.is_none(),
                CNI_IFNAME => self.ifname.is_none(),
                _ => false,
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing_vars(&missing))
        }
    }

    pub fn require_container_id(&self) -> CniResult<&str> {
        self.container_id
            .as_deref()
            .ok_or_else(|| missing_vars(&[CNI_CONTAINERID]))
    }

    pub fn require_ifname(&self) -> CniResult<&str> {
        self.ifname
            .as_deref()
            .ok_or_else(|| missing_vars(&[CNI_IFNAME]))
    }

    pub fn require_netns(&self) -> CniResult<&Path> {
        self.netns
            .as_deref()
            .ok_or_else(|| missing_vars(&[CNI_NETNS]))
    }

    /// The value of `key` in `CNI_ARGS`; a repeated key's last value wins.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `IgnoreUnknown=1` (or `true`): the runtime sent keys meant for others.
    pub fn ignore_unknown(&self) -> bool {
        self.arg(ARG_IGNORE_UNKNOWN)
            .and_then(parse_bool)
            .unwrap_or(false)
    }

    /// The addresses asked for with `IP=` (comma-separated, each with or
    /// without a prefix length). Values `from_vars` would reject are skipped.
    pub fn requested_ips(&self) -> Vec<IpAddr> {
        self.arg(ARG_IP)
            .map(|ips| split_ips(ips).filter_map(parse_requested_ip).collect())
            .unwrap_or_default()
    }

    /// The MAC asked for with `MAC=`.
    pub fn requested_mac(&self) -> Option<[u8; 6]> {
        self.arg(ARG_MAC).and_then(parse_mac)
    }

    /// The pod, when the runtime named at least its namespace and name.
    pub fn k8s_pod(&self) -> Option<K8sPod<'_>> {
        Some(K8sPod {
            namespace: self.arg(ARG_K8S_POD_NAMESPACE)?,
            name: self.arg(ARG_K8S_POD_NAME)?,
            infra_container_id: self.arg(ARG_K8S_POD_INFRA_CONTAINER_ID),
            uid: self.arg(ARG_K8S_POD_UID),
        })
    }

    fn validate_known_args(&self) -> CniResult<()> {
        let ignore_unknown = match self.arg(ARG_IGNORE_UNKNOWN) {
            None => false,
            Some(value) => parse_bool(value).ok_or_else(|| {
                invalid_arg(ARG_IGNORE_UNKNOWN, value, "expected 1, 0, true or false")
            })?,
        };
        for (key, value) in &self.args {
            match key.as_str() {
                ARG_IP => {
                    if split_ips(value).any(|ip| parse_requested_ip(ip).is_none()) {
                        return Err(invalid_arg(
                            key,
                            value,
                            "expected comma-separated IP addresses",
                        ));
                    }
                }
                ARG_MAC => {
                    if parse_mac(value).is_none() {
                        return Err(invalid_arg(key, value, "expected a MAC address"));
                    }
                }
                _ if KNOWN_ARGS.contains(&key.as_str()) || ignore_unknown => {}
                _ => {
                    return Err(CniError::invalid_env(format!(
                        "unknown {CNI_ARGS} key {key:?} (set {ARG_IGNORE_UNKNOWN}=1 to allow it)"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Whether `id` follows the spec's rule for container IDs and network names:
/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub(super) fn is_valid_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Code 4 unless `id` is a valid container ID.
pub fn validate_container_id(id: &str) -> CniResult<()> {
    if is_valid_identifier(id) {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!(
            "invalid {CNI_CONTAINERID} {id:?}: it must start with a letter or digit \
             and contain only letters, digits, '_', '.' and '-'"
        )))
    }
}

/// Code 4 unless the kernel would accept `name` as an interface name
/// (the rules of libcni's `ValidateInterfaceName`).
pub fn validate_ifname(name: &str) -> CniResult<()> {
    let problem = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "it is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "it is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        "it contains '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(CniError::invalid_env(format!(
        "invalid {CNI_IFNAME} {name:?}: {problem}"
    )))
}

/// Splits `CNI_ARGS` (`K=V;K2=V2`) into pairs. Each pair must hold exactly
/// one `=` and a non-empty key, as libcni's `LoadArgs` demands; empty
/// segments (a trailing `;`) are skipped.
pub fn parse_cni_args(raw: &str) -> CniResult<Vec<(String, String)>> {
    raw.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() && !value.contains('=') => {
                Ok((key.to_owned(), value.to_owned()))
            }
            _ => Err(CniError::invalid_env(format!(
                "invalid {CNI_ARGS} pair {pair:?}: expected KEY=VALUE"
            ))),
        })
        .collect()
}

fn missing_vars(vars: &[&str]) -> CniError {
    CniError::invalid_env(format!(
        "required env variables [{}] missing",
        vars.join(",")
    ))
}

fn invalid_arg(key: &str, value: &str, expected: &str) -> CniError {
    CniError::invalid_env(format!("invalid {CNI_ARGS} {key} {value:?}: {expected}"))
}

/// libcni's `UnmarshallableBool`: `1`/`true` or `0`/`false`, any case.
fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// The entries of an `IP=` value; an empty value has none (not one `""`).
fn split_ips(value: &str) -> impl Iterator<Item = &str> {
    (!value.is_empty())
        .then(|| value.split(','))
        .into_iter()
        .flatten()
}

/// An address with or without a prefix length; the prefix comes from the
/// IPAM ranges, so only the address is kept.
fn parse_requested_ip(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<IpNet>().ok().map(|net| net.addr()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn add_env(extra: &[(&str, &str)]) -> CniResult<CniEnv> {
        let mut all = vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        all.extend_from_slice(extra);
        CniEnv::from_vars(vars(&all))
    }

    fn assert_env_error(result: CniResult<CniEnv>, needles: &[&str]) {
        let err = result.expect_err("must fail");
        assert_eq!(err.code, code::INVALID_ENV, "{err}");
        for needle in needles {
            assert!(err.msg.contains(needle), "{needle:?} not in {:?}", err.msg);
        }
    }

    #[test]
    fn reads_every_variable() {
        let env = CniEnv::from_vars(vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc_1.2-3"),
            ("CNI_NETNS", "/proc/42/ns/net"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;FOO=bar"),
            ("CNI_PATH", "/opt/cni/bin::/usr/libexec/cni"),
            ("HOME", "/root"),
        ]))
        .unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.require_container_id().unwrap(), "abc_1.2-3");
        assert_eq!(env.require_netns().unwrap(), Path::new("/proc/42/ns/net"));
        assert_eq!(env.require_ifname().unwrap(), "eth0");
        assert_eq!(
            env.args,
            vec![
                ("IgnoreUnknown".to_string(), "1".to_string()),
                ("FOO".to_string(), "bar".to_string())
            ]
        );
        assert_eq!(
            env.path,
            vec![
                PathBuf::from("/opt/cni/bin"),
                PathBuf::from("/usr/libexec/cni")
            ]
        );
        env.check_required().unwrap();
    }

    #[test]
    fn parses_every_command() {
        for (name, command) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("GC", Command::Gc),
            ("STATUS", Command::Status),
            ("VERSION", Command::Version),
        ] {
            let env = CniEnv::from_vars(vars(&[("CNI_COMMAND", name)])).unwrap();
            assert_eq!(env.command, command);
            assert_eq!(command.name(), name);
        }
    }

    #[test]
    fn missing_or_unknown_command_is_code_4_naming_the_variable() {
        assert_env_error(CniEnv::from_vars(vars(&[])), &["CNI_COMMAND"]);
        assert_env_error(
            CniEnv::from_vars(vars(&[("CNI_COMMAND", "")])),
            &["CNI_COMMAND"],
        );
        assert_env_error(
            CniEnv::from_vars(vars(&[("CNI_COMMAND", "add")])),
            &["CNI_COMMAND", "\"add\""],
        );
    }

    #[test]
    fn version_ignores_every_other_variable() {
        let env = CniEnv::from_vars(vars(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_CONTAINERID", "bad id"),
            ("CNI_IFNAME", "way-too-long-interface"),
            ("CNI_ARGS", "garbage"),
        ]))
        .unwrap();
        assert_eq!(env.command, Command::Version);
        env.check_required().unwrap();
    }

    #[test]
    fn required_variables_depend_on_the_command() {
        let bare = |command| CniEnv::from_vars(vars(&[("CNI_COMMAND", command)])).unwrap();
        let err = bare("ADD").check_required().unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
        assert_eq!(
            err.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
        );
        let err = bare("CHECK").check_required().unwrap_err();
        assert!(err.msg.contains("CNI_NETNS"), "{err}");
        // DEL must work after the netns is gone.
        let err = bare("DEL").check_required().unwrap_err();
        assert_eq!(
            err.msg,
            "required env variables [CNI_CONTAINERID,CNI_IFNAME] missing"
        );
        bare("GC").check_required().unwrap();
        bare("STATUS").check_required().unwrap();

        let del = CniEnv::from_vars(vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        del.check_required().unwrap();
        assert_eq!(del.netns, None);
    }

    #[test]
    fn require_accessors_name_the_missing_variable() {
        let env = CniEnv::from_vars(vars(&[("CNI_COMMAND", "DEL")])).unwrap();
        for (err, var) in [
            (env.require_container_id().unwrap_err(), "CNI_CONTAINERID"),
            (env.require_ifname().unwrap_err(), "CNI_IFNAME"),
            (env.require_netns().unwrap_err(), "CNI_NETNS"),
        ] {
            assert_eq!(err.code, code::INVALID_ENV);
            assert!(err.msg.contains(var), "{err}");
        }
    }

    #[test]
    fn container_ids_follow_the_spec_rule() {
        for id in ["a", "0", "abc123", "a_b.c-d", "9f86d081884c7d65"] {
            validate_container_id(id).unwrap();
        }
        for id in ["_a", "-a", ".a", "a b", "a/b", "a:b", "a*b", "ä"] {
            let err = validate_container_id(id).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{id}");
            assert!(err.msg.contains("CNI_CONTAINERID"), "{err}");
            assert!(err.msg.contains(&format!("{id:?}")), "{err}");
        }
        assert_env_error(
            add_env(&[("CNI_CONTAINERID", "bad*id")]),
            &["CNI_CONTAINERID", "\"bad*id\""],
        );
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        for name in ["eth0", "a", "net1.100", "123456789012345", "veth-ä"] {
            validate_ifname(name).unwrap();
        }
        for name in [
            "",
            "1234567890123456",
            ".",
            "..",
            "eth/0",
            "eth:0",
            "eth 0",
            "eth\t0",
            "eth\n",
        ] {
            let err = validate_ifname(name).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{name:?}");
            assert!(err.msg.contains("CNI_IFNAME"), "{err}");
            assert!(err.msg.contains(&format!("{name:?}")), "{err}");
        }
        // The limit is in bytes: 8 two-byte characters are too many.
        assert!(validate_ifname("ääääääää").is_err());
        assert_env_error(
            add_env(&[("CNI_IFNAME", "eth0:1")]),
            &["CNI_IFNAME", "\"eth0:1\""],
        );
    }

    #[test]
    fn cni_args_split_into_pairs() {
        assert_eq!(parse_cni_args("").unwrap(), vec![]);
        assert_eq!(
            parse_cni_args("A=1;B=;C=x-y.z;").unwrap(),
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), String::new()),
                ("C".to_string(), "x-y.z".to_string())
            ]
        );
        for bad in ["FOO", "A=1;FOO", "=v", "A=b=c"] {
            let err = parse_cni_args(bad).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{bad}");
            assert!(err.msg.contains("CNI_ARGS"), "{err}");
        }
        assert_env_error(add_env(&[("CNI_ARGS", "FOO")]), &["CNI_ARGS", "\"FOO\""]);
    }

    #[test]
    fn kubernetes_args_are_read() {
        let env = add_env(&[(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=1234-abcd",
        )])
        .unwrap();
        assert!(env.ignore_unknown());
        assert_eq!(
            env.k8s_pod(),
            Some(K8sPod {
                namespace: "default",
                name: "web-0",
                infra_container_id: Some("c1"),
                uid: Some("1234-abcd"),
            })
        );
        assert_eq!(env.arg("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(env.arg("k8s_pod_name"), None);

        let env = add_env(&[("CNI_ARGS", "K8S_POD_NAME=web-0")]).unwrap();
        assert_eq!(env.k8s_pod(), None);
        assert!(!env.ignore_unknown());
    }

    #[test]
    fn requested_ip_and_mac_are_read() {
        let env = add_env(&[("CNI_ARGS", "IP=10.1.0.5,fd00::5/64;MAC=AA:BB:cc:dd:ee:0F")]).unwrap();
        assert_eq!(
            env.requested_ips(),
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(
            env.requested_mac(),
            Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f])
        );
        let env = add_env(&[]).unwrap();
        assert!(env.requested_ips().is_empty());
        assert_eq!(env.requested_mac(), None);
    }

    #[test]
    fn malformed_known_args_are_code_4() {
        assert_env_error(
            add_env(&[("CNI_ARGS", "IP=10.1.0.300")]),
            &["CNI_ARGS", "IP", "10.1.0.300"],
        );
        assert_env_error(add_env(&[("CNI_ARGS", "IP=10.1.0.5,,10.1.0.6")]), &["IP"]);
        assert_env_error(add_env(&[("CNI_ARGS", "MAC=zz:zz")]), &["MAC", "zz:zz"]);
        assert_env_error(
            add_env(&[("CNI_ARGS", "IgnoreUnknown=yes")]),
            &["IgnoreUnknown", "yes"],
        );
    }

    #[test]
    fn unknown_args_need_ignore_unknown() {
        assert_env_error(add_env(&[("CNI_ARGS", "FOO=bar")]), &["\"FOO\""]);
        add_env(&[("CNI_ARGS", "FOO=bar;IgnoreUnknown=true")]).unwrap();
        add_env(&[("CNI_ARGS", "IgnoreUnknown=TRUE;FOO=bar")]).unwrap();
        assert_env_error(
            add_env(&[("CNI_ARGS", "IgnoreUnknown=0;FOO=bar")]),
            &["FOO"],
        );
    }

    #[test]
    fn later_args_win() {
        let env = add_env(&[("CNI_ARGS", "IP=10.0.0.1;IP=10.0.0.2")]).unwrap();
        assert_eq!(env.arg("IP"), Some("10.0.0.2"));
    }

    #[test]
    fn commands_need_a_recent_enough_config_version() {
        for v in version::SUPPORTED_VERSIONS {
            Command::Add.ensure_allowed_in(v).unwrap();
            Command::Del.ensure_allowed_in(v).unwrap();
        }
        let err = Command::Check.ensure_allowed_in("0.3.1").unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        assert!(
            err.msg.contains("CHECK") && err.msg.contains("0.3.1"),
            "{err}"
        );
        Command::Check.ensure_allowed_in("0.4.0").unwrap();
        for command in [Command::Gc, Command::Status] {
            assert!(command.ensure_allowed_in("1.0.0").is_err());
            command.ensure_allowed_in("1.1.0").unwrap();
        }
    }
}
