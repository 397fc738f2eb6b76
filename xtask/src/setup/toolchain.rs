//! The nightly toolchain and its `rust-src`, which the eBPF build needs
//! (`-Z build-std=core` for the bpf target).

use std::{path::PathBuf, process::Command, thread, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::report;
use crate::exec::{self, Context};

const TOOLCHAIN: &str = "nightly";

/// What the rest of setup needs to know about the nightly toolchain.
pub struct Nightly {
    /// `rustc` release, e.g. `1.97.0-nightly`.
    pub release: String,
    pub llvm: LlvmVersion,
    pub sysroot: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
pub struct LlvmVersion {
    pub major: u32,
    pub minor: u32,
    /// As rustc prints it, e.g. `22.1.4`.
    pub full: String,
}

pub fn ensure(ctx: &Context) -> Result<Nightly> {
    ensure_installed(ctx)?;
    let nightly = query().with_context(|| {
        if ctx.dry_run {
            "the nightly toolchain is not usable yet (dry run installs nothing)"
        } else {
            "the nightly toolchain is not usable"
        }
    })?;
    report(
        "nightly",
        &format!("ok (rustc {}, LLVM {})", nightly.release, nightly.llvm.full),
    );
    ensure_rust_src(ctx)?;
    Ok(nightly)
}

fn ensure_installed(ctx: &Context) -> Result<()> {
    let toolchains = exec::read(Command::new("rustup").args(["toolchain", "list"]))?;
    if lists_nightly(&toolchains) {
        return Ok(());
    }
    report("nightly", "missing, installing");
    rustup(
        ctx,
        &["toolchain", "install", TOOLCHAIN, "--profile", "minimal"],
    )
}

fn ensure_rust_src(ctx: &Context) -> Result<()> {
    let installed = exec::read(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        TOOLCHAIN,
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|line| line.trim() == "rust-src") {
        report("rust-src", "ok");
        return Ok(());
    }
    report("rust-src", "missing, installing");
    rustup(
        ctx,
        &["component", "add", "rust-src", "--toolchain", TOOLCHAIN],
    )
}

/// Runs rustup, retrying a few times: another rustup may hold its lock on
/// the same toolchain, and downloads fail transiently.
fn rustup(ctx: &Context, args: &[&str]) -> Result<()> {
    const ATTEMPTS: u32 = 4;
    let mut attempt = 1;
    loop {
        match ctx.run("setup", Command::new("rustup").args(args)) {
            Ok(()) => return Ok(()),
            Err(error) if attempt < ATTEMPTS => {
                eprintln!("[setup] {error:#}; retrying in 10 s ({attempt}/{ATTEMPTS})");
                thread::sleep(Duration::from_secs(10));
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

fn query() -> Result<Nightly> {
    let version = exec::read(Command::new("rustup").args(["run", TOOLCHAIN, "rustc", "-vV"]))?;
    let sysroot =
        exec::read(Command::new("rustup").args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"]))?;
    let release = field(&version, "release")
        .context("`rustc -vV` printed no release")?
        .to_string();
    Ok(Nightly {
        release,
        llvm: parse_llvm_version(&version)?,
        sysroot: PathBuf::from(sysroot.trim()),
    })
}

/// `rustup toolchain list` names the floating nightly as
/// `nightly-<host>`; dated nightlies (`nightly-2026-05-19-<host>`) are not it.
fn lists_nightly(toolchains: &str) -> bool {
    toolchains.lines().any(|line| {
        line.split_whitespace()
            .next()
            .and_then(|name| name.strip_prefix("nightly-"))
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// The LLVM version from `rustc -vV` (line `LLVM version: 22.1.4`).
pub fn parse_llvm_version(rustc_vv: &str) -> Result<LlvmVersion> {
    let full = field(rustc_vv, "LLVM version").context("`rustc -vV` printed no LLVM version")?;
    let mut numbers = full.split('.').map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok(LlvmVersion {
            major,
            minor,
            full: full.to_string(),
        }),
        _ => bail!("cannot parse LLVM version `{full}`"),
    }
}

fn field<'a>(rustc_vv: &'a str, name: &str) -> Option<&'a str> {
    rustc_vv.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUSTC_VV: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)
binary: rustc
commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a
commit-date: 2026-05-19
host: x86_64-unknown-linux-gnu
release: 1.97.0-nightly
LLVM version: 22.1.4
";

    #[test]
    fn llvm_version_from_rustc_vv() {
        let llvm = parse_llvm_version(RUSTC_VV).unwrap();
        assert_eq!(
            llvm,
            LlvmVersion {
                major: 22,
                minor: 1,
                full: "22.1.4".into()
            }
        );
        assert_eq!(field(RUSTC_VV, "release"), Some("1.97.0-nightly"));
    }

    #[test]
    fn llvm_version_missing_or_garbled() {
        assert!(parse_llvm_version("release: 1.97.0-nightly\n").is_err());
        assert!(parse_llvm_version("LLVM version: twenty-two\n").is_err());
    }

    #[test]
    fn floating_nightly_is_recognised() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n";
        assert!(lists_nightly(list));
        assert!(!lists_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2026-05-19-x86_64-unknown-linux-gnu\n"
        ));
    }
}
