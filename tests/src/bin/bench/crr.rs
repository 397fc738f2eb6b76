//! Connect/request/response/close rate (netperf's TCP_CRR): a client loops
//! connect → write a small request → read the small reply → close, against
//! a server that accepts, reads, replies and closes. Both are threads of
//! this process that joined the pods' namespaces, pinned on the same CPU
//! like the request/response scenario.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use cni_ebpf_tests::netns;
use nix::{
    sched::{CpuSet, sched_setaffinity},
    unistd::Pid,
};

use crate::{
    Plan,
    metric::{Better, Metric},
    profile_pair,
    program_cost::Profile,
    progress, stop,
    topology::{Contender, PodPair},
};

pub const SCENARIO: &str = "crr";
/// Id of the rate metric (drawn in the chart).
pub const RATE_ID: &str = "crr.rate";
const PORT: u16 = 7100;
const REQUEST_BYTES: usize = 64;
const REPLY_BYTES: usize = 64;
/// Any single step past this is a broken path, not a slow one.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed transactions tolerated in one run before it counts as failed.
const MAX_ERRORS: u64 = 100;
/// How often the server's accept loop looks at the stop flag.
const ACCEPT_POLL_MS: i32 = 50;

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct Crr {
    pub transactions: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Crr {
    pub fn rate(&self) -> f64 {
        self.transactions as f64 / self.elapsed.as_secs_f64()
    }
}

pub fn run(pairs: &[PodPair<'_>], plan: &Plan) -> Result<(Vec<Metric>, Vec<Profile>)> {
    for pair in pairs {
        // Tens of thousands of connections a run: every ephemeral port, and
        // TIME_WAIT ports reused once their timestamps allow.
        let client = pair.client.netns();
        client.set_sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        client.set_sysctl("net.ipv4.tcp_tw_reuse", "1");
    }
    let mut metric = Metric::new(
        SCENARIO,
        "rate",
        "TCP connect/request/response/close rate (64 B each way)",
        "transactions/s",
        0,
        Better::Higher,
        Contender::Limit,
        plan.rounds,
    );
    for round in plan.round_indices() {
        for pair in pairs {
            stop::check()?;
            let result = measure(pair, plan.run_time, plan.cpus.rr);
            let rate = result.as_ref().map(Crr::rate).map_err(|e| anyhow!("{e:#}"));
            progress(
                SCENARIO,
                round,
                pair.contender,
                "rate",
                &rate,
                "transactions/s",
            );
            if let Ok(crr) = &result
                && crr.errors > 0
            {
                eprintln!(
                    "[{SCENARIO}] {}: {} failed transactions",
                    pair.contender.name(),
                    crr.errors
                );
            }
            if let Some(round) = round {
                metric.record(pair.contender, round, rate.ok());
            }
        }
    }
    let profiles = profile_pair(
        SCENARIO,
        pairs,
        "TCP connect/request/response/close",
        "connection",
        |pair| measure(pair, plan.run_time, plan.cpus.rr),
        |crr| Some(crr.transactions as f64),
    );
    Ok((vec![metric], profiles.into_iter().collect()))
}

/// One run of `duration` between the pair's client and server pods.
pub fn measure(pair: &PodPair<'_>, duration: Duration, cpu: usize) -> Result<Crr> {
    let addr = SocketAddr::from((pair.server.ip(), PORT));
    measure_between(
        pair.server.netns().path(),
        addr,
        pair.client.netns().path(),
        addr,
        duration,
        cpu,
    )
}

/// One run of `duration`: the server listens on `bind` in the namespace
/// `server_ns`, the client in `client_ns` connects to `connect` (the same
/// address, or one translated to it on the way).
pub fn measure_between(
    server_ns: &std::path::Path,
    bind: SocketAddr,
    client_ns: &std::path::Path,
    connect: SocketAddr,
    duration: Duration,
    cpu: usize,
) -> Result<Crr> {
    let server_ns = server_ns.to_path_buf();
    let client_ns = client_ns.to_path_buf();
    let done = AtomicBool::new(false);
    thread::scope(|scope| {
        let (ready_tx, ready_rx) = mpsc::channel();
        let done = &done;
        let server = scope.spawn(move || -> Result<u64> {
            netns::enter(&server_ns);
            pin(cpu)?;
            let listener = match TcpListener::bind(bind) {
                Ok(listener) => listener,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("binding {bind}: {e}")));
                    return Ok(0);
                }
            };
            let _ = ready_tx.send(Ok(()));
            serve(&listener, done)
        });
        let started = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the CRR server did not start"))
            .and_then(|ready| ready);
        let client = started.and_then(|()| {
            scope
                .spawn(move || {
                    netns::enter(&client_ns);
                    pin(cpu)?;
                    transact(connect, duration)
                })
                .join()
                .map_err(|_| anyhow!("the CRR client panicked"))?
        });
        done.store(true, Ordering::SeqCst);
        let served = server
            .join()
            .map_err(|_| anyhow!("the CRR server panicked"))?;
        let crr = client?;
        served.context("CRR server")?;
        Ok(crr)
    })
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set).context("sched_setaffinity")?;
    Ok(())
}

/// Accepts until `done`: read the request, write the reply, close.
fn serve(listener: &TcpListener, done: &AtomicBool) -> Result<u64> {
    let mut request = [0u8; REQUEST_BYTES];
    let reply = [0x5a_u8; REPLY_BYTES];
    let mut served = 0;
    while !done.load(Ordering::SeqCst) {
        if !readable(listener.as_raw_fd(), ACCEPT_POLL_MS)? {
            continue;
        }
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        // A client that gave up mid-transaction is the client's error.
        if stream.read_exact(&mut request).is_ok() && stream.write_all(&reply).is_ok() {
            served += 1;
        }
    }
    Ok(served)
}

/// `poll(2)` for input on `fd`, up to `timeout_ms`.
fn readable(fd: i32, timeout_ms: i32) -> Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
    if ready < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(error).context("poll");
    }
    Ok(ready > 0)
}

/// The client loop: transactions until `duration` is over.
fn transact(addr: SocketAddr, duration: Duration) -> Result<Crr> {
    let request = [0xa5_u8; REQUEST_BYTES];
    let mut reply = [0u8; REPLY_BYTES];
    let started = Instant::now();
    let deadline = started + duration;
    let (mut transactions, mut errors) = (0u64, 0u64);
    while Instant::now() < deadline && !stop::requested() {
        let outcome = (|| -> std::io::Result<()> {
            let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.write_all(&request)?;
            stream.read_exact(&mut reply)?;
            Ok(())
        })();
        match outcome {
            Ok(()) => transactions += 1,
            Err(e) => {
                errors += 1;
                if errors > MAX_ERRORS {
                    bail!("{errors} failed transactions to {addr}, the last: {e}");
                }
            }
        }
    }
    stop::check()?;
    Ok(Crr {
        transactions,
        errors,
        elapsed: started.elapsed(),
    })
}
