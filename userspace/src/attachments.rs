//! Where the datapath's programs run right now: its clsact filters on the
//! node's devices and its pinned links (tcx, cgroup), each with the id of
//! the program it runs. Read in the node's network namespace.

use std::{collections::HashMap, path::PathBuf};

use aya::programs::{
    links::{FdLink, Link as _, PinnedLink},
    loaded_programs,
    tc::{SchedClassifierLink, TcHandle},
};
use cni_ebpf_common::program_names::{
    FROM_POD, FROM_TUNNEL, FROM_UPLINK, TO_POD, TO_TUNNEL, TO_UPLINK,
};
use serde::Serialize;

use crate::{
    error::{DatapathError, Result},
    paths::BpffsLayout,
    tc_filters::{self, Hook},
};

/// The programs the datapath attaches as tc filters.
pub const TC_PROGRAMS: [&str; 6] = [
    FROM_POD,
    FROM_UPLINK,
    TO_POD,
    TO_UPLINK,
    FROM_TUNNEL,
    TO_TUNNEL,
];

/// Where one program is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum AttachPoint {
    /// A cls_bpf filter on a clsact hook.
    Filter {
        ifname: String,
        ifindex: u32,
        hook: Hook,
        priority: u16,
        handle: u32,
    },
    /// A pinned link (tcx, or cgroup for the socket hooks).
    Link { pin: PathBuf },
}

impl std::fmt::Display for AttachPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachPoint::Filter {
                ifname,
                hook,
                priority,
                handle,
                ..
            } => write!(f, "{ifname} {} filter {priority}:{handle:x}", hook.name()),
            AttachPoint::Link { pin } => write!(f, "link {}", pin.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachedProgram {
    pub point: AttachPoint,
    pub program: String,
    pub program_id: u32,
}

/// The interfaces of the calling thread's namespace, by index and name.
pub fn interfaces() -> Result<Vec<(u32, String)>> {
    let list = nix::net::if_::if_nameindex()
        .map_err(|e| DatapathError::io("list interfaces", "if_nameindex", e.into()))?;
    Ok(list
        .iter()
        .map(|i| (i.index(), i.name().to_string_lossy().into_owned()))
        .collect())
}

/// The datapath's filters on `ifname`'s `hook`.
pub fn filters_on(ifindex: u32, ifname: &str, hook: Hook) -> Result<Vec<AttachedProgram>> {
    let filters = tc_filters::bpf_filters(ifindex, hook)
        .map_err(|e| DatapathError::io("list tc filters", ifname, e))?;
    Ok(filters
        .into_iter()
        .filter_map(|f| Some((our_program(&f.program_name)?, f)))
        .map(|(program, f)| AttachedProgram {
            point: AttachPoint::Filter {
                ifname: ifname.to_string(),
                ifindex,
                hook,
                priority: f.priority,
                handle: f.handle,
            },
            program: program.to_string(),
            program_id: f.program_id,
        })
        .collect())
}

/// Deletes the filter `priority:handle` from `ifname`'s `hook`.
pub fn detach_filter(ifname: &str, hook: Hook, priority: u16, handle: u32) -> Result<()> {
    let filter = SchedClassifierLink::attached(
        ifname,
        hook.attach_type(),
        priority,
        TcHandle::new((handle >> 16) as u16, handle as u16),
        None,
    )
    .map_err(|e| DatapathError::io("find filter", ifname, e))?;
    filter
        .detach()
        .map_err(|e| DatapathError::io("delete filter", ifname, std::io::Error::other(e)))
}

/// Which of our programs a filter runs, by the name it was attached with:
/// aya passes the program's name; `tc filter add ... bpf pinned <pin>`
/// passes `<pin's file name>:[*fsobj]`, and our pins are named after the
/// programs.
fn our_program(filter_name: &str) -> Option<&'static str> {
    let name = filter_name.split(':').next().unwrap_or_default();
    TC_PROGRAMS.into_iter().find(|p| *p == name)
}

/// The program id the link pinned at `pin` runs.
pub fn link_program_id(pin: &std::path::Path) -> Result<u32> {
    let link = PinnedLink::from_pin(pin).map_err(|source| DatapathError::Link {
        path: pin.to_path_buf(),
        source,
    })?;
    let info = FdLink::from(link)
        .info()
        .map_err(|source| DatapathError::Link {
            path: pin.to_path_buf(),
            source,
        })?;
    Ok(info.program_id())
}

/// Names of the loaded programs with the given ids.
fn program_names(ids: &[u32]) -> HashMap<u32, String> {
    loaded_programs()
        .filter_map(std::result::Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Every attachment of the datapath: filters on every interface of the
/// namespace, then every pinned link under the root.
pub fn list(layout: &BpffsLayout) -> Result<Vec<AttachedProgram>> {
    let mut out = Vec::new();
    for (ifindex, ifname) in interfaces()? {
        for hook in [Hook::Ingress, Hook::Egress] {
            out.extend(filters_on(ifindex, &ifname, hook)?);
        }
    }
    let mut links = Vec::new();
    for dir in layout.link_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let pin = entry.path();
            links.push((link_program_id(&pin)?, pin));
        }
    }
    let ids: Vec<u32> = links.iter().map(|(id, _)| *id).collect();
    let names = program_names(&ids);
    links.sort_by(|a, b| a.1.cmp(&b.1));
    for (program_id, pin) in links {
        out.push(AttachedProgram {
            point: AttachPoint::Link { pin },
            program: names.get(&program_id).cloned().unwrap_or_default(),
            program_id,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_ours_by_program_name_whoever_attached_them() {
        assert_eq!(our_program("from_pod"), Some(FROM_POD));
        assert_eq!(our_program("from_uplink:[*fsobj]"), Some(FROM_UPLINK));
        assert_eq!(our_program("to_pod"), Some(TO_POD));
        assert_eq!(our_program("cilium_from_pod"), None);
        assert_eq!(our_program("bpf.o:[classifier]"), None);
    }
}
