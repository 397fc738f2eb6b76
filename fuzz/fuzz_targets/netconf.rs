//! A whole conflist entry as a runtime streams it on stdin: the top-level
//! parser (which types every key ADD reads: masquerade and uplink,
//! bandwidth, host ports), then the sections read later (IPAM, prevResult).
//!
//! Properties: no panic; every refusal is a config error (code 1, 6 or 7);
//! a config that parses parses again, unchanged, from its own `raw`.

#![no_main]

use cni_ebpf_plugin::{
    cni::NetConf,
    error::{CniError, code},
    ipam::HostLocalConfig,
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

    // The keys ADD reads (attach mode, masquerade and uplink, bandwidth,
    // host ports, cgroup root) are typed and validated by `NetConf::parse`
    // itself; `add_conf` hands out their error.
    let sections: [Result<(), CniError>; 3] = [
        conf.prev_output().map(drop),
        HostLocalConfig::parse(&conf.ipam.raw, &conf.name).map(drop),
        conf.add_conf().map(drop),
    ];
    for error in sections.into_iter().filter_map(Result::err) {
        assert_eq!(error.code, code::INVALID_CONFIG, "{error}");
    }
});
