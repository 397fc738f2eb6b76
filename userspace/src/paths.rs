//! Every path under the bpffs root. Nothing else in the project builds
//! bpffs path strings.
//!
//! ```text
//! <root>/maps/<MAP>                 maps, pinned by name, shared by every build
//! <root>/programs/<build-id>/<prog> programs of one build of the eBPF object
//! <root>/programs/next/<prog>       a new generation, while it is being put in place
//! <root>/links/<host-ifname>        the tcx link of one endpoint
//! <root>/egress-links/<host-ifname> its egress link (pods with an ingress limit)
//! <root>/uplinks/<ifname>           the tcx link of the node's uplink
//! <root>/uplink-egress/<ifname>     its egress link (nodes with netfilter services)
//! <root>/uplink-xdp/<ifname>        its XDP link (`uplinkXdp`)
//! <root>/tunnel/<ifname>-<hook>     the tcx links of the VXLAN device
//! <root>/cgroup/<hook>              the links of the socket hooks
//! ```

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use nix::{fcntl::Flock, sys::statfs::statfs};

use crate::{
    error::{DatapathError, Result},
    tc_filters::Hook,
};

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpffsLayout {
    root: PathBuf,
}

impl BpffsLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Where every build's programs are pinned, one directory each.
    pub fn programs_root(&self) -> PathBuf {
        self.root.join("programs")
    }

    pub fn programs_dir(&self, build_id: &str) -> PathBuf {
        self.programs_root().join(build_id)
    }

    /// A generation of programs being loaded to replace the current one
    /// (not a build id: those are hex digits).
    pub fn staging_programs_dir(&self) -> PathBuf {
        self.programs_root().join("next")
    }

    pub fn program(&self, build_id: &str, name: &str) -> PathBuf {
        self.programs_dir(build_id).join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn endpoint_link(&self, host_ifname: &str) -> PathBuf {
        self.links_dir().join(host_ifname)
    }

    pub fn egress_links_dir(&self) -> PathBuf {
        self.root.join("egress-links")
    }

    /// The tcx link of an endpoint's `to_pod` (egress) program. (bpffs
    /// refuses names with a dot, hence a directory of its own.)
    pub fn endpoint_egress_link(&self, host_ifname: &str) -> PathBuf {
        self.egress_links_dir().join(host_ifname)
    }

    pub fn cgroup_links_dir(&self) -> PathBuf {
        self.root.join("cgroup")
    }

    pub fn cgroup_link(&self, hook: &str) -> PathBuf {
        self.cgroup_links_dir().join(hook)
    }

    pub fn uplinks_dir(&self) -> PathBuf {
        self.root.join("uplinks")
    }

    pub fn uplink_link(&self, ifname: &str) -> PathBuf {
        self.uplinks_dir().join(ifname)
    }

    pub fn uplink_egress_links_dir(&self) -> PathBuf {
        self.root.join("uplink-egress")
    }

    /// The tcx link of the uplink's `to_uplink` (egress) program.
    pub fn uplink_egress_link(&self, ifname: &str) -> PathBuf {
        self.uplink_egress_links_dir().join(ifname)
    }

    pub fn uplink_xdp_links_dir(&self) -> PathBuf {
        self.root.join("uplink-xdp")
    }

    /// The XDP link of the uplink's `xdp_uplink` program.
    pub fn uplink_xdp_link(&self, ifname: &str) -> PathBuf {
        self.uplink_xdp_links_dir().join(ifname)
    }

    pub fn tunnel_links_dir(&self) -> PathBuf {
        self.root.join("tunnel")
    }

    /// The tcx link of `from_tunnel` (`Ingress`) or `to_tunnel` (`Egress`)
    /// on the VXLAN device.
    pub fn tunnel_link(&self, ifname: &str, hook: Hook) -> PathBuf {
        self.tunnel_links_dir()
            .join(format!("{ifname}-{}", hook.name()))
    }

    /// Every directory holding pinned links, whose programs an upgrade
    /// replaces in place.
    pub fn link_dirs(&self) -> [PathBuf; 7] {
        [
            self.links_dir(),
            self.egress_links_dir(),
            self.uplinks_dir(),
            self.uplink_egress_links_dir(),
            self.uplink_xdp_links_dir(),
            self.tunnel_links_dir(),
            self.cgroup_links_dir(),
        ]
    }

    /// Checks that the root lives on a bpffs and creates its directories.
    pub fn ensure_dirs(&self, build_id: &str) -> Result<()> {
        let existing = self
            .root
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        let on_bpffs = statfs(existing)
            .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
            .unwrap_or(false);
        if !on_bpffs {
            return Err(DatapathError::NoBpffs {
                path: existing.to_path_buf(),
            });
        }
        for dir in [
            self.maps_dir(),
            self.programs_dir(build_id),
            self.links_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| DatapathError::io("mkdir", &dir, e))?;
        }
        Ok(())
    }

    /// An exclusive lock on the root: serialises loading and pinning between
    /// plugin processes that start at the same moment.
    pub fn lock(&self) -> Result<Flock<File>> {
        let dir = File::open(&self.root).map_err(|e| DatapathError::io("open", &self.root, e))?;
        Ok(crate::lock::lock(dir, &self.root, true)?)
    }
}
