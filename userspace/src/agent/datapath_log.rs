//! The programs' aya-log records (drops worth a line, see the eBPF crate's
//! `log` module), read from the ring buffer every generation shares (pinned
//! by name like the other maps) when the kernel says it holds some, and
//! passed to the process's logger as records of [`TARGET`].

use std::time::Duration;

use aya::programs::ProgramInfo;
use aya_log::EbpfLogger;
use cni_ebpf_common::program_names::FROM_POD;
use log::{LevelFilter, Metadata, Record};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    datapath::BUILD_ID,
    error::{DatapathError, Result},
    paths::BpffsLayout,
};

/// The log target of the programs' records, whatever module of the eBPF
/// crate wrote them: the level of `cni-ebpfd run --log-level` applies to it.
pub const TARGET: &str = "datapath";

/// How often a reader checks whether the programs were replaced.
const RECHECK: Duration = Duration::from_secs(1);

/// The id of this build's pinned `from_pod`: the program a reader attaches
/// through, and whose change tells it to attach again.
pub fn current_program_id(layout: &BpffsLayout) -> Result<u32> {
    ProgramInfo::from_pin(layout.program(BUILD_ID, FROM_POD))
        .map(|info| info.id())
        .map_err(|source| DatapathError::Program {
            name: FROM_POD,
            source,
        })
}

/// Hands a record of the programs to the process's logger as one of
/// [`TARGET`].
struct ToProcessLogger;

impl log::Log for ToProcessLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        log::logger().enabled(
            &Metadata::builder()
                .level(metadata.level())
                .target(TARGET)
                .build(),
        )
    }

    fn log(&self, record: &Record<'_>) {
        log::logger().log(
            &Record::builder()
                .args(*record.args())
                .level(record.level())
                .target(TARGET)
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        log::logger().flush();
    }
}

/// A reader of the log ring, attached through one generation's `from_pod`.
pub struct LogRing {
    program_id: u32,
    ring: AsyncFd<EbpfLogger<ToProcessLogger>>,
}

impl LogRing {
    /// Attaches to the ring of the programs pinned under `layout`; needs a
    /// tokio runtime with IO.
    pub fn open(layout: &BpffsLayout) -> Result<Self> {
        let program_id = current_program_id(layout)?;
        let reader =
            EbpfLogger::init_from_id_with_logger(program_id, ToProcessLogger).map_err(|e| {
                DatapathError::io("open the log ring", FROM_POD, std::io::Error::other(e))
            })?;
        // SAFETY: the logger owns the ring's map fd until it is dropped
        // with the `AsyncFd`, and nothing here replaces its ring.
        let ring = unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) }
            .map_err(|e| DatapathError::io("watch the log ring", FROM_POD, e.into_parts().1))?;
        Ok(Self { program_id, ring })
    }

    /// Passes records on as they arrive; returns only if the reactor fails.
    pub async fn forward(&mut self) -> std::io::Result<()> {
        loop {
            let mut ready = self.ring.readable_mut().await?;
            ready.get_inner_mut().flush();
            // A record that lands after the drain wakes the ring again.
            ready.clear_ready();
        }
    }
}

/// Passes the programs' records on until the future is dropped, attaching
/// again when the programs are replaced (the ring is shared, but a reader
/// is attached through one generation) and until the programs are there.
pub async fn follow(layout: BpffsLayout, level: LevelFilter) {
    let mut ring: Option<LogRing> = None;
    let mut warned = false;
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stale = ring
            .as_ref()
            .is_none_or(|open| current_program_id(&layout).is_ok_and(|now| now != open.program_id));
        if stale {
            match LogRing::open(&layout) {
                Ok(opened) => {
                    if ring.is_none() {
                        log::info!(
                            "streaming datapath logs at {}",
                            level.as_str().to_lowercase()
                        );
                    }
                    ring = Some(opened);
                }
                Err(e) if !warned => {
                    warned = true;
                    log::warn!("no datapath logs: {e}");
                }
                Err(_) => {}
            }
        }
        let failed = match &mut ring {
            Some(open) => tokio::select! {
                result = open.forward() => result.err(),
                _ = recheck.tick() => None,
            },
            None => {
                recheck.tick().await;
                None
            }
        };
        if let Some(e) = failed {
            log::warn!("reading the datapath log ring: {e}");
            ring = None;
            recheck.tick().await;
        }
    }
}
