//! Calling the plugin binary the way a container runtime does.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    binaries,
    netns::{Netns, NsCommand},
    process,
};

/// Where runtimes look for CNI plugins; the plugin may delegate to the
/// reference IPAM plugins installed there.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// A plugin call can load BPF programs on first use; anything past this is
/// a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One invocation: the `CNI_*` environment and the config on stdin.
#[derive(Debug, Clone)]
pub struct CniRequest<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    /// `CNI_NETNS`; left unset when `None`.
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    /// `CNI_ARGS`, when set.
    pub args: Option<&'a str>,
    pub stdin: &'a [u8],
}

impl CniRequest<'_> {
    /// A command that runs `binary` inside `netns` with this request's
    /// `CNI_*` environment (and nothing else but [`search_path`]); the
    /// config still has to be written to its stdin.
    pub fn command(&self, netns: &Netns, binary: &Path) -> NsCommand {
        let mut command = netns.command(binary);
        command
            .env_clear()
            .env("PATH", search_path())
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", CNI_PATH);
        if let Some(netns) = self.netns {
            command.env("CNI_NETNS", netns);
        }
        if let Some(args) = self.args {
            command.env("CNI_ARGS", args);
        }
        // The plugin's log level, when the caller chose one (the `scale`
        // bench reads ADD's steps at debug level).
        if let Some(level) = std::env::var_os("CNI_EBPF_LOG") {
            command.env("CNI_EBPF_LOG", level);
        }
        command
    }
}

/// The caller's `PATH` with the sbin directories a non-login root may lack:
/// the reference plugins run `iptables` (`ipMasq`, `firewall`, `portmap`).
pub fn search_path() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        if !dirs.iter().any(|d| d == Path::new(extra)) {
            dirs.push(PathBuf::from(extra));
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// What a call returned: exit status, raw streams, stdout as JSON if it is.
#[derive(Debug, Clone)]
pub struct CniOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<Value>,
    /// Wall time of the call as the caller sees it.
    pub elapsed: Duration,
}

impl CniOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The result JSON of a successful ADD or VERSION; panics with the
    /// whole output otherwise.
    pub fn expect_result(&self, what: &str) -> &Value {
        match (&self.json, self.success()) {
            (Some(json), true) => json,
            _ => panic!("{what}: expected a result, got {}", self.describe()),
        }
    }

    /// Panics unless the call exited 0 (DEL and CHECK print nothing then).
    pub fn expect_success(&self, what: &str) {
        if !self.success() {
            panic!("{what}: expected success, got {}", self.describe());
        }
    }

    /// The `code` of an error object on stdout.
    pub fn error_code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }

    /// The `msg` of an error object on stdout.
    pub fn error_msg(&self) -> Option<&str> {
        self.json.as_ref()?.get("msg")?.as_str()
    }

    /// The `details` of an error object on stdout.
    pub fn error_details(&self) -> Option<&str> {
        self.json.as_ref()?.get("details")?.as_str()
    }

    /// Panics unless the call failed with `code`; returns the error message.
    pub fn expect_error(&self, what: &str, code: u64) -> String {
        if self.success() || self.error_code() != Some(code) {
            panic!(
                "{what}: expected a failure with code {code}, got {}",
                self.describe()
            );
        }
        self.error_msg().unwrap_or_default().to_string()
    }

    /// Status and streams, for failure messages.
    pub fn describe(&self) -> String {
        process::describe(self.status, self.elapsed, &self.stdout, &self.stderr)
    }
}

/// The plugin binary.
#[derive(Debug, Clone)]
pub struct Plugin {
    binary: PathBuf,
}

impl Plugin {
    /// The built `cni-ebpf`; panics if it is missing.
    pub fn locate() -> Self {
        Self {
            binary: binaries::path(binaries::PLUGIN),
        }
    }

    /// A plugin binary elsewhere (one `cni-ebpfd install` copied).
    pub fn at(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Runs the plugin inside `node` (the runtime's namespace), as a runtime
    /// does: environment, config on stdin, result on stdout.
    pub fn call(&self, node: &Netns, request: &CniRequest<'_>) -> CniOutput {
        self.call_with_env(node, request, &[])
    }

    /// [`Plugin::call`] with variables beside the `CNI_*` ones (the
    /// plugin's own knobs, e.g. `CNI_EBPF_LOCK_TIMEOUT`).
    pub fn call_with_env(
        &self,
        node: &Netns,
        request: &CniRequest<'_>,
        env: &[(&str, &str)],
    ) -> CniOutput {
        let mut command = request.command(node, &self.binary);
        for (name, value) in env {
            command.env(name, value);
        }
        let started = Instant::now();
        let output = process::output_with_timeout(&mut command, Some(request.stdin), CALL_TIMEOUT)
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.binary.display()));
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        CniOutput {
            status: output.status,
            json: serde_json::from_str(&stdout).ok(),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed,
        }
    }
}
