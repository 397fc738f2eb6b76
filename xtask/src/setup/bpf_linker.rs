//! `bpf-linker`, built against the nightly toolchain's own libLLVM so that
//! the bitcode rustc emits and the LLVM that links it are the same version.
//!
//! A linker is fresh when all of these hold:
//! - it loads (per `ldd`) exactly the nightly's `libLLVM.so.*-nightly` file;
//! - `bpf-linker --version` runs;
//! - the stamp next to it names the nightly's LLVM version and libLLVM file.
//!
//! `--version` does not tell the LLVM version, hence the stamp. A linker that
//! passes the first two checks but has no stamp (built by hand) is adopted and
//! stamped instead of rebuilt.

use std::{
    fs, io,
    os::unix,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{report, toolchain::LlvmVersion, toolchain::Nightly};
use crate::{
    exec::{self, Context},
    host,
};

const LINKER: &str = "bpf-linker";
/// Pinned so every machine builds the same linker; bump it together with
/// the nightly when LLVM moves past what it supports.
const LINKER_VERSION: &str = "^0.13";
/// Next to the binary in `$CARGO_HOME/bin`.
const STAMP: &str = ".bpf-linker-llvm";
/// The LLVM prefix lives in `$CARGO_HOME`, not in the workspace's `target/`:
/// bpf-linker bakes `<prefix>/lib` into its RUNPATH, so the prefix must
/// outlive `cargo clean` and the clone that built it.
const PREFIX: &str = "bpf-linker-llvm-prefix";

/// What a linker was built against, as recorded in the stamp.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    llvm: String,
    libllvm: String,
}

impl Stamp {
    fn render(&self) -> String {
        format!("llvm={}\nlibllvm={}\n", self.llvm, self.libllvm)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum LinkerState {
    Missing,
    Stale(String),
    /// Works with the nightly's libLLVM but was not built by setup.
    Unstamped,
    Fresh,
}

pub fn ensure(ctx: &Context, nightly: &Nightly) -> Result<()> {
    let cargo_home = host::cargo_home()?;
    let linker = cargo_home.join("bin").join(LINKER);
    let stamp_path = cargo_home.join("bin").join(STAMP);
    let libllvm = find_libllvm(
        &nightly.sysroot.join("lib"),
        &nightly.llvm,
        &nightly.release,
    )?;
    let wanted = Stamp {
        llvm: nightly.llvm.full.clone(),
        libllvm: file_name(&libllvm),
    };

    let status = match linker_state(&linker, &libllvm, &stamp_path, &wanted)? {
        LinkerState::Fresh => format!("ok (LLVM {}, {})", wanted.llvm, wanted.libllvm),
        LinkerState::Unstamped => {
            write_stamp(ctx, &stamp_path, &wanted)?;
            let stamped = if ctx.dry_run {
                "would stamp"
            } else {
                "stamped"
            };
            format!(
                "ok (LLVM {}, {}; verified, {stamped})",
                wanted.llvm, wanted.libllvm
            )
        }
        LinkerState::Missing => {
            report(LINKER, "missing, building (takes minutes)");
            install(ctx, &cargo_home, &libllvm, &nightly.llvm, false)?;
            finish_install(ctx, &linker, &libllvm, &stamp_path, &wanted)?
        }
        LinkerState::Stale(reason) => {
            report(
                LINKER,
                &format!("stale ({reason}), rebuilding (takes minutes)"),
            );
            install(ctx, &cargo_home, &libllvm, &nightly.llvm, true)?;
            finish_install(ctx, &linker, &libllvm, &stamp_path, &wanted)?
        }
    };
    report(LINKER, &status);
    warn_if_shadowed(&linker);
    Ok(())
}

/// The nightly's `libLLVM.so.<major>.<minor>-rust-<release>` in `lib_dir`.
fn find_libllvm(lib_dir: &Path, llvm: &LlvmVersion, release: &str) -> Result<PathBuf> {
    let entries = fs::read_dir(lib_dir)
        .with_context(|| format!("listing the nightly's libraries in {}", lib_dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.") && name.ends_with("-nightly") {
            names.push(name);
        }
    }
    names.sort();
    let version_prefix = format!("libLLVM.so.{}.{}-", llvm.major, llvm.minor);
    let matching: Vec<&String> = names
        .iter()
        .filter(|name| name.starts_with(&version_prefix))
        .collect();
    let chosen = match matching.as_slice() {
        [only] => only,
        [] => bail!(
            "no libLLVM.so.*-nightly for LLVM {} in {} (found: {names:?})",
            llvm.full,
            lib_dir.display()
        ),
        several => {
            let exact = format!("{version_prefix}rust-{release}");
            several
                .iter()
                .find(|name| ***name == exact)
                .with_context(|| {
                    format!(
                        "several libLLVM files for LLVM {} in {}: {several:?}",
                        llvm.full,
                        lib_dir.display()
                    )
                })?
        }
    };
    Ok(lib_dir.join(chosen))
}

fn linker_state(
    linker: &Path,
    libllvm: &Path,
    stamp_path: &Path,
    wanted: &Stamp,
) -> Result<LinkerState> {
    if let Some(defect) = linker_defect(linker, libllvm) {
        return Ok(defect);
    }
    Ok(stamp_verdict(read_stamp(stamp_path)?.as_deref(), wanted))
}

/// `Missing` or `Stale` unless the linker runs and loads exactly `libllvm`.
fn linker_defect(linker: &Path, libllvm: &Path) -> Option<LinkerState> {
    if !linker.exists() {
        return Some(LinkerState::Missing);
    }
    let unknown =
        || LinkerState::Stale("not linked to a shared libLLVM, its LLVM is unknown".into());
    // `ldd` fails on binaries that are not dynamically linked.
    let Ok(ldd) = exec::read(Command::new("ldd").arg(linker)) else {
        return Some(unknown());
    };
    let Some((name, resolved)) = parse_ldd_libllvm(&ldd) else {
        return Some(unknown());
    };
    let Some(resolved) = resolved else {
        return Some(LinkerState::Stale(format!("its {name} is not found")));
    };
    if !same_file(&resolved, libllvm) {
        return Some(LinkerState::Stale(format!(
            "loads {}, not the nightly's {}",
            resolved.display(),
            libllvm.display()
        )));
    }
    if let Err(error) = exec::read(Command::new(linker).arg("--version")) {
        return Some(LinkerState::Stale(format!("does not run: {error:#}")));
    }
    None
}

/// Judges a working linker that loads the right libLLVM by its stamp.
fn stamp_verdict(stamp: Option<&str>, wanted: &Stamp) -> LinkerState {
    match stamp {
        None => LinkerState::Unstamped,
        Some(recorded) if recorded.trim() == wanted.render().trim() => LinkerState::Fresh,
        Some(recorded) => LinkerState::Stale(format!(
            "built for {}, the nightly has {}",
            recorded.trim().replace('\n', ", "),
            wanted.render().trim().replace('\n', ", ")
        )),
    }
}

fn read_stamp(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(stamp) => Ok(Some(stamp)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_stamp(ctx: &Context, path: &Path, stamp: &Stamp) -> Result<()> {
    if ctx.dry_run {
        eprintln!("[setup] would write {}", path.display());
        return Ok(());
    }
    fs::write(path, stamp.render()).with_context(|| format!("writing {}", path.display()))
}

/// The libLLVM line of `ldd` output: its name and where it resolved to
/// (`None` for `=> not found`).
fn parse_ldd_libllvm(ldd: &str) -> Option<(String, Option<PathBuf>)> {
    ldd.lines().find_map(|line| {
        let (name, target) = line.trim().split_once(" => ")?;
        if !name.starts_with("libLLVM") {
            return None;
        }
        let resolved = match target.trim() {
            "not found" => None,
            target => Some(PathBuf::from(
                target.split(" (").next().unwrap_or(target).trim(),
            )),
        };
        Some((name.to_string(), resolved))
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(a), Ok(b)) if a == b)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `LLVM_PREFIX=<prefix> cargo install bpf-linker` against the nightly's
/// libLLVM. The prefix holds `lib/libLLVM.so` (for `-lLLVM`) and
/// `lib/<soname>` (for the RUNPATH lookup), both symlinks to the nightly's
/// file.
fn install(
    ctx: &Context,
    cargo_home: &Path,
    libllvm: &Path,
    llvm: &LlvmVersion,
    reinstall: bool,
) -> Result<()> {
    let prefix = cargo_home.join(PREFIX);
    if ctx.dry_run {
        eprintln!(
            "[setup] would link {}/lib/{{libLLVM.so,{}}} -> {}",
            prefix.display(),
            file_name(libllvm),
            libllvm.display()
        );
    } else {
        make_prefix(&prefix.join("lib"), libllvm)?;
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["install", LINKER, "--locked", "--version", LINKER_VERSION])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{}", llvm.major))
        .env("LLVM_PREFIX", &prefix)
        // Outside the workspace, so its cargo config does not apply.
        .current_dir(cargo_home);
    if reinstall {
        cmd.arg("--force");
    }
    ctx.run("setup", &mut cmd)
}

fn make_prefix(lib_dir: &Path, libllvm: &Path) -> Result<()> {
    fs::create_dir_all(lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    // Links left from an older nightly would confuse the next build.
    for entry in fs::read_dir(lib_dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("libLLVM") {
            fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    for name in ["libLLVM.so".to_string(), file_name(libllvm)] {
        let link = lib_dir.join(&name);
        unix::fs::symlink(libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    }
    Ok(())
}

/// Checks the linker just built and records what it was built against; the
/// old stamp says nothing about it.
fn finish_install(
    ctx: &Context,
    linker: &Path,
    libllvm: &Path,
    stamp_path: &Path,
    wanted: &Stamp,
) -> Result<String> {
    let built = format!("built (LLVM {}, {})", wanted.llvm, wanted.libllvm);
    if ctx.dry_run {
        write_stamp(ctx, stamp_path, wanted)?;
        return Ok(format!("would be {built}"));
    }
    match linker_defect(linker, libllvm) {
        None => {
            write_stamp(ctx, stamp_path, wanted)?;
            Ok(built)
        }
        Some(LinkerState::Stale(reason)) => {
            bail!("the freshly built {LINKER} is unusable: {reason}")
        }
        Some(_) => bail!(
            "cargo install succeeded but {} is missing",
            linker.display()
        ),
    }
}

/// The eBPF build runs the first `bpf-linker` on `PATH`.
fn warn_if_shadowed(linker: &Path) {
    match host::find_on_path(LINKER) {
        Some(found) if same_file(&found, linker) => {}
        Some(found) => eprintln!(
            "[setup] warning: {} comes first on PATH, not {}",
            found.display(),
            linker.display()
        ),
        // `cargo xtask` puts $CARGO_HOME/bin on the PATH of its cargo runs.
        None => eprintln!(
            "[setup] note: {} is not on PATH; plain `cargo build` will not find it",
            linker.parent().unwrap_or(linker).display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::{env, process};

    use super::*;

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = env::temp_dir().join(format!("xtask-{name}-{}", process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn llvm22() -> LlvmVersion {
        LlvmVersion {
            major: 22,
            minor: 1,
            full: "22.1.4".into(),
        }
    }

    fn touch(dir: &Path, names: &[&str]) {
        for name in names {
            fs::write(dir.join(name), b"").unwrap();
        }
    }

    #[test]
    fn libllvm_is_the_nightly_soname_not_the_dash_variant() {
        let scratch = Scratch::new("libllvm-one");
        touch(
            &scratch.0,
            &[
                "libLLVM-22-rust-1.97.0-nightly.so",
                "libLLVM.so.22.1-rust-1.97.0-nightly",
                "librustc_driver-b5a965480ee51f9a.so",
            ],
        );
        let found = find_libllvm(&scratch.0, &llvm22(), "1.97.0-nightly").unwrap();
        assert_eq!(found, scratch.0.join("libLLVM.so.22.1-rust-1.97.0-nightly"));
    }

    #[test]
    fn libllvm_of_another_llvm_is_refused() {
        let scratch = Scratch::new("libllvm-other");
        touch(&scratch.0, &["libLLVM.so.21.1-rust-1.92.0-nightly"]);
        let error = find_libllvm(&scratch.0, &llvm22(), "1.97.0-nightly").unwrap_err();
        assert!(error.to_string().contains("LLVM 22.1.4"), "{error}");
    }

    #[test]
    fn libllvm_ambiguity_is_settled_by_the_release() {
        let scratch = Scratch::new("libllvm-several");
        touch(
            &scratch.0,
            &[
                "libLLVM.so.22.1-rust-1.96.0-nightly",
                "libLLVM.so.22.1-rust-1.97.0-nightly",
            ],
        );
        let found = find_libllvm(&scratch.0, &llvm22(), "1.97.0-nightly").unwrap();
        assert_eq!(found, scratch.0.join("libLLVM.so.22.1-rust-1.97.0-nightly"));
        assert!(find_libllvm(&scratch.0, &llvm22(), "1.98.0-nightly").is_err());
    }

    #[test]
    fn ldd_line_for_libllvm() {
        let ldd = "\tlinux-vdso.so.1 (0x00007f75b3f15000)
\tlibLLVM.so.22.1-rust-1.97.0-nightly => /p/lib/libLLVM.so.22.1-rust-1.97.0-nightly (0x00007f75a9400000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f75a921e000)
";
        assert_eq!(
            parse_ldd_libllvm(ldd),
            Some((
                "libLLVM.so.22.1-rust-1.97.0-nightly".into(),
                Some(PathBuf::from("/p/lib/libLLVM.so.22.1-rust-1.97.0-nightly"))
            ))
        );
        let missing = "\tlibLLVM.so.22.1-rust-1.97.0-nightly => not found\n";
        assert_eq!(
            parse_ldd_libllvm(missing),
            Some(("libLLVM.so.22.1-rust-1.97.0-nightly".into(), None))
        );
        assert_eq!(
            parse_ldd_libllvm("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"),
            None
        );
    }

    #[test]
    fn stamp_decides_between_fresh_unstamped_and_stale() {
        let wanted = Stamp {
            llvm: "22.1.4".into(),
            libllvm: "libLLVM.so.22.1-rust-1.97.0-nightly".into(),
        };
        assert_eq!(stamp_verdict(None, &wanted), LinkerState::Unstamped);
        assert_eq!(
            stamp_verdict(Some(&wanted.render()), &wanted),
            LinkerState::Fresh
        );
        let older = Stamp {
            llvm: "22.1.2".into(),
            libllvm: wanted.libllvm.clone(),
        };
        assert!(matches!(
            stamp_verdict(Some(&older.render()), &wanted),
            LinkerState::Stale(reason) if reason.contains("22.1.2") && reason.contains("22.1.4")
        ));
    }

    #[test]
    fn missing_and_non_elf_linkers_are_rebuilt() {
        let scratch = Scratch::new("linker-state");
        let libllvm = scratch.0.join("libLLVM.so.22.1-rust-1.97.0-nightly");
        touch(&scratch.0, &["libLLVM.so.22.1-rust-1.97.0-nightly"]);
        let stamp_path = scratch.0.join(STAMP);
        let wanted = Stamp {
            llvm: "22.1.4".into(),
            libllvm: file_name(&libllvm),
        };
        let linker = scratch.0.join(LINKER);
        assert_eq!(
            linker_state(&linker, &libllvm, &stamp_path, &wanted).unwrap(),
            LinkerState::Missing
        );
        // A script stands in for a linker whose LLVM cannot be told.
        fs::write(&linker, "#!/bin/sh\necho bpf-linker 0.13.0\n").unwrap();
        assert!(matches!(
            linker_state(&linker, &libllvm, &stamp_path, &wanted).unwrap(),
            LinkerState::Stale(_)
        ));
    }

    #[test]
    fn prefix_holds_both_links_and_drops_old_ones() {
        let scratch = Scratch::new("prefix");
        let libllvm = scratch.0.join("libLLVM.so.22.1-rust-1.97.0-nightly");
        touch(&scratch.0, &["libLLVM.so.22.1-rust-1.97.0-nightly"]);
        let lib_dir = scratch.0.join("prefix/lib");
        fs::create_dir_all(&lib_dir).unwrap();
        unix::fs::symlink(
            "/nonexistent",
            lib_dir.join("libLLVM.so.21.1-rust-1.92.0-nightly"),
        )
        .unwrap();
        make_prefix(&lib_dir, &libllvm).unwrap();
        // Idempotent: a second run replaces the links.
        make_prefix(&lib_dir, &libllvm).unwrap();
        let mut names: Vec<String> = fs::read_dir(&lib_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["libLLVM.so", "libLLVM.so.22.1-rust-1.97.0-nightly"]);
        for name in &names {
            assert_eq!(fs::read_link(lib_dir.join(name)).unwrap(), libllvm);
        }
    }
}
