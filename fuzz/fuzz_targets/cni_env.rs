//! The `CNI_*` environment and `CNI_ARGS`, as `CniEnv::from_vars` reads them.
//!
//! Properties: no panic; every refusal is code 4; an accepted environment
//! holds a spec-valid container ID and interface name, its `CNI_ARGS` pairs
//! joined again parse to the same pairs, and the typed accessors agree with
//! the raw pairs.

#![no_main]

use arbitrary::Arbitrary;
use cni_ebpf_plugin::{
    cni::{
        CniEnv,
        env::{parse_cni_args, validate_container_id, validate_ifname},
    },
    error::code,
};
use libfuzzer_sys::fuzz_target;

const KEYS: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
    "CNI_OTHER",
];
const COMMANDS: &[&str] = &["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"];

#[derive(Arbitrary, Debug)]
struct Input {
    /// (key index, value); a command index picks a valid command name.
    vars: Vec<(u8, Option<u8>, String)>,
    /// Parsed on its own, as `parse_cni_args`.
    cni_args: String,
}

fuzz_target!(|input: Input| {
    let vars: Vec<(String, String)> = input
        .vars
        .iter()
        .take(16)
        .map(|(key, command, value)| {
            let key = KEYS[usize::from(*key) % KEYS.len()];
            let value = match command {
                Some(i) if key == "CNI_COMMAND" => {
                    COMMANDS[usize::from(*i) % COMMANDS.len()].into()
                }
                _ => value.clone(),
            };
            (key.to_string(), value)
        })
        .collect();

    match parse_cni_args(&input.cni_args) {
        Ok(pairs) => {
            let joined: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            assert_eq!(parse_cni_args(&joined.join(";")).unwrap(), pairs);
        }
        Err(error) => assert_eq!(error.code, code::INVALID_ENV),
    }

    let env = match CniEnv::from_vars(vars) {
        Ok(env) => env,
        Err(error) => {
            assert_eq!(error.code, code::INVALID_ENV, "{error}");
            return;
        }
    };
    if let Some(id) = &env.container_id {
        validate_container_id(id).expect("accepted container ID is valid");
    }
    if let Some(name) = &env.ifname {
        validate_ifname(name).expect("accepted ifname is valid");
        assert!(name.len() <= 15);
    }
    let _ = env.check_required();
    let _ = env.ignore_unknown();
    // Every IP= entry was checked by from_vars, so none is skipped.
    if let Some(ips) = env.arg("IP").filter(|ips| !ips.is_empty()) {
        assert_eq!(env.requested_ips().len(), ips.split(',').count(), "{ips:?}");
    }
    assert_eq!(env.requested_mac().is_some(), env.arg("MAC").is_some());
    if let Some(pod) = env.k8s_pod() {
        assert_eq!(Some(pod.name), env.arg("K8S_POD_NAME"));
    }
});
