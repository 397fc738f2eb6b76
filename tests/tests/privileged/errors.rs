//! Failed calls report the spec's error object and leave nothing behind:
//! no link, no reservation, no endpoint entry.

use std::net::IpAddr;

use cni_ebpf_tests::{
    CniOutput, CniRequest, Netns, Node, names, node::DEFAULT_NETWORK, traffic::ping,
};
use serde_json::Value;

use crate::{NodeState, pod_links};

/// ADD of a new pod namespace with `stdin` as config; returns the output
/// and the namespace (which must stay empty).
fn add_raw(node: &Node, stdin: &[u8]) -> (CniOutput, Netns) {
    let netns = Netns::with_loopback("pod");
    let container_id = names::unique("cnitest");
    let output = node.cni(&CniRequest {
        command: "ADD",
        container_id: &container_id,
        netns: Some(netns.path()),
        ifname: "eth0",
        args: None,
        stdin,
    });
    (output, netns)
}

/// Whatever the failing call, the node and the pod namespace are as before.
fn assert_nothing_left(node: &Node, before: &NodeState, netns: &Netns) {
    assert_eq!(
        &NodeState::of(node, DEFAULT_NETWORK),
        before,
        "the failed call left state behind"
    );
    assert_eq!(
        pod_links(netns),
        Vec::<String>::new(),
        "the failed call left an interface in the pod"
    );
}

#[test]
fn malformed_json_is_a_decode_failure() {
    let node = Node::new();
    // A first pod loads the datapath, so its maps exist to be compared.
    let _pod = node.add_pod();
    let before = NodeState::of(&node, DEFAULT_NETWORK);

    let (output, netns) = add_raw(&node, br#"{"cniVersion":"1.0.0","name":"testnet","type":"#);
    output.expect_error("ADD with malformed JSON", 6);
    assert_nothing_left(&node, &before, &netns);
}

#[test]
fn missing_name_is_invalid_config() {
    let node = Node::new();
    // A first pod loads the datapath, so its maps exist to be compared.
    let _pod = node.add_pod();
    let before = NodeState::of(&node, DEFAULT_NETWORK);

    let mut conf = node.conf().build();
    conf.as_object_mut().unwrap().remove("name");
    let (output, netns) = add_raw(&node, conf.to_string().as_bytes());
    let msg = output.expect_error("ADD without `name`", 7);
    assert!(
        msg.contains("name"),
        "message does not name the field: {msg}"
    );
    assert_nothing_left(&node, &before, &netns);
}

#[test]
fn exhausted_range_reports_the_range() {
    let node = Node::new();
    let conf = node.conf().range("10.244.1.10", "10.244.1.10").build();
    let only = node.add_pod_with(conf.clone());
    assert_eq!(only.ip().to_string(), "10.244.1.10");
    let before = NodeState::of(&node, DEFAULT_NETWORK);

    let (output, netns) = add_raw(&node, conf.to_string().as_bytes());
    let msg = output.expect_error("ADD into an exhausted range", 110);
    assert!(
        msg.contains("10.244.1.10"),
        "message does not name the range: {msg}"
    );
    assert_nothing_left(&node, &before, &netns);
}

#[test]
fn missing_netns_is_invalid_env() {
    let node = Node::new();
    // A first pod loads the datapath, so its maps exist to be compared.
    let _pod = node.add_pod();
    let before = NodeState::of(&node, DEFAULT_NETWORK);

    let conf = node.conf().build().to_string();
    let output = node.cni(&CniRequest {
        command: "ADD",
        container_id: &names::unique("cnitest"),
        netns: None,
        ifname: "eth0",
        args: None,
        stdin: conf.as_bytes(),
    });
    output.expect_error("ADD without CNI_NETNS", 4);
    assert_eq!(NodeState::of(&node, DEFAULT_NETWORK), before);
}

#[test]
fn missing_bpffs_is_datapath_unavailable() {
    let node = Node::new();
    let mut conf = node.conf().build();
    conf["bpffsRoot"] = Value::String(
        node.state_dir()
            .join("not-bpffs")
            .to_string_lossy()
            .into_owned(),
    );
    let links_before = node.links();

    let (output, netns) = add_raw(&node, conf.to_string().as_bytes());
    let msg = output.expect_error("ADD with bpffsRoot off bpffs", 100);
    assert!(
        msg.to_lowercase().contains("bpf"),
        "message does not say bpffs is missing: {msg}"
    );
    assert_eq!(node.links(), links_before);
    assert!(
        node.ipam_reservations(DEFAULT_NETWORK).is_empty(),
        "a reservation was left"
    );
    assert_eq!(pod_links(&netns), Vec::<String>::new());
}

#[test]
fn duplicate_add_fails_and_keeps_the_first_attachment() {
    let node = Node::new();
    let pod = node.add_pod();
    let peer = node.add_pod();
    let before = NodeState::of(&node, DEFAULT_NETWORK);

    let output = pod.call("ADD", pod.conf());
    output.expect_error("second ADD of the same container and interface", 111);
    assert_eq!(
        NodeState::of(&node, DEFAULT_NETWORK),
        before,
        "the failed ADD changed the node"
    );
    assert!(
        ping(pod.netns(), IpAddr::V4(peer.ip()), 1),
        "the first attachment stopped working"
    );
}

#[test]
fn add_onto_a_taken_interface_name_rolls_back() {
    let node = Node::new();
    let pod = node.add_pod();
    let peer = node.add_pod();
    let before = NodeState::of(&node, DEFAULT_NETWORK);

    // Another attachment into the same namespace with the same ifname.
    let conf = node.conf().build().to_string();
    let output = node.cni(&CniRequest {
        command: "ADD",
        container_id: &names::unique("cnitest"),
        netns: Some(pod.netns().path()),
        ifname: "eth0",
        args: None,
        stdin: conf.as_bytes(),
    });
    output.expect_error("ADD onto an existing eth0", 111);
    assert_eq!(
        NodeState::of(&node, DEFAULT_NETWORK),
        before,
        "the failed ADD left state behind"
    );
    assert_eq!(pod_links(pod.netns()), ["eth0"]);
    assert!(
        ping(pod.netns(), IpAddr::V4(peer.ip()), 1),
        "the existing attachment stopped working"
    );
}

#[test]
fn a_map_pinned_with_another_layout_is_refused_by_name() {
    let node = Node::new();
    // What an older build with a shorter endpoint entry would have left.
    let maps = node.bpffs_root().join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let pin = maps.join("ENDPOINTS");
    let pin = pin.to_string_lossy();
    node.netns().exec_ok(
        "bpftool",
        &[
            "map",
            "create",
            &pin,
            "type",
            "hash",
            "key",
            "16",
            "value",
            "32",
            "entries",
            "65536",
            "name",
            "ENDPOINTS",
        ],
    );
    let links_before = node.links();

    let conf = node.conf().build();
    let (output, netns) = add_raw(&node, conf.to_string().as_bytes());
    let msg = output.expect_error("ADD over a map of another layout", 100);
    assert!(
        msg.contains("ENDPOINTS") && msg.contains("layout"),
        "message does not name the map: {msg}"
    );
    let details = output.error_details().unwrap_or_default();
    assert!(
        details.contains("32-byte values") && details.contains("this build needs"),
        "details do not give both layouts: {details}"
    );
    assert_eq!(node.links(), links_before);
    assert!(
        node.ipam_reservations(DEFAULT_NETWORK).is_empty(),
        "a reservation was left"
    );
    assert_eq!(pod_links(&netns), Vec::<String>::new());
}

/// A process holding `lock` exclusively (util-linux `flock`, the lock on
/// its own descriptor only), then stopped: alive and stuck. Killed with
/// its child when dropped.
struct StuckHolder(std::process::Child);

impl StuckHolder {
    fn hold(lock: &std::path::Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        let child = std::process::Command::new("flock")
            .args(["--exclusive", "--close"])
            .arg(lock)
            .args(["sleep", "600"])
            .process_group(0)
            .spawn()
            .expect("spawning flock (util-linux)");
        let holder = Self(child);
        let taken = cni_ebpf_tests::wait::wait_until(std::time::Duration::from_secs(10), || {
            std::process::Command::new("flock")
                .args(["--nonblock", "--shared"])
                .arg(lock)
                .arg("true")
                .status()
                .is_ok_and(|s| !s.success())
        });
        assert!(taken, "flock did not take {}", lock.display());
        holder.signal(nix::sys::signal::Signal::SIGSTOP);
        holder
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let group = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(group, signal);
    }
}

impl Drop for StuckHolder {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

#[test]
fn a_lock_held_by_a_stuck_process_fails_the_call_with_try_again_naming_it() {
    let node = Node::new();
    let first = node.add_pod();
    let before = NodeState::of(&node, DEFAULT_NETWORK);
    let conf = node.conf().build().to_string();
    let wait = [("CNI_EBPF_LOCK_TIMEOUT", "1")];
    let call = |command: &'static str, container_id: &str, netns: &Netns| {
        node.plugin().call_with_env(
            node.netns(),
            &CniRequest {
                command,
                container_id,
                netns: Some(netns.path()),
                ifname: "eth0",
                args: None,
                stdin: conf.as_bytes(),
            },
            &wait,
        )
    };
    // The state lock (every verb) and the network's IPAM lock (ADD).
    let locks = [
        node.state_dir().join("lock"),
        node.ipam_dir().join(DEFAULT_NETWORK).join("lock"),
    ];
    for lock in &locks {
        let netns = Netns::with_loopback("pod");
        let container_id = names::unique("cnitest");
        let holder = StuckHolder::hold(lock);
        let output = call("ADD", &container_id, &netns);
        let msg = output.expect_error(&format!("ADD while {} is held", lock.display()), 11);
        assert!(msg.contains(&lock.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {} (flock)", holder.pid())),
            "the holder is not named: {msg}"
        );
        assert!(
            output.elapsed >= std::time::Duration::from_secs(1),
            "gave up after {:?}, before the 1 s wait",
            output.elapsed
        );
        assert_nothing_left(&node, &before, &netns);
        drop(holder);
        // The holder gone, the same call goes through.
        call("ADD", &container_id, &netns).expect_result("ADD once the holder is gone");
        call("DEL", &container_id, &netns).expect_success("DEL");
        assert_nothing_left(&node, &before, &netns);
    }
    // DEL waits for the state lock as well, and leaves the pod as it was.
    let holder = StuckHolder::hold(&locks[0]);
    let output = node.plugin().call_with_env(
        node.netns(),
        &CniRequest {
            command: "DEL",
            container_id: first.container_id(),
            netns: Some(first.netns().path()),
            ifname: "eth0",
            args: None,
            stdin: conf.as_bytes(),
        },
        &wait,
    );
    output.expect_error("DEL while the state lock is held", 11);
    drop(holder);
    assert_eq!(NodeState::of(&node, DEFAULT_NETWORK), before);
}
