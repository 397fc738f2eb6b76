//! containerd (Debian's 1.6, with its CRI plugin) as a node's container
//! runtime, entirely private to one test: it runs in the node's network
//! namespace and in a mount namespace of its own, with its root, state,
//! sockets, CNI bin and conf dirs under a temp dir, a private `/run` and
//! `/var/lib` (shim sockets, runc/crun state, libcni's cache), only the
//! cgroup v1 hierarchies (crun refuses hybrid mode; so the plugin meets a
//! node without cgroup v2, as on such nodes), and a sandbox image the
//! harness builds from the machine's `sleep` (no registry is reachable).
//!
//! Pods go in a cgroup parent of the test's own; on drop every sandbox left
//! is stopped and removed, containerd and its shims are ended by pid, any
//! process left in that cgroup is killed and the cgroups removed.

use std::{
    fs,
    io::{Read as _, Seek as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::{Value, json};

use crate::{
    Netns, Node, binaries,
    cri::{CriClient, CriError, PodSandboxConfig},
    names,
    process::{self, DEFAULT_TIMEOUT},
};

/// The image the CRI runs sandboxes from (`sandbox_image`).
pub const SANDBOX_IMAGE: &str = "docker.io/cni-ebpf-test/pause:1";
/// The CRI's namespace in containerd.
const K8S_NAMESPACE: &str = "k8s.io";
/// Where Debian's reference plugins are (containerd calls `loopback` too).
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const CGROUP_V1_ROOT: &str = "/sys/fs/cgroup";

pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    /// `/<unique>`: every pod's cgroups are under it, in each hierarchy.
    cgroup_parent: String,
    pub cri: CriClient,
    sandboxes: Mutex<Vec<String>>,
}

impl Containerd {
    /// Starts containerd in `node`'s namespace with `conflist` as its only
    /// CNI network and the plugin under test (and `loopback`) as its CNI
    /// binaries; waits until the CRI answers and the sandbox image is
    /// imported.
    pub fn start(node: &Node, conflist: &Value) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&names::unique("cni-ebpf-containerd"))
            .tempdir()
            .expect("creating containerd's temp dir");
        let root = dir.path();
        for sub in ["root", "state", "cni-bin", "cni-conf", "opt", "image"] {
            fs::create_dir_all(root.join(sub)).expect("creating containerd's dirs");
        }
        fs::copy(
            binaries::path(binaries::PLUGIN),
            root.join("cni-bin").join(binaries::PLUGIN),
        )
        .expect("copying the plugin into the CNI bin dir");
        fs::copy(
            Path::new(REFERENCE_PLUGINS).join("loopback"),
            root.join("cni-bin/loopback"),
        )
        .expect("copying the loopback plugin (containernetworking-plugins)");
        fs::write(
            root.join("cni-conf/10-cni-ebpf.conflist"),
            serde_json::to_vec_pretty(conflist).unwrap(),
        )
        .expect("writing the conflist");
        fs::write(root.join("config.toml"), config_toml(root)).expect("writing config.toml");
        fs::write(root.join("start.sh"), START_SCRIPT).expect("writing start.sh");
        let log = fs::File::create(root.join("containerd.log")).expect("containerd.log");

        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.netns().path().display()))
            .args(["unshare", "--mount", "--propagation", "private", "sh"])
            .arg(root.join("start.sh"))
            .arg(root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning containerd");
        let cri = CriClient::new(root.join("containerd.sock")).expect("a CRI client");
        let containerd = Self {
            cgroup_parent: format!("/{}", names::unique("cni-ebpf-pods")),
            dir,
            child,
            cri,
            sandboxes: Mutex::new(Vec::new()),
        };
        containerd.wait_ready();
        containerd.import_sandbox_image();
        containerd
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(self.dir().join("containerd.log")) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(std::io::SeekFrom::Start(len.saturating_sub(8000)));
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            match self.cri.version() {
                Ok(version) if !version.runtime_api_version.is_empty() => return,
                Ok(_) | Err(_) if started.elapsed() < START_TIMEOUT => {
                    thread::sleep(Duration::from_millis(200));
                }
                other => panic!(
                    "containerd's CRI did not come up within {START_TIMEOUT:?}: {other:?}\n{}",
                    self.log()
                ),
            }
        }
    }

    fn import_sandbox_image(&self) {
        let tarball = build_sandbox_image(&self.dir().join("image"));
        let output = process::output_with_timeout(
            Command::new("ctr")
                .arg("--address")
                .arg(self.dir().join("containerd.sock"))
                .args(["-n", K8S_NAMESPACE, "images", "import"])
                .arg(&tarball),
            None,
            DEFAULT_TIMEOUT,
        )
        .expect("running ctr images import");
        process::expect_success("ctr images import (the sandbox image)", &output);
    }

    /// A sandbox config named `name` in the test's cgroup parent.
    pub fn sandbox_config(&self, name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(crate::cri::PodSandboxMetadata {
                name: name.to_string(),
                uid: names::unique(name),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            linux: Some(crate::cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox; the sandbox is removed on drop if the test does not.
    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String, CriError> {
        let id = self.cri.run_pod_sandbox(config)?;
        self.sandboxes.lock().unwrap().push(id.clone());
        Ok(id)
    }

    /// StopPodSandbox and RemovePodSandbox, as kubelet does for a deleted pod.
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.cri.stop_pod_sandbox(id)?;
        self.cri.remove_pod_sandbox(id)?;
        self.sandboxes.lock().unwrap().retain(|s| s != id);
        Ok(())
    }

    /// The sandbox's IP (PodSandboxStatus) and a handle on its network
    /// namespace (through its pid, from the verbose status).
    pub fn sandbox_network(&self, id: &str) -> (std::net::Ipv4Addr, Netns) {
        let status = self
            .cri
            .pod_sandbox_status(id)
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"));
        let ip = status
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        let info: Value = status
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_else(|| panic!("PodSandboxStatus {id} without verbose info"));
        let pid = info["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no pid in the sandbox info: {info}"));
        let ip = ip
            .parse()
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: ip {ip:?}: {e}"));
        (ip, Netns::attach("cri-pod", pid as u32))
    }

    /// Pids of processes in the test's pod cgroups (the `pids` hierarchy).
    pub fn pod_processes(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let base = Path::new(CGROUP_V1_ROOT)
            .join("pids")
            .join(self.cgroup_parent.trim_start_matches('/'));
        collect_procs(&base, &mut pids);
        pids
    }

    /// Zombies left to containerd or to a process under it: what a runtime
    /// that is a child subreaper without a reaping loop would collect from
    /// a plugin that leaves a child behind (DEL's deleting child).
    pub fn zombies(&self) -> Vec<i32> {
        let stats: Vec<(i32, i32, bool)> = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let mut fields = stat.rsplit(')').next()?.split_whitespace();
                let zombie = fields.next()? == "Z";
                Some((pid, fields.next()?.parse().ok()?, zombie))
            })
            .collect();
        let mut tree = vec![self.child.id() as i32];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(
                stats
                    .iter()
                    .filter(|(_, ppid, _)| *ppid == parent)
                    .map(|(pid, _, _)| *pid),
            );
            i += 1;
        }
        stats
            .iter()
            .filter(|(pid, _, zombie)| *zombie && tree.contains(pid))
            .map(|(pid, _, _)| *pid)
            .collect()
    }

    /// The containerd shims serving this instance (by their `-address`).
    fn shims(&self) -> Vec<i32> {
        let socket = self.dir().join("containerd.sock");
        let socket = socket.to_string_lossy();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                    let cmd = String::from_utf8_lossy(&cmd);
                    cmd.contains("containerd-shim") && cmd.contains(socket.as_ref())
                })
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let left: Vec<String> = self.sandboxes.lock().unwrap().clone();
        for id in left {
            if let Err(e) = self.remove_pod_sandbox(&id) {
                eprintln!("[harness] removing sandbox {id}: {e}");
            }
        }
        let shims = self.shims();
        stop(self.child.id() as i32);
        let _ = self.child.wait();
        for pid in shims {
            stop(pid);
        }
        for pid in self.pod_processes() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        remove_cgroups(&self.cgroup_parent);
    }
}

/// SIGTERM, then SIGKILL after 10 s.
fn stop(pid: i32) {
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if kill(pid, None).is_err() || is_zombie(pid) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

fn is_zombie(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

fn collect_procs(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.parse::<i32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_procs(&entry.path(), pids);
            }
        }
    }
}

/// Removes `parent` and every cgroup below it in each v1 hierarchy.
fn remove_cgroups(parent: &str) {
    let Ok(hierarchies) = fs::read_dir(CGROUP_V1_ROOT) else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        let dir = hierarchy.path().join(parent.trim_start_matches('/'));
        if dir.is_dir() {
            remove_cgroup_tree(&dir);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("[harness] cgroup {} left behind", dir.display());
}

/// Runs as `sh start.sh <config>` in the node's network namespace and a
/// private mount namespace, then becomes containerd.
const START_SCRIPT: &str = r#"set -e
# Shim sockets (/run/containerd/s), runc/crun state and the CRI's pod netns
# mounts stay in this mount namespace; libcni's cache too (/var/lib/cni).
mount -t tmpfs -o mode=755 cni-ebpf-run /run
mkdir -p /run/netns /run/containerd
mount -t tmpfs -o mode=755 cni-ebpf-varlib /var/lib
# Only the cgroup v1 hierarchies: crun refuses a hybrid layout, and the
# plugin must find no cgroup v2 to hook (never the machine's root cgroup).
if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then
    echo "a pure cgroup v2 host: this harness needs the cgroup v1 hierarchies" >&2
    exit 1
fi
for m in $(awk '{for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") print $5; break }}' /proc/self/mountinfo); do
    umount -l "$m"
done
exec containerd --config "$1"
"#;

fn config_toml(root: &Path) -> String {
    let dir = root.display();
    format!(
        r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  # No CAP_SYS_RESOURCE here: never lower a process's OOM score below ours.
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "crun"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
        BinaryName = "/usr/bin/crun"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dir}/cni-bin"
    conf_dir = "{dir}/cni-conf"
"#
    )
}

/// Writes an OCI image archive of a sandbox image into `dir`: one layer with
/// the machine's `sleep` and the libraries it links, run as
/// `sleep infinity`. Returns the archive's path.
fn build_sandbox_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let blobs = dir.join("layout/blobs/sha256");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(&blobs).unwrap();
    let sleep = Path::new("/bin/sleep");
    let mut files = vec![sleep.to_path_buf()];
    let ldd = Command::new("ldd")
        .arg(sleep)
        .output()
        .expect("running ldd");
    files.extend(
        String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from),
    );
    for file in files {
        let target = rootfs.join(file.strip_prefix("/").unwrap());
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(&file, &target).unwrap_or_else(|e| panic!("copying {}: {e}", file.display()));
    }
    let layer = dir.join("layer.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--owner=0", "--group=0", "-cf"])
        .arg(&layer)
        .arg(".")
        .status()
        .expect("running tar");
    assert!(tar.success(), "tar of the sandbox image's layer");
    let layer = add_blob(&blobs, &fs::read(&layer).unwrap());
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/sleep", "infinity"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.0]},
    });
    let config = add_blob(&blobs, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}],
    });
    let manifest = add_blob(&blobs, manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.0,
            "size": manifest.1,
            "annotations": {"io.containerd.image.name": SANDBOX_IMAGE},
        }],
    });
    let layout = dir.join("layout");
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("sandbox-image.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .expect("running tar");
    assert!(tar.success(), "tar of the sandbox image");
    archive
}

/// Stores `bytes` as a blob; returns its digest and size.
fn add_blob(blobs: &Path, bytes: &[u8]) -> (String, usize) {
    let output = process::output_with_timeout(
        Command::new("sha256sum").arg("-"),
        Some(bytes),
        DEFAULT_TIMEOUT,
    )
    .expect("running sha256sum");
    let hex = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string();
    fs::write(blobs.join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}
