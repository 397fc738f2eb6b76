//! `prevResult` and results across spec versions (`CniOutput::from_json`,
//! `to_json`).
//!
//! Properties: no panic; a result printed in any supported version reads
//! back as what that version can hold (pre-1.0.0 results have no interface
//! MTU; MACs are printed in one canonical spelling), printing it again is a
//! fixpoint, and converting through any version to 1.1.0 loses nothing
//! that version could hold.

#![no_main]

use cni_ebpf_plugin::cni::{CniOutput, SUPPORTED_VERSIONS, format_mac, parse_mac};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// What a result printed in `version` holds of `output`.
fn held_by(output: &CniOutput, version: &str) -> CniOutput {
    let legacy = version.starts_with("0.");
    let mut held = output.clone();
    for interface in &mut held.interfaces {
        if legacy {
            interface.mtu = None;
        }
        if let Some(mac) = interface.mac.as_deref().and_then(parse_mac) {
            interface.mac = Some(format_mac(mac));
        }
    }
    held
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(output) = CniOutput::from_json(&value) else {
        return;
    };
    for version in SUPPORTED_VERSIONS {
        let printed = output.to_json(version);
        assert_eq!(printed["cniVersion"], *version);
        let read = CniOutput::from_json(&printed)
            .unwrap_or_else(|e| panic!("{version} result does not read back: {e}\n{printed}"));
        assert_eq!(read, held_by(&output, version), "through {version}");
        assert_eq!(
            read.to_json(version),
            printed,
            "{version} is not a fixpoint"
        );
        let newest = CniOutput::from_json(&read.to_json("1.1.0")).unwrap();
        assert_eq!(newest, read, "{version} then 1.1.0");
    }
});
