//! Network namespaces: open one by path, enter it for a scope.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use nix::{sched::CloneFlags, sys::statfs::fstatfs};

use crate::error::{CniError, CniResult};

/// `NSFS_MAGIC` from `linux/magic.h`: namespace files live on nsfs.
const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path` (the runtime's `CNI_NETNS`).
    pub fn open(path: &Path) -> CniResult<Self> {
        let file = File::open(path).map_err(|e| {
            CniError::invalid_env(format!(
                "CNI_NETNS {}: cannot open network namespace",
                path.display()
            ))
            .with_details(e)
        })?;
        let on_nsfs = fstatfs(file.as_fd())
            .map(|s| s.filesystem_type().0 == NSFS_MAGIC)
            .unwrap_or(false);
        if !on_nsfs {
            return Err(CniError::invalid_env(format!(
                "CNI_NETNS {}: not a network namespace",
                path.display()
            )));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> CniResult<Self> {
        let path = Path::new("/proc/thread-self/ns/net");
        let file = File::open(path).map_err(|e| CniError::io("open own netns", e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Moves the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> CniResult<NetNsGuard> {
        let home = Self::current()?;
        nix::sched::setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            CniError::invalid_env(format!(
                "CNI_NETNS {}: cannot enter network namespace",
                self.path.display()
            ))
            .with_details(e)
        })?;
        Ok(NetNsGuard { home })
    }
}

/// Returns the thread to its namespace on drop.
#[must_use]
pub struct NetNsGuard {
    home: NetNs,
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        // Failing to return would run the rest of the plugin in the pod.
        if let Err(e) = nix::sched::setns(self.home.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            log::error!("cannot return to the node namespace: {e}");
            std::process::abort();
        }
    }
}
