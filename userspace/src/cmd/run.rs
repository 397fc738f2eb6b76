//! The node agent in the foreground: loads the datapath if it is not there,
//! moves attachments of earlier builds onto this one, repairs what vanished
//! or was detached behind the plugin's back, expires idle flows
//! periodically, streams the programs' log records and serves Prometheus
//! metrics, until SIGINT/SIGTERM.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use cni_ebpf_userspace::{
    BpffsLayout, Datapath,
    agent::{
        datapath_log,
        metrics::{self, AgentMetrics},
        metrics_server,
    },
    cluster,
    datapath::BUILD_ID,
    install::withdrawal::{self, Conflist},
    nat, node,
    promote::Promoter,
    reconcile, upgrade,
};
use log::LevelFilter;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    time::MissedTickBehavior,
};

use crate::cmd::gc::Timeouts;

/// How long a periodic pass or a scrape still running at shutdown may take
/// to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Between two looks at the node's pod CIDR in cluster mode.
const CONFLIST_CHECK: Duration = Duration::from_secs(1);
/// Between two passes moving pods onto tcx (`--tcx-moves` per pass).
const TCX_MOVES: Duration = Duration::from_secs(1);

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
    /// error, warn, info, debug or trace. (The agent's own records: info
    /// and above, or what RUST_LOG says.)
    #[arg(long, default_value = "off")]
    pub log_level: LevelFilter,
    /// The conflist `cni-ebpfd install` wrote: renamed out of the
    /// runtimes' sight (`<path>.cni-ebpf-withdrawn`) while the datapath
    /// cannot be opened or loaded (or, in cluster mode, while the node
    /// holds no pod CIDR yet), and back when it can.
    #[arg(long)]
    pub cni_conflist: Option<PathBuf>,
    /// Pods added with `attachMode: auto` moved from clsact onto tcx per
    /// second, each once it has lived a second; 0 leaves them on clsact.
    /// Every move holds the kernel's RTNL lock for an RCU grace period per
    /// program.
    #[arg(long, default_value_t = 4)]
    pub tcx_moves: usize,
    #[command(flatten)]
    pub timeouts: Timeouts,
    #[command(flatten)]
    pub cluster: crate::cmd::cluster::ClusterArgs,
}

pub fn run(layout: BpffsLayout, args: &RunArgs) -> anyhow::Result<()> {
    // One thread: the periodic pass and the scrapes' map reads go to the
    // blocking pool, the reactor only waits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(agent(layout, args));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

async fn agent(layout: BpffsLayout, args: &RunArgs) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let (registry, counters) = metrics::registry(layout.clone());
    // Blocks the thread, but nothing else runs yet; a signal waits for it.
    let conflist = args.cni_conflist.clone().map(Conflist::new);
    let cgroup = match start(&layout, args.cgroup_root.as_deref(), &counters) {
        Ok(cgroup) => cgroup,
        Err(e) => {
            // No pods for a datapath the agent cannot even load.
            if let Some(Err(withdrawing)) = conflist.as_ref().map(Conflist::withdraw) {
                log::error!("{withdrawing}");
            }
            return Err(e);
        }
    };
    if args.log_level != LevelFilter::Off {
        tokio::spawn(datapath_log::follow(layout.clone(), args.log_level));
    }
    if args.metrics_address != "off" {
        let address: SocketAddr = args
            .metrics_address
            .parse()
            .with_context(|| format!("--metrics-address {}", args.metrics_address))?;
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("listening on {address}"))?;
        log::info!("metrics on http://{address}/metrics");
        tokio::spawn(metrics_server::serve(listener, Arc::new(registry)));
    }

    let periodic = Arc::new(Periodic {
        layout,
        timeouts: args.timeouts.to_nat(),
        cgroup,
        counters,
        conflist,
        pod_cidr_file: args.cluster.node_state_file(),
        datapath_ok: AtomicBool::new(true),
        promoter: Mutex::new(Promoter::default()),
    });
    let cluster = args.cluster.start(&periodic.layout)?;
    let mut ticks = tokio::time::interval(Duration::from_secs(args.gc_interval.max(1)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The conflist follows the node's pod CIDR within a second of the
    // cluster agent's claim, not a whole --gc-interval later.
    let mut conflist_ticks = tokio::time::interval(CONFLIST_CHECK);
    conflist_ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tcx_ticks = tokio::time::interval(TCX_MOVES);
    tcx_ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let tcx_moves = args.tcx_moves;
    let stopped_by = loop {
        tokio::select! {
            _ = ticks.tick() => {
                let periodic = periodic.clone();
                tokio::task::spawn_blocking(move || periodic.run())
                    .await
                    .context("the periodic pass panicked")?;
            }
            _ = conflist_ticks.tick(), if periodic.pod_cidr_file.is_some() => {
                periodic.follow_conflist(periodic.datapath_ok.load(Ordering::Relaxed));
            }
            _ = tcx_ticks.tick(), if tcx_moves > 0 => {
                let periodic = periodic.clone();
                tokio::task::spawn_blocking(move || periodic.move_to_tcx(tcx_moves))
                    .await
                    .context("moving pods onto tcx panicked")?;
            }
            _ = interrupt.recv() => break "SIGINT",
            _ = terminate.recv() => break "SIGTERM",
            _ = cluster::Handle::ended(cluster.as_ref()) => break "the cluster agent's end",
        }
    };
    log::info!("stopping on {stopped_by}; the datapath keeps running");
    cluster.map_or(Ok(()), |c| c.stop().context("cluster"))
}

/// Loads the datapath if it is not there, moves earlier generations'
/// attachments onto it and repairs what is missing; returns where the
/// cgroup hooks go.
fn start(
    layout: &BpffsLayout,
    cgroup_root: Option<&Path>,
    counters: &AgentMetrics,
) -> anyhow::Result<Option<PathBuf>> {
    let root = layout.root().display().to_string();
    let datapath = Datapath::open_or_load(layout.clone())
        .with_context(|| format!("loading the datapath under {root}"))?;
    // Attachments still on an earlier build's programs move onto this one.
    let adopted = upgrade::adopt(layout, true).context("adopting the attachments")?;
    report_upgrade(&adopted, counters);
    // Reattaching uses the programs pinned now, not the ones opened above:
    // the adoption may just have replaced them.
    drop(datapath);
    let cgroup = match cgroup_root {
        Some(path) => Some(path.to_path_buf()),
        None => node::cgroup2_mount().context("reading /proc/self/mountinfo")?,
    };
    // Pods on a node without cgroup v2 run without these hooks (the plugin
    // says so; the metric cni_ebpf_node_hooks_missing shows it).
    let cgroup = match cgroup.map(|path| node::check_cgroup2(&path).map(|()| path)) {
        Some(Ok(path)) => Some(path),
        Some(Err(why)) => {
            log::warn!("{why}: the hooks on the node's own sockets are not attached");
            None
        }
        None => {
            log::warn!("no cgroup v2 mount: the hooks on the node's own sockets are not attached");
            None
        }
    };
    let repaired = reconcile_now(layout, cgroup.as_deref()).context("reconciling")?;
    log::info!(
        "datapath build {BUILD_ID} ready under {root}; {} attachment(s) moved onto it",
        adopted.swapped.len()
    );
    report_reconciled(&repaired, counters, true);
    Ok(cgroup)
}

/// What the agent does every `--gc-interval`.
struct Periodic {
    layout: BpffsLayout,
    timeouts: nat::NatTimeouts,
    cgroup: Option<PathBuf>,
    counters: AgentMetrics,
    conflist: Option<Conflist>,
    /// Cluster mode's `node.json`: no pods before the node has a pod CIDR.
    pod_cidr_file: Option<PathBuf>,
    /// What the last reconciliation found.
    datapath_ok: AtomicBool,
    /// Pods waiting to move onto tcx, as the last pass saw them.
    promoter: Mutex<Promoter>,
}

impl Periodic {
    fn run(&self) {
        gc(&self.layout, &self.timeouts, &self.counters);
        // Repairs between ticks too: a program detached behind the
        // plugin's back, an attachment made with an older generation.
        let reconciled = reconcile_now(&self.layout, self.cgroup.as_deref());
        self.datapath_ok
            .store(reconciled.is_ok(), Ordering::Relaxed);
        self.follow_conflist(reconciled.is_ok());
        match reconciled {
            Ok(repaired) => report_reconciled(&repaired, &self.counters, false),
            Err(e) => log::error!("reconcile failed: {e:#}"),
        }
        match upgrade::adopt(&self.layout, false) {
            Ok(adopted) => report_upgrade(&adopted, &self.counters),
            Err(e) => log::error!("adopting attachments failed: {e}"),
        }
    }
}

impl Periodic {
    /// Moves up to `budget` pods of `attachMode: auto` from clsact onto tcx.
    fn move_to_tcx(&self, budget: usize) {
        let mut promoter = self.promoter.lock().unwrap_or_else(|e| e.into_inner());
        let done = Datapath::open_or_load(self.layout.clone())
            .and_then(|mut datapath| promoter.pass(&mut datapath, budget));
        match done {
            Ok(done) => {
                if !done.moved.is_empty() {
                    log::info!("moved onto tcx: {}", done.moved.join(", "));
                }
                for failure in &done.failed {
                    log::warn!("not moved onto tcx: {failure}");
                }
                self.counters.tcx_moved.inc_by(done.moved.len() as u64);
                self.counters.tcx_waiting.set(done.waiting as i64);
            }
            Err(e) => log::error!("moving pods onto tcx failed: {e}"),
        }
    }

    /// Withdraws the conflist while the datapath cannot be opened or
    /// loaded (reconciling opens it, loading it if it is gone) or, in
    /// cluster mode, the node has no pod CIDR; restores it when both are
    /// there.
    fn follow_conflist(&self, datapath_ok: bool) {
        let Some(conflist) = &self.conflist else {
            return;
        };
        let path = conflist.path().display();
        let has_pod_cidr = self.pod_cidr_file.as_ref().is_none_or(|f| f.is_file());
        match conflist.follow(datapath_ok && has_pod_cidr) {
            Ok(withdrawal::Change::Withdrawn) if !datapath_ok => {
                log::error!("datapath unusable: withdrew {path} until it is back")
            }
            Ok(withdrawal::Change::Withdrawn) => {
                log::warn!("the node has no pod CIDR: withdrew {path} until it has one")
            }
            Ok(withdrawal::Change::Restored) => log::info!("datapath ready: published {path}"),
            Ok(withdrawal::Change::None) => {}
            Err(e) => log::error!("{e}"),
        }
    }
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

fn gc(layout: &BpffsLayout, timeouts: &nat::NatTimeouts, counters: &AgentMetrics) {
    let result = nat::gc(layout, timeouts)
        .and_then(|a| nat::gc_host_port_flows(layout, timeouts).map(|b| a.expired + b.expired));
    counters.gc_runs.inc();
    match result {
        Ok(expired) => {
            counters.gc_expired.inc_by(expired as u64);
        }
        Err(e) => {
            counters.gc_errors.inc();
            log::error!("gc failed: {e}");
        }
    }
}

fn report_reconciled(repaired: &reconcile::Reconciled, counters: &AgentMetrics, always: bool) {
    let removed = repaired.endpoints.len() + repaired.link_pins.len();
    for failure in &repaired.failed {
        log::warn!("could not reattach {failure}");
    }
    if repaired.node_addrs > 0 {
        log::info!(
            "node addresses changed: {} NODE_ADDRS entr(y/ies) updated",
            repaired.node_addrs
        );
    }
    if always || removed > 0 || !repaired.reattached.is_empty() {
        log::info!(
            "reconciled: removed {} stale endpoint address(es) and {} stale link pin(s), reattached {} program(s){}",
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
    // Once when it appears or changes, not on every pass.
    let foreign = repaired.xdp_foreign.len() as i64;
    if counters.uplink_xdp_foreign.set(foreign) != foreign {
        for uplink in &repaired.xdp_foreign {
            log::warn!(
                "{uplink}, not xdp_uplink (uplinkXdp): left in place, the tc program serves it"
            );
        }
    }
    counters.reconcile_removed.inc_by(removed as u64);
    counters
        .reconcile_reattached
        .inc_by(repaired.reattached.len() as u64);
}

fn report_upgrade(upgrade: &upgrade::Upgrade, counters: &AgentMetrics) {
    for swapped in &upgrade.swapped {
        log::info!(
            "{} now runs {} id {} (was {})",
            swapped.point,
            swapped.program,
            swapped.to_id,
            swapped.from_id
        );
    }
    for failure in &upgrade.failed {
        log::warn!("not moved: {failure}");
    }
    counters
        .upgrade_swapped
        .inc_by(upgrade.swapped.len() as u64);
}
