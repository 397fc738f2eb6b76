use std::{io, path::PathBuf};

/// An operation on a path that failed: what was done, where, and what the
/// kernel said. Every error type of the library carries it as its `Io`.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct PathIoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl PathIoError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self {
            op,
            path: path.into(),
            source,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "no bpffs at {path}: mount one (`mount -t bpf bpf /sys/fs/bpf`) or point bpffsRoot at one"
    )]
    NoBpffs { path: PathBuf },
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("this binary carries no eBPF object (built with AYA_BUILD_SKIP=1)")]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] Box<aya::EbpfError>),
    #[error(
        "map {name} is pinned at {path} with {pinned}, but this build needs {wanted}: the datapath's maps changed layout between the builds, which an upgrade cannot carry over; drain the node's pods and remove the maps directory to start afresh"
    )]
    MapLayout {
        name: String,
        path: PathBuf,
        pinned: String,
        wanted: String,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{op} {path}: {source}")]
    PinnedProgram {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
}

impl DatapathError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io(PathIoError::new(op, path, source))
    }
}

pub type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// Whether a map operation failed only because the key is not there: `get`
/// says `KeyNotFound`, `remove` passes the kernel's ENOENT through.
pub(crate) fn key_missing(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            io_error.kind() == std::io::ErrorKind::NotFound
        }
        _ => false,
    }
}

/// Turns a map error into one that names the map.
pub(crate) fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// Opens the pinned map `name` of `layout` as the typed map `T`.
pub(crate) fn open_map<T>(layout: &crate::BpffsLayout, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let data = aya::maps::MapData::from_pin(layout.map(name)).map_err(map_error(name))?;
    let map = aya::maps::Map::from_map_data(data).map_err(map_error(name))?;
    T::try_from(map).map_err(map_error(name))
}
