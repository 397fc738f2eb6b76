//! Startup at scale: on a fresh node, the first ADD (which loads the
//! datapath and pins it) and then ADD after ADD up to [`PODS`] pods, each
//! in its own namespace, timed as a runtime sees it; then DEL of every pod.
//! ADD should cost the same for the 250th pod as for the 2nd: anything that
//! grows with the pods on the node (a dump, a scan, a map walk) shows as a
//! slope across the buckets. Each round starts from a new node.

use anyhow::{Context, Result};
use cni_ebpf_tests::Netns;

use crate::{
    Plan,
    cni::{Attachment, PluginNode},
    metric::{Better, Metric},
    stats, stop,
    topology::Contender,
};

pub const SCENARIO: &str = "scale";
pub const HEADING: &str = "ADD from the 1st to the 250th pod on one node (fresh node each round)";

/// Pods per node: kubelet's default `maxPods` is 110, 250 is the usual
/// ceiling on large nodes.
pub const PODS: usize = 250;
/// Pods 2..=PODS in buckets of this many.
const BUCKET: usize = 50;

const OURS: Contender = Contender::CniEbpf;

pub fn run(plan: &Plan) -> Result<Vec<Metric>> {
    let rows = [OURS];
    let new = |id: &str, title: &str| {
        Metric::new(
            SCENARIO,
            id,
            title,
            "ms",
            2,
            Better::Lower,
            OURS,
            plan.rounds,
        )
        .with_rows(&rows)
    };
    let mut first = new(
        "first-add",
        "first ADD on a fresh node (loads and pins the datapath)",
    );
    let buckets: Vec<(usize, usize)> = (2..=PODS)
        .step_by(BUCKET)
        .map(|start| (start, (start + BUCKET - 1).min(PODS)))
        .collect();
    let mut by_bucket: Vec<Metric> = buckets
        .iter()
        .map(|(lo, hi)| {
            new(
                &format!("add.{lo}-{hi}"),
                &format!("ADD p50 of pods {lo}–{hi}"),
            )
        })
        .collect();
    let mut growth = Metric::new(
        SCENARIO,
        "growth",
        &format!(
            "ADD p50 of the last {BUCKET} pods ÷ ADD p50 of pods 2–{}",
            BUCKET + 1
        ),
        "×",
        2,
        Better::Lower,
        OURS,
        plan.rounds,
    )
    .with_rows(&rows);
    let mut del = new("del", &format!("DEL p50 of all {PODS} pods"));
    for round in plan.round_indices() {
        stop::check()?;
        let Some(round) = round else {
            // The warm-up round would take as long as a measured one.
            continue;
        };
        let (adds, dels, steps) = one_node(round)?;
        first.record(OURS, round, adds.first().copied());
        for ((lo, hi), metric) in buckets.iter().zip(&mut by_bucket) {
            metric.record(OURS, round, stats::median(&adds[lo - 1..*hi]));
        }
        let medians: Vec<Option<f64>> = by_bucket.iter().map(|m| m.rounds[&OURS][round]).collect();
        if let (Some(Some(a)), Some(Some(b))) = (medians.first(), medians.last()) {
            growth.record(OURS, round, Some(b / a));
        }
        del.record(OURS, round, stats::median(&dels));
        eprintln!(
            "[{SCENARIO}] round {} first ADD {:.2} ms, p50 by bucket {}, DEL p50 {:.2} ms",
            round + 1,
            adds[0],
            medians
                .iter()
                .map(|m| m.map_or("n/a".into(), |v| format!("{v:.2}")))
                .collect::<Vec<_>>()
                .join(" / "),
            stats::median(&dels).unwrap_or(0.0)
        );
        report_steps(round, &buckets, &steps);
    }
    let mut metrics = vec![first];
    metrics.extend(by_bucket);
    metrics.extend([growth, del]);
    Ok(metrics)
}

/// ADD's own timing of its steps, as the plugin logs it at debug level:
/// (step, µs) in order; empty unless `CNI_EBPF_LOG=debug`.
type Steps = Vec<(String, f64)>;

/// The [`Steps`] in the plugin's stderr `log` of one ADD.
fn steps_of(log: &str) -> Steps {
    const MARK: &str = "µs per step: ";
    let Some(line) = log.lines().find(|l| l.contains(MARK)) else {
        return Vec::new();
    };
    let pairs = &line[line.find(MARK).unwrap() + MARK.len()..];
    pairs
        .split_whitespace()
        .filter_map(|pair| {
            let (step, us) = pair.split_once('=')?;
            Some((step.to_string(), us.parse().ok()?))
        })
        .collect()
}

/// With `CNI_EBPF_LOG=debug`, each step's p50 by bucket (µs): where a
/// slope across the buckets comes from.
fn report_steps(round: usize, buckets: &[(usize, usize)], steps: &[Steps]) {
    let Some(names) = steps.get(1).filter(|s| !s.is_empty()) else {
        return;
    };
    for (name, _) in names {
        let by_bucket: Vec<String> = buckets
            .iter()
            .map(|(lo, hi)| {
                let values: Vec<f64> = steps[lo - 1..*hi]
                    .iter()
                    .filter_map(|pod| pod.iter().find(|(n, _)| n == name).map(|(_, v)| *v))
                    .collect();
                stats::median(&values).map_or("n/a".into(), |v| format!("{v:.0}"))
            })
            .collect();
        eprintln!(
            "[{SCENARIO}] round {} step {name:<10} p50 µs by bucket {}",
            round + 1,
            by_bucket.join(" / ")
        );
    }
}

/// [`PODS`] ADDs on a new node, then a DEL of each: their times in ms, in
/// the order made, and each ADD's steps ([`steps_of`]).
fn one_node(round: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<Steps>)> {
    let node = PluginNode::cni_ebpf("10.216.0.0/23");
    let pods: Vec<Netns> = (0..PODS)
        .map(|_| Netns::with_loopback("bench-scale"))
        .collect();
    let mut attached = Vec::with_capacity(PODS);
    let mut adds = Vec::with_capacity(PODS);
    let mut steps = Vec::with_capacity(PODS);
    for (i, pod) in pods.iter().enumerate() {
        stop::check()?;
        let attachment = Attachment::add(&node, pod)
            .with_context(|| format!("round {}: ADD of pod {}", round + 1, i + 1))?;
        adds.push(attachment.add_time().as_secs_f64() * 1e3);
        steps.push(steps_of(attachment.add_log()));
        attached.push(attachment);
    }
    let mut dels = Vec::with_capacity(PODS);
    for attachment in attached {
        dels.push(attachment.del()?.as_secs_f64() * 1e3);
    }
    Ok((adds, dels, steps))
}
