//! `cni-ebpfd install` / `uninstall` against a fake node root: the CNI bin
//! and conf dirs, state and IPAM dirs are temp dirs of a node namespace,
//! the bpffs is the node's own mount. Nothing touches the machine's
//! /opt/cni/bin, /etc/cni/net.d, /run or /sys/fs/bpf.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use cni_ebpf_tests::{
    CniRequest, Netns, Node, Plugin,
    agent::Agent,
    binaries,
    ext::{self, wait_until},
    kube_api::{self, FakeApiServer},
    names,
    process::{self, KillOnDrop},
};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde_json::{Value, json};

pub(crate) const POD_CIDR: &str = "10.244.5.0/24";

/// The fake node root's CNI dirs, inside the node's temp dir.
pub(crate) struct CniDirs {
    pub(crate) bin: PathBuf,
    pub(crate) conf: PathBuf,
}

impl CniDirs {
    pub(crate) fn of(node: &Node) -> Self {
        let dirs = Self {
            bin: node.dir().join("opt-cni-bin"),
            conf: node.dir().join("etc-cni-net.d"),
        };
        fs::create_dir_all(&dirs.bin).unwrap();
        fs::create_dir_all(&dirs.conf).unwrap();
        dirs
    }

    pub(crate) fn conflist_path(&self) -> PathBuf {
        self.conf.join("05-cni-ebpf.conflist")
    }

    pub(crate) fn conflist(&self) -> Value {
        let text = fs::read_to_string(self.conflist_path()).expect("reading the conflist");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("conflist: {e}: {text}"))
    }

    pub(crate) fn names(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

pub(crate) fn dir_args(dirs: &CniDirs) -> Vec<String> {
    vec![
        "--cni-bin-dir".into(),
        dirs.bin.display().to_string(),
        "--cni-conf-dir".into(),
        dirs.conf.display().to_string(),
    ]
}

/// `install` with the node's directories, a pod CIDR and `extra` flags.
pub(crate) fn install_args(node: &Node, dirs: &CniDirs, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["install".to_string()];
    args.extend(dir_args(dirs));
    args.extend(
        [
            "--state-dir",
            &node.state_dir().display().to_string(),
            "--ipam-data-dir",
            &node.ipam_dir().display().to_string(),
            "--pod-cidr",
            POD_CIDR,
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs `cni-ebpfd --bpffs-root <root> <args>` in the node namespace.
fn cni_ebpfd(node: &Node, bpffs_root: &Path, args: &[String]) -> Output {
    let mut command = node.netns().command(binaries::path(binaries::AGENT));
    command.arg("--bpffs-root").arg(bpffs_root).args(args);
    process::output_with_timeout(&mut command, None, Duration::from_secs(120))
        .expect("spawning cni-ebpfd")
}

fn install(node: &Node, dirs: &CniDirs, extra: &[&str]) -> String {
    let out = cni_ebpfd(node, node.bpffs_root(), &install_args(node, dirs, extra));
    process::expect_success("cni-ebpfd install", &out)
}

fn uninstall(node: &Node, dirs: &CniDirs) -> String {
    let mut args = vec!["uninstall".to_string()];
    args.extend(dir_args(dirs));
    let out = cni_ebpfd(node, node.bpffs_root(), &args);
    process::expect_success("cni-ebpfd uninstall", &out)
}

/// A pod added as a runtime would with an installed conflist: the
/// conflist's plugin with its `name` and `cniVersion`, the installed
/// binary; DEL on drop.
pub(crate) struct RuntimePod<'n> {
    node: &'n Node,
    plugin: Plugin,
    conf: String,
    pub(crate) netns: Netns,
    container_id: String,
    result: Value,
}

impl<'n> RuntimePod<'n> {
    pub(crate) fn add(node: &'n Node, dirs: &CniDirs) -> Self {
        let conflist = dirs.conflist();
        let mut conf = conflist["plugins"][0].clone();
        conf["name"] = conflist["name"].clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        let mut pod = Self {
            node,
            plugin: Plugin::at(dirs.bin.join("cni-ebpf")),
            conf: conf.to_string(),
            netns: Netns::with_loopback("pod"),
            container_id: names::unique("cniinstall"),
            result: Value::Null,
        };
        let out = pod.call("ADD");
        pod.result = out.expect_result("ADD with the installed plugin").clone();
        pod
    }

    pub(crate) fn call(&self, command: &str) -> cni_ebpf_tests::CniOutput {
        self.call_with(command, self.conf.as_bytes())
    }

    /// CHECK, with the ADD result as `prevResult`, as runtimes send it.
    pub(crate) fn check(&self) -> cni_ebpf_tests::CniOutput {
        let mut conf: Value = serde_json::from_str(&self.conf).unwrap();
        conf["prevResult"] = self.result.clone();
        self.call_with("CHECK", conf.to_string().as_bytes())
    }

    fn call_with(&self, command: &str, stdin: &[u8]) -> cni_ebpf_tests::CniOutput {
        self.plugin.call(
            self.node.netns(),
            &CniRequest {
                command,
                container_id: &self.container_id,
                netns: Some(self.netns.path()),
                ifname: "eth0",
                args: None,
                stdin,
            },
        )
    }

    /// The host end of the pod's veth, as the ADD result names it.
    pub(crate) fn host_ifname(&self) -> String {
        self.result["interfaces"]
            .as_array()
            .and_then(|interfaces| {
                interfaces
                    .iter()
                    .find(|i| i.get("sandbox").is_none())?
                    .get("name")?
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no host interface in {}", self.result))
    }

    pub(crate) fn ip(&self) -> String {
        let address = self.result["ips"][0]["address"].as_str().unwrap();
        address.split_once('/').unwrap().0.to_string()
    }
}

impl Drop for RuntimePod<'_> {
    fn drop(&mut self) {
        let out = self.call("DEL");
        if !out.success() && !thread::panicking() {
            panic!("DEL with the installed plugin: {}", out.describe());
        }
    }
}

#[test]
fn install_leaves_the_plugin_and_a_conflist_a_pod_can_be_added_with() {
    let node = Node::new();
    let _ext = ext::uplink_with_default_route(&node);
    node.netns().ip(&["link", "set", "uplink", "mtu", "1400"]);
    let dirs = CniDirs::of(&node);

    install(
        &node,
        &dirs,
        &[
            "--backend",
            "vxlan",
            "--masquerade",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--service-cidr",
            "10.96.0.0/12",
        ],
    );

    let installed = fs::read(dirs.bin.join("cni-ebpf")).unwrap();
    assert!(
        installed == fs::read(binaries::path(binaries::PLUGIN)).unwrap(),
        "the installed plugin is not the one next to cni-ebpfd"
    );
    assert_eq!(
        fs::metadata(dirs.bin.join("cni-ebpf")).unwrap().mode() & 0o777,
        0o755
    );
    assert_eq!(
        dirs.conflist(),
        json!({
            "cniVersion": "1.0.0",
            "name": "cni-ebpf",
            "plugins": [{
                "type": "cni-ebpf",
                // The uplink's 1400 less the VXLAN header.
                "mtu": 1350,
                "bpffsRoot": node.bpffs_root(),
                "stateDir": node.state_dir(),
                "ipMasq": true,
                "nonMasqueradeCIDRs": ["10.244.0.0/16"],
                "serviceCIDRs": ["10.96.0.0/12"],
                "capabilities": { "portMappings": true, "bandwidth": true },
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": POD_CIDR }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": node.ipam_dir(),
                },
            }],
        })
    );
    assert_eq!(
        CniDirs::names(&dirs.bin),
        BTreeSet::from(["cni-ebpf".to_string()]),
        "staging files left in the bin dir"
    );

    let pod = RuntimePod::add(&node, &dirs);
    let ip = pod.ip();
    assert!(
        ip.starts_with("10.244.5."),
        "pod address {ip} outside {POD_CIDR}"
    );
    let mtu = pod.netns.ip(&["-j", "link", "show", "dev", "eth0"]);
    let mtu: Value = serde_json::from_str(&mtu).unwrap();
    assert_eq!(mtu[0]["mtu"], 1350, "pod eth0");
    node.netns().exec_ok("ping", &["-c", "1", "-W", "2", &ip]);
}

#[test]
fn install_twice_changes_nothing_and_uninstall_leaves_nothing() {
    let node = Node::new();
    let dirs = CniDirs::of(&node);
    let mtu = ["--mtu", "1500"];

    let first = install(&node, &dirs, &mtu);
    assert!(first.contains("installed"), "{first}");
    let inode = |p: PathBuf| fs::metadata(p).unwrap().ino();
    let before = (
        inode(dirs.bin.join("cni-ebpf")),
        inode(dirs.conflist_path()),
    );
    let second = install(&node, &dirs, &mtu);
    assert_eq!(second.matches("unchanged").count(), 2, "{second}");
    let after = (
        inode(dirs.bin.join("cni-ebpf")),
        inode(dirs.conflist_path()),
    );
    assert_eq!(before, after, "a second install rewrote a file");

    // A changed setting rewrites the conflist alone.
    let third = install(&node, &dirs, &["--mtu", "1400"]);
    assert!(
        third.contains(&format!(
            "unchanged {}",
            dirs.bin.join("cni-ebpf").display()
        )),
        "{third}"
    );
    assert_eq!(dirs.conflist()["plugins"][0]["mtu"], 1400);

    // An interrupted install's staging file goes too.
    fs::write(dirs.bin.join(".cni-ebpf-staging-cni-ebpf.99999"), b"half").unwrap();
    uninstall(&node, &dirs);
    assert!(
        CniDirs::names(&dirs.bin).is_empty(),
        "{:?}",
        CniDirs::names(&dirs.bin)
    );
    assert!(
        CniDirs::names(&dirs.conf).is_empty(),
        "{:?}",
        CniDirs::names(&dirs.conf)
    );
    let again = uninstall(&node, &dirs);
    assert!(again.contains("nothing to remove"), "{again}");
}

#[test]
fn exclusive_moves_other_configs_aside_and_uninstall_restores_them() {
    let node = Node::new();
    let dirs = CniDirs::of(&node);
    let others = [
        (
            "10-bridge.conflist",
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        ),
        (
            "87-podman.conf",
            r#"{"cniVersion":"0.4.0","name":"p","type":"bridge"}"#,
        ),
        (
            "99-loopback.json",
            r#"{"cniVersion":"1.0.0","name":"l","type":"loopback"}"#,
        ),
    ];
    for (name, text) in others {
        fs::write(dirs.conf.join(name), text).unwrap();
    }
    fs::write(dirs.conf.join("README"), "not a config").unwrap();

    // Without --exclusive, others stay.
    install(&node, &dirs, &["--mtu", "1500"]);
    assert_eq!(CniDirs::names(&dirs.conf).len(), 5);

    let out = install(&node, &dirs, &["--mtu", "1500", "--exclusive"]);
    assert_eq!(out.matches("moved aside").count(), 3, "{out}");
    assert_eq!(
        CniDirs::names(&dirs.conf),
        BTreeSet::from(
            [
                "05-cni-ebpf.conflist",
                "10-bridge.conflist.cni-ebpf-bak",
                "87-podman.conf.cni-ebpf-bak",
                "99-loopback.json.cni-ebpf-bak",
                "README",
            ]
            .map(String::from)
        )
    );
    // Exclusive again: nothing more to move.
    let out = install(&node, &dirs, &["--mtu", "1500", "--exclusive"]);
    assert!(!out.contains("moved aside"), "{out}");

    uninstall(&node, &dirs);
    assert_eq!(
        CniDirs::names(&dirs.conf),
        BTreeSet::from(
            [
                "10-bridge.conflist",
                "87-podman.conf",
                "99-loopback.json",
                "README"
            ]
            .map(String::from)
        )
    );
    for (name, text) in others {
        assert_eq!(fs::read_to_string(dirs.conf.join(name)).unwrap(), text);
    }
    assert!(CniDirs::names(&dirs.bin).is_empty());
}

/// The bin dir is read in a loop while installs alternate between two
/// plugin builds: every read sees one whole binary or the other. (An
/// in-place copy shows a truncated or partly written file here.)
#[test]
fn a_half_written_plugin_is_never_visible() {
    let node = Node::new();
    let dirs = CniDirs::of(&node);
    let built = fs::read(binaries::path(binaries::PLUGIN)).unwrap();
    // Another build, as far as the bytes go: trailing data does not change
    // how an ELF runs.
    let other_path = node.dir().join("cni-ebpf-other");
    let mut other = built.clone();
    other.extend_from_slice(&[0x5a; 4096]);
    fs::write(&other_path, &other).unwrap();
    let other_arg = other_path.display().to_string();
    let target = dirs.bin.join("cni-ebpf");

    install(&node, &dirs, &["--mtu", "1500"]);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let target = target.clone();
        let (a, b) = (built.len(), other.len());
        let (a_head, b_tail) = (built[..4096].to_vec(), other[other.len() - 4096..].to_vec());
        thread::spawn(move || {
            let mut reads = 0u32;
            let mut torn = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let bytes = fs::read(&target).expect("the plugin is always there");
                reads += 1;
                let whole = (bytes.len() == a && bytes[..4096] == a_head[..])
                    || (bytes.len() == b && bytes[b - 4096..] == b_tail[..]);
                if !whole {
                    torn.push(bytes.len());
                }
            }
            (reads, torn)
        })
    };
    for round in 0..4 {
        let source = if round % 2 == 0 {
            other_arg.as_str()
        } else {
            ""
        };
        let mut extra = vec!["--mtu", "1500"];
        if !source.is_empty() {
            extra.extend(["--plugin-binary", source]);
        }
        let out = install(&node, &dirs, &extra);
        assert!(out.starts_with("installed"), "round {round}: {out}");
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, torn) = reader.join().unwrap();
    assert!(reads >= 4, "only {reads} reads during four installs");
    assert!(
        torn.is_empty(),
        "{} of {reads} reads saw a partial binary: sizes {torn:?}",
        torn.len()
    );
    uninstall(&node, &dirs);
}

/// A bpffs mounted by the test on a directory of its own; unmounted on drop.
struct LateBpffs(PathBuf);

impl Drop for LateBpffs {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

#[test]
fn the_conflist_appears_only_once_the_datapath_is_loaded() {
    let node = Node::new();
    let dirs = CniDirs::of(&node);
    // bpffsRoot on a directory that is not (yet) a bpffs: STATUS answers 50.
    let mountpoint = node.dir().join("bpffs-later");
    fs::create_dir_all(&mountpoint).unwrap();
    let root = mountpoint.join("node");

    let out = cni_ebpfd(
        &node,
        &root,
        &install_args(&node, &dirs, &["--mtu", "1500", "--ready-timeout", "1"]),
    );
    assert!(
        !out.status.success(),
        "install succeeded without a datapath"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did not become ready") && stderr.contains("code 50"),
        "{stderr}"
    );
    assert!(
        !dirs.conflist_path().exists(),
        "conflist written without a datapath"
    );

    // Now an install that waits, and a bpffs that arrives while it does.
    let mut command = node.netns().command(binaries::path(binaries::AGENT));
    command
        .arg("--bpffs-root")
        .arg(&root)
        .args(install_args(
            &node,
            &dirs,
            &["--mtu", "1500", "--ready-timeout", "60"],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut waiting = KillOnDrop(command.spawn().expect("spawning cni-ebpfd install"));
    thread::sleep(Duration::from_millis(1500));
    assert!(
        waiting.0.try_wait().unwrap().is_none(),
        "install gave up early"
    );
    assert!(
        !dirs.conflist_path().exists(),
        "conflist written before the datapath was loaded"
    );
    assert!(
        dirs.bin.join("cni-ebpf").exists(),
        "the plugin is copied first"
    );

    mount_bpffs(&mountpoint);
    let _bpffs = LateBpffs(mountpoint.clone());
    assert!(
        wait_until(Duration::from_secs(60), || waiting
            .0
            .try_wait()
            .unwrap()
            .is_some()),
        "install did not finish once bpffs was there"
    );
    let status = waiting.0.wait().unwrap();
    assert!(status.success(), "install failed after bpffs arrived");
    assert!(
        dirs.conflist_path().exists(),
        "no conflist after the datapath loaded"
    );
    assert!(
        root.join("maps").is_dir(),
        "STATUS did not load the datapath"
    );
    assert_eq!(dirs.conflist()["plugins"][0]["bpffsRoot"], json!(root));
}

/// `cni-ebpfd run --cni-conflist`: the node's bpffs goes away under the
/// agent (the datapath can be neither opened nor loaded), the conflist is
/// withdrawn; a bpffs is back, the agent loads the datapath into it and
/// the same conflist returns.
#[test]
fn the_agent_withdraws_the_conflist_while_the_datapath_is_unusable() {
    let node = Node::new();
    let dirs = CniDirs::of(&node);
    install(&node, &dirs, &["--mtu", "1500"]);
    let written = fs::read(dirs.conflist_path()).unwrap();
    let withdrawn = dirs.conf.join("05-cni-ebpf.conflist.cni-ebpf-withdrawn");
    let conflist_arg = dirs.conflist_path().display().to_string();
    let agent = Agent::start(
        &node,
        &["--gc-interval", "1", "--cni-conflist", &conflist_arg],
    );

    let mountpoint = node.bpffs().mountpoint().to_path_buf();
    umount2(&mountpoint, MntFlags::MNT_DETACH).expect("unmounting the node's bpffs");
    let _remount = Remount(mountpoint.clone());
    let gone = wait_until(Duration::from_secs(10), || {
        !dirs.conflist_path().exists() && withdrawn.exists()
    });
    assert!(
        gone,
        "conflist still there without a datapath:\n{}",
        agent.stderr().join("\n")
    );

    mount_bpffs(&mountpoint);
    let back = wait_until(Duration::from_secs(10), || dirs.conflist_path().exists());
    assert!(
        back,
        "conflist not restored:\n{}",
        agent.stderr().join("\n")
    );
    assert_eq!(fs::read(dirs.conflist_path()).unwrap(), written);
    assert!(!withdrawn.exists());
    assert!(
        node.bpffs_root().join("maps").is_dir(),
        "the agent did not load the datapath again"
    );
    drop(agent);
    uninstall(&node, &dirs);
    assert!(CniDirs::names(&dirs.conf).is_empty());
}

fn mount_bpffs(at: &Path) {
    mount(
        Some("bpf"),
        at,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .expect("mounting bpffs");
}

/// Mounts a bpffs back on the node's mountpoint if the test ends without
/// one there, so the node's own cleanup finds what it expects.
struct Remount(PathBuf);

impl Drop for Remount {
    fn drop(&mut self) {
        let on_bpffs = nix::sys::statfs::statfs(&self.0)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
        if !on_bpffs {
            mount_bpffs(&self.0);
        }
    }
}

/// Two Nodes as the API server returns them (trimmed): a dual-stack one
/// (IPv6 listed first, as it may be) and an IPv4 one.
fn api_nodes() -> Value {
    json!({
        "worker-7": {
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": "worker-7", "uid": "2f8e4c1a-0000-4000-8000-000000000007",
                          "labels": { "kubernetes.io/os": "linux" } },
            "spec": { "podCIDR": "fd00:10:244:7::/64",
                      "podCIDRs": ["fd00:10:244:7::/64", "10.244.7.0/24"] },
            "status": { "addresses": [{ "type": "InternalIP", "address": "10.250.0.1" }] }
        },
        "worker-8": {
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": "worker-8" },
            "spec": { "podCIDR": "10.244.8.0/24", "podCIDRs": ["10.244.8.0/24"] }
        }
    })
}

/// `install` with `--pod-cidr-from-api` (and `extra`) in place of `--pod-cidr`.
fn api_install_args(node: &Node, dirs: &CniDirs, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args = install_args(node, dirs, &["--mtu", "1500"]);
    let at = args.iter().position(|a| a == "--pod-cidr").unwrap();
    args.drain(at..at + 2);
    args.extend(["--pod-cidr-from-api", "--node-name", name].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `--pod-cidr-from-api` reads `GET /api/v1/nodes/<name>` with kube's
/// client, over TLS verified against the service account's CA, with its
/// bearer token: here against a small HTTPS server in the ext namespace
/// (no API server exists on these machines), found through the pod
/// environment's KUBERNETES_SERVICE_HOST/PORT or --api-server.
#[test]
fn install_takes_the_pod_cidrs_from_the_kubernetes_api() {
    let node = Node::new();
    let ext = ext::uplink_with_default_route(&node);
    let dirs = CniDirs::of(&node);
    let api = FakeApiServer::start(&ext.netns, ext.ext_ip, &api_nodes());
    let account = api.service_account_dir();
    let account_arg = account.display().to_string();
    let run = |args: Vec<String>, env: &[(&str, String)]| {
        let mut command = node.netns().command(binaries::path(binaries::AGENT));
        command
            .arg("--bpffs-root")
            .arg(node.bpffs_root())
            .args(args);
        command.env_remove("KUBERNETES_SERVICE_HOST");
        command.env_remove("KUBERNETES_SERVICE_PORT");
        for (key, value) in env {
            command.env(key, value);
        }
        process::output_with_timeout(&mut command, None, Duration::from_secs(120)).unwrap()
    };
    let in_pod_env = [
        ("KUBERNETES_SERVICE_HOST", ext.ext_ip.to_string()),
        ("KUBERNETES_SERVICE_PORT", kube_api::PORT.to_string()),
    ];

    // As in a pod: the server from the environment, the mounted account.
    let out = run(
        api_install_args(
            &node,
            &dirs,
            "worker-7",
            &["--service-account-dir", &account_arg],
        ),
        &in_pod_env,
    );
    process::expect_success("install --pod-cidr-from-api", &out);
    let ipam = &dirs.conflist()["plugins"][0]["ipam"];
    assert_eq!(ipam["ranges"], json!([[{ "subnet": "10.244.7.0/24" }]]));
    assert_eq!(
        api.requests(200),
        ["GET /api/v1/nodes/worker-7 HTTP/1.1 200"],
        "{}",
        api.log()
    );
    {
        let pod = RuntimePod::add(&node, &dirs);
        assert!(
            pod.ip().starts_with("10.244.7."),
            "pod address {}",
            pod.ip()
        );
    }

    // Dual-stack: one range set per family, IPv4 first, whatever order
    // the Node lists them in.
    let out = run(
        api_install_args(
            &node,
            &dirs,
            "worker-7",
            &[
                "--service-account-dir",
                &account_arg,
                "--api-server",
                &api.url(),
                "--ip-families",
                "dual-stack",
            ],
        ),
        &[],
    );
    process::expect_success("install --ip-families dual-stack", &out);
    let ipam = &dirs.conflist()["plugins"][0]["ipam"];
    assert_eq!(
        ipam["ranges"],
        json!([[{ "subnet": "10.244.7.0/24" }], [{ "subnet": "fd00:10:244:7::/64" }]])
    );
    assert_eq!(
        ipam["routes"],
        json!([{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }])
    );
    // An IPv4-only node cannot give what dual-stack asks: nothing changes.
    let before = fs::read(dirs.conflist_path()).unwrap();
    let out = run(
        api_install_args(
            &node,
            &dirs,
            "worker-8",
            &[
                "--service-account-dir",
                &account_arg,
                "--api-server",
                &api.url(),
                "--ip-families",
                "dual-stack",
            ],
        ),
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("worker-8") && stderr.contains("no IPv6"),
        "{stderr}"
    );
    assert_eq!(fs::read(dirs.conflist_path()).unwrap(), before);

    // 404: a node the API server does not know.
    let out = run(
        api_install_args(
            &node,
            &dirs,
            "worker-9",
            &["--service-account-dir", &account_arg],
        ),
        &in_pod_env,
    );
    assert!(!out.status.success(), "install with an unknown node passed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("404") && stderr.contains("not found") && stderr.contains("--node-name"),
        "{stderr}"
    );

    // 403: a token the server does not accept.
    let other = node.dir().join("other-account");
    fs::create_dir_all(&other).unwrap();
    fs::copy(account.join("ca.crt"), other.join("ca.crt")).unwrap();
    fs::write(other.join("token"), "not-the-token").unwrap();
    let out = run(
        api_install_args(
            &node,
            &dirs,
            "worker-7",
            &["--service-account-dir", &other.display().to_string()],
        ),
        &in_pod_env,
    );
    assert!(!out.status.success(), "install with a refused token passed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("forbidden") && stderr.contains("get on nodes"),
        "{stderr}"
    );

    // A CA that did not sign the server's certificate: no request reaches it.
    let stranger = node.dir().join("stranger-account");
    fs::create_dir_all(&stranger).unwrap();
    fs::write(stranger.join("token"), kube_api::TOKEN).unwrap();
    let mut openssl = std::process::Command::new("openssl");
    openssl
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=stranger",
        ])
        .arg("-keyout")
        .arg(stranger.join("ca.key"))
        .arg("-out")
        .arg(stranger.join("ca.crt"));
    process::expect_success(
        "openssl",
        &process::output_with_timeout(&mut openssl, None, Duration::from_secs(30)).unwrap(),
    );
    let requests_before = api.log().matches("request ").count();
    let out = run(
        api_install_args(
            &node,
            &dirs,
            "worker-7",
            &["--service-account-dir", &stranger.display().to_string()],
        ),
        &in_pod_env,
    );
    assert!(
        !out.status.success(),
        "install trusted a server its CA did not sign"
    );
    assert_eq!(
        api.log().matches("request ").count(),
        requests_before,
        "{}",
        api.log()
    );

    // Outside a pod, without --api-server: the missing variables are named.
    let out = run(
        api_install_args(
            &node,
            &dirs,
            "worker-7",
            &["--service-account-dir", &account_arg],
        ),
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KUBERNETES_SERVICE_HOST"));

    assert_eq!(
        dirs.conflist()["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "10.244.7.0/24",
        "a failed install changed the conflist"
    );
    uninstall(&node, &dirs);
}

/// The Kubernetes version `deploy/` is validated against.
const KUBERNETES_VERSION: &str = "1.32.0";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// PyPI's kubernetes-validate as `cargo xtask setup` installs it.
fn kubernetes_validate() -> PathBuf {
    let path = std::env::var_os("CNI_EBPF_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("tools/venv/bin/kubernetes-validate")
        });
    assert!(
        path.is_file(),
        "{} missing: `cargo xtask setup` installs kubernetes-validate (or set CNI_EBPF_KUBERNETES_VALIDATE)",
        path.display()
    );
    path
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn deploy_manifests_are_valid_for_kubernetes() {
    let files = manifests();
    assert!(files.len() >= 5, "deploy/ holds {files:?}");
    let mut command = std::process::Command::new(kubernetes_validate());
    command
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(&files);
    let out = process::output_with_timeout(&mut command, None, Duration::from_secs(120)).unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate:\n{report}");
    // One line per resource, each passed: namespace, service account, role,
    // binding, config map, daemon set.
    assert_eq!(report.matches(" passed ").count(), 6, "{report}");

    // And a misspelt field fails, so the check above means something.
    let broken = tempfile_dir().join("broken.yaml");
    let daemonset = fs::read_to_string(deploy_dir().join("40-daemonset.yaml")).unwrap();
    fs::write(&broken, daemonset.replace("hostNetwork:", "hostNetwrk:")).unwrap();
    let mut command = std::process::Command::new(kubernetes_validate());
    command
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&broken);
    let out = process::output_with_timeout(&mut command, None, Duration::from_secs(120)).unwrap();
    assert!(!out.status.success(), "a misspelt field passed");
    let _ = fs::remove_dir_all(broken.parent().unwrap());
}

/// Every flag the DaemonSet passes exists in the binary it runs, so the
/// manifests and the CLI cannot drift apart unnoticed.
#[test]
fn the_daemonsets_flags_are_cni_ebpfds() {
    let python = kubernetes_validate().with_file_name("python");
    let daemonset = deploy_dir().join("40-daemonset.yaml");
    let mut command = std::process::Command::new(python);
    command.args([
        "-c",
        "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
    ]);
    command.arg(&daemonset);
    let out = process::output_with_timeout(&mut command, None, Duration::from_secs(60)).unwrap();
    let spec: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let pod = &spec["spec"]["template"]["spec"];
    let containers = pod["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["containers"].as_array().unwrap());
    let mut checked = 0;
    for container in containers {
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let subcommand = *args.iter().find(|a| !a.starts_with("--")).unwrap();
        let help = process::expect_success(
            &format!("cni-ebpfd {subcommand} --help"),
            &process::output_with_timeout(
                std::process::Command::new(binaries::path(binaries::AGENT))
                    .args([subcommand, "--help"]),
                None,
                Duration::from_secs(30),
            )
            .unwrap(),
        );
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            let name = flag.split('=').next().unwrap();
            if name == "--bpffs-root" {
                continue; // global
            }
            assert!(
                help.contains(&format!("{name} ")) || help.contains(&format!("{name}\n")),
                "container {}: cni-ebpfd {subcommand} has no {name}",
                container["name"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} flags checked");
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(spec["spec"]["updateStrategy"]["type"], "RollingUpdate");
}

pub(crate) fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(names::unique("cni-ebpf-deploy"));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Cluster mode's pod CIDR: `--use-pod-cidr` writes `usePodCidr`, which
/// the plugin resolves from `<stateDir>/cluster/node.json` (written here as
/// the cluster-mode agent writes it); STATUS answers 50 until the file is
/// there, so install waits for it. `--pod-cidr-from-node-state` writes the
/// file's CIDR itself.
#[test]
fn install_in_cluster_mode_takes_the_leased_pod_cidr() {
    let node = Node::new();
    let _ext = ext::uplink_with_default_route(&node);
    let dirs = CniDirs::of(&node);
    let without_cidr = |extra: &[&str]| {
        let mut args = install_args(&node, &dirs, extra);
        let at = args.iter().position(|a| a == "--pod-cidr").unwrap();
        args.drain(at..at + 2);
        args
    };

    let early = cni_ebpfd(
        &node,
        node.bpffs_root(),
        &without_cidr(&["--mtu", "1500", "--use-pod-cidr", "--ready-timeout", "1"]),
    );
    assert!(
        !early.status.success(),
        "install passed STATUS without a leased pod CIDR"
    );
    assert!(!dirs.conflist_path().exists());

    let cluster_dir = node.state_dir().join("cluster");
    fs::create_dir_all(&cluster_dir).unwrap();
    fs::write(
        cluster_dir.join("node.json"),
        r#"{"nodeName":"n1","podCIDR":"10.244.9.0/24","mtu":1450,"backend":"vxlan","underlay":"10.250.0.1"}"#,
    )
    .unwrap();
    process::expect_success(
        "install --use-pod-cidr",
        &cni_ebpfd(
            &node,
            node.bpffs_root(),
            &without_cidr(&["--mtu", "1500", "--use-pod-cidr"]),
        ),
    );
    assert_eq!(
        dirs.conflist()["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "usePodCidr"
    );
    {
        let pod = RuntimePod::add(&node, &dirs);
        assert!(
            pod.ip().starts_with("10.244.9."),
            "pod address {}",
            pod.ip()
        );
    }

    process::expect_success(
        "install --pod-cidr-from-node-state",
        &cni_ebpfd(
            &node,
            node.bpffs_root(),
            &without_cidr(&["--mtu", "1500", "--pod-cidr-from-node-state"]),
        ),
    );
    assert_eq!(
        dirs.conflist()["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "10.244.9.0/24"
    );
    uninstall(&node, &dirs);
}
