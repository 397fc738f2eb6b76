//! A named network namespace that lives as long as its guard, and ways to
//! run code inside it without `ip netns exec` (which remounts `/sys` and
//! costs milliseconds per call).

use std::{
    ffi::OsStr,
    fs::File,
    io,
    ops::{Deref, DerefMut},
    os::{
        fd::{AsRawFd, BorrowedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::Duration,
};

use nix::{
    mount::{MntFlags, umount2},
    sched::{CloneFlags, setns},
};

use crate::{
    names,
    process::{self, DEFAULT_TIMEOUT},
    require_root,
};

/// Where `ip netns` keeps its bind mounts.
const NETNS_RUN_DIR: &str = "/run/netns";

/// A network namespace bind-mounted at `/run/netns/<name>` (so `ip netns`
/// sees it too); unmounted and removed on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// A fresh namespace named `<role>-<pid>-<n>`, with every link down
    /// (`lo` included) as the kernel makes it.
    pub fn new(role: &str) -> Self {
        require_root();
        let name = names::unique(&format!("cet-{role}"));
        let output = process::output_with_timeout(
            Command::new("ip").args(["netns", "add", &name]),
            None,
            DEFAULT_TIMEOUT,
        )
        .expect("running `ip netns add` (is iproute2 installed?)");
        process::expect_success(&format!("ip netns add {name}"), &output);
        let path = Path::new(NETNS_RUN_DIR).join(&name);
        Self { name, path }
    }

    /// The network namespace of process `pid` (one a runtime made), named
    /// here as `ip netns attach` names it; only that name is removed on
    /// drop, the namespace lives as long as its processes.
    pub fn attach(role: &str, pid: u32) -> Self {
        require_root();
        let name = names::unique(&format!("cet-{role}"));
        let output = process::output_with_timeout(
            Command::new("ip").args(["netns", "attach", &name, &pid.to_string()]),
            None,
            DEFAULT_TIMEOUT,
        )
        .expect("running `ip netns attach`");
        process::expect_success(&format!("ip netns attach {name} {pid}"), &output);
        let path = Path::new(NETNS_RUN_DIR).join(&name);
        Self { name, path }
    }

    /// A fresh namespace with `lo` up.
    pub fn with_loopback(role: &str) -> Self {
        let ns = Self::new(role);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command that runs inside this namespace (setns before exec).
    pub fn command(&self, program: impl AsRef<OsStr>) -> NsCommand {
        NsCommand::new(&self.path, program)
    }

    /// Runs `program args` inside the namespace, bounded in time, and
    /// returns its output whatever its exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Output {
        let mut command = self.command(program);
        command.args(args);
        process::output_with_timeout(&mut command, None, DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("spawning {program} in netns {}: {e}", self.name))
    }

    /// Runs `program args` inside the namespace; panics unless it succeeds.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> String {
        let output = self.exec(program, args);
        let line: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        process::expect_success(
            &format!("`{program} {}` in netns {}", line.join(" "), self.name),
            &output,
        )
    }

    /// `ip ARGS` inside the namespace; panics unless it succeeds.
    pub fn ip(&self, args: &[&str]) -> String {
        self.exec_ok("ip", args)
    }

    /// Runs `f` on a new thread that joined this namespace; the caller may
    /// lend it borrowed data. Panics in `f` propagate.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name(format!("in-{}", self.name))
                .spawn_scoped(scope, || {
                    enter(&self.path);
                    f()
                })
                .expect("spawning a thread");
            match handle.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a new thread that joined this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = self.path.clone();
        thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                enter(&path);
                f()
            })
            .expect("spawning a thread")
    }

    /// Writes `/proc/sys/<key>` (dots as in `sysctl`) inside the namespace:
    /// `/proc/sys/net` belongs to the netns of the task that opens it.
    pub fn set_sysctl(&self, key: &str, value: &str) {
        let path = sysctl_path(key);
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", self.name));
    }

    /// Reads `/proc/sys/<key>` inside the namespace, trimmed.
    pub fn sysctl(&self, key: &str) -> String {
        let path = sysctl_path(key);
        self.run(|| std::fs::read_to_string(&path))
            .unwrap_or_else(|e| panic!("reading sysctl {key} in {}: {e}", self.name))
            .trim()
            .to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // What `ip netns del` does; processes still inside keep the
        // namespace alive, but nothing can reach it by name any more.
        if let Err(e) = umount2(&self.path, MntFlags::MNT_DETACH) {
            eprintln!("[harness] unmounting {}: {e}", self.path.display());
        }
        // The bind mount can take a moment to release after a lazy unmount.
        for _ in 0..50 {
            match std::fs::remove_file(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
        eprintln!("[harness] could not remove {}", self.path.display());
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Moves the calling thread into the namespace at `path`; panics if it
/// cannot, since code meant for the namespace must never run outside it.
pub fn enter(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening netns {}: {e}", path.display()));
    setns(&file, CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
}

/// A [`Command`] whose child joins a network namespace before exec. Holds
/// the namespace's file descriptor until it is dropped.
pub struct NsCommand {
    command: Command,
    _netns: File,
}

impl NsCommand {
    pub fn new(netns: &Path, program: impl AsRef<OsStr>) -> Self {
        let file =
            File::open(netns).unwrap_or_else(|e| panic!("opening netns {}: {e}", netns.display()));
        let fd = file.as_raw_fd();
        let mut command = Command::new(program);
        // SAFETY: setns(2) is async-signal-safe, and `fd` stays open in the
        // parent (owned by `_netns`) for as long as the command can spawn.
        unsafe {
            command.pre_exec(move || {
                setns(BorrowedFd::borrow_raw(fd), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
        Self {
            command,
            _netns: file,
        }
    }
}

impl Deref for NsCommand {
    type Target = Command;

    fn deref(&self) -> &Command {
        &self.command
    }
}

impl DerefMut for NsCommand {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.command
    }
}
