//! A private etcd server (Debian's etcd 3.4) inside a namespace of its own,
//! on a temp data dir in tmpfs: it can be killed and started again on the
//! same data, and compacted, for the cluster's failure tests. The process
//! is killed and the data removed on drop (and the kernel kills it if the
//! test process dies first). [`Etcd::start_tls`] serves clients over TLS
//! only and asks them for a certificate of its CA (`--client-cert-auth`).

use std::{
    fs::File,
    net::Ipv4Addr,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tempfile::TempDir;

use crate::{
    netns::Netns,
    pki::Pki,
    process::{self, KillOnDrop},
    wait::wait_until,
};

/// The client port etcd listens on, on its underlay address.
pub const CLIENT_PORT: u16 = 2379;
/// How long etcd may take to elect itself and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Etcd {
    // Dropped in this order: the process, then its data, then the namespace.
    process: Option<KillOnDrop>,
    data: TempDir,
    netns: Netns,
    ip: Ipv4Addr,
    tls: Option<Pki>,
}

impl Etcd {
    /// Starts etcd in `netns` (with `lo` up and `ip` on an interface) and
    /// waits until it answers.
    pub fn start(netns: Netns, ip: Ipv4Addr) -> Self {
        Self::start_with(netns, ip, None)
    }

    /// [`Etcd::start`] over TLS with `pki`'s CA and server certificate,
    /// refusing clients without a certificate of that CA.
    pub fn start_tls(netns: Netns, ip: Ipv4Addr, pki: Pki) -> Self {
        Self::start_with(netns, ip, Some(pki))
    }

    fn start_with(netns: Netns, ip: Ipv4Addr, tls: Option<Pki>) -> Self {
        // tmpfs: etcd fsyncs every write, and 3.4 has no --unsafe-no-fsync.
        let data = tempfile::Builder::new()
            .prefix(&format!("{}-", netns.name()))
            .tempdir_in("/dev/shm")
            .expect("creating etcd's data dir");
        let mut etcd = Self {
            process: None,
            data,
            netns,
            ip,
            tls,
        };
        etcd.restart();
        etcd
    }

    /// `http://<ip>:2379`, or `https://` over TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{CLIENT_PORT}", self.ip)
    }

    /// The certificates of a TLS etcd.
    pub fn pki(&self) -> Option<&Pki> {
        self.tls.as_ref()
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Kills etcd at once (a crash, as the nodes see it); the data stays.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Starts etcd (again) on its data dir and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let log =
            File::create(self.data.path().with_extension("log")).expect("creating etcd's log file");
        let peer = "http://127.0.0.1:2380";
        let mut command = self.netns.command("etcd");
        command
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.data.path().join("member-data"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(self.server_tls_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the child dies with this thread.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .expect("spawning etcd (is etcd-server installed? `cargo xtask setup`)");
        self.process = Some(KillOnDrop(child));
        let ready = wait_until(READY_TIMEOUT, || {
            self.etcdctl_output(&["endpoint", "health"])
                .status
                .success()
        });
        assert!(ready, "etcd did not answer within {READY_TIMEOUT:?}");
    }

    /// `etcdctl --endpoints <endpoint> ARGS` inside etcd's namespace,
    /// whatever its exit status.
    fn etcdctl_output(&self, args: &[&str]) -> std::process::Output {
        let mut command = self.netns.command("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint(), "--command-timeout=3s"])
            .args(self.client_tls_args())
            .args(args);
        process::output_with_timeout(&mut command, None, ETCDCTL_TIMEOUT)
            .expect("spawning etcdctl (is etcd-client installed?)")
    }

    fn server_tls_args(&self) -> Vec<String> {
        let Some(pki) = &self.tls else {
            return Vec::new();
        };
        let server = pki.server();
        vec![
            format!("--cert-file={}", server.cert.display()),
            format!("--key-file={}", server.key.display()),
            // etcd 3.4 already asks for client certificates when given
            // --trusted-ca-file (measured: without --client-cert-auth a
            // client without a certificate is still refused; without both
            // flags it joins).
            format!("--trusted-ca-file={}", pki.ca().display()),
            "--client-cert-auth".into(),
        ]
    }

    /// etcdctl as a client of the cluster's CA.
    fn client_tls_args(&self) -> Vec<String> {
        let Some(pki) = &self.tls else {
            return Vec::new();
        };
        let client = pki.client();
        vec![
            format!("--cacert={}", pki.ca().display()),
            format!("--cert={}", client.cert.display()),
            format!("--key={}", client.key.display()),
        ]
    }

    /// `etcdctl ARGS`; panics unless it succeeds; returns stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let output = self.etcdctl_output(args);
        process::expect_success(&format!("etcdctl {}", args.join(" ")), &output)
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let stdout = self.etcdctl(&["endpoint", "status", "--write-out=json"]);
        let status: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("etcdctl endpoint status: {e}: {stdout}"));
        status[0]["Status"]["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no revision in {stdout}"))
    }

    /// Compacts the history up to the current revision: a watch from an
    /// older one fails with "compacted".
    pub fn compact(&self) -> i64 {
        let revision = self.revision();
        self.etcdctl(&["compact", &revision.to_string(), "--physical"]);
        revision
    }

    /// Every key under `prefix` with its value, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let stdout = self.etcdctl(&["get", "--prefix", prefix]);
        let lines: Vec<&str> = stdout.lines().collect();
        lines
            .chunks(2)
            .filter(|pair| pair.len() == 2)
            .map(|pair| (pair[0].to_string(), pair[1].to_string()))
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.data.path().with_extension("log"));
    }
}

/// Whether `etcd` and `etcdctl` are installed (the setup installs them).
pub fn installed() -> bool {
    [("etcd", "--version"), ("etcdctl", "version")]
        .iter()
        .all(|(tool, arg)| {
            Command::new(tool)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}
