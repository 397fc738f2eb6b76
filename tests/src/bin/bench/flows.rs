//! The tcp/rr/crr measures between any two namespaces, for the scenarios
//! whose client does not talk to a pod address directly (masquerade to an
//! `ext` server, published host ports): the same iperf3, sockperf (qperf
//! over IPv6) and CRR runs, pinning, interleaved rounds and metrics as
//! `tcp`, `rr` and `crr`, with one table row per [`Path`].

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use cni_ebpf_tests::Netns;
use serde_json::Value;

use crate::{
    Plan, crr,
    exec::{self, OnStop, Proto, Server},
    latency::{self, PingPong},
    metric::{Better, Metric},
    progress, qperf, stop, tcp,
    topology::Contender,
};

pub const IPERF3_PORT: u16 = 5201;
pub const SOCKPERF_PORT: u16 = 11111;
pub const CRR_PORT: u16 = 7100;
/// iperf3 refuses a test while it still tears down the previous one.
const BUSY_RETRIES: u32 = 10;

/// Where a server listens and where its client connects.
#[derive(Clone, Copy)]
pub struct Path<'a> {
    /// The table row.
    pub row: Contender,
    pub client: &'a Netns,
    pub server: &'a Netns,
    pub server_ip: IpAddr,
    pub connect_ip: IpAddr,
    /// `Some((host port, container port))`: every measure's server listens
    /// on the container port and the client connects to the host port.
    pub mapped: Option<(u16, u16)>,
}

impl Path<'_> {
    /// Server and client address for a measure whose own port is `port`.
    pub fn addrs(&self, port: u16) -> (SocketAddr, SocketAddr) {
        let (host, container) = self.mapped.unwrap_or((port, port));
        (
            SocketAddr::new(self.server_ip, container),
            SocketAddr::new(self.connect_ip, host),
        )
    }
}

/// One server per distinct (namespace, address) among `paths`; index of
/// each path's server.
fn servers(
    paths: &[Path<'_>],
    port: u16,
    start: impl Fn(&Netns, SocketAddr) -> Result<Server>,
) -> Result<(Vec<Server>, Vec<usize>)> {
    let mut started: Vec<(std::path::PathBuf, SocketAddr)> = Vec::new();
    let mut servers = Vec::new();
    let mut index = Vec::new();
    for path in paths {
        let (listen, _) = path.addrs(port);
        let key = (path.server.path().to_path_buf(), listen);
        match started.iter().position(|k| *k == key) {
            Some(i) => index.push(i),
            None => {
                servers.push(start(path.server, listen)?);
                started.push(key);
                index.push(servers.len() - 1);
            }
        }
    }
    Ok((servers, index))
}

pub fn start_iperf3(ns: &Netns, listen: impl Into<SocketAddr>, cpu: usize) -> Result<Server> {
    start_pinned(ns, cpu, &["iperf3", "-s"], "-B", listen.into())
}

pub fn start_sockperf(ns: &Netns, listen: SocketAddrV4, cpu: usize) -> Result<Server> {
    start_pinned(ns, cpu, &["sockperf", "sr", "--tcp"], "-i", listen.into())
}

/// `taskset -c <cpu> <program> <bind_flag> <ip> -p <port>` in `ns`, once
/// its TCP socket listens.
fn start_pinned(
    ns: &Netns,
    cpu: usize,
    program: &[&str],
    bind_flag: &str,
    listen: SocketAddr,
) -> Result<Server> {
    let mut command = ns.command("taskset");
    command.args(["-c", &cpu.to_string()]).args(program);
    command.args([
        bind_flag,
        &listen.ip().to_string(),
        "-p",
        &listen.port().to_string(),
    ]);
    let mut server = Server::start(&mut command, program[0])?;
    server.wait_ready(Proto::Tcp, listen.port())?;
    Ok(server)
}

/// One iperf3 run from `client` to `connect`, its `-J` report; `extra`
/// adds flags (`-R`).
pub fn iperf3(
    client: &Netns,
    connect: impl Into<SocketAddr>,
    cpu: usize,
    run_time: Duration,
    extra: &[&str],
) -> Result<Value> {
    let connect = connect.into();
    let seconds = run_time.as_secs().max(1).to_string();
    for attempt in 0..=BUSY_RETRIES {
        stop::check()?;
        let mut command = client.command("taskset");
        command.args(["-c", &cpu.to_string(), "iperf3", "-c"]);
        command.args([&connect.ip().to_string(), "-p", &connect.port().to_string()]);
        command.args(["-t", &seconds, "-J"]);
        command.args(extra);
        let output = exec::run(
            &mut command,
            None,
            run_time + Duration::from_secs(30),
            OnStop::Kill,
        )?;
        let report: Value = serde_json::from_str(&output.stdout)
            .with_context(|| format!("iperf3 -J output is not JSON: {}", output.describe()))?;
        if let Some(error) = report.get("error").and_then(Value::as_str) {
            // The server is busy with the last test, or between two tests
            // (iperf3 listens again only once a test is over).
            let between = error.contains("busy")
                || error.contains("Connection refused")
                || error.contains("Connection reset");
            if between && attempt < BUSY_RETRIES {
                thread::sleep(Duration::from_millis(200));
                continue;
            }
            bail!("iperf3: {error}");
        }
        return Ok(report);
    }
    Err(anyhow!("iperf3 server stayed busy"))
}

/// One TCP `sockperf ping-pong` run from `client` to `connect`.
pub fn ping_pong(
    client: &Netns,
    connect: SocketAddrV4,
    cpu: usize,
    run_time: Duration,
) -> Result<PingPong> {
    let mut command = client.command("taskset");
    command.args(["-c", &cpu.to_string(), "sockperf", "ping-pong", "--tcp"]);
    command.args([
        "-i",
        &connect.ip().to_string(),
        "-p",
        &connect.port().to_string(),
    ]);
    command.args(["-t", &run_time.as_secs().max(1).to_string(), "--full-rtt"]);
    let output = exec::run(
        &mut command,
        None,
        run_time + Duration::from_secs(30),
        OnStop::Kill,
    )?;
    if !output.success() {
        bail!("sockperf ping-pong failed: {}", output.describe());
    }
    latency::parse(&format!("{}\n{}", output.stdout, output.stderr))
        .with_context(|| format!("parsing sockperf output: {}", output.describe()))
}

/// One TCP connection through `path` to a listener on its server's
/// address for a measure on `port`, before measuring: a path that does not
/// carry a connection fails here, named, rather than as every run's error.
pub fn check_reaches(path: &Path<'_>, port: u16) -> Result<()> {
    let (listen, connect) = path.addrs(port);
    let listener = path.server.run(|| std::net::TcpListener::bind(listen))?;
    let connected = path
        .client
        .run(|| std::net::TcpStream::connect_timeout(&connect, Duration::from_secs(3)));
    drop(listener);
    connected.map(drop).map_err(|e| {
        anyhow!(
            "{}: {connect} does not reach {listen}: {e}",
            path.row.name()
        )
    })
}

/// Hooks a scenario runs around the measures.
pub trait Hooks {
    /// Before each CRR run of `row` (e.g. expire closed NAT flows, as the
    /// node agent does periodically).
    fn before_crr(&self, _row: Contender) {}
}

impl Hooks for () {}

/// TCP throughput (1 stream), TCP round trip p50/p99 and the CRR rate over
/// every path, rounds interleaved.
pub fn measure(
    scenario: &'static str,
    label: &str,
    paths: &[Path<'_>],
    baseline: Contender,
    plan: &Plan,
    hooks: &dyn Hooks,
) -> Result<Vec<Metric>> {
    let rows: Vec<Contender> = paths.iter().map(|p| p.row).collect();
    let id = |what: &str| {
        if label.is_empty() {
            what.to_string()
        } else {
            format!("{label}.{what}")
        }
    };
    let title = |what: &str| {
        if label.is_empty() {
            what.to_string()
        } else {
            format!("{what}, {label}")
        }
    };
    let new = |what: &str, name: &str, unit, decimals, better| {
        Metric::new(
            scenario,
            &id(what),
            &title(name),
            unit,
            decimals,
            better,
            baseline,
            plan.rounds,
        )
        .with_rows(&rows)
    };
    let mut gbits = new(
        "tcp",
        "TCP throughput, 1 stream (iperf3, client and server on different CPUs)",
        "Gbit/s",
        2,
        Better::Higher,
    );
    // sockperf 3.7 takes no IPv6 address: over IPv6 the round trip is
    // qperf's mean (no percentiles).
    let ipv6 = paths.first().is_some_and(|p| p.server_ip.is_ipv6());
    let mut round_trip = if ipv6 {
        vec![new(
            "rr.mean",
            "TCP round trip mean (qperf tcp_lat × 2, one CPU)",
            "µs",
            2,
            Better::Lower,
        )]
    } else {
        vec![
            new(
                "rr.p50",
                "TCP round trip p50 (sockperf, one CPU)",
                "µs",
                2,
                Better::Lower,
            ),
            new(
                "rr.p99",
                "TCP round trip p99 (sockperf, one CPU)",
                "µs",
                2,
                Better::Lower,
            ),
        ]
    };
    let mut crr_rate = new(
        "crr",
        "TCP connect/request/response/close rate (64 B each way, one CPU)",
        "transactions/s",
        0,
        Better::Higher,
    );
    let cpus = plan.cpus;

    // Request/response first: sockperf's server does not set SO_REUSEADDR,
    // so it must bind its port before other servers leave TIME_WAIT
    // sockets on it (all measures share the container port of a mapping).
    if ipv6 {
        round_trips_qperf(scenario, paths, plan, &mut round_trip[0])?;
    } else {
        round_trips_sockperf(scenario, paths, plan, &mut round_trip)?;
    }
    // Throughput.
    {
        let (mut servers, index) = servers(paths, IPERF3_PORT, |ns, listen| {
            start_iperf3(ns, listen, cpus.server)
        })?;
        for round in plan.round_indices() {
            for (path, server) in paths.iter().zip(&index) {
                stop::check()?;
                let (_, connect) = path.addrs(IPERF3_PORT);
                let result = iperf3(path.client, connect, cpus.client, plan.run_time, &[])
                    .and_then(|report| tcp::received_gbits(&report))
                    .map_err(|e| died(e, &mut servers[*server]));
                progress(scenario, round, path.row, "tcp", &result, "Gbit/s");
                if let Some(round) = round {
                    gbits.record(path.row, round, result.ok());
                }
            }
        }
    }
    // Connect/request/response/close.
    for path in paths {
        path.client
            .set_sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        path.client.set_sysctl("net.ipv4.tcp_tw_reuse", "1");
    }
    for round in plan.round_indices() {
        for path in paths {
            stop::check()?;
            hooks.before_crr(path.row);
            let (listen, connect) = path.addrs(CRR_PORT);
            let result = crr::measure_between(
                path.server.path(),
                listen,
                path.client.path(),
                connect,
                plan.run_time,
                cpus.rr,
            );
            if let Ok(run) = &result
                && run.errors > 0
            {
                eprintln!(
                    "[{scenario}] {}: {} failed transactions",
                    path.row.name(),
                    run.errors
                );
            }
            let rate = result
                .as_ref()
                .map(crr::Crr::rate)
                .map_err(|e| anyhow!("{e:#}"));
            progress(scenario, round, path.row, "crr", &rate, "transactions/s");
            if let Some(round) = round {
                crr_rate.record(path.row, round, rate.ok());
            }
        }
    }
    let mut metrics = vec![gbits];
    metrics.extend(round_trip);
    metrics.push(crr_rate);
    Ok(metrics)
}

/// TCP round trip p50 and p99 (`metrics`, in that order) with sockperf,
/// every path, rounds interleaved.
fn round_trips_sockperf(
    scenario: &'static str,
    paths: &[Path<'_>],
    plan: &Plan,
    metrics: &mut [Metric],
) -> Result<()> {
    let cpus = plan.cpus;
    let (mut servers, index) = servers(paths, SOCKPERF_PORT, |ns, listen| {
        let SocketAddr::V4(listen) = listen else {
            bail!("sockperf 3.7 takes no IPv6 address ({listen})");
        };
        start_sockperf(ns, listen, cpus.rr)
    })?;
    for round in plan.round_indices() {
        for (path, server) in paths.iter().zip(&index) {
            stop::check()?;
            let (_, SocketAddr::V4(connect)) = path.addrs(SOCKPERF_PORT) else {
                bail!("sockperf 3.7 takes no IPv6 address");
            };
            let result = ping_pong(path.client, connect, cpus.rr, plan.run_time)
                .map_err(|e| died(e, &mut servers[*server]));
            let shown = result
                .as_ref()
                .map(|r| r.p50_us)
                .map_err(|e| anyhow!("{e:#}"));
            progress(scenario, round, path.row, "TCP p50", &shown, "µs");
            if let Some(round) = round {
                let result = result.ok();
                metrics[0].record(path.row, round, result.map(|r| r.p50_us));
                metrics[1].record(path.row, round, result.map(|r| r.p99_us));
            }
        }
    }
    Ok(())
}

/// TCP round trip mean with qperf's `tcp_lat`, every path, rounds
/// interleaved. qperf's control connection and its test socket both go
/// through the path, so a mapped path maps both ports.
fn round_trips_qperf(
    scenario: &'static str,
    paths: &[Path<'_>],
    plan: &Plan,
    metric: &mut Metric,
) -> Result<()> {
    if paths.iter().any(|p| p.mapped.is_some()) {
        bail!("qperf through a host port is not measured (two ports, one mapping)");
    }
    let cpu = plan.cpus.rr;
    let (mut servers, index) = servers(paths, qperf::CONTROL_PORT, |ns, _| {
        qperf::start_server(ns, cpu)
    })?;
    for round in plan.round_indices() {
        for (path, server) in paths.iter().zip(&index) {
            stop::check()?;
            let result =
                qperf::round_trip_us(path.client, path.connect_ip, Proto::Tcp, cpu, plan.run_time)
                    .map_err(|e| died(e, &mut servers[*server]));
            progress(scenario, round, path.row, "TCP mean", &result, "µs");
            if let Some(round) = round {
                metric.record(path.row, round, result.ok());
            }
        }
    }
    Ok(())
}

fn died(e: anyhow::Error, server: &mut Server) -> anyhow::Error {
    if server.alive() {
        e
    } else {
        e.context(format!("server died: {}", server.log_text()))
    }
}
