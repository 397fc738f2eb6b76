//! Removing everything the datapath holds for one endpoint: its link pins,
//! map entries (addresses, counters, limits) and published host ports. One
//! function for the four places that tear an endpoint down: the rollback of
//! a failed ADD, DEL, GC of attachments nobody claims and the agent's
//! reconcile of interfaces that vanished. Tolerant of whatever is already
//! gone, maps included (a node where nothing was ever loaded). The
//! interface itself is the caller's: it dies with its network namespace or
//! is deleted over netlink before this runs.

use std::{collections::BTreeMap, net::IpAddr};

use cni_ebpf_common::map_names::{ENDPOINTS, HOST_PORTS, RATE_LIMITS};

use crate::{
    BpffsLayout, EndpointMap, attach::detach_from_pod, error::Result, host_ports,
    host_ports::PortMapping, rate, stats,
};

/// What one endpoint holds, as far as the caller knows it. Entries are
/// only removed while they still belong to `owner`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// `Endpoint::owner`: the attachment's id.
    pub owner: u64,
    /// Its host veth, whose link pins go.
    pub host_ifname: Option<String>,
    /// Its host veth's ifindex, which keys its counters.
    pub host_ifindex: Option<u32>,
    pub ips: Vec<IpAddr>,
    pub port_mappings: Vec<PortMapping>,
}

/// Removes everything `endpoint` holds. Host ports are unpublished under
/// the datapath lock.
pub fn remove(layout: &BpffsLayout, endpoint: &Endpoint) -> Result<()> {
    if let Some(name) = &endpoint.host_ifname {
        detach_from_pod(layout, name)?;
    }
    if !endpoint.port_mappings.is_empty() && layout.map(HOST_PORTS).exists() {
        let _lock = layout.lock()?;
        host_ports::unpublish(layout, &endpoint.port_mappings, endpoint.owner)?;
    }
    if layout.map(RATE_LIMITS).exists() {
        rate::remove(layout, endpoint.owner)?;
    }
    if !endpoint.ips.is_empty() && layout.map(ENDPOINTS).exists() {
        let mut endpoints = EndpointMap::open(layout)?;
        for ip in &endpoint.ips {
            endpoints.remove_owned(*ip, endpoint.owner)?;
        }
    }
    // After the entries that name its slot: a slot freed before them could
    // be claimed and zeroed by a new pod while this one's packets still
    // count there.
    if let Some(ifindex) = endpoint.host_ifindex {
        stats::remove(layout, ifindex)?;
    }
    Ok(())
}

/// Everything the maps hold, by owner: the addresses and interface of the
/// endpoint entries, the published host ports, and owners that hold only a
/// bandwidth limit. For GC and reconcile, which know no more than that.
pub fn held(layout: &BpffsLayout) -> Result<BTreeMap<u64, Endpoint>> {
    fn entry(by_owner: &mut BTreeMap<u64, Endpoint>, owner: u64) -> &mut Endpoint {
        by_owner.entry(owner).or_insert_with(|| Endpoint {
            owner,
            ..Endpoint::default()
        })
    }
    let mut by_owner = BTreeMap::new();
    if layout.map(ENDPOINTS).exists() {
        for (ip, e) in EndpointMap::open(layout)?.entries()? {
            let held = entry(&mut by_owner, e.owner);
            held.ips.push(ip);
            held.host_ifindex = Some(e.ifindex);
        }
    }
    if layout.map(HOST_PORTS).exists() {
        for (mapping, owner) in host_ports::published(layout)? {
            entry(&mut by_owner, owner).port_mappings.push(mapping);
        }
    }
    if layout.map(RATE_LIMITS).exists() {
        for owner in rate::owners(layout)? {
            entry(&mut by_owner, owner);
        }
    }
    Ok(by_owner)
}
