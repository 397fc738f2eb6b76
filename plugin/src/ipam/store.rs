//! host-local's on-disk store, byte for byte, so the reference binary and
//! this code can share one directory:
//!
//! - `<dataDir>/<network>/lock`: flock'ed exclusively around every operation
//!   (go-filemutex creates it `O_CREAT|O_RDONLY`, mode 0750);
//! - `<dataDir>/<network>/<ip>`: one file per reserved address, named by the
//!   address's canonical text, holding `containerID + "\r\n" + ifname`
//!   (before CNI 0.7 only the container ID), created exclusively;
//! - `<dataDir>/<network>/last_reserved_ip.<range set index>`: the last
//!   address reserved in that set, where round-robin resumes.
//!
//! Ours alone (see `attachments`): `attachment.<hash>` files, an index from
//! attachment to addresses, and the lock file's contents, which host-local
//! never reads: the directory's times when the index was last complete.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, Flock, OFlag, open, openat};
use nix::sys::stat::{Mode, fstat, fstatat};

use super::config::HostLocalConfig;
use crate::error::{CniError, CniResult};

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Separates the container ID from the interface name in a reservation file.
const LINE_BREAK: &str = "\r\n";

/// One reserved address and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub container_id: String,
    /// `None` for files in the pre-0.7 format, which held only the ID.
    pub ifname: Option<String>,
}

/// How a reservation relates to a (container ID, ifname) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// Written for exactly this ID and interface.
    Exact,
    /// Written in the legacy ID-only format for this ID.
    Legacy,
}

impl Reservation {
    /// Parses a reservation file the way host-local compares them: the
    /// whitespace-trimmed content is `id\r\nifname`, or just `id`.
    fn from_contents(ip: IpAddr, contents: &str) -> Self {
        let contents = contents.trim();
        match contents.split_once(LINE_BREAK) {
            Some((id, ifname)) => Self {
                ip,
                container_id: id.to_owned(),
                ifname: Some(ifname.to_owned()),
            },
            None => Self {
                ip,
                container_id: contents.to_owned(),
                ifname: None,
            },
        }
    }

    pub(crate) fn holder(&self, container_id: &str, ifname: &str) -> Option<Holder> {
        if self.container_id != container_id.trim() {
            return None;
        }
        match &self.ifname {
            Some(held) if held == ifname => Some(Holder::Exact),
            Some(_) => None,
            None => Some(Holder::Legacy),
        }
    }
}

/// The directory of one network, locked for as long as the `Store` lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Files are opened relative to it: no path walk per file.
    dir_fd: OwnedFd,
    /// Its contents are the seal of the attachment index.
    lock: Flock<File>,
}

impl Store {
    /// Creates `<dataDir>/<network>/` if needed and takes its lock, waiting
    /// for any other holder (another ADD/DEL, ours or the reference binary).
    pub fn open(cfg: &HostLocalConfig) -> CniResult<Store> {
        Self::open_dir(cfg.network_dir())
    }

    pub fn open_dir(dir: PathBuf) -> CniResult<Store> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| io_error("creating", &dir, e))?;
        let dir_fd = open(
            &dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_error("opening", &dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        // Writable for the seal; go-filemutex's O_RDONLY takes the same flock.
        let fd = open(
            &lock_path,
            OFlag::O_CREAT | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o750),
        )
        .map_err(|e| io_error("opening", &lock_path, e))?;
        let lock = cni_ebpf_userspace::lock::lock(File::from(fd), &lock_path, true)
            .map_err(CniError::lock)?;
        Ok(Store { dir, dir_fd, lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every reservation file in the directory. A file that cannot be read
    /// still counts as taken (with an empty ID), so it is never handed out.
    pub fn reservations(&self) -> CniResult<Vec<Reservation>> {
        Ok(self.reservations_and_names("")?.0)
    }

    /// Every reservation, and the names of the other files that start
    /// with `prefix` (an empty prefix lists none), from one listing.
    pub(crate) fn reservations_and_names(
        &self,
        prefix: &str,
    ) -> CniResult<(Vec<Reservation>, Vec<String>)> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| io_error("listing", &self.dir, e))?;
        let mut reservations = Vec::new();
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("listing", &self.dir, e))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            let Ok(ip) = name.parse::<IpAddr>() else {
                if !prefix.is_empty() && name.starts_with(prefix) {
                    names.push(name.to_owned());
                }
                continue;
            };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if let Some(reservation) = self.read_reservation(name, ip)? {
                reservations.push(reservation);
            }
        }
        Ok((reservations, names))
    }

    /// The reservation of `ip`, if its file exists.
    pub(crate) fn reservation(&self, ip: IpAddr) -> CniResult<Option<Reservation>> {
        let ip = ip.to_canonical();
        self.read_reservation(&ip.to_string(), ip)
    }

    fn read_reservation(&self, name: &str, ip: IpAddr) -> CniResult<Option<Reservation>> {
        let contents = match self.read_small(name) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                log::warn!("reading {}: {e}", self.dir.join(name).display());
                String::new()
            }
        };
        Ok(Some(Reservation::from_contents(
            ip.to_canonical(),
            &contents,
        )))
    }

    /// Reserves `ip` for the pair and records it as range set `range_set`'s
    /// last reservation. Returns false when the address is already taken.
    pub fn reserve(
        &self,
        ip: IpAddr,
        container_id: &str,
        ifname: &str,
        range_set: usize,
    ) -> CniResult<bool> {
        let name = ip.to_canonical().to_string();
        let contents = format!("{}{LINE_BREAK}{ifname}", container_id.trim());
        let path = self.dir.join(&name);
        // Round-robin walks past taken addresses: a stat is the cheap no.
        if fstatat(&self.dir_fd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
            return Ok(false);
        }
        let created = self
            .link_new_file(&path, contents.as_bytes())
            .or_else(|_| create_exclusive(&path, contents.as_bytes()))
            .map_err(|e| io_error("reserving", &path, e))?;
        if created {
            let last = self.dir.join(format!("{LAST_RESERVED_PREFIX}{range_set}"));
            // Only round-robin depends on it; the reservation itself stands.
            if let Err(e) = overwrite(&last, name.as_bytes()) {
                log::warn!("writing {}: {e}", last.display());
            }
        }
        Ok(created)
    }

    /// Deletes the reservation of `ip`; false if there was none.
    pub fn remove(&self, ip: IpAddr) -> CniResult<bool> {
        let name = ip.to_canonical().to_string();
        self.remove_file(&name)
            .map_err(|e| io_error("removing", &self.dir.join(&name), e))
    }

    /// Deletes a file of the directory; false if there was none.
    pub(crate) fn remove_file(&self, name: &str) -> io::Result<bool> {
        match nix::unistd::unlinkat(&self.dir_fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// A small file of the directory, whole.
    pub(crate) fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        self.read_small(name)
    }

    /// Puts a file with `contents` under `name`, replacing any: readers
    /// see the old file, no file, or the new one, never a part of it.
    pub(crate) fn replace_file(&self, name: &str, contents: &[u8]) -> io::Result<()> {
        let path = self.dir.join(name);
        if self.link_new_file(&path, contents)? {
            return Ok(());
        }
        self.remove_file(name)?;
        if self.link_new_file(&path, contents)? {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "recreated under the lock",
            ))
        }
    }

    /// Whether the lock file holds the directory's current times, i.e. no
    /// file was created or removed here since the last [`seal`](Self::seal).
    pub(crate) fn is_sealed(&self) -> bool {
        let mut buf = [0u8; 128];
        let Ok(n) = self.lock.read_at(&mut buf, 0) else {
            return false;
        };
        n > 0
            && self
                .fingerprint()
                .is_ok_and(|now| now.as_bytes() == &buf[..n])
    }

    /// Writes the directory's current times into the lock file when
    /// `complete`, or empties it, as the last change of an operation.
    pub(crate) fn seal(&self, complete: bool) {
        let contents = if complete {
            self.fingerprint().unwrap_or_default()
        } else {
            String::new()
        };
        let written = self
            .lock
            .write_at(contents.as_bytes(), 0)
            .and_then(|_| self.lock.set_len(contents.len() as u64));
        if let Err(e) = written {
            log::warn!("sealing {}: {e}", self.dir.join(LOCK_FILE).display());
        }
    }

    /// Creating, renaming or removing a file changes the directory's mtime
    /// and ctime; the inode tells a directory that was replaced.
    fn fingerprint(&self) -> io::Result<String> {
        let st = fstat(&self.dir_fd)?;
        Ok(format!(
            "attachments {} {}.{:09} {}.{:09}\n",
            st.st_ino, st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec
        ))
    }

    /// Where round-robin resumes in range set `range_set`, if recorded.
    pub fn last_reserved_ip(&self, range_set: usize) -> Option<IpAddr> {
        let bytes = self
            .read_small(&format!("{LAST_RESERVED_PREFIX}{range_set}"))
            .ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        text.trim()
            .parse::<IpAddr>()
            .ok()
            .map(|ip| ip.to_canonical())
    }

    /// Reads a file of the directory in as few system calls as possible
    /// (openat, read, close): reading the directory whole reads them all.
    /// `O_NONBLOCK` keeps a stray FIFO from hanging the plugin.
    fn read_small(&self, name: &str) -> io::Result<Vec<u8>> {
        let fd = openat(
            &self.dir_fd,
            name,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )?;
        let mut file = File::from(fd);
        let mut buf = [0u8; 256];
        let mut contents = Vec::new();
        loop {
            match file.read(&mut buf) {
                Ok(n) => {
                    contents.extend_from_slice(&buf[..n]);
                    // A short read of a regular file is its end.
                    if n < buf.len() {
                        return Ok(contents);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes the contents into an unnamed file and links it in under its
    /// name, so the name never exists with partial contents. `linkat` fails
    /// with EEXIST when taken, exactly like host-local's `O_EXCL`.
    fn link_new_file(&self, path: &Path, contents: &[u8]) -> io::Result<bool> {
        let mut file = OpenOptions::new()
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_TMPFILE)
            .open(&self.dir)?;
        file.write_all(contents)?;
        let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
        match nix::unistd::linkat(
            AT_FDCWD,
            by_fd.as_str(),
            AT_FDCWD,
            path,
            AtFlags::AT_SYMLINK_FOLLOW,
        ) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Replaces a small file's contents in place. Unlike `O_TRUNC` it does not
/// free and reallocate the data block, which costs milliseconds on ext4.
fn overwrite(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)?;
    file.write_all(contents)?;
    let len = contents.len() as u64;
    if file.metadata()?.len() > len {
        file.set_len(len)?;
    }
    Ok(())
}

/// host-local's way, for file systems without `O_TMPFILE` or without /proc:
/// `O_CREAT|O_EXCL`, then one write.
fn create_exclusive(path: &Path, contents: &[u8]) -> io::Result<bool> {
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Err(e) = file.write_all(contents) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(true)
}

fn io_error(op: &str, path: &Path, source: impl std::fmt::Display) -> CniError {
    CniError::io(format!("host-local store: {op} {}", path.display()), source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reserve_writes_host_local_format() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net1");
        let store = Store::open_dir(dir.clone()).unwrap();
        assert!(store.reserve(ip("10.1.0.2"), " c1 ", "eth0", 0).unwrap());
        assert!(!store.reserve(ip("10.1.0.2"), "c2", "eth0", 0).unwrap());
        assert_eq!(std::fs::read(dir.join("10.1.0.2")).unwrap(), b"c1\r\neth0");
        assert_eq!(
            std::fs::read(dir.join("last_reserved_ip.0")).unwrap(),
            b"10.1.0.2"
        );
        assert_eq!(store.last_reserved_ip(0), Some(ip("10.1.0.2")));
        assert_eq!(store.last_reserved_ip(1), None);
        assert!(dir.join("lock").exists());
        assert_eq!(
            store.reservations().unwrap(),
            [Reservation {
                ip: ip("10.1.0.2"),
                container_id: "c1".into(),
                ifname: Some("eth0".into()),
            }]
        );
        assert!(store.remove(ip("10.1.0.2")).unwrap());
        assert!(!store.remove(ip("10.1.0.2")).unwrap());
    }

    #[test]
    fn last_reserved_ip_is_rewritten_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_dir(tmp.path().join("n")).unwrap();
        store.reserve(ip("10.1.0.254"), "c1", "eth0", 3).unwrap();
        store.reserve(ip("10.1.0.2"), "c2", "eth0", 3).unwrap();
        let last = tmp.path().join("n/last_reserved_ip.3");
        assert_eq!(std::fs::read(last).unwrap(), b"10.1.0.2");
        assert_eq!(store.last_reserved_ip(3), Some(ip("10.1.0.2")));
    }

    #[test]
    fn fallback_create_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("10.0.0.5");
        assert!(create_exclusive(&path, b"c1\r\neth0").unwrap());
        assert!(!create_exclusive(&path, b"c2\r\neth0").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"c1\r\neth0");
    }

    #[test]
    fn ipv6_file_names_match_go() {
        // Go's net.IP.String() compresses the first longest run of zeros.
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_dir(tmp.path().join("n")).unwrap();
        store
            .reserve(ip("fd00:0:0:1:0:0:1:2"), "c1", "eth0", 0)
            .unwrap();
        assert!(tmp.path().join("n/fd00::1:0:0:1:2").exists());
    }

    #[test]
    fn parses_both_formats_and_ignores_other_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n");
        let store = Store::open_dir(dir.clone()).unwrap();
        std::fs::write(dir.join("10.0.0.2"), "old-id\n").unwrap();
        std::fs::write(dir.join("10.0.0.3"), "c1\r\neth1").unwrap();
        std::fs::write(dir.join("last_reserved_ip.0"), "10.0.0.3").unwrap();
        std::fs::write(dir.join("notes"), "c1\r\neth1").unwrap();
        let mut all = store.reservations().unwrap();
        all.sort_by_key(|r| r.ip);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].container_id, "old-id");
        assert_eq!(all[0].ifname, None);
        assert_eq!(all[0].holder("old-id", "eth7"), Some(Holder::Legacy));
        assert_eq!(all[1].holder("c1", "eth1"), Some(Holder::Exact));
        assert_eq!(all[1].holder("c1", "eth0"), None);
        assert_eq!(all[1].holder("c2", "eth1"), None);
    }
}
