//! Ctrl-C (and SIGTERM/SIGHUP) only raise a flag once the benchmark has
//! installed the handler: every loop of a timed run checks it and returns,
//! so the guards still unwind and remove the namespaces, mounts and files
//! they made. Nothing raises it in the tests.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if !REQUESTED.swap(true, Ordering::SeqCst) {
        let note = b"\ncni-ebpf-bench: stopping after the current step, then cleaning up\n";
        // SAFETY: write(2) is async-signal-safe; the buffer is static.
        unsafe { libc::write(libc::STDERR_FILENO, note.as_ptr().cast(), note.len()) };
    }
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP.
pub fn install() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only touches an atomic and calls write(2).
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// An error once a stop was requested, for `?` at the top of each step.
pub fn check() -> Result<()> {
    if requested() {
        bail!("interrupted");
    }
    Ok(())
}
