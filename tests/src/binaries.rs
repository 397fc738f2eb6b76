//! Where the binaries under test are: `$CNI_EBPF_BIN_DIR` (set by
//! `cargo xtask test`), else the workspace's `target/debug`.

use std::path::PathBuf;

/// The CNI plugin.
pub const PLUGIN: &str = "cni-ebpf";
/// The node agent and inspection CLI.
pub const AGENT: &str = "cni-ebpfd";

/// Path of the built binary `name`; panics with what to do if it is missing.
pub fn path(name: &str) -> PathBuf {
    let dir = bin_dir();
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "{name} not found at {}: build the workspace first (`cargo build --workspace`, \
             or `cargo xtask test`, which builds and sets CNI_EBPF_BIN_DIR), or point \
             CNI_EBPF_BIN_DIR at the directory holding it",
            path.display()
        );
    }
    // Absolute, so that it stays valid for commands printed or run elsewhere.
    path.canonicalize().unwrap_or(path)
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CNI_EBPF_BIN_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("debug");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("debug")
}
