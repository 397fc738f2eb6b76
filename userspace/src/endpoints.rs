//! The endpoint maps: pod address -> pod interface. `ENDPOINTS` is the
//! record, every address under its 16-byte key; `ENDPOINTS_V4` holds a copy
//! of IPv4 entries in an array slot per address ([`endpoint_v4_index`]),
//! which the datapath reads first on its IPv4 paths, falling back to
//! `ENDPOINTS` when the slot is not live or holds another address.
//!
//! This module is the one writer of both. It writes `ENDPOINTS_V4` so that
//! no read of it is ever torn ([`EndpointV4`]: fill while not live, then
//! set `live` alone; retire by clearing `live` alone; an RCU grace period
//! before a live slot is refilled), and only under an exclusive lock on
//! the maps directory, together with the matching `ENDPOINTS` change, so a
//! slot and the record never disagree for long:
//!
//! - a slot is published only after its `ENDPOINTS` entry is in, and retired
//!   before that entry leaves: a live slot always has its record;
//! - a process that dies between the two leaves at worst a record without
//!   its slot (the datapath finds the record) or a retired slot;
//! - a build without `ENDPOINTS_V4` writes `ENDPOINTS` alone, and its
//!   programs do not read the array: when this build's programs are
//!   loaded or adopted, [`EndpointMap::sync_v4`] makes the slots match the
//!   record again before any of them runs.
//!
//! Two addresses with the same low 12 bits (only on a node whose pods span
//! more than a /20) share a slot: the first one added holds it, the other
//! is found in `ENDPOINTS`, until a sync finds the slot free.

use std::{fs::File, net::IpAddr, time::Duration};

use aya::maps::{Array, HashMap, MapData, MapError};
use cni_ebpf_common::{
    ENDPOINT_V4_SLOTS, Endpoint, EndpointV4, IpKey, endpoint_v4_index,
    map_names::{ENDPOINTS, ENDPOINTS_V4},
};
use nix::fcntl::Flock;

use crate::{
    error::{DatapathError, Result, key_missing},
    paths::BpffsLayout,
};

pub struct EndpointMap {
    map: HashMap<MapData, IpKey, Endpoint>,
    /// Absent on a bpffs root that only a build without it has loaded.
    v4: Option<SlotsV4>,
}

struct SlotsV4 {
    array: Array<MapData, EndpointV4>,
    /// The maps directory, locked while either map changes.
    dir: std::path::PathBuf,
}

fn map_error(source: MapError) -> DatapathError {
    crate::error::map_error(ENDPOINTS)(source)
}

fn v4_error(source: MapError) -> DatapathError {
    crate::error::map_error(ENDPOINTS_V4)(source)
}

/// What [`EndpointMap::sync_v4`] changed in `ENDPOINTS_V4`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncV4 {
    /// Slots filled from `ENDPOINTS` (free, or holding something else).
    pub published: usize,
    /// Live slots retired: their address is gone from `ENDPOINTS`.
    pub retired: usize,
}

impl EndpointMap {
    pub fn open(layout: &BpffsLayout) -> Result<Self> {
        let v4 = if layout.map(ENDPOINTS_V4).exists() {
            Some(SlotsV4 {
                array: crate::error::open_map(layout, ENDPOINTS_V4)?,
                dir: layout.maps_dir(),
            })
        } else {
            None
        };
        Ok(Self {
            map: crate::error::open_map(layout, ENDPOINTS)?,
            v4,
        })
    }

    pub fn insert(&mut self, ip: IpAddr, endpoint: &Endpoint) -> Result<()> {
        let _lock = self.lock()?;
        self.map
            .insert(IpKey::from_ip(ip), endpoint, 0)
            .map_err(map_error)?;
        if let (Some(slots), IpAddr::V4(v4)) = (&mut self.v4, ip)
            && let Err(e) = slots.publish(v4.octets(), endpoint)
        {
            // Not half-added: the caller's rollback only knows the
            // addresses that went in whole.
            let _ = self.map.remove(&IpKey::from_ip(ip));
            return Err(e);
        }
        Ok(())
    }

    /// The record of `ip` (`ENDPOINTS`).
    pub fn get(&self, ip: IpAddr) -> Result<Option<Endpoint>> {
        record(&self.map, &IpKey::from_ip(ip))
    }

    /// The copy of `ip`'s entry in its slot of `ENDPOINTS_V4`, if the slot
    /// holds it live.
    pub fn slot_v4(&self, ip: IpAddr) -> Result<Option<Endpoint>> {
        match (&self.v4, ip) {
            (Some(slots), IpAddr::V4(v4)) => {
                Ok(slots.holding(v4.octets())?.map(|slot| slot.endpoint))
            }
            _ => Ok(None),
        }
    }

    /// The entry of `ip` as the datapath finds it: its live slot of
    /// `ENDPOINTS_V4`, else its record in `ENDPOINTS`.
    pub fn find(&self, ip: IpAddr) -> Result<Option<Endpoint>> {
        match self.slot_v4(ip)? {
            Some(endpoint) => Ok(Some(endpoint)),
            None => self.get(ip),
        }
    }

    /// Removes the entry for `ip` if `owner` holds it (its slot first);
    /// true if one was removed.
    pub fn remove_owned(&mut self, ip: IpAddr, owner: u64) -> Result<bool> {
        let _lock = self.lock()?;
        if let (Some(slots), IpAddr::V4(v4)) = (&mut self.v4, ip) {
            slots.retire(v4.octets(), |held| held.owner == owner)?;
        }
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

    /// Makes `ENDPOINTS_V4` match `ENDPOINTS` again: retires every live
    /// slot whose address `ENDPOINTS` no longer holds as the slot does, and
    /// publishes every IPv4 entry whose slot is free. Run where this
    /// build's programs are loaded or adopted: a build without the array
    /// (or a plugin of one, still running) wrote `ENDPOINTS` alone.
    pub fn sync_v4(&mut self) -> Result<SyncV4> {
        let mut done = SyncV4::default();
        let _lock = self.lock()?;
        let Some(slots) = &mut self.v4 else {
            return Ok(done);
        };
        for index in 0..ENDPOINT_V4_SLOTS {
            let slot = slots.get(index)?;
            if slot.live == 0 {
                continue;
            }
            if record(&self.map, &IpKey::v4(slot.addr))? != Some(slot.endpoint) {
                slots.put(index, EndpointV4 { live: 0, ..slot })?;
                done.retired += 1;
            }
        }
        if done.retired > 0 {
            // Before any of those slots is filled again.
            grace_period();
        }
        let wanted: Vec<([u8; 4], Endpoint)> = self
            .map
            .iter()
            .filter_map(|entry| match entry {
                Ok((key, endpoint)) => key.as_v4().map(|addr| Ok((addr, endpoint))),
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()
            .map_err(map_error)?;
        for (addr, endpoint) in wanted {
            if slots.get(endpoint_v4_index(addr))?.live == 0 {
                slots.publish(addr, &endpoint)?;
                done.published += 1;
            }
        }
        Ok(done)
    }

    /// The maps directory's lock, where there is an array to keep in step.
    fn lock(&self) -> Result<Option<Flock<File>>> {
        let Some(slots) = &self.v4 else {
            return Ok(None);
        };
        let dir = File::open(&slots.dir).map_err(|e| DatapathError::io("open", &slots.dir, e))?;
        Ok(Some(crate::lock::lock(dir, &slots.dir, true)?))
    }
}

/// The entry under `key` in `ENDPOINTS` (`map`).
fn record(map: &HashMap<MapData, IpKey, Endpoint>, key: &IpKey) -> Result<Option<Endpoint>> {
    match map.get(key, 0) {
        Ok(endpoint) => Ok(Some(endpoint)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(map_error(e)),
    }
}

impl SlotsV4 {
    fn get(&self, index: u32) -> Result<EndpointV4> {
        self.array.get(&index, 0).map_err(v4_error)
    }

    /// The slot of `addr`, if it holds `addr` live.
    fn holding(&self, addr: [u8; 4]) -> Result<Option<EndpointV4>> {
        let slot = self.get(endpoint_v4_index(addr))?;
        Ok((slot.live != 0 && slot.addr == addr).then_some(slot))
    }

    fn put(&mut self, index: u32, slot: EndpointV4) -> Result<()> {
        self.array.set(index, slot, 0).map_err(v4_error)
    }

    /// Puts `endpoint` in the slot of `addr`, unless another address holds
    /// it. A slot live with an older entry of `addr` is retired and waited
    /// out first: readers that found it live may still be reading it.
    fn publish(&mut self, addr: [u8; 4], endpoint: &Endpoint) -> Result<()> {
        let index = endpoint_v4_index(addr);
        let held = self.get(index)?;
        if held.live != 0 {
            if held.addr != addr {
                return Ok(());
            }
            if held.endpoint == *endpoint {
                return Ok(());
            }
            self.put(index, EndpointV4 { live: 0, ..held })?;
            grace_period();
        }
        let mut slot = EndpointV4 {
            live: 0,
            addr,
            endpoint: *endpoint,
            _reserved: [0; 16],
        };
        self.put(index, slot)?;
        slot.live = 1;
        self.put(index, slot)
    }

    /// Retires the slot of `addr` if it holds `addr` for an endpoint
    /// `owned` accepts.
    fn retire(&mut self, addr: [u8; 4], owned: impl Fn(&Endpoint) -> bool) -> Result<()> {
        match self.holding(addr)? {
            Some(held) if owned(&held.endpoint) => {
                self.put(endpoint_v4_index(addr), EndpointV4 { live: 0, ..held })
            }
            _ => Ok(()),
        }
    }
}

/// Waits until every program that may have read a slot before it was
/// retired has finished: `membarrier(MEMBARRIER_CMD_GLOBAL)` is
/// `synchronize_rcu()` in the kernel, and programs run under RCU. Where the
/// kernel refuses it (`nohz_full`), a pause far longer than any program run.
fn grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: a plain system call with integer arguments.
    let done = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) } == 0;
    if !done {
        std::thread::sleep(Duration::from_millis(10));
    }
}
