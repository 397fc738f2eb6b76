//! `cargo xtask bench`: release build, then the benchmark driver.

use anyhow::Result;
use clap::Args;

use crate::{
    build::{self, Profile},
    exec::Context,
    setup,
};

const BENCH: &str = "cni-ebpf-bench";

#[derive(Args)]
pub struct Options {
    /// Fewer rounds and shorter runs: a smoke test, not a measurement.
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (comma-separated: tcp, rr, crr, plugin,
    /// churn, masq, services, hostport, bandwidth, bigtcp, scale, xdp).
    #[arg(long, value_name = "NAME")]
    scenario: Option<String>,
    /// Pods addressed over IPv6 only, in the pod pair scenarios tcp, crr
    /// and plugin.
    #[arg(long)]
    ipv6: bool,
    /// Our plugin's attachMode in the pod pair and plugin scenarios (auto,
    /// tcx, clsact).
    #[arg(long, value_name = "MODE")]
    attach_mode: Option<String>,
}

pub fn run(ctx: &Context, options: &Options) -> Result<()> {
    setup::run(ctx)?;
    let bin_dir = build::workspace(ctx, Profile::Release)?;
    let mut bench = std::process::Command::new(bin_dir.join(BENCH));
    if options.quick {
        bench.arg("--quick");
    }
    if options.ipv6 {
        bench.arg("--ipv6");
    }
    if let Some(mode) = &options.attach_mode {
        bench.args(["--attach-mode", mode]);
    }
    if let Some(scenario) = &options.scenario {
        bench.args(["--scenario", scenario]);
    }
    bench.env("CNI_EBPF_BIN_DIR", &bin_dir);
    ctx.exec("bench", &mut bench)
}
