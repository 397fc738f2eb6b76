//! The `ENDPOINTS` map: pod address -> pod interface.

use std::net::IpAddr;

use aya::maps::{HashMap, MapData, MapError};
use cni_ebpf_common::{Endpoint, IpKey, map_names::ENDPOINTS};

use crate::{
    error::{DatapathError, Result, key_missing},
    paths::BpffsLayout,
};

pub struct EndpointMap {
    map: HashMap<MapData, IpKey, Endpoint>,
}

fn map_error(source: MapError) -> DatapathError {
    crate::error::map_error(ENDPOINTS)(source)
}

impl EndpointMap {
    pub fn open(layout: &BpffsLayout) -> Result<Self> {
        Ok(Self {
            map: crate::error::open_map(layout, ENDPOINTS)?,
        })
    }

    pub fn insert(&mut self, ip: IpAddr, endpoint: &Endpoint) -> Result<()> {
        self.map
            .insert(IpKey::from_ip(ip), endpoint, 0)
            .map_err(map_error)
    }

    pub fn get(&self, ip: IpAddr) -> Result<Option<Endpoint>> {
        match self.map.get(&IpKey::from_ip(ip), 0) {
            Ok(endpoint) => Ok(Some(endpoint)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(e)),
        }
    }

    /// Removes the entry for `ip` if `owner` holds it; true if one was removed.
    pub fn remove_owned(&mut self, ip: IpAddr, owner: u64) -> Result<bool> {
        match self.get(ip)? {
            Some(endpoint) if endpoint.owner == owner => {}
            _ => return Ok(false),
        }
        match self.map.remove(&IpKey::from_ip(ip)) {
            Ok(()) => Ok(true),
            Err(e) if key_missing(&e) => Ok(false),
            Err(e) => Err(map_error(e)),
        }
    }

    /// Every entry, sorted by address.
    pub fn entries(&self) -> Result<Vec<(IpAddr, Endpoint)>> {
        let mut entries = self
            .map
            .iter()
            .map(|entry| entry.map(|(key, endpoint)| (key.to_ip(), endpoint)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error)?;
        entries.sort_by_key(|(ip, _)| *ip);
        Ok(entries)
    }
}
