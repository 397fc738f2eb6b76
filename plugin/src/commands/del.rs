//! DEL: remove everything ADD made. Idempotent, and complete even when the
//! pod's namespace is already gone (the veth died with it) or ADD never ran.

use std::net::IpAddr;

use cni_ebpf_userspace::{BpffsLayout, EndpointMap, attach::detach_from_pod};

use super::{datapath_error, runtime};
use crate::{
    cni::{CniEnv, NetConf},
    error::CniResult,
    ipam::Ipam,
    names,
    netlink::Netlink,
    state::StateDir,
};

pub fn run(env: &CniEnv, conf: &NetConf) -> CniResult<()> {
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    let ipam = Ipam::from_conf(conf, env)?;
    let state = StateDir::new(&conf.state_dir, &conf.name);
    let _shared = state.lock_shared()?;
    let record = state.read(container_id, ifname)?;
    let host_ifname = record
        .as_ref()
        .map(|r| r.host_ifname.clone())
        .unwrap_or_else(|| names::host_ifname(container_id, ifname));
    let owner = names::attachment_id(container_id, ifname);
    let layout = BpffsLayout::new(&conf.bpffs_root);

    // Traffic stops first: the host veth takes the pod end and the filter
    // with it.
    runtime()?.block_on(async {
        let node = Netlink::connect()?;
        node.delete_link(&host_ifname).await
    })?;
    detach_from_pod(&layout, &host_ifname).map_err(|e| datapath_error("unpinning the link", e))?;

    if let Some(record) = &record
        && !record.port_mappings.is_empty()
        && layout.map(cni_ebpf_common::map_names::HOST_PORTS).exists()
    {
        let _lock = layout
            .lock()
            .map_err(|e| datapath_error("locking the datapath", e))?;
        cni_ebpf_userspace::host_ports::unpublish(&layout, &record.port_mappings, owner)
            .map_err(|e| datapath_error("removing host ports", e))?;
    }

    if let Some(record) = &record
        && layout
            .map(cni_ebpf_common::map_names::ENDPOINT_STATS)
            .exists()
    {
        cni_ebpf_userspace::stats::remove(&layout, record.host_ifindex)
            .map_err(|e| datapath_error("removing the endpoint's counters", e))?;
    }
    if layout.map(cni_ebpf_common::map_names::RATE_LIMITS).exists() {
        cni_ebpf_userspace::rate::remove(&layout, owner)
            .map_err(|e| datapath_error("removing the bandwidth limits", e))?;
    }

    let held = ipam.held_by(container_id, ifname)?.unwrap_or_default();
    let mut ips: Vec<IpAddr> = record
        .iter()
        .flat_map(|r| r.ips.iter().map(|net| net.addr()))
        .chain(held)
        .collect();
    ips.sort();
    ips.dedup();
    remove_endpoints(&layout, &ips, owner)?;

    // The address is free for reuse only once nothing refers to it.
    ipam.del(conf, container_id, ifname)?;
    state.remove(container_id, ifname)
}

fn remove_endpoints(layout: &BpffsLayout, ips: &[IpAddr], owner: u64) -> CniResult<()> {
    if ips.is_empty() || !layout.map(cni_ebpf_common::map_names::ENDPOINTS).exists() {
        // Nothing was ever loaded on this node, so nothing refers to the pod.
        return Ok(());
    }
    let mut endpoints =
        EndpointMap::open(layout).map_err(|e| datapath_error("opening the endpoints map", e))?;
    for ip in ips {
        endpoints
            .remove_owned(*ip, owner)
            .map_err(|e| datapath_error(&format!("removing endpoint {ip}"), e))?;
    }
    Ok(())
}
