//! What the agent repairs, at start and on every tick: map entries and
//! pinned links of pod interfaces that vanished behind the plugin's back (a
//! deleted netns, a crashed runtime), and programs detached behind its back
//! from interfaces that are still there (a `tc filter del`, a deleted
//! clsact qdisc), XDP on the uplink if it no longer runs there,
//! the node-wide cgroup hooks if their links are gone, and the node's own
//! addresses as they change. Runs in the node's network
//! namespace.

use std::{net::IpAddr, path::Path};

use aya::programs::{SchedClassifier, TcAttachType};
use cni_ebpf_common::{
    ENDPOINT_F_HOST_PORTS, ENDPOINT_F_RATE_LIMITED, Endpoint, NODE_F_SERVICES, NODE_F_UPLINK_XDP,
    program_names::{FROM_POD, FROM_TUNNEL, FROM_UPLINK, PACE_TCP, TO_POD, TO_TUNNEL, TO_UPLINK},
};

use crate::{
    AttachMode, BpffsLayout, Datapath, EndpointMap,
    attach::{
        UplinkXdp, attach_from_pod, attach_from_uplink, attach_pacing, attach_socket_hooks,
        attach_to_pod, attach_to_uplink, attach_tunnel, pacing_attached, reattach_xdp_uplink,
        socket_hooks_attached,
    },
    attachments::{filters_on, interfaces},
    error::Result,
    node, peers, rate,
    tc_filters::Hook,
    teardown,
};

/// What one reconciliation changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub endpoints: Vec<IpAddr>,
    pub link_pins: Vec<String>,
    /// Interfaces a program was attached to again.
    pub reattached: Vec<String>,
    /// Interfaces it could not attach to, and why (tried again next time).
    pub failed: Vec<String>,
    /// Entries of `NODE_ADDRS` added or removed to follow the node's
    /// addresses.
    pub node_addrs: usize,
    /// Uplinks that asked for `xdp_uplink` but run another XDP program,
    /// left in place (the tc program serves them).
    pub xdp_foreign: Vec<String>,
}

/// One reconciliation; `cgroup` is where the plugin attaches its cgroup
/// hooks (its `cgroupRoot`), `None` to leave them alone.
pub fn reconcile(datapath: &mut Datapath, cgroup: Option<&Path>) -> Result<Reconciled> {
    let layout = datapath.layout().clone();
    let interfaces = interfaces()?;
    let mut done = remove_vanished(&layout, &interfaces)?;
    // What is left once the vanished are gone.
    let endpoints: Vec<Endpoint> = EndpointMap::open(&layout)?
        .entries()?
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    reattach(datapath, &interfaces, &endpoints, &mut done)?;
    reattach_xdp(datapath, &interfaces, &mut done)?;
    if let Some(cgroup) = cgroup {
        reattach_cgroup_hooks(datapath, cgroup, &endpoints, &mut done)?;
    }
    done.node_addrs = node::refresh_node_addrs(&layout)?;
    Ok(done)
}

/// Attaches the socket hooks (pods with host ports) and TCP pacing (pods
/// with limits) again if a pod needs them and their links are gone.
fn reattach_cgroup_hooks(
    datapath: &Datapath,
    cgroup: &Path,
    endpoints: &[Endpoint],
    done: &mut Reconciled,
) -> Result<()> {
    let layout = datapath.layout();
    let flags = endpoints.iter().fold(0, |flags, e| flags | e.flags);
    let socket_hooks = flags & ENDPOINT_F_HOST_PORTS != 0 && !socket_hooks_attached(layout);
    let pacing = flags & ENDPOINT_F_RATE_LIMITED != 0 && !pacing_attached(layout);
    if !socket_hooks && !pacing {
        return Ok(());
    }
    // An ADD attaching them at the same moment holds the same lock.
    let _lock = layout.lock()?;
    if socket_hooks {
        match attach_socket_hooks(datapath, cgroup) {
            Ok(()) => done.reattached.push("socket hooks".to_string()),
            Err(e) => done.failed.push(format!("socket hooks: {e}")),
        }
    }
    if pacing {
        match attach_pacing(datapath, cgroup) {
            Ok(()) => done.reattached.push(PACE_TCP.to_string()),
            Err(e) => done.failed.push(format!("{PACE_TCP}: {e}")),
        }
    }
    Ok(())
}

/// Attaches `xdp_uplink` again, with a fresh pinned link, to every uplink
/// that asked for it (`NODE_F_UPLINK_XDP` names the node's uplink; a pin
/// under `uplink-xdp/` is a record too) and runs no XDP now: its link was
/// detached (`bpftool link detach`), its pin removed (which releases the
/// link), or the device replaced under its name. The tc program serves the
/// uplink meanwhile. Another XDP program there was put on purpose: it is
/// left in place and reported in `xdp_foreign`. An uplink that is not there
/// now is left for later.
fn reattach_xdp(
    datapath: &Datapath,
    interfaces: &[(u32, String)],
    done: &mut Reconciled,
) -> Result<()> {
    let layout = datapath.layout();
    for (ifindex, ifname) in xdp_uplinks(layout, interfaces)? {
        match UplinkXdp::of(layout, &ifname, ifindex)? {
            UplinkXdp::Missing => {}
            // Released by the kernel in a moment; the next pass attaches.
            UplinkXdp::Pinned | UplinkXdp::Unpinned => continue,
            UplinkXdp::Foreign { id, name } => {
                done.xdp_foreign
                    .push(format!("{ifname} runs XDP program {id} ({name})"));
                continue;
            }
        }
        // An ADD attaching XDP at the same moment holds the same lock.
        let _lock = layout.lock()?;
        if UplinkXdp::of(layout, &ifname, ifindex)? != UplinkXdp::Missing {
            continue;
        }
        match reattach_xdp_uplink(datapath, &ifname) {
            Ok(()) => done.reattached.push(format!("{ifname} xdp")),
            Err(e) => done.failed.push(format!("{ifname} xdp: {e}")),
        }
    }
    Ok(())
}

/// The uplinks (ifindex, name) present now that asked for `xdp_uplink`.
fn xdp_uplinks(layout: &BpffsLayout, interfaces: &[(u32, String)]) -> Result<Vec<(u32, String)>> {
    let config = node::read_config(layout)?;
    let mut wanted: Vec<(u32, String)> = std::fs::read_dir(layout.uplink_xdp_links_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter_map(|name| interfaces.iter().find(|(_, n)| *n == name).cloned())
        .collect();
    if config.flags & NODE_F_UPLINK_XDP != 0
        && let Some(uplink) = interfaces.iter().find(|(i, _)| *i == config.uplink_ifindex)
    {
        wanted.push(uplink.clone());
    }
    wanted.sort_unstable();
    wanted.dedup();
    Ok(wanted)
}

fn remove_vanished(layout: &BpffsLayout, interfaces: &[(u32, String)]) -> Result<Reconciled> {
    let mut done = Reconciled::default();
    let interface_exists = |ifindex: u32| interfaces.iter().any(|(i, _)| *i == ifindex);
    let interface_named = |name: &str| interfaces.iter().any(|(_, n)| n == name);
    for endpoint in teardown::held(layout)?.values() {
        let Some(ifindex) = endpoint.host_ifindex else {
            continue;
        };
        if interface_exists(ifindex) {
            continue;
        }
        teardown::remove(layout, endpoint)?;
        done.endpoints.extend(&endpoint.ips);
    }
    for dir in [layout.links_dir(), layout.egress_links_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !interface_named(&name) && std::fs::remove_file(entry.path()).is_ok() {
                done.link_pins.push(name);
            }
        }
    }
    Ok(done)
}

/// Whether `program` runs on the device (`to_pod` and `to_uplink` on
/// egress, the others on ingress), as a filter or a tcx link.
fn attached(ifindex: u32, ifname: &str, program: &str) -> Result<bool> {
    let (hook, tcx_hook) = if [TO_POD, TO_UPLINK, TO_TUNNEL].contains(&program) {
        (Hook::Egress, TcAttachType::Egress)
    } else {
        (Hook::Ingress, TcAttachType::Ingress)
    };
    if filters_on(ifindex, ifname, hook)?
        .iter()
        .any(|f| f.program == program)
    {
        return Ok(true);
    }
    // No tcx on the device (or an old kernel) means nothing attached there.
    Ok(SchedClassifier::query_tcx(ifname, tcx_hook)
        .map(|(_, programs)| programs.iter().any(|p| p.name_as_str() == Some(program)))
        .unwrap_or(false))
}

/// The mode an interface was attached with: tcx when its link pin exists.
fn mode_of(pin: &std::path::Path) -> AttachMode {
    if pin.exists() {
        AttachMode::Tcx
    } else {
        AttachMode::Clsact
    }
}

/// Attaches `from_pod` again to every endpoint's host veth that lost it,
/// `to_pod` to those of pods with an ingress limit (every pod's on a node
/// with netfilter services), and `from_uplink` (and there `to_uplink`) to
/// the uplink; one interface that fails (it may be going away right now) does
/// not stop the others.
fn reattach(
    datapath: &mut Datapath,
    interfaces: &[(u32, String)],
    endpoints: &[Endpoint],
    done: &mut Reconciled,
) -> Result<()> {
    let layout = datapath.layout().clone();
    let name_of = |ifindex: u32| {
        interfaces
            .iter()
            .find(|(i, _)| *i == ifindex)
            .map(|(_, n)| n.clone())
    };
    let ingress_limited = rate::ingress_limited_owners(&layout)?;
    let config = node::read_config(&layout)?;
    let services = config.flags & NODE_F_SERVICES != 0;
    // (host veth ifindex, whether it needs to_pod: an ingress limit, or services).
    let mut veths: Vec<(u32, bool)> = endpoints
        .iter()
        .map(|e| {
            let limited =
                e.flags & ENDPOINT_F_RATE_LIMITED != 0 && ingress_limited.contains(&e.owner);
            (e.ifindex, limited || services)
        })
        .collect();
    veths.sort_unstable();
    veths.dedup();

    let mut wanted = Vec::new();
    for (ifindex, needs_to_pod) in veths {
        if let Some(ifname) = name_of(ifindex) {
            if needs_to_pod {
                wanted.push((ifindex, ifname.clone(), TO_POD));
            }
            wanted.push((ifindex, ifname, FROM_POD));
        }
    }
    let uplink = config.uplink_ifindex;
    if uplink != 0
        && let Some(ifname) = name_of(uplink)
    {
        if services {
            wanted.push((uplink, ifname.clone(), TO_UPLINK));
        }
        wanted.push((uplink, ifname, FROM_UPLINK));
    }
    let tunnel = peers::tunnel_ifindex(&layout)?;
    if tunnel != 0
        && let Some(ifname) = name_of(tunnel)
    {
        wanted.push((tunnel, ifname.clone(), FROM_TUNNEL));
        wanted.push((tunnel, ifname, TO_TUNNEL));
    }
    for (ifindex, ifname, program) in wanted {
        let result = attached(ifindex, &ifname, program).and_then(|present| {
            if present {
                return Ok(false);
            }
            if program == FROM_UPLINK {
                let mode = mode_of(&layout.uplink_link(&ifname));
                attach_from_uplink(datapath, &ifname, mode)?;
            } else if program == FROM_TUNNEL || program == TO_TUNNEL {
                let hook = if program == FROM_TUNNEL {
                    Hook::Ingress
                } else {
                    Hook::Egress
                };
                let mode = mode_of(&layout.tunnel_link(&ifname, hook));
                attach_tunnel(datapath, &ifname, hook, mode)?;
            } else if program == TO_UPLINK {
                let mode = mode_of(&layout.uplink_egress_link(&ifname));
                attach_to_uplink(datapath, &ifname, mode)?;
            } else if program == TO_POD {
                let mode = mode_of(&layout.endpoint_egress_link(&ifname));
                attach_to_pod(datapath, &ifname, mode)?;
            } else {
                let mode = mode_of(&layout.endpoint_link(&ifname));
                attach_from_pod(datapath, &ifname, mode)?;
            }
            Ok(true)
        });
        match result {
            Ok(true) => done.reattached.push(ifname),
            Ok(false) => {}
            Err(e) => done.failed.push(format!("{ifname}: {e}")),
        }
    }
    Ok(())
}
