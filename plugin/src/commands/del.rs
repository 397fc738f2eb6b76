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
    netns::NetNs,
    reap,
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

    // Traffic stops first: the host veth goes down (the pod end loses its
    // carrier, the host route goes) and both ends give up their names, so a
    // new ADD of the same pod finds them free; deleting the pair (which
    // takes the filter with it) is left to a child (see `reap`). Its ifindex
    // keys its counters: without a record (an ADD killed before writing it)
    // only the live link still tells it.
    let recorded_ifindex = record.as_ref().map(|r| r.host_ifindex);
    let retired = runtime()?.block_on(retire_veth(env, &host_ifname, ifname, recorded_ifindex))?;

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
            host_ifindex: record.as_ref().map(|r| r.host_ifindex).or(retired),
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
    state.remove(container_id, ifname)?;
    if let Some(ifindex) = retired
        && let Err(e) = reap::delete_links_in_background(&[ifindex])
    {
        log::warn!("deleting the retired veth {ifindex} in the background: {e}; deleting it now");
        runtime()?.block_on(async {
            Netlink::connect()?
                .delete_link(&names::tombstone(ifindex))
                .await
        })?;
    }
    Ok(())
}

/// Retires the host veth and, when the pod's namespace is still there, its
/// pod end (the same pair: the pod end's peer is the host veth). Returns
/// the host veth's ifindex; `None` when it is gone already.
async fn retire_veth(
    env: &CniEnv,
    host_ifname: &str,
    ifname: &str,
    recorded_ifindex: Option<u32>,
) -> CniResult<Option<u32>> {
    let node = Netlink::connect()?;
    let Some(host) = node.link(host_ifname).await? else {
        return retired_before(&node, env, recorded_ifindex).await;
    };
    if let Some(pod) = env.netns.as_deref().and_then(|path| NetNs::open(path).ok())
        && let Err(e) = retire_pod_end(&pod, ifname, host.index).await
    {
        // The pair goes with the host end anyway; only a new ADD into the
        // same namespace within those milliseconds would find the name taken.
        log::warn!("retiring {ifname} in the pod: {e}");
    }
    Ok(node.retire_link(&host).await?.then_some(host.index))
}

/// The pair an earlier DEL retired but did not live to delete (killed
/// between the two): its host end's ifindex, so this DEL deletes it. The
/// host end is named after its ifindex, which the record holds while there
/// is one; after the record went, the pod end in the pod's namespace (also
/// under a tombstone name) still names its peer.
async fn retired_before(
    node: &Netlink,
    env: &CniEnv,
    recorded_ifindex: Option<u32>,
) -> CniResult<Option<u32>> {
    if let Some(index) = recorded_ifindex
        && node.link(&names::tombstone(index)).await?.is_some()
    {
        return Ok(Some(index));
    }
    let Some(pod) = env.netns.as_deref().and_then(|path| NetNs::open(path).ok()) else {
        // Without its namespace the pair died with it.
        return Ok(None);
    };
    let pod = Netlink::connect_in(&pod)?;
    for name in pod.link_names().await? {
        if names::is_tombstone(&name)
            && let Some(peer) = pod.link(&name).await?.and_then(|end| end.peer)
        {
            return Ok(Some(peer));
        }
    }
    Ok(None)
}

/// Retires `ifname` in `pod` if it is the peer of the host veth `host_index`.
async fn retire_pod_end(pod: &NetNs, ifname: &str, host_index: u32) -> CniResult<()> {
    let pod = Netlink::connect_in(pod)?;
    if let Some(end) = pod.link(ifname).await?
        && end.peer == Some(host_index)
    {
        pod.retire_link(&end).await?;
    }
    Ok(())
}
