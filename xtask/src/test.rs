//! `cargo xtask test`: the project's test command. Formatting, lints, the
//! build and the node image, then every test including the privileged
//! integration suite (whose image tests run that image with Podman), then
//! each fuzz target for a bounded time.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    build::{self, Profile},
    exec::Context,
    host, image, setup,
};

#[derive(Args)]
pub struct Options {
    /// Seconds each fuzz target runs (libFuzzer's `-max_total_time`);
    /// 0 skips fuzzing.
    #[arg(long, default_value_t = DEFAULT_FUZZ_SECONDS, value_name = "SECONDS")]
    fuzz_seconds: u64,
    /// Also the long profiles: the churn/soak tests (1000 ADD/DEL cycles
    /// beside live traffic), the packet fuzzer with 200 000 frames (or 5
    /// minutes), and each fuzz target for 5 minutes unless `--fuzz-seconds`
    /// says otherwise.
    #[arg(long, alias = "soak")]
    long: bool,
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
    // The image tests run the real image: static release binaries. Cargo
    // rebuilds only what changed; buildah's part takes seconds.
    let image_archive = image::build(ctx, image::DEFAULT_TAG, Profile::Release)?;

    let mut cargo_test = ctx.cargo();
    cargo_test.arg("test");
    if !selects_packages(&options.cargo_test_args) {
        cargo_test.arg("--workspace");
    }
    cargo_test
        .arg("--no-fail-fast")
        .args(&options.cargo_test_args)
        .env("CNI_EBPF_BIN_DIR", &bin_dir)
        .env("CNI_EBPF_IMAGE_ARCHIVE", &image_archive)
        .env(
            "CNI_EBPF_KUBERNETES_VALIDATE",
            setup::python::kubernetes_validate(ctx),
        );
    ctx.run("test", &mut cargo_test)?;
    if options.long {
        long_tests(ctx, &bin_dir)?;
    }
    let fuzz_seconds = match options.fuzz_seconds {
        DEFAULT_FUZZ_SECONDS if options.long => LONG_FUZZ_SECONDS,
        seconds => seconds,
    };
    fuzz(ctx, fuzz_seconds)?;
    if !ctx.dry_run {
        eprintln!("[test] all steps passed");
    }
    Ok(())
}

const DEFAULT_FUZZ_SECONDS: u64 = 20;
const LONG_FUZZ_SECONDS: u64 = 300;

/// The ignored (long) tests: churn and soak in namespaces, then the packet
/// fuzzer with more frames. Their figures are printed (`--nocapture`).
fn long_tests(ctx: &Context, bin_dir: &Path) -> Result<()> {
    ctx.run(
        "long",
        ctx.cargo()
            .args(["test", "-p", "cni-ebpf-tests", "--test", "privileged"])
            .args(["--", "--ignored", "soak::", "--nocapture"])
            .env("CNI_EBPF_BIN_DIR", bin_dir),
    )?;
    ctx.run(
        "long",
        ctx.cargo()
            .args(["test", "-p", "cni-ebpf-userspace", "--test", "datapath"])
            .args(["--", "fuzz::", "--nocapture"])
            .env("CNI_EBPF_PACKET_FUZZ_FRAMES", "200000")
            .env("CNI_EBPF_PACKET_FUZZ_SECONDS", "300"),
    )
}

/// Runs every target in `fuzz/fuzz_targets/` for `seconds` on nightly. New
/// inputs go to `fuzz/corpus/<target>` (not committed), the committed seeds
/// in `fuzz/seeds/<target>` are read; a crash fails the step and leaves its
/// input in `fuzz/artifacts/<target>/`.
fn fuzz(ctx: &Context, seconds: u64) -> Result<()> {
    if seconds == 0 {
        eprintln!("[fuzz] skipped (--fuzz-seconds 0)");
        return Ok(());
    }
    let fuzz_dir = ctx.workspace.join("fuzz");
    ctx.run(
        "fuzz",
        ctx.cargo()
            .args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]),
    )?;
    for target in fuzz_targets(&fuzz_dir.join("fuzz_targets"))? {
        let corpus = fuzz_dir.join("corpus").join(&target);
        if !ctx.dry_run {
            fs::create_dir_all(&corpus)
                .with_context(|| format!("creating {}", corpus.display()))?;
        }
        let mut run = ctx.cargo();
        run.current_dir(&fuzz_dir)
            // The parsers never load the datapath: no eBPF build needed.
            .env("AYA_BUILD_SKIP", "1")
            .args(["+nightly", "fuzz", "run"])
            // Safe Rust: panics and overflows are the findings, so no ASan
            // (it doubles build and run time), but overflow checks on.
            .args(["--sanitizer", "none", "--debug-assertions", &target])
            .arg(&corpus)
            .arg(fuzz_dir.join("seeds").join(&target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-max_len=4096", "-timeout=10", "-print_final_stats=1"]);
        ctx.run("fuzz", &mut run)?;
    }
    Ok(())
}

/// The targets: one `.rs` file each, named as its `[[bin]]`.
fn fuzz_targets(dir: &Path) -> Result<Vec<String>> {
    let mut targets = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(target) = name.strip_suffix(".rs") {
            targets.push(target.to_string());
        }
    }
    targets.sort();
    Ok(targets)
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
