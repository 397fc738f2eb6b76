//! `cargo-fuzz`, which builds and runs the libFuzzer targets in `fuzz/` on
//! the nightly toolchain (`cargo xtask test` runs each for a bounded time).

use std::process::Command;

use anyhow::Result;

use super::report;
use crate::{
    exec::{self, Context},
    host,
};

/// Pinned like bpf-linker, so every machine fuzzes with the same driver.
const VERSION: &str = "^0.13";

pub fn ensure(ctx: &Context) -> Result<()> {
    let binary = host::cargo_home()?.join("bin").join("cargo-fuzz");
    if let Ok(version) = exec::read(Command::new(&binary).arg("--version")) {
        report("cargo-fuzz", &format!("ok ({})", version.trim()));
        return Ok(());
    }
    report("cargo-fuzz", "missing, installing (takes a minute)");
    ctx.run(
        "setup",
        Command::new("cargo").args(["install", "--locked", "cargo-fuzz", "--version", VERSION]),
    )
}
