//! The results as Markdown tables (stdout and `results.md`), JSON with
//! every raw sample (`results.json`) and a bar chart of ratios to `limit`
//! (`throughput.svg`).

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::{
    churn::{self, Churn},
    crr,
    environment::Environment,
    metric::Metric,
    program_cost::Profile,
    stats, tcp,
    topology::Contender,
};

/// One scenario's outcome.
pub struct Section {
    pub scenario: &'static str,
    pub heading: &'static str,
    /// What the scenario's own rows are, when they are not the contenders.
    pub note: Option<&'static str>,
    pub load_before: String,
    pub load_after: String,
    pub metrics: Vec<Metric>,
    pub churn: Vec<Churn>,
    /// What each BPF program cost in an extra run of this scenario.
    pub profiles: Vec<Profile>,
    pub error: Option<String>,
}

pub struct Report {
    pub environment: Environment,
    pub sections: Vec<Section>,
}

const CONTENDERS_NOTE: &str = "Contenders, each in its own node namespace with two pods: \
**limit** = the two pod namespaces joined by a direct veth pair (no node hop, MTU 1500); \
**cni-ebpf** = our plugin (tc + `bpf_redirect_peer`, node `ip_forward=0`, own bpffs); \
**bridge** = reference `bridge` + `host-local` (`isGateway`, `ipMasq`, node `ip_forward=1`); \
**ptp** = reference `ptp` + `host-local` (`ipMasq`). \
Rounds are interleaved (limit, cni-ebpf, bridge, ptp, limit, …) after a discarded warm-up round. \
A ratio is the median over rounds of (value ÷ baseline's value in the same round); \
the range of the per-round ratios is in brackets.";

impl Report {
    pub fn markdown(&self) -> String {
        let mut md = String::from("# cni-ebpf benchmark\n\n| | |\n|---|---|\n");
        for (key, value) in &self.environment.items {
            let _ = writeln!(md, "| {key} | {value} |");
        }
        let _ = writeln!(md, "\n{CONTENDERS_NOTE}");
        for section in &self.sections {
            let _ = writeln!(md, "\n## {} — {}\n", section.scenario, section.heading);
            let _ = writeln!(
                md,
                "Load average (1, 5, 15 min) before: {}; after: {}.",
                section.load_before, section.load_after
            );
            if let Some(note) = section.note {
                let _ = writeln!(md, "\n{note}");
            }
            if let Some(error) = &section.error {
                let _ = writeln!(md, "\n**Scenario stopped early:** {error}");
            }
            for metric in &section.metrics {
                md.push('\n');
                if metric.pooled.is_empty() {
                    md.push_str(&rounds_table(metric));
                } else {
                    md.push_str(&pooled_table(metric));
                }
            }
            if !section.churn.is_empty() {
                md.push('\n');
                md.push_str(&churn_table(&section.churn));
            }
            for profile in &section.profiles {
                md.push('\n');
                md.push_str(&profile.markdown());
            }
        }
        md
    }

    pub fn to_json(&self) -> Value {
        let environment: serde_json::Map<String, Value> = self
            .environment
            .items
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let sections: Vec<Value> = self
            .sections
            .iter()
            .map(|section| {
                json!({
                    "scenario": section.scenario,
                    "heading": section.heading,
                    "note": section.note,
                    "load_before": section.load_before,
                    "load_after": section.load_after,
                    "error": section.error,
                    "metrics": section.metrics.iter().map(Metric::to_json).collect::<Vec<_>>(),
                    "churn": section.churn.iter().map(churn_json).collect::<Vec<_>>(),
                    "program_cost": section.profiles.iter().map(Profile::to_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "environment": environment, "sections": sections })
    }

    /// Single-stream throughput and CRR rate as ratios to `limit`.
    pub fn svg(&self) -> Option<String> {
        let find = |id: &str| {
            self.sections
                .iter()
                .flat_map(|s| &s.metrics)
                .find(|m| m.id == id)
        };
        let series: Vec<(&str, &str, &Metric)> = [
            (tcp::SINGLE_STREAM_ID, "TCP throughput, 1 stream", "#4e79a7"),
            (crr::RATE_ID, "TCP connect/request/close rate", "#f28e2b"),
        ]
        .into_iter()
        .filter_map(|(id, label, colour)| Some((label, colour, find(id)?)))
        .collect();
        if series.is_empty() {
            return None;
        }
        Some(bar_chart(&series))
    }

    /// Writes `results.md`, `results.json` and (when there is data for it)
    /// `throughput.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut written = Vec::new();
        let mut put = |name: &str, text: String| -> Result<()> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
            Ok(())
        };
        put("results.md", self.markdown())?;
        put(
            "results.json",
            serde_json::to_string_pretty(&self.to_json())? + "\n",
        )?;
        if let Some(svg) = self.svg() {
            put("throughput.svg", svg)?;
        }
        Ok(written)
    }
}

fn number(value: f64, decimals: usize) -> String {
    format!("{value:.decimals$}")
}

fn ratio_cell(summary: &crate::metric::Summary, baseline: Contender, me: Contender) -> String {
    if me == baseline {
        return "1.00 (baseline)".into();
    }
    match (summary.ratio, summary.ratio_min, summary.ratio_max) {
        (Some(r), Some(lo), Some(hi)) => format!("{r:.2} [{lo:.2}–{hi:.2}]"),
        (Some(r), _, _) => format!("{r:.2}"),
        _ => "n/a".into(),
    }
}

/// median / min / max over rounds, and the paired ratio (and the ratio to
/// a counterpart row, when the metric has counterparts).
fn rounds_table(metric: &Metric) -> String {
    let versus = !metric.counterparts.is_empty();
    let (versus_head, versus_rule) = if versus {
        (" vs counterpart |", "---:|")
    } else {
        ("", "")
    };
    let mut md = format!(
        "### {} ({}, {})\n\n| contender | median | min | max | ratio vs {} |{versus_head} rounds |\n|---|---:|---:|---:|---:|{versus_rule}---:|\n",
        metric.title,
        metric.unit,
        metric.better.word(),
        metric.baseline.name()
    );
    for contender in &metric.contenders {
        let versus_cell = if !versus {
            String::new()
        } else {
            match metric.versus(*contender) {
                Some(v) => format!(
                    " {:.2} [{:.2}–{:.2}] vs {} |",
                    v.ratio,
                    v.ratio_min,
                    v.ratio_max,
                    v.counterpart.name()
                ),
                None => " |".into(),
            }
        };
        let _ = match metric.summary(*contender) {
            Some(s) => writeln!(
                md,
                "| {} | {} | {} | {} | {} |{versus_cell} {} |",
                contender.name(),
                number(s.median, metric.decimals),
                number(s.min, metric.decimals),
                number(s.max, metric.decimals),
                ratio_cell(&s, metric.baseline, *contender),
                s.rounds
            ),
            None => writeln!(
                md,
                "| {} | n/a | n/a | n/a | n/a |{versus_cell} 0 |",
                contender.name()
            ),
        };
    }
    md
}

/// Percentiles over every pooled observation, plus the per-round medians
/// and their paired ratio.
fn pooled_table(metric: &Metric) -> String {
    let mut md = format!(
        "### {} ({}, {})\n\n| contender | cycles | p50 | p99 | min | max | median of round p50s [min–max] | p50 ratio vs {} | rounds |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        metric.title,
        metric.unit,
        metric.better.word(),
        metric.baseline.name()
    );
    let d = metric.decimals;
    for contender in &metric.contenders {
        let pooled = metric.pooled.get(contender).filter(|p| !p.is_empty());
        let (Some(pooled), Some(s)) = (pooled, metric.summary(*contender)) else {
            let _ = writeln!(
                md,
                "| {} | n/a (no plugin) | n/a | n/a | n/a | n/a | n/a | n/a | 0 |",
                contender.name()
            );
            continue;
        };
        let cell = |v: Option<f64>| v.map_or("n/a".into(), |v| number(v, d));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} [{}–{}] | {} | {} |",
            contender.name(),
            pooled.len(),
            cell(stats::percentile(pooled, 50.0)),
            cell(stats::percentile(pooled, 99.0)),
            cell(stats::min(pooled)),
            cell(stats::max(pooled)),
            number(s.median, d),
            number(s.min, d),
            number(s.max, d),
            ratio_cell(&s, metric.baseline, *contender),
            s.rounds
        );
    }
    md
}

fn churn_table(results: &[Churn]) -> String {
    let mut md = String::from(
        "### ADD/DEL churn and what it left behind (one run each; ms)\n\n| contender | cycles | ADD p50 | ADD p99 | DEL p50 | DEL p99 | ADD p50 ratio vs bridge | wall time | links left | endpoint map entries left | other map entries left | IPAM files left | state records left | link pins left |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let bridge_add = results
        .iter()
        .find(|c| c.contender == Contender::Bridge)
        .and_then(|c| stats::percentile(&c.adds_ms, 50.0));
    let ms = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2}"));
    let count =
        |found: &Option<Vec<String>>| found.as_ref().map_or("n/a".into(), |v| v.len().to_string());
    for churn in results {
        let add_p50 = stats::percentile(&churn.adds_ms, 50.0);
        let ratio = match (add_p50, bridge_add) {
            (_, _) if churn.contender == Contender::Bridge => "1.00 (baseline)".into(),
            (Some(mine), Some(bridge)) if bridge > 0.0 => format!("{:.2}", mine / bridge),
            _ => "n/a".into(),
        };
        let leaks = &churn.leaks;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} s | {} | {} | {} | {} | {} | {} |",
            churn.label,
            churn.cycles,
            ms(add_p50),
            ms(stats::percentile(&churn.adds_ms, 99.0)),
            ms(stats::percentile(&churn.dels_ms, 50.0)),
            ms(stats::percentile(&churn.dels_ms, 99.0)),
            ratio,
            churn.elapsed.as_secs_f64(),
            leaks.links.len(),
            count(&leaks.map_entries),
            leaks
                .map_growth_total()
                .map_or("n/a".into(), |n| n.to_string()),
            leaks.ipam_files.len(),
            count(&leaks.state_records),
            count(&leaks.link_pins),
        );
    }
    for churn in results {
        let leaks = &churn.leaks;
        if leaks.total() > 0 {
            let _ = writeln!(
                md,
                "\n**{} left behind:** links {:?}; endpoint map entries {:?}; other maps {}; IPAM files {:?}; state records {:?}; link pins {:?}",
                churn.label,
                leaks.links,
                leaks.map_entries.as_deref().unwrap_or_default(),
                growth(leaks),
                leaks.ipam_files,
                leaks.state_records.as_deref().unwrap_or_default(),
                leaks.link_pins.as_deref().unwrap_or_default()
            );
        }
        if let Some(probe) = &churn.probe {
            let counts: Vec<String> = probe
                .counts()
                .iter()
                .filter_map(|(what, n)| Some(format!("{what} {}", (*n)?)))
                .collect();
            let expected = |what: &str| match what {
                "link pins" => churn.pins_per_pod * churn::PODS_AT_ONCE,
                _ => churn::PODS_AT_ONCE,
            };
            let blind: Vec<String> = probe
                .counts()
                .iter()
                .filter(|(what, n)| n.is_some_and(|n| n != expected(what)))
                .map(|(what, _)| format!("{what} (expected {})", expected(what)))
                .collect();
            let other_maps = probe.map_growth.as_ref().map_or(String::new(), |_| {
                format!("; other maps grew by {}", growth(probe))
            });
            let verdict = if blind.is_empty() {
                " (each as expected)".to_string()
            } else {
                format!(" — **unexpected: {}**", blind.join(", "))
            };
            let _ = writeln!(
                md,
                "\n{}: probes with the first {} pods attached counted {}{verdict}{other_maps}.",
                churn.label,
                churn::PODS_AT_ONCE,
                counts.join(", "),
            );
        }
        if let Some(error) = &churn.error {
            let _ = writeln!(
                md,
                "\n**{} churn stopped:** {error}",
                churn.contender.name()
            );
        }
    }
    let _ = writeln!(
        md,
        "\nThe reference bridge's own `{}` device stays by design and is not counted.",
        crate::cni::BRIDGE_DEVICE
    );
    md
}

/// `NAME +N, …` of a map growth, or `none`.
fn growth(leaks: &churn::Leaks) -> String {
    let Some(growth) = leaks.map_growth.as_ref().filter(|g| !g.is_empty()) else {
        return "none".into();
    };
    growth
        .iter()
        .map(|(name, n)| format!("{name} {n:+}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn churn_json(churn: &Churn) -> Value {
    json!({
        "contender": churn.contender.name(),
        "label": churn.label,
        "cycles": churn.cycles,
        "add_ms": churn.adds_ms,
        "del_ms": churn.dels_ms,
        "add_p50_ms": stats::percentile(&churn.adds_ms, 50.0),
        "add_p99_ms": stats::percentile(&churn.adds_ms, 99.0),
        "del_p50_ms": stats::percentile(&churn.dels_ms, 50.0),
        "del_p99_ms": stats::percentile(&churn.dels_ms, 99.0),
        "elapsed_s": churn.elapsed.as_secs_f64(),
        "error": churn.error,
        "leaks": churn.leaks.to_json(),
        "leaks_total": churn.leaks.total(),
        "probe_with_first_batch_attached": churn.probe.as_ref().map(churn::Leaks::to_json),
    })
}

/// Grouped bars: one group per contender, one bar per series, height =
/// the paired ratio to `limit`.
fn bar_chart(series: &[(&str, &str, &Metric)]) -> String {
    const WIDTH: f64 = 720.0;
    const HEIGHT: f64 = 400.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 50.0;
    const BOTTOM: f64 = 80.0;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let ratio = |metric: &Metric, c: Contender| metric.summary(c).and_then(|s| s.ratio);
    let top = series
        .iter()
        .flat_map(|(_, _, m)| Contender::ALL.map(|c| ratio(m, c)))
        .flatten()
        .fold(1.2_f64, f64::max);
    let top = (top * 4.0).ceil() / 4.0;
    let y = |v: f64| TOP + plot_h * (1.0 - v / top);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">pod → pod, ratio to a direct veth pair (limit = 1.0, higher is better)</text>\n",
        WIDTH / 2.0
    );
    let mut tick = 0.0;
    while tick <= top + 1e-9 {
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{tick:.2}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(tick) + 4.0,
            y = y(tick)
        );
        tick += 0.25;
    }
    let group_w = plot_w / Contender::ALL.len() as f64;
    let bar_w = (group_w * 0.7) / series.len() as f64;
    for (g, contender) in Contender::ALL.iter().enumerate() {
        let group_x = LEFT + group_w * g as f64 + group_w * 0.15;
        for (s, (_, colour, metric)) in series.iter().enumerate() {
            let x = group_x + bar_w * s as f64;
            let Some(value) = ratio(metric, *contender) else {
                let _ = writeln!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#888\">n/a</text>",
                    x + bar_w / 2.0,
                    y(0.0) - 4.0
                );
                continue;
            };
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{value:.2}</text>",
                y(value),
                bar_w - 4.0,
                y(0.0) - y(value),
                x + (bar_w - 4.0) / 2.0,
                y(value) - 4.0
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\">{}</text>",
            LEFT + group_w * (g as f64 + 0.5),
            y(0.0) + 18.0,
            contender.name()
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"black\"/>",
        WIDTH - RIGHT,
        y0 = y(0.0)
    );
    for (s, (label, colour, _)) in series.iter().enumerate() {
        let x = LEFT + 260.0 * s as f64;
        let legend_y = HEIGHT - 24.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{legend_y:.1}\">{label}</text>",
            legend_y - 10.0,
            x + 18.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::Better;

    #[test]
    fn chart_and_tables_render() {
        let mut metric = Metric::new(
            "tcp",
            "1-stream",
            "TCP",
            "Gbit/s",
            2,
            Better::Higher,
            Contender::Limit,
            2,
        );
        for round in 0..2 {
            metric.record(Contender::Limit, round, Some(20.0));
            metric.record(Contender::CniEbpf, round, Some(18.0));
        }
        let table = rounds_table(&metric);
        assert!(table.contains("| cni-ebpf | 18.00 | 18.00 | 18.00 | 0.90 [0.90–0.90] | 2 |"));
        assert!(table.contains("| bridge | n/a |"));
        metric.counterparts = vec![(Contender::CniEbpf, Contender::Limit)];
        let table = rounds_table(&metric);
        assert!(
            table.contains("| ratio vs limit | vs counterpart | rounds |"),
            "{table}"
        );
        assert!(
            table.contains("| cni-ebpf | 18.00 | 18.00 | 18.00 | 0.90 [0.90–0.90] | 0.90 [0.90–0.90] vs limit | 2 |"),
            "{table}"
        );
        let svg = bar_chart(&[("TCP", "#000", &metric)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(">0.90<"));
    }
}
