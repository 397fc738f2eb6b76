//! The node agent (`cni-ebpfd run`) as a background process in a node
//! namespace: its stderr collected line by line, its Prometheus metrics
//! scraped from inside the namespace, and SIGTERM (then SIGKILL) on drop.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{Node, binaries, wait::wait_until};

/// Where [`Agent::start`] serves metrics inside the node namespace.
pub const METRICS_ADDRESS: &str = "127.0.0.1:9962";

pub struct Agent {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    netns: std::path::PathBuf,
}

impl Agent {
    /// Starts `cni-ebpfd --bpffs-root <node's> run --metrics-address
    /// 127.0.0.1:9962 <args>` (with `--tcx-moves 0` unless `args` set it) in
    /// `node`'s namespace and waits until it says its metrics are up.
    pub fn start(node: &Node, args: &[&str]) -> Self {
        let mut command = node.netns().command(binaries::path(binaries::AGENT));
        command
            .arg("--bpffs-root")
            .arg(node.bpffs_root())
            .args(["run", "--metrics-address", METRICS_ADDRESS])
            .args(args)
            // Pods stay on what ADD attached them with (tests look at their
            // filters) unless the test asks for moves onto tcx.
            .args(if args.contains(&"--tcx-moves") {
                &[][..]
            } else {
                &["--tcx-moves", "0"][..]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawning cni-ebpfd run");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        {
            let stderr = stderr.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    stderr.lock().unwrap().push(line);
                }
            });
        }
        let agent = Self {
            child,
            stderr,
            netns: node.netns().path().to_path_buf(),
        };
        if agent
            .wait_for_line(Duration::from_secs(30), |l| l.contains("metrics on"))
            .is_none()
        {
            panic!(
                "cni-ebpfd run did not come up:\n{}",
                agent.stderr().join("\n")
            );
        }
        agent
    }

    /// Freezes the agent (SIGSTOP), as a hung process would be.
    pub fn pause(&self) {
        let _ = kill(self.pid(), Signal::SIGSTOP);
    }

    /// Lets a paused agent go on (SIGCONT).
    pub fn resume(&self) {
        let _ = kill(self.pid(), Signal::SIGCONT);
    }

    /// The agent's exit status once it ends, waiting up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// The agent's process id (its memory is read from `/proc`).
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Every line the agent wrote to stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The first stderr line matching `matches`, waiting up to `timeout`.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let mut found = None;
        wait_until(timeout, || {
            found = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| matches(l))
                .cloned();
            found.is_some()
        });
        found
    }

    /// `GET /metrics`, parsed.
    pub fn scrape(&self) -> Metrics {
        let path = self.netns.clone();
        let text = thread::spawn(move || {
            crate::netns::enter(&path);
            let address: SocketAddr = METRICS_ADDRESS.parse().unwrap();
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
                .expect("connecting to the agent's metrics");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
                .expect("sending the metrics request");
            let mut response = String::new();
            stream
                .read_to_string(&mut response)
                .expect("reading the metrics");
            response
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
        assert!(head.starts_with("HTTP/1.0 200"), "metrics: {head}\n{body}");
        Metrics::parse(body)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = self.pid();
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of the text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("metrics line without a value: {line}"));
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|e| panic!("metrics line {line}: {e}"));
                let (name, labels) = match series.split_once('{') {
                    None => (series.to_string(), BTreeMap::new()),
                    Some((name, rest)) => {
                        let labels = rest
                            .trim_end_matches('}')
                            .split(',')
                            .filter(|l| !l.is_empty())
                            .map(|pair| {
                                let (k, v) = pair
                                    .split_once('=')
                                    .unwrap_or_else(|| panic!("label {pair} in {line}"));
                                (k.to_string(), v.trim_matches('"').to_string())
                            })
                            .collect();
                        (name.to_string(), labels)
                    }
                };
                Sample {
                    name,
                    labels,
                    value,
                }
            })
            .collect();
        Self { samples }
    }

    /// Samples of `name` whose labels include every pair of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample of `name` with `labels`; panics if there
    /// is not exactly one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(name, labels);
        assert_eq!(
            found.len(),
            1,
            "{name}{labels:?}: {} samples: {found:?}",
            found.len()
        );
        found[0].value
    }
}
