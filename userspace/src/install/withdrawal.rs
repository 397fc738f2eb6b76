//! The agent's side of "no pods on a broken datapath": while it cannot open
//! or load the datapath, the conflist is renamed to a name runtimes do not
//! load (`<name>.cni-ebpf-withdrawn`), so the node reports its network as
//! not ready and no pod is sent to a plugin that would fail; when the
//! datapath is back the same file is renamed back. A rename each way keeps
//! what install wrote byte for byte.

use std::path::{Path, PathBuf};

use super::{InstallError, Result};

/// Appended to a withdrawn conflist's name.
pub const WITHDRAWN_SUFFIX: &str = ".cni-ebpf-withdrawn";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Withdrawn,
    Restored,
    None,
}

#[derive(Debug, Clone)]
pub struct Conflist {
    path: PathBuf,
    withdrawn: PathBuf,
}

impl Conflist {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut withdrawn = path.clone().into_os_string();
        withdrawn.push(WITHDRAWN_SUFFIX);
        Self {
            path,
            withdrawn: withdrawn.into(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the conflist is while withdrawn.
    pub fn withdrawn_path(&self) -> PathBuf {
        self.withdrawn.clone()
    }

    /// Brings the conflist in line with the datapath's health.
    pub fn follow(&self, datapath_ok: bool) -> Result<Change> {
        if datapath_ok {
            self.restore()
        } else {
            self.withdraw()
        }
    }

    /// Moves the conflist out of the runtimes' sight (nothing if it is not there).
    pub fn withdraw(&self) -> Result<Change> {
        if !self.path.exists() {
            return Ok(Change::None);
        }
        std::fs::rename(&self.path, &self.withdrawn)
            .map_err(|e| InstallError::io("withdrawing", &self.path, e))?;
        Ok(Change::Withdrawn)
    }

    /// Puts a withdrawn conflist back, unless install wrote a new one since.
    pub fn restore(&self) -> Result<Change> {
        if !self.withdrawn.exists() || self.path.exists() {
            return Ok(Change::None);
        }
        std::fs::rename(&self.withdrawn, &self.path)
            .map_err(|e| InstallError::io("restoring", &self.withdrawn, e))?;
        Ok(Change::Restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawn_and_restored_by_rename() {
        let dir = std::env::temp_dir().join(format!("cni-ebpf-withdrawal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conflist = Conflist::new(dir.join("05-cni-ebpf.conflist"));
        assert_eq!(conflist.follow(false).unwrap(), Change::None);
        std::fs::write(conflist.path(), "{}").unwrap();
        assert_eq!(conflist.follow(true).unwrap(), Change::None);
        assert_eq!(conflist.follow(false).unwrap(), Change::Withdrawn);
        assert!(!conflist.path().exists());
        assert!(dir.join("05-cni-ebpf.conflist.cni-ebpf-withdrawn").exists());
        assert!(!super::super::files::is_network_config(
            "05-cni-ebpf.conflist.cni-ebpf-withdrawn"
        ));
        assert_eq!(conflist.follow(false).unwrap(), Change::None);
        assert_eq!(conflist.follow(true).unwrap(), Change::Restored);
        assert_eq!(std::fs::read_to_string(conflist.path()).unwrap(), "{}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
