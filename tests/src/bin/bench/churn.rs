//! Churn: hundreds of ADD/DEL cycles on a fresh node, a few pods attached
//! at a time, then a count of what the plugin left behind: links in the
//! node, endpoint map entries, entries of every other hash-type map (read
//! with bpftool), IPAM reservations, attachment records and pinned tcx
//! links. The same probes run once with the first pods attached, to show
//! they see what they look for. Run for the reference bridge too (links and
//! IPAM only).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use cni_ebpf_tests::{Netns, links};
use serde_json::{Value, json};

use crate::{
    Plan,
    cni::{Attachment, BRIDGE_DEVICE, NETWORK, PluginNode},
    exec::{self, OnStop},
    stop,
    topology::{self, Contender},
};

pub const SCENARIO: &str = "churn";
/// Pods attached at once in each batch of cycles.
pub const PODS_AT_ONCE: usize = 4;
/// What is churned, in order: our plugin with its default attachment
/// (`auto`, a clsact filter) and with tcx links (which pin one link per
/// endpoint), then the reference bridge.
const SUBJECTS: [(Contender, Option<&str>); 3] = [
    (Contender::CniEbpf, None),
    (Contender::CniEbpf, Some("tcx")),
    (Contender::Bridge, None),
];

/// What one churn run did and left behind.
#[derive(Debug, Clone)]
pub struct Churn {
    pub contender: Contender,
    /// The contender, and its `attachMode` when set.
    pub label: String,
    /// Link pins an attached pod has: one with tcx links, none with clsact.
    pub pins_per_pod: usize,
    pub cycles: usize,
    pub adds_ms: Vec<f64>,
    pub dels_ms: Vec<f64>,
    pub elapsed: Duration,
    pub error: Option<String>,
    pub leaks: Leaks,
    /// The same probes with the first batch attached: each should count
    /// [`PODS_AT_ONCE`], or the probe is blind and its zero means nothing.
    pub probe: Option<Leaks>,
}

/// Leftovers after every pod was deleted; `None` where the contender has
/// no such state.
#[derive(Debug, Clone, Default)]
pub struct Leaks {
    /// Links in the node namespace that were not there before the first ADD
    /// (the reference bridge's own `cni0` excepted).
    pub links: Vec<String>,
    /// Addresses still in the endpoints map (`cni-ebpfd endpoints --json`).
    pub map_entries: Option<Vec<String>>,
    /// host-local files other than `lock` and `last_reserved_ip.*`.
    pub ipam_files: Vec<String>,
    /// Files left in `<stateDir>/<network>/`.
    pub state_records: Option<Vec<String>>,
    /// Pins left under `<bpffsRoot>/links/` and `<bpffsRoot>/egress-links/`.
    pub link_pins: Option<Vec<String>>,
    /// Entries gained by every other hash-type map pinned under
    /// `<bpffsRoot>/maps/` since the baseline, by map name (non-zero only).
    pub map_growth: Option<BTreeMap<String, i64>>,
}

impl Leaks {
    /// Counts per probe, `None` where the contender has no such state.
    pub fn counts(&self) -> [(&'static str, Option<usize>); 5] {
        [
            ("links", Some(self.links.len())),
            ("map entries", self.map_entries.as_ref().map(Vec::len)),
            ("IPAM files", Some(self.ipam_files.len())),
            ("state records", self.state_records.as_ref().map(Vec::len)),
            ("link pins", self.link_pins.as_ref().map(Vec::len)),
        ]
    }

    /// Entries other maps gained, summed.
    pub fn map_growth_total(&self) -> Option<i64> {
        self.map_growth
            .as_ref()
            .map(|growth| growth.values().filter(|n| **n > 0).sum())
    }

    pub fn total(&self) -> usize {
        self.links.len()
            + self.ipam_files.len()
            + [&self.map_entries, &self.state_records, &self.link_pins]
                .iter()
                .map(|found| found.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
            + usize::try_from(self.map_growth_total().unwrap_or(0)).unwrap_or(0)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "links": self.links,
            "map_entries": self.map_entries,
            "ipam_files": self.ipam_files,
            "state_records": self.state_records,
            "link_pins": self.link_pins,
            "map_growth": self.map_growth,
        })
    }
}

pub fn run(plan: &Plan) -> Result<Vec<Churn>> {
    let mut results = Vec::new();
    for (contender, attach_mode) in SUBJECTS {
        // What was churned so far is still worth reporting.
        if stop::requested() {
            break;
        }
        results.push(churn(contender, attach_mode, plan.churn_cycles)?);
    }
    Ok(results)
}

fn churn(contender: Contender, attach_mode: Option<&str>, cycles: usize) -> Result<Churn> {
    let mut node = topology::plugin_node(contender, cni_ebpf_tests::Family::V4)?
        .ok_or_else(|| anyhow!("{} has no plugin to churn", contender.name()))?;
    let label = match attach_mode {
        Some(mode) => {
            node.set_attach_mode(mode);
            format!("{} (attachMode {mode})", contender.name())
        }
        None => contender.name().to_string(),
    };
    let pods: Vec<Netns> = (0..PODS_AT_ONCE)
        .map(|_| Netns::with_loopback(&format!("bench-churn-{}", contender.name())))
        .collect();
    let baseline = Baseline::take(&node, &pods[0])?;
    let (mut adds_ms, mut dels_ms) = (Vec::new(), Vec::new());
    let mut error = None;
    let mut probe = None;
    let mut done = 0;
    let batches = cycles.div_ceil(PODS_AT_ONCE);
    let started = Instant::now();
    'batches: for batch in 0..batches {
        if stop::requested() {
            error = Some("interrupted".to_string());
            break;
        }
        let mut attached = Vec::with_capacity(PODS_AT_ONCE);
        for pod in &pods {
            match Attachment::add(&node, pod) {
                Ok(attachment) => {
                    adds_ms.push(attachment.add_time().as_secs_f64() * 1e3);
                    attached.push(attachment);
                }
                Err(e) => {
                    // The batch's attachments are deleted as they drop.
                    error = Some(format!("batch {batch}: {e:#}"));
                    break 'batches;
                }
            }
        }
        if batch == 0 {
            probe = Some(leaks(&node, &baseline));
        }
        for attachment in attached {
            match attachment.del() {
                Ok(elapsed) => dels_ms.push(elapsed.as_secs_f64() * 1e3),
                Err(e) => {
                    error = Some(format!("batch {batch}: {e:#}"));
                    break 'batches;
                }
            }
            done += 1;
        }
        if (batch + 1) % 25 == 0 || batch + 1 == batches {
            eprintln!(
                "[{SCENARIO}] {label}: {done}/{} cycles",
                batches * PODS_AT_ONCE
            );
        }
    }
    let elapsed = started.elapsed();
    if let Some(error) = &error {
        eprintln!("[{SCENARIO}] {label}: {error}");
    }
    let leaks = leaks(&node, &baseline);
    Ok(Churn {
        contender,
        pins_per_pod: usize::from(attach_mode == Some("tcx")),
        label,
        cycles: done,
        adds_ms,
        dels_ms,
        elapsed,
        error,
        leaks,
        probe,
    })
}

/// What a node holds with no pod attached.
struct Baseline {
    /// Links before the first ADD.
    links: BTreeSet<String>,
    /// Map sizes after one untimed ADD/DEL cycle: the first ADD loads the
    /// datapath, so the maps exist only from then on.
    maps: BTreeMap<String, usize>,
}

impl Baseline {
    fn take(node: &PluginNode, pod: &Netns) -> Result<Self> {
        let links = links::names(node.netns()).into_iter().collect();
        Attachment::add(node, pod)
            .and_then(Attachment::del)
            .context("the untimed first ADD/DEL cycle")?;
        let maps = node
            .ebpf_node()
            .map(|ebpf| map_sizes(&ebpf.bpffs_root().join("maps")))
            .unwrap_or_default();
        Ok(Self { links, maps })
    }
}

fn leaks(node: &PluginNode, baseline: &Baseline) -> Leaks {
    let links = links::names(node.netns())
        .into_iter()
        .filter(|name| !baseline.links.contains(name))
        .filter(|name| node.ebpf_node().is_some() || name != BRIDGE_DEVICE)
        .collect();
    let ipam_files = entries(&node.ipam_network_dir())
        .into_iter()
        .filter(|name| name != "lock" && !name.starts_with("last_reserved_ip"))
        .collect();
    let Some(ebpf) = node.ebpf_node() else {
        return Leaks {
            links,
            ipam_files,
            ..Leaks::default()
        };
    };
    Leaks {
        links,
        map_entries: Some(ebpf.endpoint_ips().into_iter().collect()),
        ipam_files,
        state_records: Some(
            entries(&ebpf.state_dir().join(NETWORK))
                .into_iter()
                .filter(|name| name != "lock")
                .collect(),
        ),
        link_pins: Some(
            ["links", "egress-links"]
                .iter()
                .flat_map(|dir| {
                    entries(&ebpf.bpffs_root().join(dir))
                        .into_iter()
                        .map(move |name| format!("{dir}/{name}"))
                })
                .collect(),
        ),
        map_growth: Some(map_growth(
            &baseline.maps,
            &map_sizes(&ebpf.bpffs_root().join("maps")),
        )),
    }
}

/// Map types whose entry count says something: arrays are always full.
const COUNTED_MAP_TYPES: &[&str] = &[
    "hash",
    "lru_hash",
    "percpu_hash",
    "lru_percpu_hash",
    "lpm_trie",
];
/// Counted elsewhere: `map_entries`.
const ENDPOINTS_MAP: &str = "ENDPOINTS";

/// Entries of each hash-type map pinned in `dir`, read with bpftool.
fn map_sizes(dir: &Path) -> BTreeMap<String, usize> {
    let mut sizes = BTreeMap::new();
    for name in entries(dir) {
        let path = dir.join(&name).to_string_lossy().into_owned();
        let Some(info) = bpftool(&["map", "show", "pinned", &path]) else {
            continue;
        };
        if !COUNTED_MAP_TYPES.contains(&info["type"].as_str().unwrap_or_default()) {
            continue;
        }
        if let Some(dump) = bpftool(&["map", "dump", "pinned", &path])
            && let Some(entries) = dump.as_array()
        {
            sizes.insert(name, entries.len());
        }
    }
    sizes
}

/// Non-zero size changes from `before` to `after`, ENDPOINTS left out.
fn map_growth(
    before: &BTreeMap<String, usize>,
    after: &BTreeMap<String, usize>,
) -> BTreeMap<String, i64> {
    after
        .iter()
        .filter(|(name, _)| name.as_str() != ENDPOINTS_MAP)
        .filter_map(|(name, now)| {
            let was = before.get(name).copied().unwrap_or(0);
            let change = i64::try_from(*now).ok()? - i64::try_from(was).ok()?;
            (change != 0).then(|| (name.clone(), change))
        })
        .collect()
}

/// `bpftool -j ARGS` as JSON, when it succeeds.
fn bpftool(args: &[&str]) -> Option<Value> {
    let mut command = Command::new("bpftool");
    command.arg("-j").args(args);
    let output = exec::run(&mut command, None, Duration::from_secs(30), OnStop::Finish).ok()?;
    if !output.success() {
        return None;
    }
    serde_json::from_str(&output.stdout).ok()
}

/// Names in `dir`; none when it does not exist.
fn entries(dir: &Path) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = read
        .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}
