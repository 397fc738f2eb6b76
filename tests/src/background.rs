//! Servers and watchers that run on a thread inside a namespace until
//! their guard drops: how long they may block and how often they look at
//! their stop flag.

use std::time::Duration;

/// How long a server or client step may block.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often server threads look at their stop flag.
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// The longest a server keeps an idle connection open.
pub(crate) const HOLD_LIMIT: Duration = Duration::from_secs(180);
