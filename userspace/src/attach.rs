//! Attaching the from-pod program to a pod's host-side veth: a clsact
//! filter, or a tcx link pinned per endpoint (kernel >= 6.6). The filter and
//! the link both die with the device; the link's pin is removed by
//! [`detach_from_pod`].
//!
//! ADD attaches through clsact unless `attachMode` says tcx: creating a tcx
//! link waits for a full RCU grace period (`tcx_entry_sync`), while the
//! first clsact filter on a device needs only an expedited one. Measured on
//! this kernel (6.18, HZ=250): ADD 7.1 ms with clsact against 14.0 ms with
//! tcx (medians of 19, interleaved). With `attachMode: auto` the agent
//! moves the pod onto tcx afterwards ([`crate::promote`]). Both replace a
//! program atomically, so upgrades lose no traffic either way.

use std::{
    fs::File,
    io, mem,
    path::{Path, PathBuf},
};

use aya::programs::{
    CgroupAttachMode, LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    links::FdLink,
    tc::{self, NlOptions, TcAttachOptions},
    xdp::XdpMode,
};
use cni_ebpf_common::program_names::{FROM_POD, PACE_TCP, XDP_UPLINK};
use serde::{Deserialize, Serialize};

use crate::{
    attachments::link_program_id,
    datapath::{Datapath, SOCKET_HOOKS},
    device_xdp,
    error::{DatapathError, Result},
    paths::BpffsLayout,
    tc_filters::Hook,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Tcx,
    Clsact,
}

/// How the from-pod program sits on one host veth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub mode: AttachMode,
    /// The pinned tcx link, when `mode` is tcx.
    pub link_pin: Option<PathBuf>,
}

fn program_error(source: ProgramError) -> DatapathError {
    DatapathError::Program {
        name: FROM_POD,
        source,
    }
}

/// Attaches `from_pod` to tc ingress of `host_ifname`.
pub fn attach_from_pod(
    datapath: &mut Datapath,
    host_ifname: &str,
    mode: AttachMode,
) -> Result<Attachment> {
    let pin = datapath.layout().endpoint_link(host_ifname);
    attach(datapath.from_pod(), host_ifname, mode, pin)
}

/// Attaches `to_pod` to tc egress of `host_ifname` (pods with an ingress
/// limit, and every pod on a node with netfilter services: what the node's
/// stack delivers to them passes there).
pub fn attach_to_pod(
    datapath: &mut Datapath,
    host_ifname: &str,
    mode: AttachMode,
) -> Result<Attachment> {
    let pin = datapath.layout().endpoint_egress_link(host_ifname);
    attach_as(
        datapath.to_pod()?,
        host_ifname,
        mode,
        pin,
        TcAttachType::Egress,
    )
}

/// Attaches `to_uplink` to tc egress of the node's uplink (nodes with
/// netfilter services: it records the flows the stack forwarded).
pub fn attach_to_uplink(
    datapath: &mut Datapath,
    uplink: &str,
    mode: AttachMode,
) -> Result<Attachment> {
    let pin = datapath.layout().uplink_egress_link(uplink);
    attach_as(
        datapath.to_uplink()?,
        uplink,
        mode,
        pin,
        TcAttachType::Egress,
    )
}

/// Attaches `from_tunnel` (`Ingress`) or `to_tunnel` (`Egress`) to the
/// node's VXLAN device.
pub fn attach_tunnel(
    datapath: &mut Datapath,
    device: &str,
    hook: Hook,
    mode: AttachMode,
) -> Result<Attachment> {
    let pin = datapath.layout().tunnel_link(device, hook);
    let program = match hook {
        Hook::Ingress => datapath.from_tunnel()?,
        Hook::Egress => datapath.to_tunnel()?,
    };
    attach_as(program, device, mode, pin, hook.attach_type())
}

/// Attaches `from_uplink` to tc ingress of the node's uplink.
pub fn attach_from_uplink(
    datapath: &mut Datapath,
    uplink: &str,
    mode: AttachMode,
) -> Result<Attachment> {
    let pin = datapath.layout().uplink_link(uplink);
    attach(datapath.from_uplink()?, uplink, mode, pin)
}

/// What an uplink that asked for `xdp_uplink` (`uplinkXdp`) runs as XDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkXdp {
    /// `xdp_uplink`, through the link under its pin.
    Pinned,
    /// No XDP program: the tc program alone serves the uplink (the link was
    /// detached, or its pin, which held it, was removed).
    Missing,
    /// `xdp_uplink` without its pin's link: a link whose pin was removed and
    /// which the kernel has not released yet (it does so from a work queue).
    Unpinned,
    /// Another program, attached by someone on purpose: left in place.
    Foreign { id: u32, name: String },
}

impl UplinkXdp {
    /// What the device `ifindex` (named `uplink`) runs against its pin.
    pub fn of(layout: &BpffsLayout, uplink: &str, ifindex: u32) -> Result<Self> {
        let running = device_xdp::program_id(ifindex)
            .map_err(|e| DatapathError::io("read the XDP program of", uplink, e))?;
        let Some(id) = running else {
            return Ok(Self::Missing);
        };
        // A pin that does not open is no working link either.
        if link_program_id(&layout.uplink_xdp_link(uplink)).ok() == Some(id) {
            return Ok(Self::Pinned);
        }
        // Any generation of ours (an upgrade swaps it under the link).
        match device_xdp::program_name(id) {
            Some(name) if name == XDP_UPLINK => Ok(Self::Unpinned),
            name => Ok(Self::Foreign {
                id,
                name: name.unwrap_or_default(),
            }),
        }
    }
}

/// `xdp_uplink` on the uplink in native (driver) mode, in front of
/// `from_uplink`, its link pinned so that it outlives this process. Nothing
/// to do when its pin is there (the agent repairs a pin whose link is gone)
/// or XDP of ours still runs; an operator's own XDP program on the uplink is
/// left in place with a warning, not a failed ADD: the tc program serves
/// everything XDP would. Fails where the driver has no native XDP.
pub fn attach_xdp_uplink(datapath: &Datapath, uplink: &str, ifindex: u32) -> Result<()> {
    let pin = datapath.layout().uplink_xdp_link(uplink);
    if pin.exists() {
        return Ok(());
    }
    match UplinkXdp::of(datapath.layout(), uplink, ifindex)? {
        UplinkXdp::Missing => pin_link(xdp_uplink_link(datapath, uplink, &pin)?, &pin),
        UplinkXdp::Pinned | UplinkXdp::Unpinned => Ok(()),
        UplinkXdp::Foreign { id, name } => {
            log::warn!(
                "{uplink} runs XDP program {id} ({name}), not {XDP_UPLINK}: left in place, \
                 the tc program serves the uplink"
            );
            Ok(())
        }
    }
}

/// `xdp_uplink` attached anew to `uplink` in place of a pinned link that no
/// longer runs there (detached behind our back, its pin removed, or the
/// device replaced under the same name). An old pin goes only once the new
/// link is attached.
pub fn reattach_xdp_uplink(datapath: &Datapath, uplink: &str) -> Result<()> {
    let pin = datapath.layout().uplink_xdp_link(uplink);
    let link = xdp_uplink_link(datapath, uplink, &pin)?;
    remove_pin(&pin)?;
    pin_link(link, &pin)
}

fn xdp_uplink_link(datapath: &Datapath, uplink: &str, pin: &Path) -> Result<FdLink> {
    let error = |source| DatapathError::Program {
        name: XDP_UPLINK,
        source,
    };
    let mut program = crate::datapath::xdp_uplink(datapath.layout())?;
    let id = program.attach(uplink, XdpMode::Driver).map_err(error)?;
    let link = program.take_link(id).map_err(error)?;
    FdLink::try_from(link).map_err(|source| DatapathError::Link {
        path: pin.to_path_buf(),
        source,
    })
}

fn attach(
    program: &mut SchedClassifier,
    ifname: &str,
    mode: AttachMode,
    pin: PathBuf,
) -> Result<Attachment> {
    attach_as(program, ifname, mode, pin, TcAttachType::Ingress)
}

fn attach_as(
    program: &mut SchedClassifier,
    ifname: &str,
    mode: AttachMode,
    pin: PathBuf,
    hook: TcAttachType,
) -> Result<Attachment> {
    match mode {
        AttachMode::Clsact => attach_clsact(program, ifname, hook),
        AttachMode::Tcx => attach_tcx(program, ifname, pin, hook),
    }
}

fn attach_tcx(
    program: &mut SchedClassifier,
    ifname: &str,
    pin: PathBuf,
    hook: TcAttachType,
) -> Result<Attachment> {
    // A pin left by a crashed run for an interface of the same name.
    remove_pin(&pin)?;
    let id = program
        .attach_with_options(
            ifname,
            hook,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(program_error)?;
    let link = program.take_link(id).map_err(program_error)?;
    let link = FdLink::try_from(link).map_err(|source| DatapathError::Link {
        path: pin.clone(),
        source,
    })?;
    pin_link(link, &pin)?;
    Ok(Attachment {
        mode: AttachMode::Tcx,
        link_pin: Some(pin),
    })
}

fn attach_clsact(
    program: &mut SchedClassifier,
    ifname: &str,
    hook: TcAttachType,
) -> Result<Attachment> {
    if let Err(e) = tc::qdisc_add_clsact(ifname) {
        let exists = matches!(&e, tc::TcError::NetlinkError(err) if err.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(program_error(ProgramError::from(e)));
        }
    }
    let id = program
        .attach_with_options(ifname, hook, TcAttachOptions::Netlink(NlOptions::default()))
        .map_err(program_error)?;
    let link = program.take_link(id).map_err(program_error)?;
    // Dropping the link would detach it; the filter must outlive this process.
    mem::forget(link);
    Ok(Attachment {
        mode: AttachMode::Clsact,
        link_pin: None,
    })
}

/// Removes the endpoint's link pin; the filter or link goes with its device.
/// Idempotent.
pub fn detach_from_pod(layout: &BpffsLayout, host_ifname: &str) -> Result<()> {
    remove_pin(&layout.endpoint_link(host_ifname))?;
    remove_pin(&layout.endpoint_egress_link(host_ifname))
}

/// Pins `link` at `pin`, creating its directory (a bpffs root made by an
/// older build may lack it).
fn pin_link(link: FdLink, pin: &Path) -> Result<()> {
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DatapathError::io("mkdir", dir, e))?;
    }
    link.pin(pin).map_err(|source| DatapathError::Pin {
        path: pin.to_path_buf(),
        source,
    })?;
    Ok(())
}

fn remove_pin(pin: &PathBuf) -> Result<()> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::io("unpin", pin, e)),
    }
}

/// Whether `from_pod` (of any build: upgrades keep running endpoints on the
/// program they have until re-attached) is attached through tcx to ingress of
/// `host_ifname`.
pub fn is_attached_tcx(host_ifname: &str) -> Result<bool> {
    let (_, programs) =
        SchedClassifier::query_tcx(host_ifname, TcAttachType::Ingress).map_err(program_error)?;
    Ok(programs.iter().any(|p| p.name_as_str() == Some(FROM_POD)))
}

/// Attaches the socket hooks (connections from the node itself to host
/// ports) to the cgroup v2 directory `cgroup`, each once: a link pinned per
/// hook. The hooks only act on sockets in the node's network namespace.
pub fn attach_socket_hooks(datapath: &Datapath, cgroup: &Path) -> Result<()> {
    for (name, attach_type) in SOCKET_HOOKS {
        attach_to_cgroup_once(datapath, cgroup, name, |dir| {
            let mut program = datapath.socket_hook(name, attach_type)?;
            let error = |source| DatapathError::Program { name, source };
            // A cgroup link takes no flags and always lets others attach too.
            let id = program
                .attach(dir, CgroupAttachMode::Single)
                .map_err(error)?;
            FdLink::try_from(program.take_link(id).map_err(error)?)
                .map_err(|source| link_error(datapath, name, source))
        })?;
    }
    Ok(())
}

/// Attaches the TCP pacing hook (rate-limited pods, see the datapath's
/// `pacing`) to the cgroup v2 directory `cgroup`, once, its link pinned.
pub fn attach_pacing(datapath: &Datapath, cgroup: &Path) -> Result<()> {
    attach_to_cgroup_once(datapath, cgroup, PACE_TCP, |dir| {
        let mut program = datapath.pacer()?;
        let error = |source| DatapathError::Program {
            name: PACE_TCP,
            source,
        };
        let id = program
            .attach(dir, CgroupAttachMode::Single)
            .map_err(error)?;
        FdLink::try_from(program.take_link(id).map_err(error)?)
            .map_err(|source| link_error(datapath, PACE_TCP, source))
    })
}

/// Whether every socket hook is attached (its link pinned).
pub fn socket_hooks_attached(layout: &BpffsLayout) -> bool {
    SOCKET_HOOKS
        .iter()
        .all(|(name, _)| layout.cgroup_link(name).exists())
}

/// Whether the TCP pacing hook is attached (its link pinned).
pub fn pacing_attached(layout: &BpffsLayout) -> bool {
    layout.cgroup_link(PACE_TCP).exists()
}

fn link_error(
    datapath: &Datapath,
    name: &str,
    source: aya::programs::links::LinkError,
) -> DatapathError {
    DatapathError::Link {
        path: datapath.layout().cgroup_link(name),
        source,
    }
}

/// Runs `attach` on `cgroup` and pins the link it returns, unless a link of
/// hook `name` is pinned already.
fn attach_to_cgroup_once(
    datapath: &Datapath,
    cgroup: &Path,
    name: &str,
    attach: impl FnOnce(&File) -> Result<FdLink>,
) -> Result<()> {
    let pin = datapath.layout().cgroup_link(name);
    if pin.exists() {
        return Ok(());
    }
    let dir = File::open(cgroup).map_err(|e| DatapathError::io("open cgroup", cgroup, e))?;
    pin_link(attach(&dir)?, &pin)
}
