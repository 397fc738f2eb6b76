//! Pod-to-pod TCP throughput with iperf3: one and two streams, both
//! directions, client and server pinned to different CPUs.

use std::{thread, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::{
    Plan,
    exec::{self, OnStop, Proto, Server},
    metric::{Better, Metric},
    profile_pair,
    program_cost::Profile,
    progress, stop,
    topology::{Contender, PodPair},
};

pub const SCENARIO: &str = "tcp";
const PORT: u16 = 5201;
/// iperf3 refuses a test while it still tears down the previous one.
const BUSY_RETRIES: u32 = 10;

struct Variant {
    id: &'static str,
    title: &'static str,
    streams: u32,
    reverse: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        id: "1-stream",
        title: "TCP throughput, 1 stream, client → server",
        streams: 1,
        reverse: false,
    },
    Variant {
        id: "1-stream-reverse",
        title: "TCP throughput, 1 stream, server → client (-R)",
        streams: 1,
        reverse: true,
    },
    Variant {
        id: "2-streams",
        title: "TCP throughput, 2 streams, client → server (-P 2)",
        streams: 2,
        reverse: false,
    },
    Variant {
        id: "2-streams-reverse",
        title: "TCP throughput, 2 streams, server → client (-P 2 -R)",
        streams: 2,
        reverse: true,
    },
];

/// Id of the single-stream forward metric (drawn in the chart).
pub const SINGLE_STREAM_ID: &str = "tcp.1-stream";

pub fn run(pairs: &[PodPair<'_>], plan: &Plan) -> Result<(Vec<Metric>, Vec<Profile>)> {
    let mut metrics: Vec<Metric> = VARIANTS
        .iter()
        .map(|v| {
            Metric::new(
                SCENARIO,
                v.id,
                v.title,
                "Gbit/s",
                2,
                Better::Higher,
                Contender::Limit,
                plan.rounds,
            )
        })
        .collect();
    let mut servers = Vec::new();
    for pair in pairs {
        let mut command = pair.server.netns().command("taskset");
        command.args(["-c", &plan.cpus.server.to_string(), "iperf3", "-s"]);
        command.args(["-B", &pair.server.ip().to_string(), "-p", &PORT.to_string()]);
        let mut server = Server::start(&mut command, "iperf3")?;
        server.wait_ready(Proto::Tcp, PORT)?;
        servers.push(server);
    }
    for round in plan.round_indices() {
        for (variant, metric) in VARIANTS.iter().zip(&mut metrics) {
            for (pair, server) in pairs.iter().zip(&mut servers) {
                stop::check()?;
                let gbits = iperf3(pair, plan, variant).map_err(|e| {
                    if !server.alive() {
                        e.context(format!("iperf3 server died: {}", server.log_text()))
                    } else {
                        e
                    }
                });
                progress(
                    SCENARIO,
                    round,
                    pair.contender,
                    variant.id,
                    &gbits,
                    "Gbit/s",
                );
                if let Some(round) = round {
                    metric.record(pair.contender, round, gbits.ok());
                }
            }
        }
    }
    let profile = profile_pair(
        SCENARIO,
        pairs,
        "TCP 1 stream, client → server",
        "GB",
        |pair| iperf3(pair, plan, &VARIANTS[0]),
        |gbits| Some(gbits * plan.run_time.as_secs_f64() / 8.0),
    );
    Ok((metrics, profile.into_iter().collect()))
}

/// One iperf3 run; the receiver's goodput in Gbit/s.
fn iperf3(pair: &PodPair<'_>, plan: &Plan, variant: &Variant) -> Result<f64> {
    let seconds = plan.run_time.as_secs().max(1).to_string();
    for attempt in 0..=BUSY_RETRIES {
        stop::check()?;
        let mut command = pair.client.netns().command("taskset");
        command.args(["-c", &plan.cpus.client.to_string(), "iperf3", "-c"]);
        command.args([&pair.server.ip().to_string(), "-p", &PORT.to_string()]);
        command.args(["-t", &seconds, "-J", "-P", &variant.streams.to_string()]);
        if variant.reverse {
            command.arg("-R");
        }
        let timeout = plan.run_time + Duration::from_secs(30);
        let output = exec::run(&mut command, None, timeout, OnStop::Kill)?;
        let report: Value = serde_json::from_str(&output.stdout)
            .with_context(|| format!("iperf3 -J output is not JSON: {}", output.describe()))?;
        if let Some(error) = report.get("error").and_then(Value::as_str) {
            if error.contains("busy") && attempt < BUSY_RETRIES {
                thread::sleep(Duration::from_millis(200));
                continue;
            }
            bail!("iperf3: {error}");
        }
        return received_gbits(&report);
    }
    Err(anyhow!("iperf3 server stayed busy"))
}

pub fn received_gbits(report: &Value) -> Result<f64> {
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bits| bits / 1e9)
        .ok_or_else(|| anyhow!("iperf3 report without end.sum_received.bits_per_second"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_receivers_rate() {
        let report: Value = serde_json::from_str(
            r#"{"end":{"sum_sent":{"bits_per_second":2.2e10},"sum_received":{"bits_per_second":2.1e10}}}"#,
        )
        .unwrap();
        assert_eq!(received_gbits(&report).unwrap(), 21.0);
        assert!(received_gbits(&serde_json::json!({"end": {}})).is_err());
    }
}
