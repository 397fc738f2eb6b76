//! The image's root filesystem, staged under `target/image/rootfs`: the
//! binaries, the shared objects and ELF interpreter they load (so no base
//! image is needed), Debian's statically linked kubectl (for `install
//! --pod-cidr-from-api`), and a world-writable /tmp.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::BIN_DIR;
use crate::exec::{self, Context};

const BINARIES: &[&str] = &["cni-ebpfd", "cni-ebpf"];
/// The Debian package whose kubectl goes in (1.20, statically linked).
const KUBECTL_PACKAGE: &str = "kubernetes-client";

pub fn stage(ctx: &Context, bin_dir: &Path, work: &Path, root: &Path) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    let bin = root.join(BIN_DIR);
    fs::create_dir_all(&bin)?;
    let mut libraries = BTreeSet::new();
    for name in BINARIES {
        let source = bin_dir.join(name);
        copy(&source, &bin.join(name))?;
        libraries.extend(shared_objects(&source)?);
    }
    for library in &libraries {
        let inside = root.join(library.strip_prefix("/").unwrap_or(library));
        fs::create_dir_all(inside.parent().expect("a library path has a parent"))?;
        // The file the path resolves to, under the path the loader asks for.
        copy(&fs::canonicalize(library)?, &inside)?;
    }
    copy(&kubectl(ctx, work)?, &bin.join("kubectl"))?;
    let tmp = root.join("tmp");
    fs::create_dir_all(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
    eprintln!(
        "[image] staged {} with {} shared object(s)",
        root.display(),
        libraries.len()
    );
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// Absolute paths of what `ldd` says `binary` loads, interpreter included.
fn shared_objects(binary: &Path) -> Result<Vec<PathBuf>> {
    let listing = exec::read(Command::new("ldd").arg(binary))?;
    Ok(parse_ldd(&listing))
}

fn parse_ldd(listing: &str) -> Vec<PathBuf> {
    listing
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Debian's kubectl, fetched with `apt-get download` and unpacked under
/// `work` (not installed: the machine's own kubectl stays as it is).
fn kubectl(ctx: &Context, work: &Path) -> Result<PathBuf> {
    let debs = work.join("debs");
    let unpacked = debs.join(KUBECTL_PACKAGE);
    let binary = unpacked.join("usr/bin/kubectl");
    if binary.is_file() {
        return Ok(binary);
    }
    fs::create_dir_all(&debs)?;
    ctx.run(
        "image",
        Command::new("apt-get")
            .args(["download", KUBECTL_PACKAGE])
            .current_dir(&debs),
    )?;
    let deb = fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(KUBECTL_PACKAGE) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {KUBECTL_PACKAGE} .deb"))?;
    ctx.run(
        "image",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
    )?;
    if !binary.is_file() {
        bail!("{} holds no usr/bin/kubectl", deb.display());
    }
    Ok(binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_name_the_files_to_copy() {
        let listing = "\tlinux-vdso.so.1 (0x00007f081868a000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0818659000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f081761e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f081868c000)
";
        assert_eq!(
            parse_ldd(listing),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
