//! Installing cni-ebpf on a node the way container runtimes expect (CNI
//! install conventions): the plugin binary copied into the CNI bin dir and
//! renamed into place, a conflist written into the CNI conf dir once the
//! datapath answers STATUS, other networks' configs moved aside on request;
//! and uninstalling exactly that again. `cni-ebpfd install` / `uninstall`
//! are thin wrappers; the Kubernetes DaemonSet runs install as its init step.

pub mod conflist;
pub mod files;
#[cfg(feature = "kube-api")]
pub mod kube_api;
pub mod pod_cidr;
pub mod readiness;
pub mod uplink;
pub mod withdrawal;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

use crate::error::PathIoError;

pub use conflist::{ConflistSettings, PodCidr};
pub use uplink::Backend;

/// The plugin's file name in the CNI bin dir (the conflist's `type`).
pub const PLUGIN_NAME: &str = "cni-ebpf";
/// The conflist's default file name: sorts before most other networks'
/// (runtimes take the lexically first config).
pub const DEFAULT_CONFLIST_NAME: &str = "05-cni-ebpf.conflist";
/// What `--exclusive` appends to other networks' configs (as Cilium's
/// `cni-exclusive` does with `.cilium_bak`); runtimes load only `.conf`,
/// `.conflist` and `.json`, so a renamed file is ignored.
pub const BACKUP_SUFFIX: &str = ".cni-ebpf-bak";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("the node's pod CIDR: {0}")]
    PodCidr(String),
    #[error("the uplink's MTU: {0}")]
    Uplink(String),
    #[error(
        "the datapath did not become ready within {waited:?}: the plugin's STATUS last said: {last}; no conflist was written"
    )]
    NotReady { waited: Duration, last: String },
}

impl InstallError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io(PathIoError::new(op, path, source))
    }
}

pub type Result<T> = std::result::Result<T, InstallError>;

/// Where install puts things on the node.
#[derive(Debug, Clone)]
pub struct NodeDirs {
    /// The CNI bin dir (`/opt/cni/bin`).
    pub cni_bin_dir: PathBuf,
    /// The CNI conf dir (`/etc/cni/net.d`).
    pub cni_conf_dir: PathBuf,
    /// The conflist's file name in the conf dir.
    pub conflist_name: String,
}

impl NodeDirs {
    pub fn plugin_path(&self) -> PathBuf {
        self.cni_bin_dir.join(PLUGIN_NAME)
    }

    pub fn conflist_path(&self) -> PathBuf {
        self.cni_conf_dir.join(&self.conflist_name)
    }
}

/// One install.
#[derive(Debug, Clone)]
pub struct InstallPlan {
    pub dirs: NodeDirs,
    /// The plugin binary to copy (the one shipped next to `cni-ebpfd`).
    pub plugin_source: PathBuf,
    pub conflist: ConflistSettings,
    /// Move every other network config in the conf dir aside.
    pub exclusive: bool,
    /// How long to wait for the plugin's STATUS to answer 0.
    pub ready_timeout: Duration,
    /// Instead of waiting: when STATUS does not answer 0 at once, write
    /// the conflist withdrawn and let the agent publish it (cluster mode
    /// under the DaemonSet, where the pod CIDR comes from the agent that
    /// starts after install).
    pub leave_to_agent: bool,
}

/// What an install did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Installed {
    pub plugin: PathBuf,
    /// False when the installed binary already had the source's bytes.
    pub plugin_replaced: bool,
    pub conflist: PathBuf,
    pub conflist_replaced: bool,
    /// Other networks' configs moved aside, as they are named now.
    pub moved_aside: Vec<PathBuf>,
    /// How long STATUS took to answer 0.
    pub waited_ms: u128,
    /// Written withdrawn, for the agent to publish (`leave_to_agent`).
    pub left_to_agent: bool,
}

/// Copies the plugin, waits for the datapath, then (and only then) writes
/// the conflist and, with `exclusive`, moves the other configs aside.
/// Running it again with the same plan changes nothing.
pub fn install(plan: &InstallPlan) -> Result<Installed> {
    let plugin = plan.dirs.plugin_path();
    let plugin_replaced = files::install_executable(&plan.plugin_source, &plugin)?;
    let conflist = conflist::render(&plan.conflist);
    let status_conf = conflist::status_conf(&conflist);
    let started = std::time::Instant::now();
    let ready = if plan.leave_to_agent {
        readiness::status(&plugin, &plan.dirs.cni_bin_dir, &status_conf)
            .map_err(|why| log::info!("not ready yet ({why}): the agent publishes the conflist"))
            .is_ok()
    } else {
        readiness::wait_for_status(
            &plugin,
            &plan.dirs.cni_bin_dir,
            &status_conf,
            plan.ready_timeout,
        )?;
        true
    };
    let waited = started.elapsed();
    let published = plan.dirs.conflist_path();
    let withdrawn = withdrawal::Conflist::new(&published).withdrawn_path();
    // One of the two names at a time: the other is stale.
    let (conflist_path, stale) = if ready {
        (published, withdrawn)
    } else {
        (withdrawn, published)
    };
    let text =
        serde_json::to_string_pretty(&conflist).expect("a conflist always serializes") + "\n";
    let conflist_replaced = files::write_atomically(&conflist_path, text.as_bytes(), 0o644)?;
    files::remove_if_present(&stale)?;
    let moved_aside = if plan.exclusive {
        files::move_aside_others(&plan.dirs.cni_conf_dir, &plan.dirs.conflist_name)?
    } else {
        Vec::new()
    };
    Ok(Installed {
        plugin,
        plugin_replaced,
        conflist: conflist_path,
        conflist_replaced,
        moved_aside,
        waited_ms: waited.as_millis(),
        left_to_agent: !ready,
    })
}

/// What an uninstall did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Uninstalled {
    /// Files removed (conflist, plugin, leftovers of interrupted installs).
    pub removed: Vec<PathBuf>,
    /// Configs moved aside by `--exclusive`, back under their names.
    pub restored: Vec<PathBuf>,
}

/// Removes the conflist first (so runtimes stop sending pods to a network
/// that is going away), restores the configs `--exclusive` moved aside, then
/// removes the plugin and any staging files. The datapath stays loaded:
/// running pods keep their traffic.
pub fn uninstall(dirs: &NodeDirs) -> Result<Uninstalled> {
    let mut removed = Vec::new();
    let conflist = dirs.conflist_path();
    let withdrawn = withdrawal::Conflist::new(&conflist).withdrawn_path();
    if files::remove_if_present(&conflist)? {
        removed.push(conflist);
    }
    if files::remove_if_present(&withdrawn)? {
        removed.push(withdrawn);
    }
    let restored = files::restore_moved_aside(&dirs.cni_conf_dir)?;
    let plugin = dirs.plugin_path();
    if files::remove_if_present(&plugin)? {
        removed.push(plugin);
    }
    removed.extend(files::remove_staging(&dirs.cni_bin_dir)?);
    removed.extend(files::remove_staging(&dirs.cni_conf_dir)?);
    Ok(Uninstalled { removed, restored })
}
