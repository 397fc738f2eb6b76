//! `flock`s that give up. A lock dies with its holder, but a holder that is
//! alive and stuck (stopped, hung in the kernel) would make every later
//! call on the node wait for it until the runtime kills them, none saying
//! why. Here a caller waits at most [`lock_timeout`] and then fails naming
//! the lock and the process holding it.
//!
//! Waiting is polling with a short backoff (0.2 ms doubling to 10 ms)
//! rather than a blocking `flock` cut short by a timer signal: the plugin
//! and the agent run tokio threads, a signal handler would be process-wide
//! state in a library, and an uncontended lock is taken by the first try
//! at the cost of the blocking call.

use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

/// How long a call waits for a lock unless [`LOCK_TIMEOUT_ENV`] says
/// otherwise: well above the longest section held under it (the first load
/// of the datapath, seconds on a loaded node), well below a runtime's
/// timeout for the whole call (kubelet: 2 minutes).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// Seconds (a decimal number) a call waits for a lock.
pub const LOCK_TIMEOUT_ENV: &str = "CNI_EBPF_LOCK_TIMEOUT";

const FIRST_BACKOFF: Duration = Duration::from_micros(200);
const MAX_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{path} has been locked by {holder} for over {waited:.1?}; try again later (a stuck holder must be ended)"
    )]
    TimedOut {
        path: PathBuf,
        holder: String,
        waited: Duration,
    },
    #[error("locking {path}: {errno}")]
    Failed { path: PathBuf, errno: Errno },
}

/// The wait from [`LOCK_TIMEOUT_ENV`], or [`DEFAULT_LOCK_TIMEOUT`].
pub fn lock_timeout() -> Duration {
    std::env::var(LOCK_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(DEFAULT_LOCK_TIMEOUT, Duration::from_secs_f64)
}

/// Locks `file` (opened from `path`), exclusively or shared, waiting at
/// most [`lock_timeout`].
pub fn lock(file: File, path: &Path, exclusive: bool) -> Result<Flock<File>, LockError> {
    lock_within(file, path, exclusive, lock_timeout())
}

pub fn lock_within(
    mut file: File,
    path: &Path,
    exclusive: bool,
    timeout: Duration,
) -> Result<Flock<File>, LockError> {
    let how = if exclusive {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockSharedNonblock
    };
    let started = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    loop {
        match Flock::lock(file, how) {
            Ok(lock) => return Ok(lock),
            Err((back, Errno::EWOULDBLOCK | Errno::EINTR)) => file = back,
            Err((_, errno)) => {
                return Err(LockError::Failed {
                    path: path.to_path_buf(),
                    errno,
                });
            }
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(LockError::TimedOut {
                path: path.to_path_buf(),
                holder: holder(&file).unwrap_or_else(|| "another process".to_string()),
                waited,
            });
        }
        thread::sleep(backoff.min(timeout - waited));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Who holds a `flock` on `file`'s inode, from `/proc/locks`: "pid N
/// (comm)", or `None` when no holder is listed (it just let go).
fn holder(file: &File) -> Option<String> {
    let meta = file.metadata().ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = holder_in(&locks, meta.dev(), meta.ino())?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Some(format!("pid {pid} ({})", comm.trim()))
}

/// The pid holding a FLOCK on (`dev`, `ino`) in `/proc/locks` text. Lines
/// read `1: FLOCK  ADVISORY  WRITE 4242 fd:01:131 0 EOF`; waiters' lines
/// carry `->` and are skipped.
fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let wanted = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.contains(&"->") || fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        (fields.get(5) == Some(&wanted.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;

    #[test]
    fn finds_the_holder_in_proc_locks() {
        let dev = nix::sys::stat::makedev(0xfd, 1);
        let locks = "1: POSIX  ADVISORY  WRITE 11 fd:01:131 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 fd:01:131 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4343 fd:01:131 0 EOF\n\
                     3: FLOCK  ADVISORY  READ 77 fd:01:999 0 EOF\n";
        assert_eq!(holder_in(locks, dev, 131), Some(4242));
        assert_eq!(holder_in(locks, dev, 999), Some(77));
        assert_eq!(holder_in(locks, dev, 5), None);
    }

    #[test]
    fn gives_up_naming_the_holder_and_takes_a_free_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let held = lock_within(open(), &path, true, Duration::ZERO).expect("a free lock");
        // Another open file description of the same file: flock conflicts
        // with it as with another process.
        let started = Instant::now();
        let err = lock_within(open(), &path, false, Duration::from_millis(50)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains(&path.display().to_string()), "{text}");
        drop(held);
        lock_within(open(), &path, false, Duration::from_millis(50)).expect("released");
    }
}
