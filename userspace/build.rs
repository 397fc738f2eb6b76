//! Builds the eBPF crate for the bpf target and leaves the object in
//! `OUT_DIR/cni-ebpf-ebpf`, where `lib.rs` embeds it.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build and writes an empty object, so that
//! `cargo check` and `clippy` work on a host without bpf-linker (the loader
//! then reports the missing object at run time).

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

const EBPF_PACKAGE: &str = "cni-ebpf-ebpf";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("userspace has no parent")?;
    let ebpf_dir = workspace.join("cni-ebpf");
    let common_dir = workspace.join("cni-ebpf-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out_dir = PathBuf::from(env::var("OUT_DIR")?);
        fs::write(out_dir.join(EBPF_PACKAGE), [])?;
    }
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; `cargo xtask setup` installs rust-src and bpf-linker",
    )?;

    // Programs are pinned per build, so a new build loads beside the old one.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = fs::read(out_dir.join(EBPF_PACKAGE))?;
    println!(
        "cargo:rustc-env=CNI_EBPF_BUILD_ID={:016x}",
        fnv1a64(&object)
    );
    Ok(())
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
