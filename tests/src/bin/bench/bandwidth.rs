//! Bandwidth limits (issue 7): a pod limited in both directions at 10
//! Mbit/s, 100 Mbit/s and 1 Gbit/s exchanges TCP with an unlimited pod on
//! the same node.
//!
//! Measures per limit: goodput ÷ limit and sender retransmits of one iperf3
//! stream each way (egress: the limited pod sends; ingress: it receives)
//! and of four streams the limited pod sends at once, and the round trip of
//! a second flow (sockperf TCP ping-pong from the
//! limited pod) while a bulk iperf3 flow runs against its egress limit,
//! with what the bulk flow moved during that window (÷ limit): a round trip
//! only counts as loaded when the bulk flow really filled the limit.
//!
//! Rows: **cni-ebpf** = our plugin with `runtimeConfig.bandwidth` (BPF
//! policer); **bridge+bandwidth** = reference `bridge` + `host-local` +
//! `bandwidth` (tbf + ifb), chained with `prevResult`. Both get the same
//! rate and burst: burst = rate ÷ 10 in bits (100 ms at the rate), at least
//! 1 Mbit.

use std::{net::SocketAddrV4, thread, time::Duration};

use anyhow::{Result, anyhow};
use serde_json::{Value, json};

use crate::{
    Plan,
    chain::{Chain, ChainedPod},
    cni::PluginNode,
    flows::{self, IPERF3_PORT, SOCKPERF_PORT},
    metric::{Better, Metric},
    progress, stop, tcp,
    topology::Contender,
};

pub const SCENARIO: &str = "bandwidth";
pub const HEADING: &str =
    "bandwidth limits: goodput, retransmits and loaded latency (pod ↔ pod on one node)";

const OURS: Contender = Contender::CniEbpf;
const REFERENCE: Contender = Contender::Named("bridge+bandwidth");
const ROWS: [Contender; 2] = [OURS, REFERENCE];

/// Limits, bits per second, and their labels.
const RATES: [(u64, &str); 3] = [
    (10_000_000, "10 Mbit/s"),
    (100_000_000, "100 Mbit/s"),
    (1_000_000_000, "1 Gbit/s"),
];

/// The one burst rule for both: 100 ms at the rate, at least 1 Mbit.
pub fn burst_bits(rate: u64) -> u64 {
    (rate / 10).max(1_000_000)
}

fn limits(rate: u64) -> Value {
    let burst = burst_bits(rate);
    json!({
        "ingressRate": rate,
        "ingressBurst": burst,
        "egressRate": rate,
        "egressBurst": burst,
    })
}

/// One contender: its node, the unlimited server pod and one limited pod
/// per rate.
struct World<'n> {
    row: Contender,
    // Field order is drop order: pods before the node.
    limited: Vec<ChainedPod<'n>>,
    server: ChainedPod<'n>,
}

fn world(row: Contender, node: &PluginNode) -> Result<World<'_>> {
    let server = ChainedPod::new(node, &Chain::new(node, json!({})), "bench-bw")?;
    let limited = RATES
        .iter()
        .map(|(rate, _)| {
            let chain = if row == OURS {
                Chain::new(
                    node,
                    json!({
                        "capabilities": { "bandwidth": true },
                        "runtimeConfig": { "bandwidth": limits(*rate) },
                    }),
                )
            } else {
                Chain::new(node, json!({})).then(json!({
                    "type": "bandwidth",
                    "capabilities": { "bandwidth": true },
                    "runtimeConfig": { "bandwidth": limits(*rate) },
                }))
            };
            ChainedPod::new(node, &chain, "bench-bw")
        })
        .collect::<Result<_>>()?;
    Ok(World {
        row,
        limited,
        server,
    })
}

pub fn run(plan: &Plan) -> Result<Vec<Metric>> {
    let ours = PluginNode::cni_ebpf("10.231.0.0/24");
    let reference = PluginNode::reference("bridge", "10.232.0.0/24")?;
    let worlds = [world(OURS, &ours)?, world(REFERENCE, &reference)?];
    let cpus = plan.cpus;
    let mut iperf_servers = Vec::new();
    let mut sockperf_servers = Vec::new();
    for world in &worlds {
        let ip = world.server.ip();
        iperf_servers.push(flows::start_iperf3(
            &world.server.netns,
            SocketAddrV4::new(ip, IPERF3_PORT),
            cpus.server,
        )?);
        sockperf_servers.push(flows::start_sockperf(
            &world.server.netns,
            SocketAddrV4::new(ip, SOCKPERF_PORT),
            cpus.rr,
        )?);
    }
    let metric = |id: String, title: String, unit, decimals, better| {
        Metric::new(
            SCENARIO,
            &id,
            &title,
            unit,
            decimals,
            better,
            REFERENCE,
            plan.rounds,
        )
        .with_rows(&ROWS)
    };
    // Per rate: [egress goodput, egress retransmits, ingress goodput,
    // ingress retransmits, 4-stream egress goodput, 4-stream egress
    // retransmits, loaded p50, loaded p99, bulk share].
    let mut tables: Vec<[Metric; 9]> = RATES
        .iter()
        .map(|(rate, label)| {
            let key = format!("{}m", rate / 1_000_000);
            let goodput = |dir: &str, what: &str| {
                metric(
                    format!("{key}.{dir}.goodput"),
                    format!("{label} limit, {what}: goodput ÷ limit"),
                    "× limit",
                    3,
                    Better::Higher,
                )
            };
            let retrans = |dir: &str, what: &str| {
                metric(
                    format!("{key}.{dir}.retransmits"),
                    format!("{label} limit, {what}: sender TCP retransmits per run"),
                    "segments",
                    0,
                    Better::Lower,
                )
            };
            let loaded = |p: &str| {
                metric(
                    format!("{key}.loaded.{p}"),
                    format!(
                        "{label} limit, TCP round trip {p} of a second flow while a bulk flow saturates egress"
                    ),
                    "µs",
                    1,
                    Better::Lower,
                )
            };
            [
                goodput("egress", "egress (limited pod sends, 1 stream)"),
                retrans("egress", "egress (limited pod sends, 1 stream)"),
                goodput("ingress", "ingress (limited pod receives, 1 stream)"),
                retrans("ingress", "ingress (limited pod receives, 1 stream)"),
                goodput("egress4", "egress (limited pod sends, 4 streams)"),
                retrans("egress4", "egress (limited pod sends, 4 streams)"),
                loaded("p50"),
                loaded("p99"),
                metric(
                    format!("{key}.loaded.bulk"),
                    format!(
                        "{label} limit, bulk flow goodput ÷ limit while the round trips were measured"
                    ),
                    "× limit",
                    3,
                    Better::Higher,
                ),
            ]
        })
        .collect();

    for round in plan.round_indices() {
        for (index, (rate, label)) in RATES.iter().enumerate() {
            for world in &worlds {
                let client = &world.limited[index];
                let server = SocketAddrV4::new(world.server.ip(), IPERF3_PORT);
                for (extra, what, goodput_at, retrans_at) in [
                    (&[][..], "egress", 0, 1),
                    (&["-R"][..], "ingress", 2, 3),
                    (&["-P", "4"][..], "egress ×4", 4, 5),
                ] {
                    stop::check()?;
                    let report =
                        flows::iperf3(&client.netns, server, cpus.client, plan.run_time, extra);
                    let goodput = report
                        .as_ref()
                        .map_err(|e| anyhow!("{e:#}"))
                        .and_then(tcp::received_gbits)
                        .map(|gbits| gbits * 1e9 / *rate as f64);
                    let retransmits = report
                        .as_ref()
                        .ok()
                        .and_then(|r| r["end"]["sum_sent"]["retransmits"].as_f64());
                    let what = format!("{label} {what}");
                    progress(SCENARIO, round, world.row, &what, &goodput, "× limit");
                    if let Some(round) = round {
                        let tables = &mut tables[index];
                        tables[goodput_at].record(world.row, round, goodput.ok());
                        tables[retrans_at].record(world.row, round, retransmits);
                    }
                }
                stop::check()?;
                let loaded = loaded_round_trip(world, index, plan);
                let shown = loaded.as_ref().map(|l| l.p50).map_err(|e| anyhow!("{e:#}"));
                progress(
                    SCENARIO,
                    round,
                    world.row,
                    &format!("{label} loaded p50"),
                    &shown,
                    "µs",
                );
                if let Some(round) = round {
                    let loaded = loaded.ok();
                    tables[index][6].record(world.row, round, loaded.map(|l| l.p50));
                    tables[index][7].record(world.row, round, loaded.map(|l| l.p99));
                    tables[index][8].record(
                        world.row,
                        round,
                        loaded.map(|l| l.bulk_bits / *rate as f64),
                    );
                }
            }
        }
    }
    drop(sockperf_servers);
    drop(iperf_servers);
    Ok(tables.into_iter().flatten().collect())
}

/// Round trips of a second flow while a bulk flow runs.
#[derive(Clone, Copy)]
struct Loaded {
    p50: f64,
    p99: f64,
    /// What the bulk flow moved while the round trips were measured, bits
    /// per second.
    bulk_bits: f64,
}

/// When the round trips start, after the bulk flow has started.
const BULK_LEAD: Duration = Duration::from_secs(1);

/// sockperf p50/p99 from the limited pod while a bulk iperf3 flow from it
/// runs from 1 s before until after the sockperf run, and the bulk flow's
/// goodput over the iperf3 intervals inside the sockperf run.
fn loaded_round_trip(world: &World<'_>, index: usize, plan: &Plan) -> Result<Loaded> {
    let client = &world.limited[index];
    let server_ip = world.server.ip();
    let cpus = plan.cpus;
    let bulk_time = plan.run_time + 2 * BULK_LEAD;
    thread::scope(|scope| {
        let bulk = scope.spawn(|| {
            flows::iperf3(
                &client.netns,
                SocketAddrV4::new(server_ip, IPERF3_PORT),
                cpus.client,
                bulk_time,
                &[],
            )
        });
        thread::sleep(BULK_LEAD);
        let result = flows::ping_pong(
            &client.netns,
            SocketAddrV4::new(server_ip, SOCKPERF_PORT),
            cpus.rr,
            plan.run_time,
        );
        let bulk = bulk
            .join()
            .map_err(|_| anyhow!("the bulk iperf3 thread panicked"))?
            .map_err(|e| e.context("the bulk flow"))?;
        let window = BULK_LEAD.as_secs_f64()..(BULK_LEAD + plan.run_time).as_secs_f64();
        let bulk_bits = interval_goodput(&bulk, window)?;
        result.map(|r| Loaded {
            p50: r.p50_us,
            p99: r.p99_us,
            bulk_bits,
        })
    })
}

/// Mean goodput, bits per second, of the iperf3 intervals that lie inside
/// `window` (seconds from the start).
fn interval_goodput(report: &Value, window: std::ops::Range<f64>) -> Result<f64> {
    let intervals = report["intervals"]
        .as_array()
        .ok_or_else(|| anyhow!("iperf3 report without intervals"))?;
    let (mut bytes, mut seconds) = (0.0, 0.0);
    for sum in intervals.iter().map(|i| &i["sum"]) {
        let (Some(start), Some(end), Some(b)) = (
            sum["start"].as_f64(),
            sum["end"].as_f64(),
            sum["bytes"].as_f64(),
        ) else {
            continue;
        };
        // iperf3's interval edges drift by a few milliseconds.
        if start >= window.start - 0.05 && end <= window.end + 0.05 {
            bytes += b;
            seconds += end - start;
        }
    }
    if seconds == 0.0 {
        return Err(anyhow!("no iperf3 interval inside {window:?} s"));
    }
    Ok(bytes * 8.0 / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_100_ms_at_least_1_mbit() {
        assert_eq!(burst_bits(10_000_000), 1_000_000);
        assert_eq!(burst_bits(1_000_000), 1_000_000);
        assert_eq!(burst_bits(1_000_000_000), 100_000_000);
        assert_eq!(limits(100_000_000)["egressBurst"], 10_000_000);
    }

    #[test]
    fn bulk_goodput_counts_the_intervals_inside_the_window() {
        let report = json!({ "intervals": [
            { "sum": { "start": 0.0, "end": 1.0, "bytes": 9_000_000.0 } },
            { "sum": { "start": 1.0, "end": 2.001, "bytes": 1_000_000.0 } },
            { "sum": { "start": 2.001, "end": 3.0, "bytes": 1_000_000.0 } },
            { "sum": { "start": 3.0, "end": 4.0, "bytes": 9_000_000.0 } },
        ]});
        let bits = interval_goodput(&report, 1.0..3.0).unwrap();
        assert!((bits - 8_000_000.0).abs() < 1.0, "{bits}");
        assert!(interval_goodput(&report, 5.0..6.0).is_err());
    }
}
