//! Published host ports: the `HOST_PORTS` map (and its companions) from
//! userspace, with the conflict rules a node must keep: one pod per
//! (protocol, port, address), and a port published on every address
//! excludes the same port on a specific one (the reference portmap plugin
//! lets the last writer win instead).

use std::net::IpAddr;

use aya::maps::{HashMap, MapData, MapError};
use cni_ebpf_common::{
    HostPortKey, HostPortTarget, IpKey, host_port_use_key,
    map_names::{HOST_PORT_USE, HOST_PORTS},
};

use crate::{
    error::{Result, key_missing, map_error, open_map},
    paths::BpffsLayout,
};

/// One `portMappings` entry as the datapath holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub proto: u8,
    pub host_port: u16,
    /// `None`: every node address of `pod_addr`'s family (and the loopback
    /// address from the node itself).
    pub host_ip: Option<IpAddr>,
    pub pod_addr: IpAddr,
    pub pod_port: u16,
}

impl PortMapping {
    fn v6(&self) -> bool {
        self.pod_addr.is_ipv6()
    }

    fn key(&self) -> HostPortKey {
        match self.host_ip {
            Some(ip) => HostPortKey {
                host_addr: IpKey::from_ip(ip).addr,
                port: self.host_port.to_be(),
                proto: self.proto,
                wildcard: 0,
            },
            None => self.wildcard_key(),
        }
    }

    fn wildcard_key(&self) -> HostPortKey {
        HostPortKey::any(self.v6(), self.host_port.to_be(), self.proto)
    }

    fn use_key(&self) -> u32 {
        host_port_use_key(self.proto, self.host_port, self.v6())
    }
}

/// A mapping another attachment already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub mapping: PortMapping,
}

struct Maps {
    ports: HashMap<MapData, HostPortKey, HostPortTarget>,
    usage: HashMap<MapData, u32, u32>,
}

impl Maps {
    fn open(layout: &BpffsLayout) -> Result<Self> {
        Ok(Self {
            ports: open_map(layout, HOST_PORTS)?,
            usage: open_map(layout, HOST_PORT_USE)?,
        })
    }

    fn holder(&self, key: &HostPortKey) -> Result<Option<u64>> {
        match self.ports.get(key, 0) {
            Ok(target) => Ok(Some(target.owner)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(HOST_PORTS)(e)),
        }
    }

    fn specific_count(&self, m: &PortMapping) -> Result<u32> {
        match self.usage.get(&m.use_key(), 0) {
            Ok(n) => Ok(n),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(e) => Err(map_error(HOST_PORT_USE)(e)),
        }
    }

    fn conflicts(&self, m: &PortMapping, owner: u64) -> Result<bool> {
        let other = |holder: Option<u64>| holder.is_some_and(|h| h != owner);
        if other(self.holder(&m.key())?) || other(self.holder(&m.wildcard_key())?) {
            return Ok(true);
        }
        // Every address of a family excludes any specific one of it.
        Ok(m.host_ip.is_none() && self.specific_count(m)? > 0)
    }
}

/// Publishes `mappings` for `owner`; nothing is written if any conflicts.
/// The caller holds the bpffs root's lock.
pub fn publish(
    layout: &BpffsLayout,
    mappings: &[PortMapping],
    owner: u64,
) -> Result<std::result::Result<(), Conflict>> {
    let mut maps = Maps::open(layout)?;
    for m in mappings {
        if maps.conflicts(m, owner)? {
            return Ok(Err(Conflict { mapping: *m }));
        }
    }
    for m in mappings {
        let target = HostPortTarget {
            pod_addr: IpKey::from_ip(m.pod_addr).addr,
            pod_port: m.pod_port.to_be(),
            _pad: [0; 6],
            owner,
        };
        let fresh = maps.holder(&m.key())?.is_none();
        maps.ports
            .insert(m.key(), target, 0)
            .map_err(map_error(HOST_PORTS))?;
        if fresh && m.host_ip.is_some() {
            let n = maps.specific_count(m)?;
            maps.usage
                .insert(m.use_key(), n + 1, 0)
                .map_err(map_error(HOST_PORT_USE))?;
        }
    }
    Ok(Ok(()))
}

/// Removes the mappings `owner` holds among `mappings`; idempotent. The
/// caller holds the bpffs root's lock.
pub fn unpublish(layout: &BpffsLayout, mappings: &[PortMapping], owner: u64) -> Result<()> {
    let mut maps = Maps::open(layout)?;
    for m in mappings {
        if maps.holder(&m.key())? != Some(owner) {
            continue;
        }
        match maps.ports.remove(&m.key()) {
            Ok(()) => {}
            Err(e) if key_missing(&e) => {}
            Err(e) => return Err(map_error(HOST_PORTS)(e)),
        }
        if m.host_ip.is_some() {
            let key = m.use_key();
            match maps.specific_count(m)? {
                0 | 1 => {
                    let _ = maps.usage.remove(&key);
                }
                n => maps
                    .usage
                    .insert(key, n - 1, 0)
                    .map_err(map_error(HOST_PORT_USE))?,
            }
        }
    }
    Ok(())
}

/// Whether `owner` holds every one of `mappings` (for CHECK).
pub fn holds(
    layout: &BpffsLayout,
    mappings: &[PortMapping],
    owner: u64,
) -> Result<Option<PortMapping>> {
    let maps = Maps::open(layout)?;
    for m in mappings {
        if maps.holder(&m.key())? != Some(owner) {
            return Ok(Some(*m));
        }
    }
    Ok(None)
}

/// Every published port with its owner (for GC and inspection).
pub fn published(layout: &BpffsLayout) -> Result<Vec<(PortMapping, u64)>> {
    let maps = Maps::open(layout)?;
    let mut out = Vec::new();
    for entry in maps.ports.iter() {
        let (key, target) = entry.map_err(map_error(HOST_PORTS))?;
        let host_ip = (key.host_addr != [0; 16]).then(|| IpKey::v6(key.host_addr).to_ip());
        out.push((
            PortMapping {
                proto: key.proto,
                host_port: u16::from_be(key.port),
                host_ip,
                pod_addr: IpKey::v6(target.pod_addr).to_ip(),
                pod_port: u16::from_be(target.pod_port),
            },
            target.owner,
        ));
    }
    out.sort_by_key(|(m, _)| (m.proto, m.host_port, m.host_ip));
    Ok(out)
}
