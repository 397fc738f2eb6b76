//! The node agent in the foreground: loads the datapath if it is not there,
//! moves attachments of earlier builds onto this one, repairs what vanished
//! or was detached behind the plugin's back, expires idle flows
//! periodically, streams the programs' log records and serves Prometheus
//! metrics, until SIGINT/SIGTERM.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use cni_ebpf_userspace::{
    BpffsLayout, Datapath,
    datapath::BUILD_ID,
    datapath_log,
    metrics::{self, AgentCounters},
    nat, node, reconcile, upgrade,
};
use log::LevelFilter;
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
    /// The cgroup v2 directory the plugin attaches its cgroup hooks to (its
    /// `cgroupRoot`; default: the cgroup v2 mount): where the agent puts
    /// them back if their links are gone.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Print the programs' log records at this level and above: off,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "off")]
    pub log_level: LevelFilter,
    #[command(flatten)]
    pub timeouts: Timeouts,
    #[command(flatten)]
    pub cluster: crate::cmd::cluster::ClusterArgs,
}

pub fn run(layout: BpffsLayout, args: &RunArgs) -> anyhow::Result<()> {
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal(sig, SigHandler::Handler(request_stop)) }
            .with_context(|| format!("installing a {sig} handler"))?;
    }
    let root = layout.root().display().to_string();
    let datapath = Datapath::open_or_load(layout.clone())
        .with_context(|| format!("loading the datapath under {root}"))?;
    let counters = Arc::new(Mutex::new(AgentCounters::default()));
    // Attachments still on an earlier build's programs move onto this one.
    let adopted = upgrade::adopt(&layout, true).context("adopting the attachments")?;
    report_upgrade(&adopted, &counters);
    // Reattaching uses the programs pinned now, not the ones opened above:
    // the adoption may just have replaced them.
    drop(datapath);
    let cgroup = match &args.cgroup_root {
        Some(path) => Some(path.clone()),
        None => node::cgroup2_mount().context("reading /proc/self/mountinfo")?,
    };
    let repaired = reconcile_now(&layout, cgroup.as_deref()).context("reconciling")?;
    eprintln!(
        "cni-ebpfd: datapath build {BUILD_ID} ready under {root}; {} attachment(s) moved onto it",
        adopted.swapped.len()
    );
    report_reconciled(&repaired, &counters, true);
    if args.log_level != LevelFilter::Off {
        let (layout, level) = (layout.clone(), args.log_level);
        std::thread::spawn(move || stream_logs(&layout, level));
    }
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

    let cluster = args.cluster.start(&layout)?;
    let timeouts = args.timeouts.to_nat();
    let interval = Duration::from_secs(args.gc_interval.max(1));
    let mut next = Instant::now();
    while !STOP.load(Ordering::Relaxed) && cluster.as_ref().is_none_or(|c| c.is_running()) {
        if Instant::now() >= next {
            gc(&layout, &timeouts, &counters);
            // Repairs between ticks too: a program detached behind the
            // plugin's back, an attachment made with an older generation.
            match reconcile_now(&layout, cgroup.as_deref()) {
                Ok(repaired) => report_reconciled(&repaired, &counters, false),
                Err(e) => eprintln!("cni-ebpfd: reconcile failed: {e}"),
            }
            match upgrade::adopt(&layout, false) {
                Ok(adopted) => report_upgrade(&adopted, &counters),
                Err(e) => eprintln!("cni-ebpfd: adopting attachments failed: {e}"),
            }
            next = Instant::now() + interval;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("cni-ebpfd: stopping; the datapath keeps running");
    cluster.map_or(Ok(()), |c| c.stop().context("cluster"))
}

/// One reconciliation with the programs pinned at this moment (an upgrade
/// may have replaced them since the last one).
fn reconcile_now(
    layout: &BpffsLayout,
    cgroup: Option<&Path>,
) -> anyhow::Result<reconcile::Reconciled> {
    let mut datapath = Datapath::open_or_load(layout.clone())?;
    Ok(reconcile::reconcile(&mut datapath, cgroup)?)
}

fn gc(layout: &BpffsLayout, timeouts: &nat::NatTimeouts, counters: &Mutex<AgentCounters>) {
    let result = nat::gc(layout, timeouts)
        .and_then(|a| nat::gc_host_port_flows(layout, timeouts).map(|b| a.expired + b.expired));
    let mut c = counters.lock().unwrap_or_else(|e| e.into_inner());
    c.gc_runs += 1;
    match result {
        Ok(expired) => c.gc_expired += expired as u64,
        Err(e) => {
            c.gc_errors += 1;
            eprintln!("cni-ebpfd: gc failed: {e}");
        }
    }
}

fn report_reconciled(
    repaired: &reconcile::Reconciled,
    counters: &Mutex<AgentCounters>,
    always: bool,
) {
    let removed = repaired.endpoints.len() + repaired.link_pins.len();
    for failure in &repaired.failed {
        eprintln!("cni-ebpfd: could not reattach {failure}");
    }
    if repaired.node_addrs > 0 {
        eprintln!(
            "cni-ebpfd: node addresses changed: {} NODE_ADDRS entr(y/ies) updated",
            repaired.node_addrs
        );
    }
    if always || removed > 0 || !repaired.reattached.is_empty() {
        eprintln!(
            "cni-ebpfd: reconciled: removed {} stale endpoint address(es) and {} stale link pin(s), reattached {} program(s){}",
            repaired.endpoints.len(),
            repaired.link_pins.len(),
            repaired.reattached.len(),
            if repaired.reattached.is_empty() {
                String::new()
            } else {
                format!(" ({})", repaired.reattached.join(", "))
            }
        );
    }
    let mut c = counters.lock().unwrap_or_else(|e| e.into_inner());
    c.reconcile_removed += removed as u64;
    c.reconcile_reattached += repaired.reattached.len() as u64;
}

fn report_upgrade(upgrade: &upgrade::Upgrade, counters: &Mutex<AgentCounters>) {
    for swapped in &upgrade.swapped {
        eprintln!(
            "cni-ebpfd: {} now runs {} id {} (was {})",
            swapped.point, swapped.program, swapped.to_id, swapped.from_id
        );
    }
    for failure in &upgrade.failed {
        eprintln!("cni-ebpfd: not moved: {failure}");
    }
    counters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .upgrade_swapped += upgrade.swapped.len() as u64;
}

/// Prints the programs' aya-log records at `level` and above on stderr.
struct StderrLog {
    level: LevelFilter,
}

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "cni-ebpfd: datapath {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Reads the log ring every 100 ms; attaches again when the programs are
/// replaced (the ring is shared, but a reader holds the program it came
/// through).
fn stream_logs(layout: &BpffsLayout, level: LevelFilter) {
    let mut reader = None;
    let mut checked = Instant::now();
    let mut warned = false;
    while !STOP.load(Ordering::Relaxed) {
        let stale = match &reader {
            None => true,
            Some((id, _)) => {
                checked.elapsed() >= Duration::from_secs(1)
                    && datapath_log::current_program_id(layout).is_ok_and(|now| now != *id)
            }
        };
        if stale {
            checked = Instant::now();
            match datapath_log::reader(layout, StderrLog { level }) {
                Ok(opened) => {
                    if reader.is_none() {
                        eprintln!("cni-ebpfd: streaming datapath logs at {level}");
                    }
                    reader = Some(opened);
                }
                Err(e) if !warned => {
                    warned = true;
                    eprintln!("cni-ebpfd: no datapath logs: {e}");
                }
                Err(_) => {}
            }
        }
        if let Some((_, logger)) = &mut reader {
            logger.flush();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
