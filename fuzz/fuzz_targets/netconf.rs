//! A whole conflist entry as a runtime streams it on stdin: the top-level
//! parser, then every section the verbs read from it (IPAM, masquerade and
//! uplink, bandwidth, host ports, prevResult).
//!
//! Properties: no panic; every refusal is a config error (code 1, 6 or 7);
//! a config that parses parses again, unchanged, from its own `raw`.

#![no_main]

use cni_ebpf_plugin::{
    bandwidth,
    cni::NetConf,
    error::{CniError, code},
    host_ports,
    ipam::HostLocalConfig,
    uplink::UplinkConf,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let conf = match NetConf::parse(data) {
        Ok(conf) => conf,
        Err(error) => {
            assert!(
                [
                    code::INCOMPATIBLE_VERSION,
                    code::DECODE_FAILURE,
                    code::INVALID_CONFIG
                ]
                .contains(&error.code),
                "{error}"
            );
            return;
        }
    };
    let again = NetConf::parse(conf.raw.to_string().as_bytes()).expect("its own raw parses");
    assert_eq!(again, conf);

    let sections: [Result<(), CniError>; 6] = [
        conf.prev_output().map(drop),
        HostLocalConfig::parse(&conf.ipam.raw, &conf.name).map(drop),
        UplinkConf::parse(&conf.raw).map(drop),
        bandwidth::parse(&conf.raw, &conf.runtime_config.raw).map(drop),
        host_ports::requests(&conf.runtime_config.raw).map(drop),
        // Without the key it reads /proc/self/mountinfo: not the parser.
        match conf.raw.get("cgroupRoot") {
            Some(_) => host_ports::cgroup_root(&conf.raw).map(drop),
            None => Ok(()),
        },
    ];
    for error in sections.into_iter().filter_map(Result::err) {
        assert_eq!(error.code, code::INVALID_CONFIG, "{error}");
    }
});
