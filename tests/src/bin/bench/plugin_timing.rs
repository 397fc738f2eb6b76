//! ADD and DEL latency of each plugin, timed from the caller's side (spawn
//! to exit) as a runtime sees it, on the same nodes the traffic scenarios
//! use (two pods already attached).
//!
//! Each contender reuses one pod namespace for all its cycles: creating and
//! destroying namespaces is not the plugin's work, and the kernel tears a
//! namespace down asynchronously under `rtnl_lock`, which would land inside
//! the next timed call.

use anyhow::{Result, anyhow};
use cni_ebpf_tests::Netns;

use crate::{
    Plan,
    cni::{Attachment, PluginNode},
    metric::{Better, Metric},
    progress, stats, stop,
    topology::Contender,
};

pub const SCENARIO: &str = "plugin";

pub fn run(nodes: &[(Contender, &PluginNode)], plan: &Plan) -> Result<Vec<Metric>> {
    let metric = |id, title| {
        Metric::new(
            SCENARIO,
            id,
            title,
            "ms",
            2,
            Better::Lower,
            Contender::Bridge,
            plan.rounds,
        )
    };
    let mut add = metric("add", "plugin ADD latency, spawn to exit");
    let mut del = metric("del", "plugin DEL latency, spawn to exit");
    let pods: Vec<Netns> = nodes
        .iter()
        .map(|(contender, _)| Netns::with_loopback(&format!("bench-{}", contender.name())))
        .collect();
    for round in plan.round_indices() {
        for ((contender, node), pod) in nodes.iter().zip(&pods) {
            stop::check()?;
            let result = cycles(node, pod, plan.plugin_cycles);
            let shown = result
                .as_ref()
                .map(|(adds, _)| stats::median(adds).unwrap_or(0.0))
                .map_err(|e| anyhow!("{e:#}"));
            progress(SCENARIO, round, *contender, "ADD p50", &shown, "ms");
            stop::check()?;
            let Some(round) = round else { continue };
            let (adds, dels) = result.unwrap_or_default();
            add.record(*contender, round, stats::percentile(&adds, 50.0));
            del.record(*contender, round, stats::percentile(&dels, 50.0));
            add.pool(*contender, &adds);
            del.pool(*contender, &dels);
        }
    }
    Ok(vec![add, del])
}

/// `count` ADD/DEL cycles into `pod`; ADD and DEL times in ms.
fn cycles(node: &PluginNode, pod: &Netns, count: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut adds = Vec::with_capacity(count);
    let mut dels = Vec::with_capacity(count);
    for _ in 0..count {
        stop::check()?;
        let attachment = Attachment::add(node, pod)?;
        adds.push(attachment.add_time().as_secs_f64() * 1e3);
        dels.push(attachment.del()?.as_secs_f64() * 1e3);
    }
    Ok((adds, dels))
}
