//! `cargo xtask build`: setup, then a complete `cargo build` (the eBPF ELF is
//! built and embedded by `userspace/build.rs`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::{exec::Context, setup};

/// The binaries a build leaves in the profile directory.
const BINARIES: &[&str] = &["cni-ebpf", "cni-ebpfd"];

#[derive(Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
}

#[derive(Clone, Copy)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    /// The directory under `target/` cargo puts this profile's binaries in.
    pub fn dir_name(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

pub fn run(ctx: &Context, options: &Options) -> Result<()> {
    setup::run(ctx)?;
    let profile = if options.release {
        Profile::Release
    } else {
        Profile::Debug
    };
    let bin_dir = workspace(ctx, profile)?;
    for binary in BINARIES {
        eprintln!("[build] {}", bin_dir.join(binary).display());
    }
    Ok(())
}

/// Builds the workspace with `profile` and returns the binaries' directory.
pub fn workspace(ctx: &Context, profile: Profile) -> Result<PathBuf> {
    let mut cmd = ctx.cargo();
    cmd.args(["build", "--workspace"]);
    if let Profile::Release = profile {
        cmd.arg("--release");
    }
    ctx.run("build", &mut cmd)?;
    Ok(ctx.target_dir().join(profile.dir_name()))
}
