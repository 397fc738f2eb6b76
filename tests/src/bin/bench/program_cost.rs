//! What each of our BPF programs costs per run: one extra run of a
//! scenario's traffic on our node with the kernel's BPF run-time statistics
//! on (`BPF_ENABLE_STATS`, the switch behind `kernel.bpf_stats_enabled`,
//! held only for that run and turned off again when its descriptor closes,
//! also if the bench dies), reading `run_time_ns` and `run_cnt` of every
//! program pinned under the node's bpffs root before and after.
//!
//! The measured rounds run with the statistics off: they cost two clock
//! reads per program run, which would be charged to our row only.

use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    programs::ProgramInfo,
    sys::{Stats, enable_stats},
};
use serde_json::{Value, json};

/// Run time and run count of one program, cumulative since it was loaded
/// (counted only while statistics are on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub run_time_ns: u64,
    pub runs: u64,
}

/// The programs' costs over one profiled run.
#[derive(Debug, Clone)]
pub struct Profile {
    /// What traffic ran, e.g. "TCP request/response".
    pub label: String,
    /// What one transaction is ("round trip", "connection", "GB"), and how
    /// many the run made, when the traffic tool says.
    pub per: &'static str,
    pub transactions: Option<f64>,
    /// Programs that ran, by name (the pin's file name).
    pub programs: BTreeMap<String, Counts>,
}

impl Profile {
    /// Nanoseconds of all programs together per transaction.
    pub fn total_ns_per_transaction(&self) -> Option<f64> {
        let n = self.transactions.filter(|n| *n > 0.0)?;
        let ns: u64 = self.programs.values().map(|c| c.run_time_ns).sum();
        Some(ns as f64 / n)
    }

    pub fn markdown(&self) -> String {
        let mut md = format!(
            "### BPF program cost, {} (one extra run with `BPF_ENABLE_STATS`)\n\n\
             | program | runs | ns per run (packet) | runs per {per} | ns per {per} |\n\
             |---|---:|---:|---:|---:|\n",
            self.label,
            per = self.per
        );
        for (name, counts) in &self.programs {
            let per_run = counts.run_time_ns as f64 / counts.runs.max(1) as f64;
            let (runs_per, ns_per) = match self.transactions.filter(|n| *n > 0.0) {
                Some(n) => (
                    format!("{:.2}", counts.runs as f64 / n),
                    format!("{:.0}", counts.run_time_ns as f64 / n),
                ),
                None => ("n/a".into(), "n/a".into()),
            };
            md.push_str(&format!(
                "| {name} | {} | {per_run:.1} | {runs_per} | {ns_per} |\n",
                counts.runs
            ));
        }
        if let Some(total) = self.total_ns_per_transaction() {
            md.push_str(&format!("| **all** | | | | **{total:.0}** |\n"));
        }
        md
    }

    pub fn to_json(&self) -> Value {
        json!({
            "label": self.label,
            "per": self.per,
            "transactions": self.transactions,
            "programs": self.programs.iter().map(|(name, c)| (name.clone(), json!({
                "runs": c.runs,
                "run_time_ns": c.run_time_ns,
                "ns_per_run": c.run_time_ns as f64 / c.runs.max(1) as f64,
            }))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// Every program pinned under `<root>/programs/<build>/`, by name; a
/// program in two builds (mid-upgrade) is summed.
pub fn snapshot(root: &Path) -> Result<BTreeMap<String, Counts>> {
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let programs = root.join("programs");
    for build in read_dir(&programs)? {
        for pin in read_dir(&build)? {
            let Some(name) = pin.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let info = ProgramInfo::from_pin(&pin)
                .with_context(|| format!("reading the program pinned at {}", pin.display()))?;
            let entry = counts.entry(name).or_default();
            entry.run_time_ns += info.run_time().as_nanos() as u64;
            entry.runs += info.run_count();
        }
    }
    Ok(counts)
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    paths.sort();
    Ok(paths)
}

/// Runs `traffic` with statistics on and returns its result and what each
/// program of the node under `root` spent meanwhile (programs that did not
/// run are left out). `transactions` reads the count from the result.
pub fn profile<T>(
    root: &Path,
    label: &str,
    per: &'static str,
    traffic: impl FnOnce() -> Result<T>,
    transactions: impl FnOnce(&T) -> Option<f64>,
) -> Result<(T, Profile)> {
    let stats: OwnedFd = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let before = snapshot(root)?;
    let result = traffic()?;
    let after = snapshot(root)?;
    drop(stats);
    let programs = delta(&before, &after);
    let transactions = transactions(&result);
    Ok((
        result,
        Profile {
            label: label.to_string(),
            per,
            transactions,
            programs,
        },
    ))
}

/// `after - before` for programs that ran in between.
fn delta(
    before: &BTreeMap<String, Counts>,
    after: &BTreeMap<String, Counts>,
) -> BTreeMap<String, Counts> {
    after
        .iter()
        .filter_map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            let runs = a.runs.saturating_sub(b.runs);
            (runs > 0).then(|| {
                (
                    name.clone(),
                    Counts {
                        runs,
                        run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
                    },
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_keeps_programs_that_ran() {
        let counts = |ns, runs| Counts {
            run_time_ns: ns,
            runs,
        };
        let before = BTreeMap::from([
            ("from_pod".to_string(), counts(100, 2)),
            ("to_pod".to_string(), counts(50, 1)),
        ]);
        let after = BTreeMap::from([
            ("from_pod".to_string(), counts(1100, 12)),
            ("to_pod".to_string(), counts(50, 1)),
            ("from_uplink".to_string(), counts(30, 1)),
        ]);
        let d = delta(&before, &after);
        assert_eq!(d.len(), 2);
        assert_eq!(d["from_pod"], counts(1000, 10));
        assert_eq!(d["from_uplink"], counts(30, 1));
        let profile = Profile {
            label: "x".into(),
            per: "round trip",
            transactions: Some(5.0),
            programs: d,
        };
        assert_eq!(profile.total_ns_per_transaction(), Some(206.0));
        let md = profile.markdown();
        assert!(
            md.contains("| from_pod | 10 | 100.0 | 2.00 | 200 |"),
            "{md}"
        );
    }
}
