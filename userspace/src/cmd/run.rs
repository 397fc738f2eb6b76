//! The node agent in the foreground: loads the datapath if it is not there
//! and expires idle masqueraded flows periodically until SIGINT/SIGTERM.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use cni_ebpf_userspace::{BpffsLayout, Datapath, nat};
use nix::sys::signal::{SigHandler, Signal, signal};

use crate::cmd::gc::Timeouts;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Seconds between two garbage collections of the NAT maps.
    #[arg(long, default_value_t = 10)]
    pub gc_interval: u64,
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
    eprintln!(
        "cni-ebpfd: datapath ready under {root}; NAT gc every {}s",
        args.gc_interval
    );
    let timeouts = args.timeouts.to_nat();
    let interval = Duration::from_secs(args.gc_interval.max(1));
    let mut next = Instant::now();
    while !STOP.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            match nat::gc(&layout, &timeouts) {
                Ok(stats) if stats.expired > 0 => eprintln!(
                    "cni-ebpfd: gc expired {} of {} flows, {} live",
                    stats.expired, stats.scanned, stats.live
                ),
                Ok(_) => {}
                Err(e) => eprintln!("cni-ebpfd: gc failed: {e}"),
            }
            next = Instant::now() + interval;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("cni-ebpfd: stopping; the datapath keeps running");
    Ok(())
}
