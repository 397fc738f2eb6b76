//! Resource faults: the state directory or the IPAM data directory
//! read-only or full, the bpffs read-only, the endpoints map full. Each ADD
//! fails with a coded error naming what failed, leaves nothing behind (host
//! veth, pod interface, route, endpoint, counters, limits, reservation,
//! record), and the node serves the next ADD once the fault is gone.
//!
//! The faults are mounts made in a private mount namespace of one thread
//! (read-only bind mounts, a one-page tmpfs); the plugin is spawned from
//! that thread, so it sees them, and nothing reaches the machine's mounts.

use std::{
    path::{Path, PathBuf},
    thread,
};

use cni_ebpf_tests::{
    Node,
    node::DEFAULT_NETWORK,
    spec::{Footprint, Sandbox, host_veths, link_pins, records},
};
use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};
use serde_json::{Value, json};

use crate::{faults::Leftovers, pod_links};

/// Runs `f` on a thread with a private mount namespace.
fn with_private_mounts<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .expect("making the thread's mounts private");
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn read_only(dir: &Path) {
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .unwrap_or_else(|e| panic!("bind {}: {e}", dir.display()));
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("remount {} read-only: {e}", dir.display()));
}

/// A one-page tmpfs over `dir` (holding `keep` empty directories), filled.
fn full(dir: &Path, keep: &[&str]) {
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=4k,nr_inodes=16"),
    )
    .unwrap_or_else(|e| panic!("tmpfs on {}: {e}", dir.display()));
    for sub in keep {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir on the tmpfs");
    }
    let _ = std::fs::write(dir.join("filler"), vec![0u8; 64 * 1024]);
}

/// [`Leftovers::of`] (footprint, routes, counters, limits), or on a node
/// whose datapath was never loaded, the footprint without maps.
fn footprint(node: &Node) -> Result<Leftovers, Footprint> {
    if node.bpffs_root().join("maps").join("ENDPOINTS").exists() {
        return Ok(Leftovers::of(node));
    }
    Err(Footprint {
        host_veths: host_veths(node),
        reservations: node.ipam_reservations(DEFAULT_NETWORK),
        endpoints: Default::default(),
        records: records(node, DEFAULT_NETWORK),
        link_pins: link_pins(node),
    })
}

fn conf(node: &Node) -> Value {
    let mut conf = node.conf().cni_version("1.1.0").build();
    conf["attachMode"] = json!("clsact");
    conf
}

/// ADD under `fault` must fail with one of `codes`, leave the node as it
/// was, and the node must serve an ADD once the fault is gone.
fn add_fails_cleanly(node: &Node, what: &str, codes: &[u64], fault: impl FnOnce() + Send) {
    add_fails_cleanly_then(node, what, codes, fault, || {});
}

/// [`add_fails_cleanly`] for a fault that outlives the mounts: `heal`
/// removes it before the next ADD.
fn add_fails_cleanly_then(
    node: &Node,
    what: &str,
    codes: &[u64],
    fault: impl FnOnce() + Send,
    heal: impl FnOnce(),
) {
    let conf = conf(node);
    let before = footprint(node);
    let (code, msg, pod_interfaces) = with_private_mounts(|| {
        fault();
        let mut pod = Sandbox::new(node);
        let output = pod.add(&conf);
        assert!(!output.success(), "{what}: ADD succeeded");
        let code = output.error_code().unwrap_or_default();
        let msg = format!(
            "{} ({})",
            output.error_msg().unwrap_or_default(),
            output.error_details().unwrap_or_default()
        );
        (code, msg, pod_links(pod.netns()))
    });
    eprintln!("[resources] {what}: code {code}: {msg}");
    assert!(codes.contains(&code), "{what}: code {code}: {msg}");
    assert!(
        pod_interfaces.is_empty(),
        "{what}: pod kept {pod_interfaces:?}"
    );
    assert_eq!(footprint(node), before, "{what}: left behind");
    heal();
    let mut next = Sandbox::new(node);
    next.add_ok(&conf);
    next.del().expect_success("DEL after the fault");
}

/// A node whose datapath is loaded and whose directories exist.
fn loaded_node() -> Node {
    let node = Node::new();
    let mut pod = Sandbox::new(&node);
    pod.add_ok(&conf(&node));
    pod.del().expect_success("DEL");
    drop(pod);
    node
}

#[test]
fn read_only_state_dir_fails_add_cleanly() {
    let node = loaded_node();
    let state: PathBuf = node.state_dir();
    add_fails_cleanly(&node, "read-only state dir", &[5], || read_only(&state));
}

#[test]
fn full_state_dir_fails_add_cleanly() {
    let node = loaded_node();
    let state = node.state_dir();
    add_fails_cleanly(&node, "full state dir", &[5], || {
        full(&state, &[DEFAULT_NETWORK])
    });
}

#[test]
fn read_only_ipam_dir_fails_add_cleanly() {
    let node = loaded_node();
    let ipam = node.ipam_dir();
    add_fails_cleanly(&node, "read-only IPAM data dir", &[5, 7, 110], || {
        read_only(&ipam)
    });
}

#[test]
fn full_ipam_dir_fails_add_cleanly() {
    let node = loaded_node();
    let ipam = node.ipam_dir();
    add_fails_cleanly(&node, "full IPAM data dir", &[5, 7, 110], || {
        full(&ipam, &[DEFAULT_NETWORK])
    });
}

#[test]
fn read_only_bpffs_fails_the_first_add_cleanly() {
    let node = Node::new();
    let bpffs = node.bpffs().mountpoint().to_path_buf();
    add_fails_cleanly(&node, "read-only bpffs", &[100], || read_only(&bpffs));
}

/// `ENDPOINTS` full (65 536 entries, here filled with addresses of no pod
/// through `bpftool batch`): ADD fails with code 100 naming the endpoint,
/// and rolls back its veth, counters, reservation and record.
#[test]
fn full_endpoints_map_fails_add_cleanly() {
    let node = loaded_node();
    let map = node.bpffs_root().join("maps").join("ENDPOINTS");
    let batch = node.dir().join("fill-endpoints.batch");
    let value = vec!["00"; 40].join(" ");
    let mut commands = String::new();
    for i in 0..65_536u32 {
        // 10.250.x.y as an IPv4-mapped key: outside every pod subnet.
        commands.push_str(&format!(
            "map update pinned {} key 0 0 0 0 0 0 0 0 0 0 0xff 0xff 10 250 {} {} value {value}\n",
            map.display(),
            i >> 8,
            i & 0xff
        ));
    }
    std::fs::write(&batch, commands).expect("writing the bpftool batch");
    let output = std::process::Command::new("bpftool")
        .arg("batch")
        .arg("file")
        .arg(&batch)
        .output()
        .expect("bpftool batch");
    assert!(
        output.status.success(),
        "filling ENDPOINTS: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_file(&batch);
    let heal = || {
        let key = "0 0 0 0 0 0 0 0 0 0 0xff 0xff 10 250 0 0";
        let mut delete = std::process::Command::new("bpftool");
        delete
            .args(["map", "delete", "pinned"])
            .arg(&map)
            .arg("key");
        delete.args(key.split(' '));
        assert!(delete.status().expect("bpftool").success());
    };
    add_fails_cleanly_then(&node, "full ENDPOINTS map", &[100], || {}, heal);
}
