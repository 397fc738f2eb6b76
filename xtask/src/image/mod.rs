//! `cargo xtask image`: the node image (agent and plugin) as an OCI image
//! layout, built from scratch with buildah (no base image can be pulled):
//! the two binaries, linked statically against glibc (`crt-static`), and
//! an empty /tmp; nothing else. Its entrypoint is `cni-ebpfd` (the
//! DaemonSet runs `install` in its init container and `run` in the agent
//! container). buildah's storage lives under `target/image/`, never in the
//! machine's `/var/lib/containers`.
//!
//! Static with glibc rather than musl: the musl target's standard library
//! is a rustup download, which these machines cannot fetch; glibc's libc.a
//! is a Debian package. Its one catch, name lookups through NSS, does not
//! arise: the binaries resolve no host names (addresses are given as IPs:
//! the API server's from the kubelet's environment, etcd's in the ConfigMap).

mod layout;
mod rootfs;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    build::Profile,
    exec::{self, Context},
    setup,
};

/// Where the binaries go inside the image (the plugin next to cni-ebpfd is
/// what `cni-ebpfd install` copies by default).
pub const BIN_DIR: &str = "usr/local/bin";
/// Files the image must hold, checked in the layer after the build.
pub const EXPECTED_FILES: &[&str] = &["usr/local/bin/cni-ebpfd", "usr/local/bin/cni-ebpf"];
/// The target the static binaries are built for (given explicitly, so
/// `crt-static` applies to them and not to build scripts).
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// The default image name.
pub const DEFAULT_TAG: &str = "localhost/cni-ebpf:dev";

#[derive(Args)]
pub struct Options {
    /// Image name and tag (the OCI layout's ref name is the tag).
    #[arg(long, default_value = DEFAULT_TAG)]
    tag: String,
    /// Put the debug binaries in (quicker to build, much larger).
    #[arg(long)]
    debug: bool,
}

pub fn run(ctx: &Context, options: &Options) -> Result<()> {
    setup::run(ctx)?;
    let profile = if options.debug {
        Profile::Debug
    } else {
        Profile::Release
    };
    let archive = build(ctx, &options.tag, profile)?;
    eprintln!(
        "[image] load it with `podman load -i {0}` or `ctr -n k8s.io images import {0}`",
        archive.display()
    );
    Ok(())
}

/// Builds the static binaries and the image; returns the OCI archive.
pub fn build(ctx: &Context, full_tag: &str, profile: Profile) -> Result<PathBuf> {
    let bin_dir = build_binaries(ctx, profile)?;
    let work = ctx.target_dir().join("image");
    let root = work.join("rootfs");
    if !ctx.dry_run {
        rootfs::stage(&bin_dir, &root)?;
    }
    let tag = full_tag.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    let layout_dir = work.join("oci");
    let archive = work.join("cni-ebpf.tar");
    buildah_build(ctx, &work, &root, full_tag, tag, &layout_dir, &archive)?;
    if ctx.dry_run {
        return Ok(archive);
    }
    let image = layout::validate(&layout_dir, tag, EXPECTED_FILES)?;
    let binaries: u64 = rootfs::BINARIES
        .iter()
        .map(|b| std::fs::metadata(bin_dir.join(b)).map_or(0, |m| m.len()))
        .sum();
    eprintln!(
        "[image] {full_tag} ({} layer(s), {:.1} MB; binaries {:.1} MB): OCI layout {}, archive {}",
        image.layers,
        image.bytes as f64 / 1e6,
        binaries as f64 / 1e6,
        layout_dir.display(),
        archive.display()
    );
    Ok(archive)
}

/// Builds the two binaries the image holds (not the test harness),
/// statically linked: `crt-static` on an explicit `--target`, so build
/// scripts and proc macros stay dynamic (they run here) and the output
/// goes to `target/<triple>/<profile>/`, apart from the usual builds.
fn build_binaries(ctx: &Context, profile: Profile) -> Result<PathBuf> {
    let mut cmd = ctx.cargo();
    cmd.args(["build", "-p", "cni-ebpf-userspace", "-p", "cni-ebpf-plugin"])
        .args(["--target", TARGET])
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    if let Profile::Release = profile {
        cmd.arg("--release");
    }
    ctx.run("build", &mut cmd)?;
    Ok(ctx.target_dir().join(TARGET).join(profile.dir_name()))
}

/// `buildah from scratch`, copy the staged root, set the entrypoint, commit
/// to an OCI layout and an OCI archive; the working container is removed
/// whatever happens.
fn buildah_build(
    ctx: &Context,
    work: &Path,
    root: &Path,
    full_tag: &str,
    tag: &str,
    layout_dir: &Path,
    archive: &Path,
) -> Result<()> {
    let storage = [
        "--root".to_string(),
        work.join("storage").display().to_string(),
        "--runroot".to_string(),
        work.join("runroot").display().to_string(),
        "--storage-driver".to_string(),
        "vfs".to_string(),
    ];
    let buildah = || {
        let mut cmd = Command::new("buildah");
        cmd.args(&storage);
        cmd
    };
    eprintln!("[image] $ buildah from scratch");
    let container = if ctx.dry_run {
        "working-container".to_string()
    } else {
        exec::read(buildah().args(["from", "scratch"]))?
            .trim()
            .to_string()
    };
    let steps = || -> Result<()> {
        ctx.run(
            "image",
            buildah()
                .arg("copy")
                .arg(&container)
                .arg(format!("{}/", root.display()))
                .arg("/"),
        )?;
        ctx.run(
            "image",
            buildah().args([
                "config",
                "--entrypoint",
                r#"["/usr/local/bin/cni-ebpfd"]"#,
                "--cmd",
                "run",
                "--env",
                "HOME=/tmp",
                "--env",
                "PATH=/usr/local/bin",
                "--label",
                "org.opencontainers.image.title=cni-ebpf",
                "--label",
                "org.opencontainers.image.description=cni-ebpf node agent, CNI plugin and installer",
                "--os",
                "linux",
                "--arch",
                "amd64",
                &container,
            ]),
        )?;
        let _ = std::fs::remove_dir_all(layout_dir);
        let _ = std::fs::remove_file(archive);
        ctx.run(
            "image",
            buildah().args([
                "commit",
                "--format",
                "oci",
                &container,
                &format!("oci:{}:{tag}", layout_dir.display()),
            ]),
        )?;
        ctx.run(
            "image",
            buildah().args([
                "commit",
                "--format",
                "oci",
                &container,
                &format!("oci-archive:{}:{full_tag}", archive.display()),
            ]),
        )
    };
    let result = steps();
    let _ = ctx.run("image", buildah().args(["rm", &container]));
    result.context("building the image with buildah")
}
