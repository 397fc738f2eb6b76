//! The image's root filesystem, staged under `target/image/rootfs`: the two
//! statically linked binaries and a world-writable /tmp, nothing else (no
//! shared objects, no loader, no shell: the image is "from scratch").

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{Context as _, Result, bail};

use super::BIN_DIR;

pub const BINARIES: &[&str] = &["cni-ebpfd", "cni-ebpf"];

pub fn stage(bin_dir: &Path, root: &Path) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    let bin = root.join(BIN_DIR);
    fs::create_dir_all(&bin)?;
    for name in BINARIES {
        let source = bin_dir.join(name);
        let bytes = fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
        if !is_static(&bytes)? {
            bail!(
                "{} asks for an ELF interpreter: it is not statically linked",
                source.display()
            );
        }
        fs::copy(&source, bin.join(name))
            .with_context(|| format!("copying {}", source.display()))?;
    }
    let tmp = root.join("tmp");
    fs::create_dir_all(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
    eprintln!("[image] staged {}", root.display());
    Ok(())
}

/// Program header type of the ELF interpreter (the dynamic loader).
const PT_INTERP: u32 = 3;

/// Whether an x86-64 ELF executable runs without a dynamic loader: no
/// `PT_INTERP` program header (a static-pie keeps `PT_DYNAMIC` for its own
/// relocations, and needs no loader).
fn is_static(elf: &[u8]) -> Result<bool> {
    let field = |at: usize, len: usize| -> Result<u64> {
        let bytes = elf
            .get(at..at + len)
            .context("truncated ELF header or program header table")?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") || elf.get(5) != Some(&1) {
        bail!("not a little-endian 64-bit ELF file");
    }
    let phoff = field(0x20, 8)? as usize;
    let phentsize = field(0x36, 2)? as usize;
    let phnum = field(0x38, 2)? as usize;
    for i in 0..phnum {
        if field(phoff + i * phentsize, 4)? == u64::from(PT_INTERP) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_told_from_a_static_one() {
        // The xtask binary itself: dynamically linked against glibc.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static(&me).unwrap());
        // The same file with its PT_INTERP entry's type changed to PT_NULL.
        let mut patched = me.clone();
        let phoff = u64::from_le_bytes(me[0x20..0x28].try_into().unwrap()) as usize;
        let phentsize = usize::from(u16::from_le_bytes(me[0x36..0x38].try_into().unwrap()));
        let phnum = usize::from(u16::from_le_bytes(me[0x38..0x3a].try_into().unwrap()));
        let interp = (0..phnum)
            .map(|i| phoff + i * phentsize)
            .find(|at| me[*at..*at + 4] == PT_INTERP.to_le_bytes())
            .expect("a dynamic executable has PT_INTERP");
        patched[interp..interp + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(is_static(&patched).unwrap());
        assert!(is_static(b"#!/bin/sh\n").is_err());
    }
}
