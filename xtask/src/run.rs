//! `cargo xtask run`: the dev-VM demo, a small cluster in network namespaces.

use anyhow::Result;
use clap::Args;

use crate::{
    build::{self, Profile},
    exec::Context,
    setup,
};

const DEMO: &str = "cni-ebpf-demo";

#[derive(Args)]
pub struct Options {
    /// Leave the demo's namespaces and pods in place when it ends.
    #[arg(long)]
    keep: bool,
}

pub fn run(ctx: &Context, options: &Options) -> Result<()> {
    setup::run(ctx)?;
    let bin_dir = build::workspace(ctx, Profile::Debug)?;
    let mut demo = std::process::Command::new(bin_dir.join(DEMO));
    if options.keep {
        demo.arg("--keep");
    }
    demo.env("CNI_EBPF_BIN_DIR", &bin_dir);
    ctx.exec("run", &mut demo)
}
