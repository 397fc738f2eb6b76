//! Servers and watchers that run on a thread inside a namespace until
//! their guard drops: the thread, its stop flag and its time limit, how
//! long they may block and how often they look at their stop flag.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// How long a server or client step may block.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often server threads look at their stop flag.
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// The longest a server keeps an idle connection open.
pub(crate) const HOLD_LIMIT: Duration = Duration::from_secs(180);

/// What a background thread asks on every turn of its loop: whether its
/// guard still lives and its time limit has not passed.
#[derive(Clone)]
pub(crate) struct Running {
    stop: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Running {
    /// The guard has not dropped and the time limit has not passed.
    pub(crate) fn go_on(&self) -> bool {
        !self.stopped()
            && self
                .deadline
                .is_none_or(|deadline| Instant::now() < deadline)
    }

    /// The guard dropped.
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A thread inside a namespace, told to stop and joined when dropped.
pub(crate) struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Background {
    /// Runs `setup` on a new thread inside `ns` and waits for it: its
    /// error, or what it reports (a bound address) once `serve` takes over
    /// its state on that thread, for at most `limit` from then on.
    pub(crate) fn start<S, R: Send + 'static>(
        ns: &Netns,
        what: &str,
        limit: Option<Duration>,
        setup: impl FnOnce() -> io::Result<(S, R)> + Send + 'static,
        serve: impl FnOnce(S, Running) + Send + 'static,
    ) -> io::Result<(Self, R)> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let stop = stop.clone();
            ns.spawn(move || {
                let state = match setup() {
                    Ok((state, report)) => {
                        let _ = ready_tx.send(Ok(report));
                        state
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let deadline = limit.map(|limit| Instant::now() + limit);
                serve(state, Running { stop, deadline });
            })
        };
        let report = ready_rx
            .recv_timeout(IO_TIMEOUT)
            .map_err(|_| io::Error::other(format!("{what} thread did not start")))??;
        Ok((
            Self {
                stop,
                thread: Some(thread),
            },
            report,
        ))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
