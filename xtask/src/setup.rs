//! `cargo xtask setup`: everything the build and the tests need on this
//! machine, checked quickly and installed only when missing.

mod bpf_linker;
mod cargo_fuzz;
mod packages;
pub mod python;
mod toolchain;

use anyhow::Result;

use crate::exec::Context;

pub fn run(ctx: &Context) -> Result<()> {
    let nightly = toolchain::ensure(ctx)?;
    bpf_linker::ensure(ctx, &nightly)?;
    cargo_fuzz::ensure(ctx)?;
    packages::ensure(ctx)?;
    python::ensure(ctx)?;
    Ok(())
}

/// One line per thing checked or installed.
fn report(thing: &str, status: &str) {
    eprintln!("[setup] {thing:<14} {status}");
}
