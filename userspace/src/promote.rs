//! Moving pods from clsact onto tcx after ADD (`attachMode: auto`).
//!
//! A tcx link removes the classifier layer clsact runs around `from_pod`
//! (per packet about as much as the program's own work), but creating one
//! waits for an RCU grace period under the RTNL lock (`tcx_entry_sync`), so
//! an ADD that attached through tcx took 14.0 ms against 7.1 with clsact on
//! a quiet machine, 26.5 against 7.5 under load. With `auto` the plugin
//! attaches through clsact and flags the endpoint `ENDPOINT_F_TCX_LATER`;
//! the agent then moves the pod, make-before-break as an upgrade does: the
//! tcx link is attached and pinned first (tcx runs before clsact, and its
//! verdict ends the hook, so from then on the filter sees nothing), then the
//! filter is deleted. `to_pod` on egress, where the pod has it, moves the
//! same way.
//!
//! Each move still holds the RTNL lock for a grace period per program, so
//! the agent moves only pods it has already seen on an earlier pass (pods
//! that live less than a pass never pay for it) and at most a few per pass:
//! a burst of ADDs is not slowed by a burst of moves.

use std::collections::{BTreeMap, BTreeSet};

use aya::programs::{SchedClassifier, TcAttachType};

use cni_ebpf_common::{
    ENDPOINT_F_TCX_LATER,
    program_names::{FROM_POD, TO_POD},
};

use crate::{
    AttachMode, Datapath, EndpointMap,
    attach::{attach_from_pod, attach_to_pod, detach_from_pod},
    attachments::{AttachPoint, AttachedProgram, detach_filter, filters_on, interfaces},
    error::{DatapathError, Result},
    tc_filters::Hook,
};

/// What one pass moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Promoted {
    /// Host veths now on tcx.
    pub moved: Vec<String>,
    /// Host veths that could not be moved, and why (tried again later).
    pub failed: Vec<String>,
    /// Flagged host veths still on clsact after this pass.
    pub waiting: usize,
}

/// Passes a host veth whose move failed is left alone before it is tried
/// again (a minute at the agent's pace), so a failure is not logged every
/// second.
const RETRY_AFTER_PASSES: u32 = 60;

/// The agent's memory between passes: the flagged host veths it saw on
/// clsact last time, those whose move failed (by ifindex, with the passes
/// left before the next try), and whether the kernel has tcx at all.
#[derive(Debug, Default)]
pub struct Promoter {
    seen: BTreeSet<u32>,
    failed: BTreeMap<u32, u32>,
    tcx: Option<bool>,
}

impl Promoter {
    /// Moves up to `budget` flagged pods that were already waiting on the
    /// previous pass.
    pub fn pass(&mut self, datapath: &mut Datapath, budget: usize) -> Result<Promoted> {
        let waiting = waiting(datapath)?;
        // A kernel without tcx (before 6.6) keeps every pod on clsact.
        let tcx = *self.tcx.get_or_insert_with(|| {
            let supported = kernel_has_tcx();
            if !supported {
                log::warn!("this kernel has no tcx: pods of attachMode auto stay on clsact");
            }
            supported
        });
        self.failed.retain(|_, passes| {
            *passes -= 1;
            *passes > 0
        });
        let ready: Vec<(u32, String)> = waiting
            .iter()
            .filter(|(ifindex, _)| tcx && self.seen.contains(ifindex))
            .filter(|(ifindex, _)| !self.failed.contains_key(ifindex))
            .take(budget)
            .cloned()
            .collect();
        let (mut done, failed) = promote(datapath, &ready)?;
        for ifindex in failed {
            self.failed.insert(ifindex, RETRY_AFTER_PASSES);
        }
        self.seen = waiting.iter().map(|(ifindex, _)| *ifindex).collect();
        done.waiting = waiting.len() - done.moved.len();
        Ok(done)
    }
}

/// Whether the kernel has tcx: a tcx query of `lo`, which every network
/// namespace has, fails on kernels without it.
fn kernel_has_tcx() -> bool {
    SchedClassifier::query_tcx("lo", TcAttachType::Ingress).is_ok()
}

/// Moves every flagged pod now, however young (`cni-ebpfd promote`).
pub fn promote_all(datapath: &mut Datapath) -> Result<Promoted> {
    let waiting = waiting(datapath)?;
    let (mut done, _) = promote(datapath, &waiting)?;
    done.waiting = waiting.len() - done.moved.len();
    Ok(done)
}

/// The host veths (ifindex, name) of flagged endpoints that have no tcx
/// link pinned for `from_pod` yet.
fn waiting(datapath: &Datapath) -> Result<Vec<(u32, String)>> {
    let layout = datapath.layout();
    let interfaces = interfaces()?;
    let mut flagged: Vec<u32> = EndpointMap::open(layout)?
        .entries()?
        .into_iter()
        .filter(|(_, e)| e.flags & ENDPOINT_F_TCX_LATER != 0)
        .map(|(_, e)| e.ifindex)
        .collect();
    flagged.sort_unstable();
    flagged.dedup();
    Ok(flagged
        .into_iter()
        .filter_map(|ifindex| interfaces.iter().find(|(i, _)| *i == ifindex).cloned())
        .filter(|(_, ifname)| !layout.endpoint_link(ifname).exists())
        .collect())
}

/// Moves `veths`; what moved and failed, and the ifindexes that failed.
fn promote(datapath: &mut Datapath, veths: &[(u32, String)]) -> Result<(Promoted, Vec<u32>)> {
    let mut done = Promoted::default();
    let mut failed = Vec::new();
    for (ifindex, ifname) in veths {
        // An ADD or upgrade attaching at the same moment holds the same lock.
        let _lock = datapath.layout().lock()?;
        match move_to_tcx(datapath, *ifindex, ifname) {
            Ok(true) => done.moved.push(ifname.clone()),
            Ok(false) => {}
            Err(e) => {
                done.failed.push(format!("{ifname}: {e}"));
                failed.push(*ifindex);
            }
        }
    }
    Ok((done, failed))
}

/// Attaches `from_pod` (and `to_pod`, if the device has it as a filter)
/// through tcx, then deletes their filters. `false` when the device runs no
/// `from_pod` filter (reconcile attaches what is missing).
fn move_to_tcx(datapath: &mut Datapath, ifindex: u32, ifname: &str) -> Result<bool> {
    let ours = |hook, program| -> Result<Vec<AttachedProgram>> {
        Ok(filters_on(ifindex, ifname, hook)?
            .into_iter()
            .filter(|f| f.program == program)
            .collect())
    };
    let ingress = ours(Hook::Ingress, FROM_POD)?;
    if ingress.is_empty() {
        return Ok(false);
    }
    let egress = ours(Hook::Egress, TO_POD)?;
    let attached = attach_from_pod(datapath, ifname, AttachMode::Tcx)
        .and_then(|_| match egress.is_empty() {
            true => Ok(()),
            false => attach_to_pod(datapath, ifname, AttachMode::Tcx).map(drop),
        })
        .and_then(|()| same_device(ifindex, ifname));
    if let Err(e) = attached {
        // Back to the filters alone, which never stopped running: removing
        // a pin releases its link.
        detach_from_pod(datapath.layout(), ifname)?;
        return Err(e);
    }
    for filter in ingress.iter().chain(&egress) {
        if let AttachPoint::Filter {
            ifname,
            hook,
            priority,
            handle,
            ..
        } = &filter.point
        {
            detach_filter(ifname, *hook, *priority, *handle)?;
        }
    }
    Ok(true)
}

/// Whether `ifname` still names the device `ifindex`: a DEL retires a veth
/// by renaming it, and a new pod may take the name.
fn same_device(ifindex: u32, ifname: &str) -> Result<()> {
    if nix::net::if_::if_nametoindex(ifname).ok() == Some(ifindex) {
        return Ok(());
    }
    Err(DatapathError::io(
        "move to tcx",
        ifname,
        std::io::Error::other("the interface was renamed or replaced meanwhile"),
    ))
}
