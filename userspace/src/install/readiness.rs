//! "The datapath is loaded" as a runtime would ask it: the installed plugin's
//! STATUS (CNI 1.1.0) with the network config about to be written, which
//! loads and pins the datapath if it is not there and answers 0 once ADD can
//! be served (50 if not, 51 if existing pods lost their state).

use std::{
    io::{Read as _, Write as _},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{InstallError, Result};

/// Between two STATUS calls.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// One STATUS call longer than this is killed and counts as a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks STATUS until it answers 0 or `timeout` has passed; returns how long
/// that took.
pub fn wait_for_status(
    plugin: &Path,
    cni_path: &Path,
    conf: &Value,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let last = match status(plugin, cni_path, conf) {
            Ok(()) => return Ok(started.elapsed()),
            Err(why) => why,
        };
        if started.elapsed() + POLL_INTERVAL > timeout {
            return Err(InstallError::NotReady {
                waited: started.elapsed(),
                last,
            });
        }
        log::info!("datapath not ready yet: {last}");
        thread::sleep(POLL_INTERVAL);
    }
}

/// One STATUS call: `Ok` on exit 0, else what the plugin said.
pub fn status(plugin: &Path, cni_path: &Path, conf: &Value) -> std::result::Result<(), String> {
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", "STATUS")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("running {}: {e}", plugin.display()))?;
    let stdin = conf.to_string();
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin that exits without reading closes the pipe; its exit
        // code tells what went wrong.
        let _ = pipe.write_all(stdin.as_bytes());
    }
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + CALL_TIMEOUT;
    let exit = loop {
        match child.try_wait() {
            Ok(Some(exit)) => break exit,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("STATUS did not answer within {CALL_TIMEOUT:?}"));
            }
            Err(e) => return Err(format!("waiting for STATUS: {e}")),
        }
    };
    let stdout = reader.join().unwrap_or_default();
    if exit.success() {
        return Ok(());
    }
    Err(describe_error(&stdout).unwrap_or_else(|| format!("STATUS exited with {exit}: {stdout}")))
}

/// The spec's error object as "code N: msg (details)".
fn describe_error(stdout: &str) -> Option<String> {
    let error: Value = serde_json::from_str(stdout).ok()?;
    let code = error.get("code")?.as_u64()?;
    let msg = error.get("msg").and_then(Value::as_str).unwrap_or_default();
    Some(match error.get("details").and_then(Value::as_str) {
        Some(details) if !details.is_empty() => format!("code {code}: {msg} ({details})"),
        _ => format!("code {code}: {msg}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugins_error_object_reads_as_one_line() {
        assert_eq!(
            describe_error(r#"{"cniVersion":"1.1.0","code":50,"msg":"cannot serve ADD: no bpffs","details":"at /x"}"#)
                .as_deref(),
            Some("code 50: cannot serve ADD: no bpffs (at /x)")
        );
        assert_eq!(describe_error("not json"), None);
    }

    #[test]
    fn a_missing_plugin_is_not_ready_until_the_timeout() {
        let conf = serde_json::json!({});
        let err = wait_for_status(
            Path::new("/nonexistent/cni-ebpf"),
            Path::new("/nonexistent"),
            &conf,
            Duration::from_millis(10),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("running /nonexistent/cni-ebpf"),
            "{err}"
        );
    }
}
