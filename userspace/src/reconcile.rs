//! What the agent repairs when it starts: map entries and pinned links of
//! pod interfaces that vanished behind the plugin's back (a deleted netns, a
//! crashed runtime). Runs in the node's network namespace.

use std::net::IpAddr;

use crate::{BpffsLayout, EndpointMap, error::Result, rate, stats};

/// What one reconciliation removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub endpoints: Vec<IpAddr>,
    pub link_pins: Vec<String>,
}

/// The interfaces of the calling thread's namespace, by index and name.
fn interfaces() -> Result<Vec<(u32, String)>> {
    let list = nix::net::if_::if_nameindex().map_err(|e| {
        crate::error::DatapathError::io("list interfaces", "if_nameindex", e.into())
    })?;
    Ok(list
        .iter()
        .map(|i| (i.index(), i.name().to_string_lossy().into_owned()))
        .collect())
}

pub fn reconcile(layout: &BpffsLayout) -> Result<Reconciled> {
    let mut done = Reconciled::default();
    let interfaces = interfaces()?;
    let interface_exists = |ifindex: u32| interfaces.iter().any(|(i, _)| *i == ifindex);
    let interface_named = |name: &str| interfaces.iter().any(|(_, n)| n == name);
    let mut endpoints = EndpointMap::open(layout)?;
    for (ip, endpoint) in endpoints.entries()? {
        if interface_exists(endpoint.ifindex) {
            continue;
        }
        endpoints.remove_owned(ip, endpoint.owner)?;
        stats::remove(layout, endpoint.ifindex)?;
        rate::remove(layout, endpoint.owner)?;
        done.endpoints.push(ip);
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
