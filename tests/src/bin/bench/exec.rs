//! Child processes of the benchmark: a client or plugin call run to exit
//! under a deadline and timed from spawn to exit, and long-lived servers
//! killed when their guard drops.
//!
//! Timed calls wait with `poll(2)` on the child's pipes and reap it right
//! after they close, so the measured time carries no polling slack.

use std::{
    fs::File,
    io::{Read, Seek, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::stop;

/// A child that ran to exit.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Spawn to exit, as the caller saw it.
    pub elapsed: Duration,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Status and both streams, for error messages.
    pub fn describe(&self) -> String {
        format!(
            "{} after {:?}\nstdout: {}\nstderr: {}",
            self.status,
            self.elapsed,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// Longest single `poll(2)` wait, so that a stop request is seen quickly.
const POLL_SLICE_MS: i32 = 100;

/// Whether a stop request ends the child early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// A measurement: killed at once.
    Kill,
    /// A plugin call, cleanup included: runs to its end (or its timeout).
    Finish,
}

/// Runs `command` with `stdin` as its input until it exits; kills it after
/// `timeout`, or on a stop request when `on_stop` says so. The child gets
/// its own process group, so a Ctrl-C reaches only the benchmark, which
/// then stops in order.
pub fn run(
    command: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    on_stop: OnStop,
) -> Result<Finished> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let program = command.get_program().to_string_lossy().into_owned();
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("spawning {program}"))?;
    let deadline = started + timeout;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits without reading gives EPIPE: its status tells.
        let _ = pipe.write_all(input);
    }
    let collected = collect_output(&mut child, deadline, on_stop);
    let (stdout, stderr, mut stopped) = match collected {
        Ok(output) => output,
        Err(e) => {
            kill(&mut child);
            let _ = child.wait();
            return Err(e.context(format!("reading the output of {program}")));
        }
    };
    let status = loop {
        if stopped.is_some() {
            kill(&mut child);
            break child.wait()?;
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            stopped = Some(Stopped::Deadline);
        } else {
            thread::sleep(Duration::from_micros(20));
        }
    };
    let finished = Finished {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: started.elapsed(),
    };
    match stopped {
        Some(Stopped::Deadline) => bail!(
            "{program} killed after {timeout:?}: {}",
            finished.describe()
        ),
        Some(Stopped::Interrupted) => bail!("interrupted while {program} ran"),
        None => Ok(finished),
    }
}

#[derive(Debug, Clone, Copy)]
enum Stopped {
    Deadline,
    Interrupted,
}

/// Reads stdout and stderr until both close, the deadline passes or a stop
/// is requested.
fn collect_output(
    child: &mut Child,
    deadline: Instant,
    on_stop: OnStop,
) -> Result<(Vec<u8>, Vec<u8>, Option<Stopped>)> {
    let mut pipes: [Option<Box<dyn ReadFd>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
    ];
    let mut output = [Vec::new(), Vec::new()];
    let mut buf = [0u8; 16 * 1024];
    while pipes.iter().any(Option::is_some) {
        if on_stop == OnStop::Kill && stop::requested() {
            return Ok((
                take(&mut output[0]),
                take(&mut output[1]),
                Some(Stopped::Interrupted),
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok((
                take(&mut output[0]),
                take(&mut output[1]),
                Some(Stopped::Deadline),
            ));
        }
        let mut fds = pipes.each_ref().map(|pipe| libc::pollfd {
            fd: pipe.as_ref().map_or(-1, |p| p.fd()),
            events: libc::POLLIN,
            revents: 0,
        });
        let wait_ms = i32::try_from(left.as_millis())
            .unwrap_or(i32::MAX)
            .clamp(1, POLL_SLICE_MS);
        // SAFETY: `fds` is a valid array of two pollfd for the whole call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error).context("poll");
        }
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            let Some(pipe) = pipes[i].as_mut() else {
                continue;
            };
            match pipe.read(&mut buf) {
                Ok(0) => pipes[i] = None,
                Ok(n) => output[i].extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("read"),
            }
        }
    }
    Ok((take(&mut output[0]), take(&mut output[1]), None))
}

fn take(buf: &mut Vec<u8>) -> Vec<u8> {
    std::mem::take(buf)
}

/// A readable pipe end with its descriptor.
trait ReadFd: Read {
    fn fd(&self) -> i32;
}

impl<T: Read + AsRawFd> ReadFd for T {
    fn fd(&self) -> i32 {
        self.as_raw_fd()
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
}

/// Which `/proc/<pid>/net` table a server shows up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// How long a server may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A long-running child (iperf3 or sockperf server), killed and reaped when
/// dropped. Its stdout goes nowhere; stderr goes to an unnamed temp file
/// kept for error messages.
pub struct Server {
    what: String,
    child: Child,
    log: File,
}

impl Server {
    pub fn start(command: &mut Command, what: &str) -> Result<Self> {
        let log = tempfile::tempfile().context("creating a server log file")?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.try_clone()?)
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("spawning the {what} server"))?;
        Ok(Self {
            what: what.to_string(),
            child,
            log,
        })
    }

    /// Waits until the server's socket on `port` shows up in its own
    /// namespace's `/proc/<pid>/net/{tcp,udp}` or, for an IPv6 server,
    /// `{tcp6,udp6}` (listening, or bound).
    pub fn wait_ready(&mut self, proto: Proto, port: u16) -> Result<()> {
        let pid = self.child.id();
        let table = match proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        let paths = [
            format!("/proc/{pid}/net/{table}"),
            format!("/proc/{pid}/net/{table}6"),
        ];
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            stop::check()?;
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the {} server exited ({status}) before listening: {}",
                    self.what,
                    self.log_text()
                );
            }
            if paths.iter().any(|path| {
                std::fs::read_to_string(path).is_ok_and(|text| has_socket(&text, proto, port))
            }) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} server is not listening on {port} after {LISTEN_TIMEOUT:?}: {}",
                    self.what,
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the server wrote to stderr so far.
    pub fn log_text(&self) -> String {
        let mut log = &self.log;
        let mut text = String::new();
        let _ = log.rewind();
        let _ = log.read_to_string(&mut text);
        text.trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a `/proc/net/{tcp,udp}` table holds a socket on `port`: in
/// LISTEN (0A) for TCP, any state for UDP.
fn has_socket(table: &str, proto: Proto, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(local) = fields.get(1) else {
            return false;
        };
        let local_port = local
            .rsplit_once(':')
            .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
        let listening = proto == Proto::Udp || fields.get(3) == Some(&"0A");
        local_port == Some(port) && listening
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_sockets() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0200C80A:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 0200C80A:9C40 0100C80A:1451 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n";
        assert!(has_socket(tcp, Proto::Tcp, 5201));
        assert!(!has_socket(tcp, Proto::Tcp, 40000));
        assert!(has_socket(tcp, Proto::Udp, 40000));
        assert!(!has_socket("header only\n", Proto::Tcp, 5201));
    }
}
