//! GC (1.1.0): remove every attachment of this network that is not in
//! `cni.dev/valid-attachments` (or the older `cni.dev/attachments`), then
//! whatever no attachment of any network refers to: host veths, link pins,
//! endpoint map entries, IPAM reservations.

use std::collections::HashSet;

use cni_ebpf_userspace::{BpffsLayout, attach::detach_from_pod, teardown};

use super::{datapath_error, runtime};
use crate::{
    cni::CniEnv,
    cni::NetConf,
    error::{CniError, CniResult},
    ipam::Ipam,
    names,
    netlink::Netlink,
    state::{AttachmentRecord, StateDir},
};

pub fn run(env: &CniEnv, conf: &NetConf) -> CniResult<()> {
    let valid = conf
        .valid_attachments
        .clone()
        .ok_or_else(|| CniError::invalid_config("missing field \"cni.dev/valid-attachments\""))?;
    let ipam = Ipam::from_conf(conf, env)?;
    let state = StateDir::new(&conf.state_dir, &conf.name);
    let layout = BpffsLayout::new(&conf.bpffs_root);
    let _exclusive = state.lock_exclusive()?;

    let stale: Vec<AttachmentRecord> = state
        .list()?
        .into_iter()
        .filter(|r| !valid.contains(&(r.container_id.clone(), r.ifname.clone())))
        .collect();
    let stale_links: HashSet<String> = stale.iter().map(|r| r.host_ifname.clone()).collect();
    let live: Vec<AttachmentRecord> = state
        .all_networks()?
        .into_iter()
        .filter(|r| !stale_links.contains(&r.host_ifname))
        .collect();
    let live_links: HashSet<&str> = live.iter().map(|r| r.host_ifname.as_str()).collect();

    runtime()?.block_on(async {
        let node = Netlink::connect()?;
        for name in &stale_links {
            node.delete_link(name).await?;
        }
        // Host veths of attachments that never got a record (an ADD that
        // died), and veths a DEL retired whose deletion did not happen.
        for name in node.link_names().await? {
            let orphan = is_host_veth_name(&name) && !live_links.contains(name.as_str());
            if orphan || names::is_tombstone(&name) {
                node.delete_link(&name).await?;
            }
        }
        Ok::<_, CniError>(())
    })?;

    for pin in pinned_links(&layout) {
        if !live_links.contains(pin.as_str()) {
            detach_from_pod(&layout, &pin).map_err(|e| datapath_error("unpinning a link", e))?;
        }
    }
    remove_orphans(&layout, &live)?;
    remove_orphan_stats(&layout, &live)?;
    for record in &stale {
        state.remove(&record.container_id, &record.ifname)?;
    }
    ipam.gc(conf, &valid).map(drop)
}

/// `ce` + 12 hex digits, as `names::host_ifname` makes them.
fn is_host_veth_name(name: &str) -> bool {
    name.len() == 14
        && name.starts_with("ce")
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn pinned_links(layout: &BpffsLayout) -> Vec<String> {
    std::fs::read_dir(layout.links_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whatever the maps hold for an owner that is no live attachment:
/// endpoint entries, host ports, bandwidth limits.
fn remove_orphans(layout: &BpffsLayout, live: &[AttachmentRecord]) -> CniResult<()> {
    let owners: HashSet<u64> = live.iter().map(|r| r.owner).collect();
    let held = teardown::held(layout).map_err(|e| datapath_error("reading the maps", e))?;
    for endpoint in held.values().filter(|e| !owners.contains(&e.owner)) {
        teardown::remove(layout, endpoint)
            .map_err(|e| datapath_error("removing an orphaned endpoint", e))?;
    }
    Ok(())
}

/// Counters (and counter slots) of endpoints that are no live attachment's.
fn remove_orphan_stats(layout: &BpffsLayout, live: &[AttachmentRecord]) -> CniResult<()> {
    let live: HashSet<u32> = live.iter().map(|r| r.host_ifindex).collect();
    let present = cni_ebpf_userspace::stats::all(layout)
        .map_err(|e| datapath_error("reading the endpoint counters", e))?;
    for (ifindex, _) in present.into_iter().filter(|(i, _)| !live.contains(i)) {
        cni_ebpf_userspace::stats::remove(layout, ifindex)
            .map_err(|e| datapath_error("removing endpoint counters", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_recognised() {
        assert!(is_host_veth_name(&crate::names::host_ifname("abc", "eth0")));
        assert!(!is_host_veth_name("cni0"));
        assert!(!is_host_veth_name("ceXYZ000000000"));
        assert!(!is_host_veth_name("eth0"));
    }
}
