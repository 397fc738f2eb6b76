//! Developer tasks for cni-ebpf: `cargo xtask <task>`.
//!
//! Depends on no workspace crate: it must run before bpf-linker exists.

mod bench;
mod build;
mod exec;
mod host;
mod image;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for cni-ebpf"
)]
struct Cli {
    /// Print the commands that would change something instead of running
    /// them (read-only checks still run).
    #[arg(long, global = true)]
    dry_run: bool,
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what builds and tests need: nightly rust-src, bpf-linker
    /// matching the nightly's LLVM, Debian packages. Quick when all is there.
    Setup,
    /// Setup, then build the workspace.
    Build(build::Options),
    /// Setup, fmt check, clippy, build, then every test (as root).
    Test(test::Options),
    /// Setup, build, then run the demo cluster in network namespaces.
    Run(run::Options),
    /// Setup, release build, then run the benchmarks.
    Bench(bench::Options),
    /// Setup, release build, then the node image (OCI layout and archive
    /// under target/image/) built from scratch with buildah.
    Image(image::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = exec::Context::new(cli.dry_run);
    let outcome = match &cli.task {
        Task::Setup => setup::run(&ctx),
        Task::Build(options) => build::run(&ctx, options),
        Task::Test(options) => test::run(&ctx, options),
        Task::Run(options) => run::run(&ctx, options),
        Task::Bench(options) => bench::run(&ctx, options),
        Task::Image(options) => image::run(&ctx, options),
    };
    // The error chain says what failed; a backtrace of xtask itself does not.
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
