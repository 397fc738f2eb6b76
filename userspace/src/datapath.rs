//! The embedded eBPF object and its programs, loaded once per node and
//! pinned, then reopened from the pins by every later process.

use std::io;

use aya::{
    EbpfLoader,
    maps::MapData,
    programs::{
        CgroupSockAddr, Program, ProgramError, SchedClassifier, SockOps, Xdp,
        cgroup_sock_addr::CgroupSockAddrAttachType,
    },
    sys::SyscallError,
};
use cni_ebpf_common::program_names::{
    CONNECT4, CONNECT6, FROM_POD, FROM_TUNNEL, FROM_UPLINK, PACE_TCP, RECVMSG4, RECVMSG6, SENDMSG4,
    SENDMSG6, TO_POD, TO_TUNNEL, TO_UPLINK, XDP_UPLINK,
};

use crate::{
    error::{DatapathError, Result},
    paths::BpffsLayout,
};

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cni-ebpf-ebpf"));

/// The embedded eBPF object, for a loader of its own: the datapath's unit
/// tests load it into a private bpffs and run its programs with
/// `BPF_PROG_TEST_RUN`.
pub fn object() -> &'static [u8] {
    OBJECT
}

/// The ring buffer of aya-log records (`aya_log_ebpf`'s map).
pub const LOG_MAP: &str = "AYA_LOGS";

/// Hash of [`OBJECT`]: programs are pinned per build.
pub const BUILD_ID: &str = env!("CNI_EBPF_BUILD_ID");

/// Every program of the object; `from_pod` last, so that its pin marks a
/// complete load.
const PROGRAMS: [&str; 14] = [
    CONNECT4,
    SENDMSG4,
    RECVMSG4,
    CONNECT6,
    SENDMSG6,
    RECVMSG6,
    PACE_TCP,
    TO_POD,
    TO_UPLINK,
    FROM_TUNNEL,
    TO_TUNNEL,
    FROM_UPLINK,
    XDP_UPLINK,
    FROM_POD,
];

/// The cgroup socket-address hooks and where each attaches.
pub const SOCKET_HOOKS: [(&str, CgroupSockAddrAttachType); 6] = [
    (CONNECT4, CgroupSockAddrAttachType::Connect4),
    (SENDMSG4, CgroupSockAddrAttachType::UDPSendMsg4),
    (RECVMSG4, CgroupSockAddrAttachType::UDPRecvMsg4),
    (CONNECT6, CgroupSockAddrAttachType::Connect6),
    (SENDMSG6, CgroupSockAddrAttachType::UDPSendMsg6),
    (RECVMSG6, CgroupSockAddrAttachType::UDPRecvMsg6),
];

/// The programs of this build, opened from their pins; the ones most calls
/// never need are opened on first use.
#[derive(Debug)]
pub struct Datapath {
    layout: BpffsLayout,
    from_pod: SchedClassifier,
    from_uplink: Option<SchedClassifier>,
    to_pod: Option<SchedClassifier>,
    to_uplink: Option<SchedClassifier>,
    from_tunnel: Option<SchedClassifier>,
    to_tunnel: Option<SchedClassifier>,
}

impl Datapath {
    /// Opens the pinned programs of this build; the first caller on a node
    /// loads the object, pins its maps and programs, under the root's lock.
    pub fn open_or_load(layout: BpffsLayout) -> Result<Self> {
        if let Some(datapath) = Self::open_pinned(&layout)? {
            return Ok(datapath);
        }
        layout.ensure_dirs(BUILD_ID)?;
        let _lock = layout.lock()?;
        // Another process may have finished loading while we waited.
        if let Some(datapath) = Self::open_pinned(&layout)? {
            return Ok(datapath);
        }
        remove_partial_load(&layout.programs_dir(BUILD_ID))?;
        load_and_pin(&layout, &layout.programs_dir(BUILD_ID))?;
        remove_other_builds(&layout);
        Self::open_pinned(&layout)?.ok_or_else(|| {
            DatapathError::io(
                "open pinned program",
                layout.program(BUILD_ID, FROM_POD),
                io::ErrorKind::NotFound.into(),
            )
        })
    }

    fn open_pinned(layout: &BpffsLayout) -> Result<Option<Self>> {
        // `from_pod` is pinned last: its pin means every program is there.
        let Some(from_pod) = open_pinned(layout, FROM_POD)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            layout: layout.clone(),
            from_pod,
            from_uplink: None,
            to_pod: None,
            to_uplink: None,
            from_tunnel: None,
            to_tunnel: None,
        }))
    }

    pub fn layout(&self) -> &BpffsLayout {
        &self.layout
    }

    pub fn from_pod(&mut self) -> &mut SchedClassifier {
        &mut self.from_pod
    }

    pub fn from_uplink(&mut self) -> Result<&mut SchedClassifier> {
        open_once(&self.layout, &mut self.from_uplink, FROM_UPLINK)
    }

    pub fn to_pod(&mut self) -> Result<&mut SchedClassifier> {
        open_once(&self.layout, &mut self.to_pod, TO_POD)
    }

    pub fn to_uplink(&mut self) -> Result<&mut SchedClassifier> {
        open_once(&self.layout, &mut self.to_uplink, TO_UPLINK)
    }

    pub fn from_tunnel(&mut self) -> Result<&mut SchedClassifier> {
        open_once(&self.layout, &mut self.from_tunnel, FROM_TUNNEL)
    }

    pub fn to_tunnel(&mut self) -> Result<&mut SchedClassifier> {
        open_once(&self.layout, &mut self.to_tunnel, TO_TUNNEL)
    }

    /// A socket hook of this build, opened from its pin.
    pub fn socket_hook(
        &self,
        name: &'static str,
        attach_type: CgroupSockAddrAttachType,
    ) -> Result<CgroupSockAddr> {
        CgroupSockAddr::from_pin(self.layout.program(BUILD_ID, name), attach_type)
            .map_err(|source| DatapathError::Program { name, source })
    }

    /// The TCP pacing hook of this build, opened from its pin.
    pub fn pacer(&self) -> Result<SockOps> {
        SockOps::from_pin(self.layout.program(BUILD_ID, PACE_TCP)).map_err(|source| {
            DatapathError::Program {
                name: PACE_TCP,
                source,
            }
        })
    }
}

/// `xdp_uplink`, opened from its pin.
pub fn xdp_uplink(layout: &BpffsLayout) -> Result<Xdp> {
    let path = layout.program(BUILD_ID, XDP_UPLINK);
    Xdp::from_pin(&path, aya_obj::programs::XdpAttachType::Interface).map_err(|source| {
        DatapathError::Program {
            name: XDP_UPLINK,
            source,
        }
    })
}

fn open_once<'a>(
    layout: &BpffsLayout,
    slot: &'a mut Option<SchedClassifier>,
    name: &'static str,
) -> Result<&'a mut SchedClassifier> {
    if slot.is_none() {
        *slot = open_pinned(layout, name)?;
    }
    slot.as_mut().ok_or_else(|| {
        DatapathError::io(
            "open pinned program",
            layout.program(BUILD_ID, name),
            io::ErrorKind::NotFound.into(),
        )
    })
}

fn open_pinned(layout: &BpffsLayout, name: &'static str) -> Result<Option<SchedClassifier>> {
    let path = layout.program(BUILD_ID, name);
    match SchedClassifier::from_pin(&path) {
        Ok(program) => Ok(Some(program)),
        Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(source) => Err(DatapathError::Program { name, source }),
    }
}

/// Loads the object and pins its programs under `dir`; the maps are the
/// node's pinned ones, so a new generation shares every entry.
/// Refuses to load over pinned maps whose key size, value size or capacity
/// differ from this build's: aya would reuse them as they are, and the
/// verifier would then reject a program for an access past a shorter value
/// (or, worse, accept one that reads the wrong fields).
fn check_pinned_layouts(layout: &BpffsLayout) -> Result<()> {
    let object = aya_obj::Object::parse(OBJECT).map_err(|e| {
        DatapathError::io("parse the eBPF object", "", io::Error::other(e.to_string()))
    })?;
    for (name, map) in &object.maps {
        let path = layout.map(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|pinned| pinned.info())
            .map_err(|e| DatapathError::io("open pinned map", &path, io::Error::other(e)))?;
        let pinned = (info.key_size(), info.value_size(), info.max_entries());
        let wanted = (map.key_size(), map.value_size(), map.max_entries());
        if pinned != wanted {
            let shape = |(key, value, entries): (u32, u32, u32)| {
                format!("{key}-byte keys, {value}-byte values, {entries} entries")
            };
            return Err(DatapathError::MapLayout {
                name: name.clone(),
                path,
                pinned: shape(pinned),
                wanted: shape(wanted),
            });
        }
    }
    Ok(())
}

pub(crate) fn load_and_pin(layout: &BpffsLayout, dir: &std::path::Path) -> Result<()> {
    if OBJECT.is_empty() {
        return Err(DatapathError::NoObject);
    }
    check_pinned_layouts(layout)?;
    // Maps marked pinned in the object are reused when their pins exist.
    // aya-log's ring buffer is not marked pinned in the object; pinning it
    // by name too lets every load share it, so a log reader survives an
    // upgrade of the programs.
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(layout.maps_dir())
        .map_pin_path(LOG_MAP, layout.map(LOG_MAP))
        .load(OBJECT)
        .map_err(Box::new)?;
    load_programs(&mut ebpf)?;
    // Before any program of this build can be attached: they read IPv4
    // pods from `ENDPOINTS_V4` first, which a build without it never wrote.
    sync_endpoints_v4(layout)?;
    for name in PROGRAMS {
        let program = ebpf.program_mut(name).ok_or(DatapathError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?;
        let path = dir.join(name);
        program
            .pin(&path)
            .map_err(|source| DatapathError::Pin { path, source })?;
    }
    Ok(())
}

/// Brings `ENDPOINTS_V4` in step with `ENDPOINTS` ([`crate::EndpointMap::sync_v4`]).
pub(crate) fn sync_endpoints_v4(layout: &BpffsLayout) -> Result<()> {
    let synced = crate::EndpointMap::open(layout)?.sync_v4()?;
    if synced != crate::endpoints::SyncV4::default() {
        log::info!("ENDPOINTS_V4 brought in step with ENDPOINTS: {synced:?}");
    }
    Ok(())
}

/// Unpins what a load that did not finish left in `dir`: a loader killed
/// (or failing) before it pinned `from_pod`, which goes last, left some
/// programs pinned, and pinning over them would fail every later load
/// (`BPF_OBJ_PIN`: exists). Called under the root's lock with `from_pod`
/// absent, so no one else is loading there and nothing uses those pins.
fn remove_partial_load(dir: &std::path::Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => log::warn!("unpinned {} left by an unfinished load", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DatapathError::io("unpin", &path, e)),
        }
    }
    Ok(())
}

/// Loads every program of [`PROGRAMS`], each on a thread of its own: the
/// verifier runs in the loading thread, and it is nearly all of a first
/// load (`from_tunnel`, `from_uplink` and `from_pod` take from a quarter of
/// a second to two seconds each on this machine kind, depending on load), so
/// the node's CPUs share it.
fn load_programs(ebpf: &mut aya::Ebpf) -> Result<()> {
    let mut programs: Vec<(&'static str, &mut Program)> = Vec::with_capacity(PROGRAMS.len());
    for (name, program) in ebpf.programs_mut() {
        if let Some(name) = PROGRAMS.iter().copied().find(|p| *p == name) {
            programs.push((name, program));
        }
    }
    if let Some(name) = PROGRAMS
        .iter()
        .copied()
        .find(|p| !programs.iter().any(|(n, _)| n == p))
    {
        return Err(DatapathError::Program {
            name,
            source: ProgramError::NotLoaded,
        });
    }
    std::thread::scope(|scope| {
        let loads: Vec<_> = programs
            .into_iter()
            .map(|(name, program)| {
                scope.spawn(move || {
                    let loaded = match program {
                        Program::SchedClassifier(p) => p.load(),
                        Program::CgroupSockAddr(p) => p.load(),
                        Program::SockOps(p) => p.load(),
                        Program::Xdp(p) => p.load(),
                        _ => Err(ProgramError::NotLoaded),
                    };
                    loaded.map_err(|source| DatapathError::Program { name, source })
                })
            })
            .collect();
        loads
            .into_iter()
            .map(|load| {
                load.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<()>>>()
            .map(drop)
    })
}

/// Unpins the programs of earlier builds and generations. Endpoints
/// attached to them keep running them (a link holds its program) until they
/// are re-attached or upgraded in place (`crate::upgrade`).
pub(crate) fn remove_other_builds(layout: &BpffsLayout) {
    let current = layout.programs_dir(BUILD_ID);
    let Some(programs) = current.parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(programs) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if dir != current
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            log::warn!("unpinning old programs {}: {e}", dir.display());
        }
    }
}
