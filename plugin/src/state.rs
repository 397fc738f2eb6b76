//! Attachment records: one small JSON file per (container ID, interface)
//! under `<stateDir>/<network>/`, written by ADD and read by DEL, CHECK and
//! GC, so that cleanup never depends on the pod's namespace still existing.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};

use crate::error::{CniError, CniResult};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: String,
    pub pod_mac: String,
    pub ips: Vec<IpNet>,
    pub owner: u64,
    pub attachment: cni_ebpf_userspace::Attachment,
    #[serde(default)]
    pub port_mappings: Vec<cni_ebpf_userspace::host_ports::PortMapping>,
    #[serde(default)]
    pub ingress_limit: Option<cni_ebpf_userspace::rate::Limit>,
    #[serde(default)]
    pub egress_limit: Option<cni_ebpf_userspace::rate::Limit>,
    /// Why ADD could not hook the node's own sockets (no cgroup v2): CHECK
    /// reports it instead of failing on the missing hooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_missing: Option<String>,
}

pub struct StateDir {
    root: PathBuf,
    dir: PathBuf,
}

/// Held for the whole of ADD and DEL (shared: they run in parallel) and of GC
/// (exclusive), so GC never mistakes a half-made attachment for an orphan.
pub struct StateLock {
    _lock: Flock<fs::File>,
}

impl StateDir {
    pub fn new(state_dir: &Path, network: &str) -> Self {
        Self {
            root: state_dir.to_path_buf(),
            dir: state_dir.join(network),
        }
    }

    pub fn lock_shared(&self) -> CniResult<StateLock> {
        self.lock(false)
    }

    pub fn lock_exclusive(&self) -> CniResult<StateLock> {
        self.lock(true)
    }

    fn lock(&self, exclusive: bool) -> CniResult<StateLock> {
        fs::create_dir_all(&self.root)
            .map_err(|e| CniError::io(format!("creating {}", self.root.display()), e))?;
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CniError::io(format!("opening {}", path.display()), e))?;
        let lock =
            cni_ebpf_userspace::lock::lock(file, &path, exclusive).map_err(CniError::lock)?;
        Ok(StateLock { _lock: lock })
    }

    /// Records of every network under the same state directory.
    pub fn all_networks(&self) -> CniResult<Vec<AttachmentRecord>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CniError::io(format!("listing {}", self.root.display()), e)),
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                records.extend(list_dir(&entry.path())?);
            }
        }
        Ok(records)
    }

    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{container_id}-{ifname}.json"))
    }

    /// Written to a temporary name and renamed, so a reader never sees half.
    pub fn write(&self, record: &AttachmentRecord) -> CniResult<()> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| CniError::io(format!("creating {}", self.dir.display()), e))?;
        let path = self.path(&record.container_id, &record.ifname);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(record).map_err(|e| {
            CniError::new(crate::error::code::INTERNAL, "encoding state").with_details(e)
        })?;
        fs::write(&tmp, bytes)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| CniError::io(format!("writing {}", path.display()), e))
    }

    pub fn read(&self, container_id: &str, ifname: &str) -> CniResult<Option<AttachmentRecord>> {
        let path = self.path(container_id, ifname);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CniError::io(format!("reading {}", path.display()), e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CniError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Idempotent.
    pub fn remove(&self, container_id: &str, ifname: &str) -> CniResult<()> {
        let path = self.path(container_id, ifname);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Every record of the network (for GC and the agent).
    pub fn list(&self) -> CniResult<Vec<AttachmentRecord>> {
        list_dir(&self.dir)
    }
}

fn list_dir(dir: &Path) -> CniResult<Vec<AttachmentRecord>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CniError::io(format!("listing {}", dir.display()), e)),
    };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Ok(bytes) = fs::read(&path)
            && let Ok(record) = serde_json::from_slice(&bytes)
        {
            records.push(record);
        }
    }
    Ok(records)
}
