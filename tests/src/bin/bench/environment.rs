//! What the numbers were measured on: kernel, CPUs, load, tool and
//! reference-plugin versions, and the git revision.

use std::{path::Path, process::Command, time::Duration};

use crate::{
    cni::CNI_PATH,
    exec::{self, OnStop},
};

/// Ordered `(what, value)` lines.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub items: Vec<(String, String)>,
}

impl Environment {
    pub fn collect(workspace: &Path) -> Self {
        let mut items = Vec::new();
        let mut add = |key: &str, value: String| items.push((key.to_string(), value));
        add(
            "date (UTC)",
            first_line("date", &["-u", "+%Y-%m-%d %H:%M:%S"]).unwrap_or_default(),
        );
        add("kernel", read_trimmed("/proc/sys/kernel/osrelease"));
        add("CPUs", cpus());
        add("load average at start", load_average());
        add(
            "iperf3",
            first_line("iperf3", &["--version"]).unwrap_or_else(|| "missing".into()),
        );
        add("sockperf", sockperf_version());
        add("reference plugins", reference_plugins());
        add("git revision", git_revision(workspace));
        Self { items }
    }

    pub fn push(&mut self, key: &str, value: String) {
        self.items.push((key.to_string(), value));
    }
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages.
pub fn load_average() -> String {
    read_trimmed("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpus() -> String {
    let count = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_default();
    format!("{count} ({model})")
}

fn sockperf_version() -> String {
    let Some(output) = run("sockperf", &["--version"]) else {
        return "missing".into();
    };
    output
        .lines()
        .find(|line| line.contains("version"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The Debian package's version, and what the `bridge` binary says of
/// itself (the package builds it without a version string).
fn reference_plugins() -> String {
    let package = first_line(
        "dpkg-query",
        &["-W", "-f", "${Version}", "containernetworking-plugins"],
    )
    .map(|version| format!("containernetworking-plugins {version}"))
    .unwrap_or_else(|| "containernetworking-plugins (not from dpkg)".into());
    let bridge = Path::new(CNI_PATH).join("bridge");
    let about = run(&bridge.to_string_lossy(), &[])
        .and_then(|text| text.lines().next().map(str::to_string))
        .unwrap_or_default();
    let mut version = Command::new(&bridge);
    version.env("CNI_COMMAND", "VERSION");
    let spec = exec::run(
        &mut version,
        Some(b"{}"),
        Duration::from_secs(10),
        OnStop::Finish,
    )
    .ok()
    .and_then(|out| serde_json::from_str::<serde_json::Value>(&out.stdout).ok())
    .and_then(|v| {
        let versions = v["supportedVersions"].as_array()?;
        Some(versions.last()?.as_str()?.to_string())
    })
    .map(|latest| format!(", CNI spec up to {latest}"))
    .unwrap_or_default();
    format!("{package} ({about}{spec})")
}

fn git_revision(workspace: &Path) -> String {
    let dir = workspace.to_string_lossy();
    let Some(head) = first_line("git", &["-C", &dir, "rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    // --no-optional-locks: never take the index lock of a shared checkout.
    let dirty = run(
        "git",
        &[
            "--no-optional-locks",
            "-C",
            &dir,
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_some_and(|status| !status.trim().is_empty());
    if dirty {
        format!("{head} (with uncommitted changes)")
    } else {
        head
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// stdout and stderr of a short command, if it ran.
fn run(program: &str, args: &[&str]) -> Option<String> {
    let mut command = Command::new(program);
    command.args(args);
    let output = exec::run(&mut command, None, Duration::from_secs(10), OnStop::Finish).ok()?;
    Some(format!("{}{}", output.stdout, output.stderr))
}

fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let mut command = Command::new(program);
    command.args(args);
    let output = exec::run(&mut command, None, Duration::from_secs(10), OnStop::Finish).ok()?;
    if !output.success() {
        return None;
    }
    output.stdout.lines().next().map(|l| l.trim().to_string())
}
