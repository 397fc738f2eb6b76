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
