//! `cargo xtask test`: the project's test command. Formatting, lints, the
//! build, then every test including the privileged integration suite.

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    build::{self, Profile},
    exec::Context,
    host, setup,
};

#[derive(Args)]
pub struct Options {
    /// Passed to `cargo test` as they are, e.g. `-- endpoint` (a filter) or
    /// `-- -p cni-ebpf-tests -- --nocapture`.
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

pub fn run(ctx: &Context, options: &Options) -> Result<()> {
    // The integration tests build namespaces and load BPF: never skip them.
    if !host::is_root()? {
        if ctx.dry_run {
            eprintln!("[test] warning: not root; the privileged tests would fail");
        } else {
            bail!("the privileged integration tests need root; run `cargo xtask test` as root");
        }
    }
    setup::run(ctx)?;
    ctx.run("fmt", ctx.cargo().args(["fmt", "--all", "--", "--check"]))?;
    ctx.run(
        "clippy",
        ctx.cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    let bin_dir = build::workspace(ctx, Profile::Debug)?;

    let mut cargo_test = ctx.cargo();
    cargo_test.arg("test");
    if !selects_packages(&options.cargo_test_args) {
        cargo_test.arg("--workspace");
    }
    cargo_test
        .arg("--no-fail-fast")
        .args(&options.cargo_test_args)
        .env("CNI_EBPF_BIN_DIR", &bin_dir)
        .env(
            "CNI_EBPF_KUBERNETES_VALIDATE",
            setup::python::kubernetes_validate(ctx),
        );
    ctx.run("test", &mut cargo_test)?;
    if !ctx.dry_run {
        eprintln!("[test] all steps passed");
    }
    Ok(())
}

/// Whether the user's cargo arguments (before any `--`) pick packages.
fn selects_packages(args: &[String]) -> bool {
    args.iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg.starts_with("-p") || arg.starts_with("--package"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn package_selection_replaces_workspace() {
        assert!(!selects_packages(&strings(&["endpoint"])));
        assert!(selects_packages(&strings(&["-p", "cni-ebpf-tests"])));
        assert!(selects_packages(&strings(&["--package=cni-ebpf-tests"])));
        assert!(!selects_packages(&strings(&["--", "-p"])));
    }
}
