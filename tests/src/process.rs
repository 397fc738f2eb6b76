//! Running a command to completion with a deadline: a hung child is killed
//! instead of hanging the test run.

use std::{
    io::{Read, Write},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// A child process killed and reaped when dropped (a server a test leaves
/// running while it works).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long any helper command may take before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `command` with `stdin` as its input, collecting stdout and stderr.
/// Kills it after `timeout`; the output then has a non-success status and a
/// note on stderr.
pub fn output_with_timeout(
    command: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<Output> {
    let mut child = capture(command, stdin.is_some()).spawn()?;
    let stdout = child.stdout.take().map(read_all);
    let stderr = child.stderr.take().map(read_all);
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits without reading gives EPIPE: not our failure.
        let _ = pipe.write_all(input);
    }
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(2));
    };
    // A grandchild that inherited a pipe could hold it open forever.
    let collect = |pipe: Option<mpsc::Receiver<Vec<u8>>>| {
        pipe.and_then(|rx| rx.recv_timeout(PIPE_GRACE).ok())
            .unwrap_or_default()
    };
    let stdout = collect(stdout);
    let mut stderr = collect(stderr);
    if timed_out {
        stderr.extend_from_slice(format!("\n[harness] killed after {timeout:?}\n").as_bytes());
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Pipes the command's stdout and stderr to the caller, and its stdin when
/// `stdin` says it gets input (else `/dev/null`).
pub fn capture(command: &mut Command, stdin: bool) -> &mut Command {
    command
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
}

/// A finished child's status, run time and streams, for failure messages.
pub fn describe(status: ExitStatus, elapsed: Duration, stdout: &str, stderr: &str) -> String {
    format!(
        "{status} after {elapsed:?}\nstdout: {}\nstderr: {}",
        stdout.trim(),
        stderr.trim()
    )
}

/// How long to wait for a pipe's end once the child has exited.
const PIPE_GRACE: Duration = Duration::from_secs(5);

fn read_all(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Panics unless `output` succeeded; returns its stdout.
pub fn expect_success(what: &str, output: &Output) -> String {
    if !output.status.success() {
        panic!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}
