//! Replacing the programs under live attachments, make-before-break, so
//! that running traffic and established connections never notice: the maps
//! are shared by name and stay untouched, only the code changes.
//!
//! - pinned links (tcx, cgroup socket hooks): `BPF_LINK_UPDATE` swaps the
//!   program under the link atomically;
//! - clsact filters: the new program is added as a second filter, then the
//!   old filter is deleted. With direct action the first filter's verdict
//!   ends classification, so while both exist one of them handles every
//!   packet, and both act on the same maps.
//!
//! [`replace`] loads a new generation of this build first; [`adopt`] moves
//! every attachment that runs something else (an earlier build, or an
//! earlier generation) onto the programs pinned for this build.

use std::{collections::BTreeMap, io, path::PathBuf};

use aya::programs::{
    ProgramInfo, SchedClassifier,
    tc::{NlOptions, TcAttachOptions},
};
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use serde::Serialize;

use crate::{
    attachments::{self, AttachPoint, AttachedProgram},
    datapath::{BUILD_ID, load_and_pin, remove_other_builds, sync_endpoints_v4},
    error::{DatapathError, Result},
    link_update::update_pinned_link,
    paths::BpffsLayout,
    tc_filters::Hook,
};

/// One pinned program of the current generation.
#[derive(Debug, Clone)]
struct Current {
    name: String,
    id: u32,
    pin: PathBuf,
}

/// The programs pinned for this build, by name.
fn current_programs(layout: &BpffsLayout) -> Result<Vec<Current>> {
    let dir = layout.programs_dir(BUILD_ID);
    let entries = std::fs::read_dir(&dir).map_err(|e| DatapathError::io("list", &dir, e))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let pin = entry.path();
        let info = ProgramInfo::from_pin(&pin).map_err(|source| DatapathError::PinnedProgram {
            op: "open",
            path: pin.clone(),
            source,
        })?;
        out.push(Current {
            name,
            id: info.id(),
            pin,
        });
    }
    Ok(out)
}

/// One attachment moved to another program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Swapped {
    pub point: AttachPoint,
    pub program: String,
    pub from_id: u32,
    pub to_id: u32,
}

/// What an upgrade did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Upgrade {
    pub build: String,
    /// Program ids of the generation now pinned, by name.
    pub programs: BTreeMap<String, u32>,
    pub swapped: Vec<Swapped>,
    /// Attachments left on another program, and why.
    pub failed: Vec<String>,
}

/// Loads a new generation of this build's programs (even when the same
/// build is already loaded), puts it in place of the current one, moves
/// every attachment onto it and unpins the programs it replaced.
pub fn replace(layout: &BpffsLayout) -> Result<Upgrade> {
    layout.ensure_dirs(BUILD_ID)?;
    let _lock = layout.lock()?;
    let staging = layout.staging_programs_dir();
    remove_dir(&staging)?;
    std::fs::create_dir_all(&staging).map_err(|e| DatapathError::io("mkdir", &staging, e))?;
    if let Err(e) = load_and_pin(layout, &staging) {
        let _ = remove_dir(&staging);
        return Err(e);
    }
    // One atomic step: a plugin opening the programs sees either generation
    // complete, never a half-pinned one.
    let current = layout.programs_dir(BUILD_ID);
    let exchanged = renameat2(
        AT_FDCWD,
        &staging,
        AT_FDCWD,
        &current,
        RenameFlags::RENAME_EXCHANGE,
    );
    if let Err(errno) = exchanged {
        let _ = remove_dir(&staging);
        return Err(DatapathError::io(
            "exchange with the new programs",
            &current,
            io::Error::from(errno),
        ));
    }
    let upgrade = adopt_locked(layout)?;
    remove_other_builds(layout);
    Ok(upgrade)
}

/// Moves every attachment that does not run this build's pinned programs
/// onto them; with `unpin_others`, unpins other builds once nothing needs
/// them (the agent does at start, not on every tick, so that a plugin of
/// another build does not reload its programs over and over).
pub fn adopt(layout: &BpffsLayout, unpin_others: bool) -> Result<Upgrade> {
    let _lock = layout.lock()?;
    let upgrade = adopt_locked(layout)?;
    if unpin_others && upgrade.failed.is_empty() {
        remove_other_builds(layout);
    }
    Ok(upgrade)
}

fn adopt_locked(layout: &BpffsLayout) -> Result<Upgrade> {
    // A plugin of an older build may have written `ENDPOINTS` alone since
    // these programs were loaded.
    sync_endpoints_v4(layout)?;
    let programs = current_programs(layout)?;
    let mut upgrade = Upgrade {
        build: BUILD_ID.to_string(),
        programs: programs.iter().map(|p| (p.name.clone(), p.id)).collect(),
        ..Default::default()
    };
    let stale: Vec<AttachedProgram> = attachments::list(layout)?
        .into_iter()
        .filter(|a| !programs.iter().any(|p| p.id == a.program_id))
        .collect();
    for attached in &stale {
        let Some(new) = programs.iter().find(|p| p.name == attached.program) else {
            upgrade.failed.push(format!(
                "{}: program {:?} (id {}) is not in build {BUILD_ID}",
                attached.point, attached.program, attached.program_id
            ));
            continue;
        };
        match swap(attached, new) {
            Ok(()) => upgrade.swapped.push(Swapped {
                point: attached.point.clone(),
                program: attached.program.clone(),
                from_id: attached.program_id,
                to_id: new.id,
            }),
            Err(e) => upgrade.failed.push(format!("{}: {e}", attached.point)),
        }
    }
    Ok(upgrade)
}

fn swap(attached: &AttachedProgram, new: &Current) -> Result<()> {
    match &attached.point {
        AttachPoint::Link { pin } => {
            let program = ProgramInfo::from_pin(&new.pin)
                .and_then(|info| info.fd())
                .map_err(|source| DatapathError::PinnedProgram {
                    op: "open",
                    path: new.pin.clone(),
                    source,
                })?;
            update_pinned_link(pin, &program).map_err(|e| DatapathError::io("update link", pin, e))
        }
        AttachPoint::Filter {
            ifname,
            ifindex,
            hook,
            priority,
            handle,
        } => {
            let hook = *hook;
            // Another stale filter of the same device may have been swapped
            // already: add the new program once.
            let present = attachments::filters_on(*ifindex, ifname, hook)?
                .iter()
                .any(|f| f.program_id == new.id);
            if !present {
                add_filter(&new.pin, ifname, hook)?;
            }
            attachments::detach_filter(ifname, hook, *priority, *handle)
        }
    }
}

/// Adds `program` as a filter in front of the ones on `hook` of `ifname`
/// (priority 0 lets the kernel pick one below the lowest in use).
fn add_filter(program: &std::path::Path, ifname: &str, hook: Hook) -> Result<()> {
    let error = |source| DatapathError::PinnedProgram {
        op: "attach as a filter",
        path: program.to_path_buf(),
        source,
    };
    let mut classifier = SchedClassifier::from_pin(program).map_err(error)?;
    let id = classifier
        .attach_with_options(
            ifname,
            hook.attach_type(),
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map_err(error)?;
    let link = classifier.take_link(id).map_err(error)?;
    // Dropping the link would detach it; the filter must outlive this process.
    std::mem::forget(link);
    Ok(())
}

fn remove_dir(dir: &std::path::Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::io("remove", dir, e)),
    }
}
