//! Request/response latency over IPv6 with qperf (`tcp_lat`, `udp_lat`):
//! Debian's sockperf 3.7 takes no IPv6 address ("'-i' Invalid address"),
//! qperf (Debian's 0.4.11, installed by `cargo xtask setup`) does.
//!
//! qperf reports one mean, no percentiles: its `latency` is the run's time
//! divided by the messages both ends received, half a round trip; the
//! figures here are twice that. On one bare veth (IPv4, both ends on one
//! CPU) its round trip came out at 26.4 µs where sockperf's p50 was
//! 13.3 µs: qperf's own loop costs more per message, so its figures are
//! compared with each other (ratios to `limit`), never with sockperf's.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use cni_ebpf_tests::Netns;

use crate::{
    Plan,
    exec::{self, OnStop, Proto, Server},
    metric::{Better, Metric},
    profile_pair,
    program_cost::Profile,
    progress, stop,
    topology::{Contender, PodPair},
};

/// qperf's control connection (its `--listen_port`).
pub const CONTROL_PORT: u16 = 19765;
/// The socket a test measures on (its `--ip_port`).
pub const TEST_PORT: u16 = 19766;

/// `qperf` as a server in `ns`, pinned on `cpu`, once it listens.
pub fn start_server(ns: &Netns, cpu: usize) -> Result<Server> {
    let mut command = ns.command("taskset");
    command.args(["-c", &cpu.to_string(), "qperf"]);
    command.args(["--listen_port", &CONTROL_PORT.to_string()]);
    let mut server = Server::start(&mut command, "qperf")?;
    server.wait_ready(Proto::Tcp, CONTROL_PORT)?;
    Ok(server)
}

/// The mean round trip, µs, of one `tcp_lat` or `udp_lat` run of
/// `run_time` from `client` (pinned on `cpu`) to the qperf server at
/// `server`.
pub fn round_trip_us(
    client: &Netns,
    server: IpAddr,
    proto: Proto,
    cpu: usize,
    run_time: Duration,
) -> Result<f64> {
    let test = match proto {
        Proto::Tcp => "tcp_lat",
        Proto::Udp => "udp_lat",
    };
    let mut command = client.command("taskset");
    command.args(["-c", &cpu.to_string(), "qperf", &server.to_string()]);
    command.args(["--listen_port", &CONTROL_PORT.to_string()]);
    command.args(["--ip_port", &TEST_PORT.to_string()]);
    command.args(["--time", &run_time.as_secs().max(1).to_string()]);
    command.args(["--unify_units", test]);
    let output = exec::run(
        &mut command,
        None,
        run_time + Duration::from_secs(30),
        OnStop::Kill,
    )?;
    if !output.success() {
        bail!("qperf {test} failed: {}", output.describe());
    }
    let one_way = parse_latency(&output.stdout)
        .with_context(|| format!("parsing qperf output: {}", output.describe()))?;
    Ok(2.0 * one_way)
}

/// qperf's `latency = N unit` line, in µs.
pub fn parse_latency(text: &str) -> Result<f64> {
    let (_, value) = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("latency")?.split_once('='))
        .ok_or_else(|| anyhow!("no latency line"))?;
    let mut words = value.split_whitespace();
    let number: f64 = words
        .next()
        .ok_or_else(|| anyhow!("no latency value"))?
        .replace(',', "")
        .parse()
        .context("latency value")?;
    Ok(match words.next() {
        Some("ns") => number / 1e3,
        Some("us") => number,
        Some("ms") => number * 1e3,
        Some("sec") => number * 1e6,
        other => bail!("unknown latency unit {other:?}"),
    })
}

/// The `rr` scenario over IPv6: TCP and UDP mean round trips between every
/// contender's pods, rounds interleaved.
pub fn run_pairs(
    scenario: &'static str,
    pairs: &[PodPair<'_>],
    plan: &Plan,
) -> Result<(Vec<Metric>, Vec<Profile>)> {
    let mut metrics = Vec::new();
    let mut profiles = Vec::new();
    let cpu = plan.cpus.rr;
    let servers = pairs
        .iter()
        .map(|pair| start_server(pair.server.netns(), cpu))
        .collect::<Result<Vec<_>>>()?;
    for proto in [Proto::Tcp, Proto::Udp] {
        let name = match proto {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        };
        let mut mean = Metric::new(
            scenario,
            &format!("{}.mean", name.to_lowercase()),
            &format!(
                "{name} round trip mean (qperf {}_lat × 2)",
                name.to_lowercase()
            ),
            "µs",
            2,
            Better::Lower,
            Contender::Limit,
            plan.rounds,
        );
        for round in plan.round_indices() {
            for pair in pairs {
                stop::check()?;
                let result = round_trip_us(
                    pair.client.netns(),
                    pair.server.ip(),
                    proto,
                    cpu,
                    plan.run_time,
                );
                progress(
                    scenario,
                    round,
                    pair.contender,
                    &format!("{name} mean"),
                    &result,
                    "µs",
                );
                if let Some(round) = round {
                    mean.record(pair.contender, round, result.ok());
                }
            }
        }
        metrics.push(mean);
        let run_time = plan.run_time.as_secs().max(1) as f64;
        profiles.extend(profile_pair(
            scenario,
            pairs,
            &format!("{name} request/response"),
            "round trip",
            |pair| {
                round_trip_us(
                    pair.client.netns(),
                    pair.server.ip(),
                    proto,
                    cpu,
                    plan.run_time,
                )
            },
            |round_trip_us| Some(run_time * 1e6 / round_trip_us),
        ));
    }
    drop(servers);
    Ok((metrics, profiles))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_latency_report() {
        let report = "tcp_lat:\n    latency  =  13200 ns\n";
        assert_eq!(parse_latency(report).unwrap(), 13.2);
        assert_eq!(
            parse_latency("udp_lat:\n    latency  =    13 us\n").unwrap(),
            13.0
        );
        assert_eq!(
            parse_latency("tcp_lat:\n    latency  =  1,250.5 us\n").unwrap(),
            1250.5
        );
        assert!(parse_latency("tcp_lat:\n    msg_rate = 5 K/sec\n").is_err());
        assert!(parse_latency("tcp_lat:\n    latency  =  3 parsecs\n").is_err());
    }
}
