//! The node agent in the foreground: loads the datapath if it is not there,
//! repairs what vanished behind the plugin's back, expires idle flows
//! periodically and serves Prometheus metrics, until SIGINT/SIGTERM.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use cni_ebpf_userspace::{
    BpffsLayout, Datapath,
    metrics::{self, AgentCounters},
    nat, reconcile,
};
use nix::sys::signal::{SigHandler, Signal, signal};

use crate::cmd::gc::Timeouts;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Seconds between two garbage collections of the connection tables.
    #[arg(long, default_value_t = 10)]
    pub gc_interval: u64,
    /// Where to serve Prometheus metrics (GET /metrics); "off" serves none.
    #[arg(long, default_value = "127.0.0.1:9962")]
    pub metrics_address: String,
    #[command(flatten)]
    pub timeouts: Timeouts,
}

pub fn run(layout: BpffsLayout, args: &RunArgs) -> anyhow::Result<()> {
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal(sig, SigHandler::Handler(request_stop)) }
            .with_context(|| format!("installing a {sig} handler"))?;
    }
    let root = layout.root().display().to_string();
    Datapath::open_or_load(layout.clone())
        .with_context(|| format!("loading the datapath under {root}"))?;
    let repaired = reconcile::reconcile(&layout).context("reconciling")?;
    eprintln!(
        "cni-ebpfd: datapath ready under {root}; removed {} stale endpoint address(es) and {} stale link pin(s)",
        repaired.endpoints.len(),
        repaired.link_pins.len()
    );
    let counters = Arc::new(Mutex::new(AgentCounters::default()));
    if args.metrics_address != "off" {
        let address: SocketAddr = args
            .metrics_address
            .parse()
            .with_context(|| format!("--metrics-address {}", args.metrics_address))?;
        let listener =
            TcpListener::bind(address).with_context(|| format!("listening on {address}"))?;
        eprintln!("cni-ebpfd: metrics on http://{address}/metrics");
        let (layout, counters) = (layout.clone(), counters.clone());
        std::thread::spawn(move || serve_metrics(&listener, &layout, &counters));
    }

    let timeouts = args.timeouts.to_nat();
    let interval = Duration::from_secs(args.gc_interval.max(1));
    let mut next = Instant::now();
    while !STOP.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            let result = nat::gc(&layout, &timeouts).and_then(|a| {
                nat::gc_host_port_flows(&layout, &timeouts).map(|b| a.expired + b.expired)
            });
            let mut c = counters.lock().unwrap_or_else(|e| e.into_inner());
            c.gc_runs += 1;
            match result {
                Ok(expired) => c.gc_expired += expired as u64,
                Err(e) => {
                    c.gc_errors += 1;
                    eprintln!("cni-ebpfd: gc failed: {e}");
                }
            }
            next = Instant::now() + interval;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("cni-ebpfd: stopping; the datapath keeps running");
    Ok(())
}

/// A minimal HTTP/1.0 responder for one path: the exposition needs no more,
/// and it keeps an HTTP stack out of a node agent's dependencies.
fn serve_metrics(listener: &TcpListener, layout: &BpffsLayout, counters: &Mutex<AgentCounters>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut request_line = String::new();
        if BufReader::new(&stream)
            .read_line(&mut request_line)
            .is_err()
        {
            continue;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        let (status, body) = if path == "/metrics" {
            let agent = *counters.lock().unwrap_or_else(|e| e.into_inner());
            match metrics::render(layout, &agent) {
                Ok(text) => ("200 OK", text),
                Err(e) => ("500 Internal Server Error", format!("{e}\n")),
            }
        } else {
            ("404 Not Found", "try /metrics\n".to_string())
        };
        let _ = write!(
            stream,
            "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
