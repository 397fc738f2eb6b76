//! The node image (`cargo xtask image`, which `cargo xtask test` builds
//! first) run with Podman the way the DaemonSet runs it: privileged, in the
//! node's network namespace, with the node's bpffs and a fake node root
//! (temp CNI dirs, state and IPAM dirs) mounted at their own paths, as the
//! DaemonSet mounts the host's. Install, uninstall, a rolling upgrade over
//! a running node, and cluster mode.

use std::{
    fs,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::Output,
    thread,
    time::{Duration, Instant},
};

use cni_ebpf_tests::{
    Ext, Node,
    echo::{EchoClient, EchoServer},
    etcd::Etcd,
    ext::{self, wait_until},
    names, process,
};
use serde_json::Value;

use super::{
    install::{CniDirs, RuntimePod, dir_args, install_args, tempfile_dir},
    upgrade::{attachments, iperf3_stream, longest_stall, tc_filter_ids},
};

/// The image `cargo xtask image` built (an OCI archive).
fn image_archive() -> PathBuf {
    std::env::var_os("CNI_EBPF_IMAGE_ARCHIVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image/cni-ebpf.tar")
        })
}

/// Podman with its storage, run and temp dirs in a temp dir: nothing in
/// the machine's /var/lib/containers or /run/containers.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new() -> Self {
        let dir = tempfile_dir();
        Self { dir }
    }

    fn command(&self) -> std::process::Command {
        let mut command = std::process::Command::new("podman");
        command
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            // crun refuses this machine's hybrid cgroup layout; runc runs.
            .args([
                "--runtime",
                "runc",
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ]);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command();
        command.args(args);
        process::output_with_timeout(&mut command, None, Duration::from_secs(180))
            .expect("spawning podman")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "2"]);
        let _ = self.run(&["rmi", "--all", "--force"]);
        let mut command = self.command();
        command.arg("system").arg("reset").arg("--force");
        let _ = process::output_with_timeout(&mut command, None, Duration::from_secs(60));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The image loaded into a private Podman, run against one node.
struct NodeImage<'n> {
    node: &'n Node,
    podman: Podman,
    image: String,
    /// `--volume` values: the node's bpffs and temp dir, at their paths.
    volumes: Vec<String>,
}

/// A detached container of the image (`cni-ebpfd run`): the agent.
struct AgentContainer<'i> {
    podman: &'i Podman,
    name: String,
}

impl<'n> NodeImage<'n> {
    fn load(node: &'n Node) -> Self {
        let archive = image_archive();
        assert!(
            archive.is_file(),
            "{} missing: `cargo xtask test` builds it (or run `cargo xtask image`)",
            archive.display()
        );
        fs::create_dir_all(node.state_dir()).unwrap();
        let podman = Podman::new();
        let loaded = podman.run(&["load", "--input", &archive.display().to_string()]);
        let loaded = process::expect_success("podman load", &loaded);
        let image = loaded
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
            .unwrap_or_else(|| panic!("podman load: {loaded}"))
            .trim()
            .to_string();
        let same = |p: &Path| format!("{0}:{0}", p.display());
        let volumes = vec![same(node.bpffs().mountpoint()), same(node.dir())];
        Self {
            node,
            podman,
            image,
            volumes,
        }
    }

    /// `podman run` options of every container here, up to the image.
    fn run_options(&self, detached_name: Option<&str>) -> Vec<String> {
        let netns = format!("ns:{}", self.node.netns().path().display());
        let mut all: Vec<String> = vec!["run".into(), "--rm".into()];
        if let Some(name) = detached_name {
            all.extend(["--detach".into(), "--name".into(), name.into()]);
        }
        // Lower limits than the tests' own: podman raises RLIMIT_NOFILE and
        // RLIMIT_NPROC by default, which needs CAP_SYS_RESOURCE, missing
        // here (DESIGN §7).
        all.extend(
            [
                "--privileged",
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=4096:4096",
                "--network",
                &netns,
            ]
            .map(String::from),
        );
        for volume in &self.volumes {
            all.extend(["--volume".to_string(), volume.clone()]);
        }
        all.push(self.image.clone());
        all.push("--bpffs-root".into());
        all.push(self.node.bpffs_root().display().to_string());
        all
    }

    /// `cni-ebpfd <args>` in a container of the image, to completion.
    fn cni_ebpfd(&self, args: &[String]) -> Output {
        let mut all = self.run_options(None);
        all.extend(args.iter().cloned());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.podman.run(&refs)
    }

    /// `cni-ebpfd run --metrics-address off --cni-conflist <conflist> <args>`
    /// in a detached container, as the DaemonSet's agent container.
    fn start_agent(&self, dirs: &CniDirs, args: &[&str]) -> AgentContainer<'_> {
        let name = names::unique("cni-ebpf-agent");
        let mut all = self.run_options(Some(&name));
        all.extend(["run", "--metrics-address", "off", "--gc-interval", "1"].map(String::from));
        all.push("--cni-conflist".into());
        all.push(dirs.conflist_path().display().to_string());
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        process::expect_success("podman run --detach (agent)", &self.podman.run(&refs));
        AgentContainer {
            podman: &self.podman,
            name,
        }
    }
}

impl AgentContainer<'_> {
    fn logs(&self) -> String {
        let out = self.podman.run(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The first log line that `matches`, waiting up to `timeout`.
    fn wait_for_line(&self, timeout: Duration, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|l| matches(l)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "agent container {}: no such line within {timeout:?}:\n{logs}",
                self.name
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, as the kubelet stops a container (the datapath stays).
    fn stop(self) -> String {
        let logs = self.logs();
        process::expect_success(
            "podman stop (agent)",
            &self.podman.run(&["stop", "--time", "10", &self.name]),
        );
        logs
    }
}

/// The image's install leaves a plugin and a conflist a pod can be added
/// with from the host; its uninstall removes them.
#[test]
fn the_image_installs_into_a_fake_node_root() {
    let node = Node::new();
    let _ext = ext::uplink_with_default_route(&node);
    let dirs = CniDirs::of(&node);
    let image = NodeImage::load(&node);

    // The default plugin source: the cni-ebpf next to cni-ebpfd in the image.
    let mut args = install_args(
        &node,
        &dirs,
        &["--masquerade", "--cluster-cidr", "10.244.0.0/16"],
    );
    args.extend(["--ready-timeout".to_string(), "60".to_string()]);
    process::expect_success("install in the image", &image.cni_ebpfd(&args));
    assert_eq!(
        dirs.conflist()["plugins"][0]["mtu"],
        1500,
        "the uplink's MTU, read in the image"
    );
    assert_eq!(dirs.conflist()["plugins"][0]["ipMasq"], true);
    {
        let pod = RuntimePod::add(&node, &dirs);
        node.netns()
            .exec_ok("ping", &["-c", "1", "-W", "2", &pod.ip()]);
    }

    let mut args = vec!["uninstall".to_string()];
    args.extend(dir_args(&dirs));
    process::expect_success("uninstall in the image", &image.cni_ebpfd(&args));
    assert!(CniDirs::names(&dirs.bin).is_empty());
    assert!(CniDirs::names(&dirs.conf).is_empty());
}

const UPGRADE_CONNECTIONS: usize = 30;
/// Long enough for the whole rolling step (agent stop, install, agent
/// start) with a margin on each side.
const UPGRADE_IPERF_SECONDS: &str = "14";

/// The DaemonSet's rolling update on one node, with the image: a node runs
/// pods (installed and served by the image's agent) with an iperf3 stream
/// and 30 open TCP connections (pod to pod, pods to a server outside
/// through masquerade); the agent container stops, the image's install
/// runs again, a new agent container starts and moves every attachment
/// onto its build's programs. No connection resets, each exchanges data
/// afterwards, the stream never stalls for a second, and every attachment
/// runs new program ids.
///
/// The node's datapath is made to look like an earlier build's first (its
/// programs' pin directory renamed, as `upgrade::` does): both images here
/// are the same build, and a second release build of the image would
/// double the test command's build time.
#[test]
fn a_second_image_install_upgrades_a_running_node_without_dropping_connections() {
    let node = Node::new();
    let ext = ext::uplink_with_default_route(&node);
    let dirs = CniDirs::of(&node);
    let image = NodeImage::load(&node);
    let install = install_args(
        &node,
        &dirs,
        &["--masquerade", "--cluster-cidr", "10.244.0.0/16"],
    );
    process::expect_success("install in the image", &image.cni_ebpfd(&install));
    // The pods stay on their clsact filters, which the test follows through
    // the upgrade (moves onto tcx: `agent::auto_pods_move_onto_tcx_...`).
    let agent = image.start_agent(&dirs, &["--tcx-moves", "0"]);
    agent.wait_for_line(Duration::from_secs(30), |l| l.contains("ready under"));

    let a = RuntimePod::add(&node, &dirs);
    let b = RuntimePod::add(&node, &dirs);
    let b_ip = b.ip().parse().unwrap();
    let to_b = EchoServer::start(&b.netns, SocketAddrV4::new(b_ip, 0)).unwrap();
    let outside = EchoServer::start(&ext.netns, SocketAddrV4::new(ext.ext_ip, 0)).unwrap();
    let mut conns: Vec<(String, EchoClient)> = (0..UPGRADE_CONNECTIONS)
        .map(|i| {
            let (what, from, server) = match i % 3 {
                0 => ("a -> b", &a.netns, to_b.addr()),
                1 => ("a -> outside", &a.netns, outside.addr()),
                _ => ("b -> outside", &b.netns, outside.addr()),
            };
            let mut conn = EchoClient::connect(from, server, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connection {i} ({what}): {e}"));
            conn.round_trip(1024)
                .unwrap_or_else(|e| panic!("connection {i} ({what}) before the upgrade: {e}"));
            (format!("{i} ({what})"), conn)
        })
        .collect();
    let before = attachments(&node);
    let a_veth = a.host_ifname();
    assert!(
        before.contains_key(&format!("{a_veth} ingress from_pod"))
            && before.contains_key("uplink ingress from_uplink"),
        "attachments: {before:?}"
    );

    let (_server, iperf) = iperf3_stream(&b.netns, b_ip, &a.netns, UPGRADE_IPERF_SECONDS);
    thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    // The old pod of the DaemonSet goes: its agent stops on SIGTERM.
    agent.stop();
    // What a node runs before an upgrade: the previous build's programs.
    let programs = node.bpffs_root().join("programs");
    let build = fs::read_dir(&programs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    fs::rename(programs.join(&build), programs.join("previous-build")).unwrap();
    // The new pod: its init container installs (STATUS loads this build's
    // programs beside the running ones), its agent moves the attachments.
    let out = image.cni_ebpfd(&install);
    let said = process::expect_success("the second install in the image", &out);
    assert!(said.contains("datapath ready"), "{said}");
    let agent = image.start_agent(&dirs, &["--tcx-moves", "0"]);
    let line = agent.wait_for_line(Duration::from_secs(30), |l| l.contains("moved onto it"));
    let took = started.elapsed();
    assert!(
        line.contains(&format!("; {} attachment(s) moved onto it", before.len())),
        "{line}"
    );

    let after = attachments(&node);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the upgrade changed the set of attachments"
    );
    for (point, id) in &after {
        assert_ne!(before[point], *id, "{point} still runs program {id}");
    }
    assert_eq!(
        tc_filter_ids(&node, &a_veth),
        vec![u64::from(after[&format!("{a_veth} ingress from_pod")])],
        "filters on {a_veth}, as tc lists them"
    );
    assert!(
        !programs.join("previous-build").exists(),
        "the previous build's programs are still pinned"
    );
    for (what, conn) in &mut conns {
        conn.round_trip(4096)
            .unwrap_or_else(|e| panic!("after the upgrade: connection {what}: {e}"));
    }
    let output = iperf.wait_with_output().expect("waiting for iperf3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 report: {e}: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        report["error"].is_null() && output.status.success(),
        "iperf3 failed: {}",
        report["error"]
    );
    let (stall, intervals) = longest_stall(&report);
    eprintln!(
        "image upgrade: agent stop + install + agent start in {:.1} s; iperf3 {intervals} intervals, {:.2} GB, longest stall {stall:.1} s, {} retransmits",
        took.as_secs_f64(),
        report["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0) as f64 / 1e9,
        report["end"]["sum_sent"]["retransmits"]
    );
    assert!(intervals >= 100, "iperf3 reported {intervals} intervals");
    assert!(
        stall < 1.0,
        "the stream stalled for {stall:.1} s during the upgrade"
    );

    // The upgraded node still serves pods: CHECK of the old ones, a new one.
    for pod in [&a, &b] {
        let out = pod.check();
        assert!(out.success(), "CHECK after the upgrade: {}", out.describe());
    }
    let c = RuntimePod::add(&node, &dirs);
    a.netns.exec_ok("ping", &["-c", "1", "-W", "2", &c.ip()]);
    drop(c);
    agent.stop();
}

/// Cluster mode under the DaemonSet, with the image: the install step
/// (`--pod-cidr-source cluster`, as the ConfigMap selects it) cannot wait
/// for a pod CIDR the agent leases only after it starts, so it writes the
/// conflist withdrawn; the agent container (`run --etcd-endpoints ...`)
/// keeps it withdrawn while it cannot reach etcd, then leases a CIDR,
/// writes node.json and publishes the conflist; a pod then gets an address
/// of the leased CIDR.
#[test]
fn the_image_in_cluster_mode_publishes_the_conflist_once_the_node_leased_a_pod_cidr() {
    let node = Node::new();
    let Ext { netns, ext_ip, .. } = ext::uplink_with_default_route(&node);
    // etcd's address, before etcd runs there.
    let etcd_endpoint = format!("http://{ext_ip}:{}", cni_ebpf_tests::etcd::CLIENT_PORT);
    let dirs = CniDirs::of(&node);
    let image = NodeImage::load(&node);
    let state_dir = node.state_dir().display().to_string();

    let mut install = install_args(
        &node,
        &dirs,
        &[
            "--pod-cidr-source",
            "cluster",
            "--masquerade",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--backend",
            "auto",
        ],
    );
    let at = install.iter().position(|a| a == "--pod-cidr").unwrap();
    install.drain(at..at + 2);
    let said = process::expect_success("install in cluster mode", &image.cni_ebpfd(&install));
    assert!(said.contains("the agent publishes"), "{said}");
    let withdrawn = PathBuf::from(format!(
        "{}.cni-ebpf-withdrawn",
        dirs.conflist_path().display()
    ));
    assert!(
        !dirs.conflist_path().exists() && withdrawn.exists(),
        "conf dir: {:?}",
        CniDirs::names(&dirs.conf)
    );

    let agent = image.start_agent(
        &dirs,
        &[
            "--etcd-endpoints",
            &etcd_endpoint,
            "--cluster-cidr",
            "10.244.0.0/16",
            "--node-name",
            "image-node",
            "--state-dir",
            &state_dir,
            "--backend",
            "auto",
        ],
    );
    // No etcd, no lease: the agent runs, the node is not ready.
    agent.wait_for_line(Duration::from_secs(30), |l| l.contains("ready under"));
    thread::sleep(Duration::from_secs(3));
    assert!(
        !dirs.conflist_path().exists() && withdrawn.exists(),
        "the conflist was published before the node held a pod CIDR:\n{}",
        agent.logs()
    );
    let etcd = Etcd::start(netns, ext_ip);
    assert_eq!(etcd.endpoint(), etcd_endpoint);
    let published = wait_until(Duration::from_secs(30), || dirs.conflist_path().exists());
    assert!(
        published,
        "the agent never published the conflist:\n{}",
        agent.logs()
    );
    assert!(!withdrawn.exists());
    let node_state: Value = serde_json::from_str(
        &fs::read_to_string(node.state_dir().join("cluster/node.json")).unwrap(),
    )
    .unwrap();
    let leased = node_state["podCIDR"].as_str().unwrap().to_string();
    let plugin = &dirs.conflist()["plugins"][0];
    assert_eq!(plugin["ipam"]["ranges"][0][0]["subnet"], "usePodCidr");
    assert!(
        plugin.get("mtu").is_none(),
        "{plugin}: the agent's MTU applies"
    );
    let records = etcd.get_prefix("/cni-ebpf/default/subnets/");
    assert!(
        records
            .iter()
            .any(|(key, value)| key.ends_with(&leased.replace('/', "-"))
                && value.contains("image-node")),
        "etcd holds {records:?}, not {leased} for image-node"
    );
    {
        let pod = RuntimePod::add(&node, &dirs);
        assert!(
            in_cidr(&pod.ip(), &leased),
            "pod address {} outside the leased {leased}",
            pod.ip()
        );
        node.netns()
            .exec_ok("ping", &["-c", "1", "-W", "2", &pod.ip()]);
    }
    agent.stop();
}

/// Whether IPv4 `address` lies in `cidr` (`a.b.c.d/len`).
fn in_cidr(address: &str, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let to_u32 = |a: &str| u32::from(a.parse::<std::net::Ipv4Addr>().unwrap());
    let mask = u32::MAX
        .checked_shl(32 - len.parse::<u32>().unwrap())
        .unwrap_or(0);
    to_u32(address) & mask == to_u32(net) & mask
}
