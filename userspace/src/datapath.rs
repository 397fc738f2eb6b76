//! The embedded eBPF object and its programs, loaded once per node and
//! pinned, then reopened from the pins by every later process.

use std::io;

use aya::{
    EbpfLoader,
    programs::{ProgramError, SchedClassifier},
    sys::SyscallError,
};
use cni_ebpf_common::program_names::FROM_POD;

use crate::{
    error::{DatapathError, Result},
    paths::BpffsLayout,
};

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cni-ebpf-ebpf"));

/// Hash of [`OBJECT`]: programs are pinned per build.
pub const BUILD_ID: &str = env!("CNI_EBPF_BUILD_ID");

/// The programs of this build, opened from their pins.
#[derive(Debug)]
pub struct Datapath {
    layout: BpffsLayout,
    from_pod: SchedClassifier,
}

impl Datapath {
    /// Opens the pinned programs of this build; the first caller on a node
    /// loads the object, pins its maps and programs, under the root's lock.
    pub fn open_or_load(layout: BpffsLayout) -> Result<Self> {
        if let Some(from_pod) = open_pinned(&layout)? {
            return Ok(Self { layout, from_pod });
        }
        layout.ensure_dirs(BUILD_ID)?;
        let _lock = layout.lock()?;
        // Another process may have finished loading while we waited.
        if let Some(from_pod) = open_pinned(&layout)? {
            return Ok(Self { layout, from_pod });
        }
        load_and_pin(&layout)?;
        let from_pod = open_pinned(&layout)?.ok_or_else(|| {
            DatapathError::io(
                "open pinned program",
                layout.program(BUILD_ID, FROM_POD),
                io::ErrorKind::NotFound.into(),
            )
        })?;
        Ok(Self { layout, from_pod })
    }

    pub fn layout(&self) -> &BpffsLayout {
        &self.layout
    }

    pub fn from_pod(&mut self) -> &mut SchedClassifier {
        &mut self.from_pod
    }

    pub fn from_pod_ref(&self) -> &SchedClassifier {
        &self.from_pod
    }
}

fn open_pinned(layout: &BpffsLayout) -> Result<Option<SchedClassifier>> {
    let path = layout.program(BUILD_ID, FROM_POD);
    match SchedClassifier::from_pin(&path) {
        Ok(program) => Ok(Some(program)),
        Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(source) => Err(DatapathError::Program {
            name: FROM_POD,
            source,
        }),
    }
}

fn load_and_pin(layout: &BpffsLayout) -> Result<()> {
    if OBJECT.is_empty() {
        return Err(DatapathError::NoObject);
    }
    // Maps marked pinned in the object are reused when their pins exist.
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(layout.maps_dir())
        .load(OBJECT)
        .map_err(Box::new)?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(FROM_POD)
        .ok_or_else(|| DatapathError::Program {
            name: FROM_POD,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| DatapathError::Program {
            name: FROM_POD,
            source,
        })?;
    program.load().map_err(|source| DatapathError::Program {
        name: FROM_POD,
        source,
    })?;
    let path = layout.program(BUILD_ID, FROM_POD);
    program
        .pin(&path)
        .map_err(|source| DatapathError::Pin { path, source })?;
    remove_other_builds(layout);
    Ok(())
}

/// Unpins the programs of earlier builds. Endpoints attached to them keep
/// running them (a link holds its program) until they are re-attached.
fn remove_other_builds(layout: &BpffsLayout) {
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
