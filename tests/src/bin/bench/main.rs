//! `cni-ebpf-bench`: pod-to-pod throughput, request/response latency,
//! connect rate, plugin ADD/DEL latency and churn leaks, for our plugin
//! against a direct veth pair (`limit`) and the reference `bridge` and
//! `ptp` plugins; then pod → outside (masquerade), pod → ClusterIP beside
//! kube-proxy's rules, published host ports and bandwidth limits, each
//! against its reference. Run through
//! `cargo xtask bench [--quick] [--scenario NAME]`.
//!
//! Everything runs in network namespaces made here and removed at the end,
//! also on failure or Ctrl-C; nothing touches the machine's own namespace.

mod bandwidth;
mod big_tcp;
mod churn;
mod cross_node;
mod crr;
mod environment;
mod floor;
mod flows;
mod host_ports;
mod latency;
mod masquerade;
mod metric;
mod plugin_timing;
mod program_cost;
mod qperf;
mod report;
mod scale;
mod services;
mod stats;
mod tcp;
mod topology;
mod xdp;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use cni_ebpf_tests::{Family, binaries, require_root};
// What moved into the harness library, under the bench's old names.
use cni_ebpf_tests::{chain, exec, plugin_node as cni, stop};
use nix::{sched::sched_getaffinity, unistd::Pid};

use crate::{
    cni::{CNI_PATH, PluginNode},
    environment::Environment,
    program_cost::Profile,
    report::{Report, Section},
    topology::{Contender, PodPair},
};

const USAGE: &str = "usage: cni-ebpf-bench [--quick] [--scenario NAME]...

  --quick          3 rounds of 2 s runs, 20 plugin cycles, 100 churn cycles:
                   a smoke test, not a measurement
  --scenario NAME  run only NAME (repeatable, or comma-separated):
                   tcp, rr, crr, plugin, churn, masq, services, hostport,
                   bandwidth, cross-node, bigtcp, scale, xdp
  --ipv6           pods addressed over IPv6 only (each contender a /64):
                   tcp, rr (qperf: sockperf 3.7 has no IPv6), crr, plugin
                   and masq
  --attach-mode M  our plugin's attachMode in the pod pair and plugin
                   scenarios (auto, tcx, clsact; default: the plugin's)

Needs root. Reads the binaries from $CNI_EBPF_BIN_DIR (set by `cargo xtask
bench`) and writes target/bench/results.{md,json} and throughput.svg.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Tcp,
    Rr,
    Crr,
    Plugin,
    Churn,
    Masq,
    Services,
    Hostport,
    Bandwidth,
    CrossNode,
    BigTcp,
    Scale,
    Xdp,
}

impl Scenario {
    const ALL: [Scenario; 13] = [
        Scenario::Tcp,
        Scenario::Rr,
        Scenario::Crr,
        Scenario::Plugin,
        Scenario::Churn,
        Scenario::Masq,
        Scenario::Services,
        Scenario::Hostport,
        Scenario::Bandwidth,
        Scenario::CrossNode,
        Scenario::BigTcp,
        Scenario::Scale,
        Scenario::Xdp,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Tcp => tcp::SCENARIO,
            Scenario::Rr => latency::SCENARIO,
            Scenario::Crr => crr::SCENARIO,
            Scenario::Plugin => plugin_timing::SCENARIO,
            Scenario::Churn => churn::SCENARIO,
            Scenario::Masq => masquerade::SCENARIO,
            Scenario::Services => services::SCENARIO,
            Scenario::Hostport => host_ports::SCENARIO,
            Scenario::Bandwidth => bandwidth::SCENARIO,
            Scenario::CrossNode => cross_node::SCENARIO,
            Scenario::BigTcp => big_tcp::SCENARIO,
            Scenario::Scale => scale::SCENARIO,
            Scenario::Xdp => xdp::SCENARIO,
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Scenario::Tcp => {
                "pod → pod TCP throughput (iperf3, client and server on different CPUs)"
            }
            Scenario::Rr => {
                "request/response latency (sockperf ping-pong, qperf over IPv6, both ends on one CPU)"
            }
            Scenario::Crr => {
                "connect/request/response/close rate (own tester, both ends on one CPU)"
            }
            Scenario::Plugin => "plugin ADD and DEL latency as a runtime sees it",
            Scenario::Churn => "ADD/DEL churn and leaks",
            Scenario::Masq => masquerade::HEADING,
            Scenario::Services => services::HEADING,
            Scenario::Hostport => host_ports::HEADING,
            Scenario::Bandwidth => bandwidth::HEADING,
            Scenario::CrossNode => cross_node::HEADING,
            Scenario::BigTcp => big_tcp::HEADING,
            Scenario::Scale => scale::HEADING,
            Scenario::Xdp => xdp::HEADING,
        }
    }

    /// What its rows are, for the scenarios with rows of their own.
    fn note(self) -> Option<&'static str> {
        match self {
            Scenario::CrossNode => Some(cross_node::NOTE),
            _ => None,
        }
    }

    /// Whether it runs with `--ipv6`: the pod pair scenarios (`rr` with
    /// qperf: Debian's sockperf 3.7 takes no IPv6 address) and masquerade.
    fn runs_over_ipv6(self) -> bool {
        self.needs_pairs() || self == Scenario::Masq
    }

    /// Whether it runs between the contenders' pod pairs.
    fn needs_pairs(self) -> bool {
        matches!(
            self,
            Scenario::Tcp | Scenario::Rr | Scenario::Crr | Scenario::Plugin
        )
    }
}

struct Options {
    quick: bool,
    scenarios: Vec<Scenario>,
    /// The pods' family in the pod pair scenarios.
    family: Family,
    /// Our plugin's `attachMode` on its pod pair node, when given.
    attach_mode: Option<String>,
}

/// CPUs the pinned ends run on.
#[derive(Debug, Clone, Copy)]
pub struct Cpus {
    /// iperf3 client.
    pub client: usize,
    /// iperf3 server: another CPU than the client's when there is one.
    pub server: usize,
    /// Both ends of sockperf and of the CRR tester.
    pub rr: usize,
}

/// How much to measure.
pub struct Plan {
    /// Measured rounds (a warm-up round comes first and is discarded).
    pub rounds: usize,
    /// Length of one traffic run.
    pub run_time: Duration,
    /// ADD/DEL cycles per contender per round.
    pub plugin_cycles: usize,
    pub churn_cycles: usize,
    pub cpus: Cpus,
}

impl Plan {
    fn new(quick: bool, cpus: Cpus) -> Self {
        if quick {
            Self {
                rounds: 3,
                run_time: Duration::from_secs(2),
                plugin_cycles: 7,
                churn_cycles: 100,
                cpus,
            }
        } else {
            Self {
                rounds: 5,
                run_time: Duration::from_secs(5),
                plugin_cycles: 20,
                churn_cycles: 500,
                cpus,
            }
        }
    }

    /// `None` for the warm-up round, then the measured rounds.
    pub fn round_indices(&self) -> impl Iterator<Item = Option<usize>> + use<> {
        std::iter::once(None).chain((0..self.rounds).map(Some))
    }

    fn describe(&self, quick: bool) -> String {
        format!(
            "{}: 1 warm-up + {} rounds, {} s per traffic run, {} plugin cycles per round, {} churn cycles",
            if quick { "quick" } else { "full" },
            self.rounds,
            self.run_time.as_secs(),
            self.plugin_cycles,
            self.churn_cycles
        )
    }
}

/// One progress line on stderr.
pub fn progress(
    scenario: &str,
    round: Option<usize>,
    contender: Contender,
    label: &str,
    result: &Result<f64>,
    unit: &str,
) {
    let round = round.map_or_else(|| "warm-up".to_string(), |r| format!("round {}", r + 1));
    match result {
        Ok(value) => eprintln!(
            "[{scenario}] {round:<8} {:<9} {label:<18} {value:>12.2} {unit}",
            contender.name()
        ),
        Err(e) => eprintln!(
            "[{scenario}] {round:<8} {:<9} {label:<18} FAILED: {e:#}",
            contender.name()
        ),
    }
}

/// One extra run of `traffic` on our pod pair with the programs' run-time
/// statistics on (see [`program_cost`]); `None`, said on stderr, when there
/// is no such pair or the run fails: the scenario's rounds stand anyway.
pub fn profile_pair<T>(
    scenario: &str,
    pairs: &[PodPair<'_>],
    label: &str,
    per: &'static str,
    traffic: impl FnOnce(&PodPair<'_>) -> Result<T>,
    transactions: impl FnOnce(&T) -> Option<f64>,
) -> Option<Profile> {
    let (pair, root) = pairs
        .iter()
        .find_map(|pair| Some((pair, pair.bpffs_root()?)))?;
    match program_cost::profile(root, label, per, || traffic(pair), transactions) {
        Ok((_, profile)) => {
            for (name, counts) in &profile.programs {
                eprintln!(
                    "[{scenario}] profile  {label}: {name} {} runs, {:.1} ns per run",
                    counts.runs,
                    counts.run_time_ns as f64 / counts.runs.max(1) as f64
                );
            }
            Some(profile)
        }
        Err(e) => {
            eprintln!("[{scenario}] profile  {label}: FAILED: {e:#}");
            None
        }
    }
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cni-ebpf-bench: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    require_root();
    if let Err(e) = stop::install() {
        eprintln!("cni-ebpf-bench: installing the signal handler: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cni-ebpf-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Options>> {
    let mut quick = false;
    let mut family = Family::V4;
    let mut attach_mode = None;
    let mut scenarios = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let names = match arg.as_str() {
            "--quick" => {
                quick = true;
                continue;
            }
            "--ipv6" => {
                family = Family::V6;
                continue;
            }
            "--attach-mode" => {
                let mode = args.next().context("--attach-mode needs a MODE")?;
                if !["auto", "tcx", "clsact"].contains(&mode.as_str()) {
                    bail!("--attach-mode {mode:?}: expected auto, tcx or clsact");
                }
                attach_mode = Some(mode);
                continue;
            }
            "-h" | "--help" => return Ok(None),
            "--scenario" => args.next().context("--scenario needs a NAME")?,
            other => match other.strip_prefix("--scenario=") {
                Some(names) => names.to_string(),
                None => bail!("unknown argument {other:?}"),
            },
        };
        for name in names.split(',').filter(|n| !n.is_empty()) {
            let Some(scenario) = Scenario::ALL.into_iter().find(|s| s.name() == name) else {
                bail!("unknown scenario {name:?}");
            };
            if !scenarios.contains(&scenario) {
                scenarios.push(scenario);
            }
        }
    }
    if scenarios.is_empty() {
        scenarios = Scenario::ALL.to_vec();
        if family == Family::V6 {
            scenarios.retain(|s| s.runs_over_ipv6());
        }
    }
    if family == Family::V6
        && let Some(other) = scenarios.iter().find(|s| !s.runs_over_ipv6())
    {
        bail!(
            "--ipv6 runs tcp, rr, crr, plugin and masq only, not {:?}",
            other.name()
        );
    }
    // Always in the canonical order, whatever the command line's.
    scenarios.sort_by_key(|s| Scenario::ALL.iter().position(|a| a == s));
    Ok(Some(Options {
        quick,
        scenarios,
        family,
        attach_mode,
    }))
}

/// Returns whether every scenario ran to its end.
fn run(options: &Options) -> Result<bool> {
    check_tools(&options.scenarios, options.family)?;
    let workspace = workspace_root();
    let binaries = snapshot_binaries()?;
    let plan = Plan::new(options.quick, pick_cpus()?);
    let mut environment = Environment::collect(&workspace);
    environment.push("mode", plan.describe(options.quick));
    environment.push(
        "pinning",
        format!(
            "iperf3 client CPU {}, server CPU {}; sockperf and CRR both ends CPU {}",
            plan.cpus.client, plan.cpus.server, plan.cpus.rr
        ),
    );
    environment.push("binaries", binaries.describe.clone());
    environment.push(
        "pods' family",
        match options.family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6 (--ipv6)",
        }
        .to_string(),
    );
    environment.push(
        "cni-ebpf attachMode",
        options.attach_mode.clone().unwrap_or_else(|| {
            "the plugin's default (auto: the pair is moved onto tcx with `cni-ebpfd promote`, \
                 as the agent does after ADD)"
                .to_string()
        }),
    );
    for (key, value) in &environment.items {
        eprintln!("{key}: {value}");
    }

    let needs_pairs = options.scenarios.iter().any(|s| s.needs_pairs());
    let nodes: Vec<(Contender, Option<PluginNode>)> = if needs_pairs {
        Contender::ALL
            .into_iter()
            .map(|c| {
                let mut node = topology::plugin_node(c, options.family)?;
                if let (Contender::CniEbpf, Some(node), Some(mode)) =
                    (c, node.as_mut(), &options.attach_mode)
                {
                    node.set_attach_mode(mode);
                }
                Ok((c, node))
            })
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let pairs: Vec<PodPair<'_>> = nodes
        .iter()
        .map(|(contender, node)| PodPair::new(*contender, node.as_ref(), options.family))
        .collect::<Result<_>>()?;
    let plugin_nodes: Vec<(Contender, &PluginNode)> = nodes
        .iter()
        .filter_map(|(contender, node)| Some((*contender, node.as_ref()?)))
        .collect();

    let mut sections = Vec::new();
    for scenario in &options.scenarios {
        if stop::requested() {
            break;
        }
        eprintln!("\n== {} — {}", scenario.name(), scenario.heading());
        let load_before = environment::load_average();
        let metrics_only = |m| (m, Vec::new(), Vec::new());
        let outcome = match scenario {
            Scenario::Tcp => tcp::run(&pairs, &plan).map(|(m, p)| (m, Vec::new(), p)),
            Scenario::Rr => latency::run(&pairs, &plan).map(|(m, p)| (m, Vec::new(), p)),
            Scenario::Crr => crr::run(&pairs, &plan).map(|(m, p)| (m, Vec::new(), p)),
            Scenario::Plugin => plugin_timing::run(&plugin_nodes, &plan).map(metrics_only),
            Scenario::Churn => churn::run(&plan).map(|c| (Vec::new(), c, Vec::new())),
            Scenario::Masq => masquerade::run(&plan, options.family).map(metrics_only),
            Scenario::Services => services::run(&plan).map(metrics_only),
            Scenario::Hostport => host_ports::run(&plan).map(metrics_only),
            Scenario::Bandwidth => bandwidth::run(&plan).map(metrics_only),
            Scenario::CrossNode => cross_node::run(&plan).map(metrics_only),
            Scenario::BigTcp => big_tcp::run(&plan).map(metrics_only),
            Scenario::Scale => scale::run(&plan).map(metrics_only),
            Scenario::Xdp => xdp::run(&plan).map(metrics_only),
        };
        let (metrics, churn, profiles, error) = match outcome {
            Ok((metrics, churn, profiles)) => (metrics, churn, profiles, None),
            Err(e) => {
                eprintln!("[{}] stopped: {e:#}", scenario.name());
                (Vec::new(), Vec::new(), Vec::new(), Some(format!("{e:#}")))
            }
        };
        sections.push(Section {
            scenario: scenario.name(),
            heading: scenario.heading(),
            note: scenario.note(),
            load_before,
            load_after: environment::load_average(),
            metrics,
            churn,
            profiles,
            error,
        });
    }

    // Pods first (DEL), then nodes, namespaces and mounts.
    drop(pairs);
    drop(plugin_nodes);
    drop(nodes);
    environment.push("load average at end", environment::load_average());
    let complete = !stop::requested()
        && sections.iter().all(|s| s.error.is_none())
        && sections.len() == options.scenarios.len();

    let report = Report {
        environment,
        sections,
    };
    println!("{}", report.markdown());
    let written = report.write(&workspace.join("target").join("bench"))?;
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    report_leftovers();
    Ok(complete)
}

/// Fails early, naming what to install, when a tool is missing.
fn check_tools(scenarios: &[Scenario], family: Family) -> Result<()> {
    let mut needed = vec![("ip", "iproute2"), ("ping", "iputils-ping")];
    let traffic_outside = scenarios.iter().any(|s| {
        matches!(
            s,
            Scenario::Masq
                | Scenario::Services
                | Scenario::Hostport
                | Scenario::Bandwidth
                | Scenario::CrossNode
                | Scenario::BigTcp
                | Scenario::Xdp
        )
    });
    if scenarios.contains(&Scenario::CrossNode) {
        needed.push(("bridge", "iproute2"));
    }
    if scenarios.contains(&Scenario::Tcp) || traffic_outside {
        needed.push(("iperf3", "iperf3"));
    }
    if scenarios.contains(&Scenario::Rr) || traffic_outside {
        needed.push(match family {
            Family::V4 => ("sockperf", "sockperf"),
            Family::V6 => ("qperf", "qperf"),
        });
    }
    if scenarios.contains(&Scenario::Churn) {
        needed.push(("bpftool", "bpftool"));
    }
    if scenarios.contains(&Scenario::Services) {
        needed.push(("iptables-restore", "iptables"));
    }
    if traffic_outside
        || scenarios
            .iter()
            .any(|s| matches!(s, Scenario::Tcp | Scenario::Rr))
    {
        needed.push(("taskset", "util-linux"));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = |tool: &str| {
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .any(|dir| dir.join(tool).is_file())
    };
    let missing: Vec<String> = needed
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(tool, package)| format!("{tool} (Debian package {package})"))
        .collect();
    if !missing.is_empty() {
        bail!("missing tools: {}", missing.join(", "));
    }
    for plugin in ["bridge", "ptp", "host-local", "portmap", "bandwidth"] {
        if !Path::new(CNI_PATH).join(plugin).is_file() {
            bail!("{CNI_PATH}/{plugin} is missing: install containernetworking-plugins");
        }
    }
    // Panics with what to do when the binaries are not built.
    binaries::path(binaries::PLUGIN);
    binaries::path(binaries::AGENT);
    Ok(())
}

/// Copies of the binaries under test, taken at start, so that a rebuild
/// of the shared `target/` during the run cannot swap the plugin between
/// rounds. Removed when dropped.
struct BinarySnapshot {
    _dir: tempfile::TempDir,
    describe: String,
}

fn snapshot_binaries() -> Result<BinarySnapshot> {
    let dir = tempfile::Builder::new()
        .prefix("cni-ebpf-bench-bin-")
        .tempdir()
        .context("creating a directory for the binaries under test")?;
    let mut built = Vec::new();
    for name in [binaries::PLUGIN, binaries::AGENT] {
        let source = binaries::path(name);
        std::fs::copy(&source, dir.path().join(name))
            .with_context(|| format!("copying {}", source.display()))?;
        let modified = std::fs::metadata(&source)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or(String::new(), |age| {
                format!(", built {} min before the run", age.as_secs() / 60)
            });
        built.push(format!("{}{modified}", source.display()));
    }
    // SAFETY: no other thread exists yet; every later lookup of the
    // binaries (the harness's included) reads this variable.
    unsafe { std::env::set_var("CNI_EBPF_BIN_DIR", dir.path()) };
    Ok(BinarySnapshot {
        _dir: dir,
        describe: built.join("; "),
    })
}

/// Client and server on two different CPUs when this process may use two.
fn pick_cpus() -> Result<Cpus> {
    let allowed = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|cpu| allowed.is_set(*cpu).unwrap_or(false))
        .collect();
    let first = *cpus
        .first()
        .context("no CPU in this process's affinity mask")?;
    let second = cpus.get(1).copied().unwrap_or(first);
    if second == first {
        eprintln!("only one CPU available: iperf3 client and server share it");
    }
    Ok(Cpus {
        client: first,
        server: second,
        rr: first,
    })
}

/// `$CNI_EBPF_BIN_DIR/../..` (set by `cargo xtask bench` to
/// `<workspace>/target/release`), else the nearest ancestor of the current
/// directory holding a workspace `Cargo.toml`, else the current directory.
fn workspace_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CNI_EBPF_BIN_DIR") {
        let dir = PathBuf::from(dir);
        let dir = dir.canonicalize().unwrap_or(dir);
        if let Some(root) = dir.parent().and_then(Path::parent) {
            return root.to_path_buf();
        }
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    cwd.ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|manifest| manifest.contains("[workspace]"))
        })
        .map(Path::to_path_buf)
        .unwrap_or(cwd)
}

/// Warns about namespaces of this process still present after cleanup.
fn report_leftovers() {
    let tag = format!("-{}-", std::process::id());
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .filter(|name| name.starts_with("cet-") && name.contains(&tag))
                .collect()
        })
        .unwrap_or_default();
    if left.is_empty() {
        eprintln!("cleanup: every namespace of this run is gone");
    } else {
        eprintln!("cleanup: namespaces left behind: {}", left.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn parses_scenarios() {
        let cross = parse(&["--quick", "--scenario", "cross-node"])
            .unwrap()
            .unwrap();
        assert_eq!(cross.scenarios, vec![Scenario::CrossNode]);
        let options = parse(&["--quick", "--scenario", "crr,tcp", "--scenario=tcp"])
            .unwrap()
            .unwrap();
        assert!(options.quick);
        assert_eq!(options.scenarios, vec![Scenario::Tcp, Scenario::Crr]);
        let all = parse(&[]).unwrap().unwrap();
        assert_eq!(all.scenarios, Scenario::ALL.to_vec());
        assert!(parse(&["--scenario", "nope"]).is_err());
        assert!(parse(&["--scenario"]).is_err());
        assert!(parse(&["--help"]).unwrap().is_none());
        let v6 = parse(&["--ipv6"]).unwrap().unwrap();
        assert_eq!(v6.family, Family::V6);
        assert_eq!(
            v6.scenarios,
            vec![
                Scenario::Tcp,
                Scenario::Rr,
                Scenario::Crr,
                Scenario::Plugin,
                Scenario::Masq
            ]
        );
        assert!(parse(&["--ipv6", "--scenario", "masq"]).is_ok());
        assert!(parse(&["--ipv6", "--scenario", "hostport"]).is_err());
    }
}
