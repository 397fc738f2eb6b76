//! Which addresses an attachment (container ID, ifname) holds, found
//! without reading every reservation file: host-local's `GetByID` reads the
//! whole directory, which costs every ADD and DEL about 1.5 ms at 250 pods.
//!
//! - `<dataDir>/<network>/attachment.<hash>`: one file per attachment,
//!   named by a hash of `containerID + "\r\n" + ifname`, holding that pair
//!   and then the addresses it reserved, one per line. Written after the
//!   reservations, removed after them. host-local ignores it: the name is no
//!   address, and its contents are never exactly `id\r\nifname`, so neither
//!   `GetByID`, `FindByID` nor `ReleaseByKey` takes it for a reservation.
//! - The index is trusted only while the directory is as we left it: after
//!   each operation the lock file records the directory's inode, mtime and
//!   ctime ([`Store::seal`]). Anyone else creating or removing a file there
//!   (the reference binary, an older build, a crash between a reservation
//!   and its index) changes those times, and the next operation reads the
//!   directory whole once and rewrites the index from it. Reads of the
//!   index are checked against the reservation files they point to; any
//!   disagreement also falls back to reading the directory. Multigrain
//!   timestamps (ext4, xfs, btrfs, tmpfs since 6.13) give a change right
//!   after our `fstat` a newer time; on a file system with coarse
//!   timestamps, a foreign change in the same clock tick as ours goes
//!   unseen, and an attachment it made is then missed by DEL until a GC,
//!   which always reads the directory whole.
//! - Directories holding reservations in the pre-0.7 ID-only format are
//!   never trusted: such a reservation belongs to every ifname of its
//!   container, so they are read whole as before.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;

use super::store::{Holder, Reservation, Store};
use crate::error::CniResult;

const PREFIX: &str = "attachment.";
const LINE_BREAK: &str = "\r\n";

/// The reservations of one network directory, looked up by attachment.
pub(crate) struct Attachments<'s> {
    store: &'s Store,
    /// Every reservation, when the directory had to be read whole; `None`
    /// while the index is trusted.
    scanned: Option<Vec<Reservation>>,
    /// Whether the index says all there is, so [`seal`](Self::seal) may
    /// vouch for it.
    complete: bool,
}

impl<'s> Attachments<'s> {
    /// Trusts the index when the directory is as the last operation left
    /// it, and reads the directory whole otherwise.
    pub fn open(store: &'s Store) -> CniResult<Self> {
        let mut attachments = Self {
            store,
            scanned: None,
            complete: true,
        };
        if !store.is_sealed() {
            attachments.rescan()?;
        }
        Ok(attachments)
    }

    /// Every reservation of the directory, read whole (for GC), with the
    /// index brought up to date on the way.
    pub fn scan(store: &'s Store) -> CniResult<Vec<Reservation>> {
        let mut attachments = Self {
            store,
            scanned: None,
            complete: true,
        };
        attachments.rescan()?;
        let all = attachments.scanned.take().unwrap_or_default();
        attachments.seal();
        Ok(all)
    }

    /// The reservations held by (container, ifname): written for exactly
    /// this pair, or in the legacy format for this container.
    pub fn held(&mut self, container_id: &str, ifname: &str) -> CniResult<Vec<Reservation>> {
        if self.scanned.is_none() {
            if let Some(held) = self.indexed(container_id, ifname)? {
                return Ok(held);
            }
            log::warn!(
                "{}: index of {} {ifname} disagrees with the reservations, reading them all",
                self.store.dir().display(),
                container_id.trim()
            );
            self.rescan()?;
        }
        Ok(self
            .known()
            .iter()
            .filter(|r| r.holder(container_id, ifname).is_some())
            .cloned()
            .collect())
    }

    /// The reservations read from the directory, if it was read whole
    /// (empty while the index is trusted: reserving relies on the exclusive
    /// create alone then).
    pub fn known(&self) -> &[Reservation] {
        self.scanned.as_deref().unwrap_or_default()
    }

    /// Records that (container, ifname) now holds exactly `ips`; none
    /// removes its index file. A failure only costs the trust in the index.
    pub fn record(&mut self, container_id: &str, ifname: &str, ips: &[IpAddr]) {
        let entry = Entry::new(container_id.trim(), ifname, ips.to_vec());
        let name = entry.file_name();
        let written = if ips.is_empty() {
            self.store.remove_file(&name).map(drop)
        } else if self
            .store
            .read_file(&name)
            .ok()
            .and_then(|bytes| Entry::parse(&bytes))
            .is_some_and(|other| !other.is_for(&entry.container_id, &entry.ifname))
        {
            // Two attachments with one hash: the index cannot tell them apart.
            self.complete = false;
            Ok(())
        } else {
            self.store.replace_file(&name, entry.contents().as_bytes())
        };
        if let Err(e) = written {
            log::warn!("{}: indexing {name}: {e}", self.store.dir().display());
            self.complete = false;
        }
    }

    /// Vouches for the index in the lock file if it says all there is (or
    /// withdraws that), as the last step of an operation.
    pub fn seal(self) {
        self.store.seal(self.complete);
    }

    /// `Some` with what the index says, checked against the reservation
    /// files; `None` when they disagree or the index file is unreadable.
    fn indexed(&self, container_id: &str, ifname: &str) -> CniResult<Option<Vec<Reservation>>> {
        let name = Entry::new(container_id.trim(), ifname, Vec::new()).file_name();
        let bytes = match self.store.read_file(&name) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(Vec::new())),
            Err(_) => return Ok(None),
        };
        let Some(entry) = Entry::parse(&bytes).filter(|e| e.is_for(container_id.trim(), ifname))
        else {
            return Ok(None);
        };
        let mut held = Vec::with_capacity(entry.ips.len());
        for ip in entry.ips {
            match self.store.reservation(ip)? {
                Some(r) if r.holder(container_id, ifname) == Some(Holder::Exact) => held.push(r),
                _ => return Ok(None),
            }
        }
        Ok(Some(held))
    }

    /// Reads every reservation and makes the index files say the same.
    fn rescan(&mut self) -> CniResult<()> {
        let (reservations, index_files) = self.store.reservations_and_names(PREFIX)?;
        // A legacy reservation belongs to every ifname of its container:
        // no per-attachment file can find it.
        self.complete = !reservations.iter().any(|r| r.ifname.is_none())
            && self.reindex(&reservations, &index_files);
        self.scanned = Some(reservations);
        Ok(())
    }

    /// Rewrites the index files that disagree with `reservations` and
    /// removes those of attachments that hold nothing. False when it could
    /// not (a hash shared by two attachments, a file it could not write).
    fn reindex(&self, reservations: &[Reservation], index_files: &[String]) -> bool {
        let mut wanted: BTreeMap<String, Entry> = BTreeMap::new();
        for r in reservations {
            let Some(ifname) = r.ifname.as_deref() else {
                continue;
            };
            let entry = Entry::new(&r.container_id, ifname, Vec::new());
            let held = wanted.entry(entry.file_name()).or_insert(entry);
            if !held.is_for(&r.container_id, ifname) {
                return false;
            }
            held.ips.push(r.ip);
        }
        let mut complete = true;
        let dir = self.store.dir().display();
        for name in index_files.iter().filter(|n| !wanted.contains_key(*n)) {
            if let Err(e) = self.store.remove_file(name) {
                log::warn!("{dir}: removing {name}: {e}");
                complete = false;
            }
        }
        for (name, entry) in &mut wanted {
            entry.ips.sort();
            let contents = entry.contents();
            if self.store.read_file(name).ok().as_deref() == Some(contents.as_bytes()) {
                continue;
            }
            if let Err(e) = self.store.replace_file(name, contents.as_bytes()) {
                log::warn!("{dir}: indexing {name}: {e}");
                complete = false;
            }
        }
        complete
    }
}

/// The contents of one index file.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    container_id: String,
    ifname: String,
    ips: Vec<IpAddr>,
}

impl Entry {
    fn new(container_id: &str, ifname: &str, ips: Vec<IpAddr>) -> Self {
        Self {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
            ips,
        }
    }

    fn is_for(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname == ifname
    }

    /// `attachment.` and the FNV-1a hash of `id\r\nifname`, in hex: stable
    /// across builds, which `std`'s hasher is not.
    fn file_name(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let key = [&self.container_id, LINE_BREAK, &self.ifname];
        for byte in key.iter().flat_map(|part| part.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{PREFIX}{hash:016x}")
    }

    fn contents(&self) -> String {
        let mut text = format!("{}{LINE_BREAK}{}", self.container_id, self.ifname);
        for ip in &self.ips {
            text.push_str(LINE_BREAK);
            text.push_str(&ip.to_string());
        }
        text
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.split(LINE_BREAK);
        let container_id = lines.next()?;
        let ifname = lines.next()?;
        let ips = lines
            .map(|line| line.parse::<IpAddr>().ok())
            .collect::<Option<Vec<_>>>()?;
        (!ips.is_empty()).then(|| Self::new(container_id, ifname, ips))
    }
}
