//! DEL: remove everything ADD made. Idempotent, and complete even when the
//! pod's namespace is already gone (the veth died with it) or ADD never ran.

use std::net::IpAddr;

use cni_ebpf_userspace::{BpffsLayout, teardown};

use super::{datapath_error, runtime};
use crate::{
    cni::{CniEnv, NetConf, parse_mac},
    error::CniResult,
    ipam::Ipam,
    ipv6, names,
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
    // with it. Its ifindex keys its counters: without a record (an ADD
    // killed before writing it) only the live link still tells it.
    let live_ifindex = runtime()?.block_on(async {
        let node = Netlink::connect()?;
        let index = node.link(&host_ifname).await?.map(|link| link.index);
        node.delete_link(&host_ifname).await?;
        CniResult::Ok(index)
    })?;

    let held = ipam.held_by(container_id, ifname)?.unwrap_or_default();
    let mut ips: Vec<IpAddr> = record
        .iter()
        .flat_map(|r| r.ips.iter().map(|net| net.addr()))
        .chain(held)
        .collect();
    // Without a record the pod's MAC is unknown: GC removes what is left.
    if let Some(pod_mac) = record.as_ref().and_then(|r| parse_mac(&r.pod_mac)) {
        ips = ipv6::endpoint_keys(&ips, pod_mac);
    }
    ips.sort();
    ips.dedup();
    teardown::remove(
        &layout,
        &teardown::Endpoint {
            owner,
            host_ifname: Some(host_ifname),
            host_ifindex: record.as_ref().map(|r| r.host_ifindex).or(live_ifindex),
            ips,
            port_mappings: record
                .as_ref()
                .map(|r| r.port_mappings.clone())
                .unwrap_or_default(),
        },
    )
    .map_err(|e| datapath_error("removing the endpoint from the datapath", e))?;

    // The address is free for reuse only once nothing refers to it.
    ipam.del(conf, container_id, ifname)?;
    state.remove(container_id, ifname)
}
