//! Request/response latency with `sockperf ping-pong`, TCP and UDP, both
//! ends pinned on the same CPU (a cross-CPU wakeup would hide the
//! datapath's few microseconds). Reports the round-trip time.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::{
    Plan,
    exec::{self, OnStop, Proto, Server},
    metric::{Better, Metric},
    profile_pair,
    program_cost::Profile,
    progress, stop,
    topology::{Contender, PodPair},
};

pub const SCENARIO: &str = "rr";
const PORT: u16 = 11111;

/// What one `sockperf ping-pong` run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingPong {
    pub p50_us: f64,
    pub p99_us: f64,
    pub transactions_per_s: f64,
    /// Replies received over the whole run, warm-up included.
    pub total_received: f64,
}

pub fn run(pairs: &[PodPair<'_>], plan: &Plan) -> Result<(Vec<Metric>, Vec<Profile>)> {
    if pairs.iter().any(|pair| pair.server.ip().is_ipv6()) {
        return crate::qperf::run_pairs(SCENARIO, pairs, plan);
    }
    let mut metrics = Vec::new();
    let mut profiles = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        let name = proto_name(proto);
        let metric = |id: &str, title: &str, unit, decimals, better| {
            Metric::new(
                SCENARIO,
                &format!("{}.{id}", name.to_lowercase()),
                &format!("{name} {title}"),
                unit,
                decimals,
                better,
                Contender::Limit,
                plan.rounds,
            )
        };
        let mut p50 = metric("p50", "round trip p50", "µs", 2, Better::Lower);
        let mut p99 = metric("p99", "round trip p99", "µs", 2, Better::Lower);
        let mut rate = metric(
            "rate",
            "request/response rate",
            "transactions/s",
            0,
            Better::Higher,
        );
        let mut servers = Vec::new();
        for pair in pairs {
            let mut command = pair.server.netns().command("taskset");
            command.args(["-c", &plan.cpus.rr.to_string(), "sockperf", "sr"]);
            command.args(["-i", &pair.server.ip().to_string(), "-p", &PORT.to_string()]);
            if proto == Proto::Tcp {
                command.arg("--tcp");
            }
            let mut server = Server::start(&mut command, "sockperf")?;
            server.wait_ready(proto, PORT)?;
            servers.push(server);
        }
        for round in plan.round_indices() {
            for (pair, server) in pairs.iter().zip(&mut servers) {
                stop::check()?;
                let result = ping_pong(pair, plan, proto).map_err(|e| {
                    if server.alive() {
                        e
                    } else {
                        e.context(format!("sockperf server died: {}", server.log_text()))
                    }
                });
                let label = format!("{name} p50");
                let shown = result
                    .as_ref()
                    .map(|r| r.p50_us)
                    .map_err(|e| anyhow!("{e:#}"));
                progress(SCENARIO, round, pair.contender, &label, &shown, "µs");
                if let Some(round) = round {
                    let result = result.ok();
                    p50.record(pair.contender, round, result.map(|r| r.p50_us));
                    p99.record(pair.contender, round, result.map(|r| r.p99_us));
                    rate.record(pair.contender, round, result.map(|r| r.transactions_per_s));
                }
            }
        }
        metrics.extend([p50, p99, rate]);
        profiles.extend(profile_pair(
            SCENARIO,
            pairs,
            &format!("{name} request/response"),
            "round trip",
            |pair| ping_pong(pair, plan, proto),
            |r| Some(r.total_received),
        ));
    }
    Ok((metrics, profiles))
}

fn proto_name(proto: Proto) -> &'static str {
    match proto {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
    }
}

fn ping_pong(pair: &PodPair<'_>, plan: &Plan, proto: Proto) -> Result<PingPong> {
    let mut command = pair.client.netns().command("taskset");
    command.args(["-c", &plan.cpus.rr.to_string(), "sockperf", "ping-pong"]);
    command.args(["-i", &pair.server.ip().to_string(), "-p", &PORT.to_string()]);
    command.args([
        "-t",
        &plan.run_time.as_secs().max(1).to_string(),
        "--full-rtt",
    ]);
    if proto == Proto::Tcp {
        command.arg("--tcp");
    }
    let output = exec::run(
        &mut command,
        None,
        plan.run_time + Duration::from_secs(30),
        OnStop::Kill,
    )?;
    let text = format!("{}\n{}", output.stdout, output.stderr);
    if !output.success() {
        anyhow::bail!("sockperf ping-pong failed: {}", output.describe());
    }
    parse(&text).with_context(|| format!("parsing sockperf output: {}", output.describe()))
}

/// Reads the percentiles and the valid-duration counters of a
/// `sockperf ping-pong` report.
pub fn parse(text: &str) -> Result<PingPong> {
    let text = strip_ansi(text);
    let percentile = |p: &str| -> Result<f64> {
        text.lines()
            .find_map(|line| {
                let (_, rest) = line.split_once(&format!("percentile {p} ="))?;
                rest.trim().parse().ok()
            })
            .ok_or_else(|| anyhow!("no percentile {p} line"))
    };
    let valid = text
        .lines()
        .find(|line| line.contains("[Valid Duration]"))
        .ok_or_else(|| anyhow!("no [Valid Duration] line"))?;
    let field = |name: &str| -> Result<f64> {
        let (_, rest) = valid
            .split_once(&format!("{name}="))
            .ok_or_else(|| anyhow!("no {name} in {valid:?}"))?;
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()
            .and_then(|number| number.parse().ok())
            .ok_or_else(|| anyhow!("bad {name} in {valid:?}"))
    };
    let total_received = text
        .lines()
        .find(|line| line.contains("[Total Run]"))
        .and_then(|line| line.split_once("ReceivedMessages="))
        .and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    let seconds = field("RunTime")?;
    let received = field("ReceivedMessages")?;
    Ok(PingPong {
        p50_us: percentile("50.000")?,
        p99_us: percentile("99.000")?,
        transactions_per_s: if seconds > 0.0 {
            received / seconds
        } else {
            0.0
        },
        total_received,
    })
}

/// sockperf colours some lines even when not on a terminal.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "sockperf: [Total Run] RunTime=2.000 sec; Warm up time=400 msec; SentMessages=151298; ReceivedMessages=151297
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=117483; ReceivedMessages=117483
sockperf: \u{1b}[2;35m====> avg-latency=13.176 (std-dev=0.780)\u{1b}[0m
sockperf: ---> <MAX> observation =   72.858
sockperf: ---> percentile 99.999 =   61.352
sockperf: ---> percentile 99.000 =   14.450
sockperf: ---> percentile 90.000 =   13.520
sockperf: ---> percentile 50.000 =   13.118
sockperf: ---> <MIN> observation =   12.228
";

    #[test]
    fn parses_a_ping_pong_report() {
        let result = parse(REPORT).unwrap();
        assert_eq!(result.p50_us, 13.118);
        assert_eq!(result.p99_us, 14.45);
        assert!((result.transactions_per_s - 117483.0 / 1.55).abs() < 1e-6);
        assert_eq!(result.total_received, 151297.0);
        assert!(parse("sockperf: nothing here").is_err());
    }

    #[test]
    fn strips_colours() {
        assert_eq!(strip_ansi("a\u{1b}[2;35mb\u{1b}[0mc"), "abc");
    }
}
