//! A private bpffs instance: each `mount -t bpf` is a new, empty
//! filesystem, so pins made by one test are invisible to every other.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::{names, require_root};

/// A bpffs mounted on a fresh directory under the temp dir; unmounted and
/// removed on drop (pinned maps, programs and links go with it).
#[derive(Debug)]
pub struct Bpffs {
    mountpoint: PathBuf,
}

impl Bpffs {
    pub fn new() -> Self {
        require_root();
        let mountpoint = std::env::temp_dir().join(names::unique("cni-ebpf-bpffs"));
        std::fs::create_dir(&mountpoint)
            .unwrap_or_else(|e| panic!("creating {}: {e}", mountpoint.display()));
        if let Err(e) = mount(
            Some("bpf"),
            &mountpoint,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ) {
            let _ = std::fs::remove_dir(&mountpoint);
            panic!("mount -t bpf bpf {}: {e}", mountpoint.display());
        }
        Self { mountpoint }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// A directory path inside the mount, e.g. one node's `bpffsRoot`; the
    /// plugin creates it.
    pub fn root(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }
}

impl Default for Bpffs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.mountpoint, MntFlags::MNT_DETACH) {
            eprintln!(
                "[harness] unmounting bpffs {}: {e}",
                self.mountpoint.display()
            );
        }
        if let Err(e) = std::fs::remove_dir(&self.mountpoint) {
            eprintln!("[harness] removing {}: {e}", self.mountpoint.display());
        }
    }
}
