//! Invalid `CNI_*` variables and taken names: the spec's error object with
//! the right code, a message naming what is wrong, and nothing left behind.

use cni_ebpf_tests::{
    CniRequest, Node,
    node::DEFAULT_NETWORK,
    spec::{Footprint, Sandbox, addresses},
};

use crate::pod_links;

/// A node whose datapath is loaded (one pod), so that its maps can be
/// compared before and after a failing call.
fn loaded_node() -> Node {
    let node = Node::new();
    {
        let mut first = Sandbox::new(&node);
        first.add_ok(&node.conf().build());
        first.del().expect_success("DEL of the first pod");
    }
    node
}

/// Panics unless `output` failed with `code` and its message contains
/// every one of `words`; then checks the node is as `before`.
fn assert_refused(
    node: &Node,
    before: &Footprint,
    output: &cni_ebpf_tests::CniOutput,
    what: &str,
    code: u64,
    words: &[&str],
) {
    let msg = output.expect_error(what, code);
    for word in words {
        assert!(msg.contains(word), "{what}: {word:?} not in {msg:?}");
    }
    assert_eq!(
        &Footprint::of(node, DEFAULT_NETWORK),
        before,
        "{what} left state behind"
    );
}

#[test]
fn unknown_cni_args_key_without_ignore_unknown_is_code_4() {
    let node = loaded_node();
    let before = Footprint::of(&node, DEFAULT_NETWORK);
    let conf = node.conf().build();

    let mut sandbox = Sandbox::new(&node).args("K8S_POD_NAME=web-0;FROBNICATE=yes");
    let output = sandbox.add(&conf);
    assert_refused(
        &node,
        &before,
        &output,
        "ADD with an unknown CNI_ARGS key",
        4,
        &["FROBNICATE", "IgnoreUnknown"],
    );
    assert_eq!(pod_links(sandbox.netns()), Vec::<String>::new());

    // The same key is fine once the runtime says others may be unknown.
    let mut sandbox = Sandbox::new(&node).args("K8S_POD_NAME=web-0;FROBNICATE=yes;IgnoreUnknown=1");
    sandbox.add_ok(&conf);
    sandbox.check().expect_success("CHECK with IgnoreUnknown");
}

#[test]
fn invalid_container_id_is_code_4_naming_it() {
    let node = loaded_node();
    let before = Footprint::of(&node, DEFAULT_NETWORK);
    let conf = node.conf().build();
    for id in ["bad/id", "-leading-dash", "has space"] {
        let mut sandbox = Sandbox::new(&node).container_id(id);
        let output = sandbox.add(&conf);
        assert_refused(
            &node,
            &before,
            &output,
            &format!("ADD with CNI_CONTAINERID {id:?}"),
            4,
            &["CNI_CONTAINERID", id],
        );
        assert_eq!(pod_links(sandbox.netns()), Vec::<String>::new());
    }
}

#[test]
fn invalid_ifname_is_code_4_naming_it() {
    let node = loaded_node();
    let before = Footprint::of(&node, DEFAULT_NETWORK);
    let conf = node.conf().build();
    for ifname in ["sixteen-chars-xx", "a/b", "eth:0", "..", "has space"] {
        let mut sandbox = Sandbox::new(&node).ifname(ifname);
        let output = sandbox.add(&conf);
        assert_refused(
            &node,
            &before,
            &output,
            &format!("ADD with CNI_IFNAME {ifname:?}"),
            4,
            &["CNI_IFNAME", ifname],
        );
        assert_eq!(pod_links(sandbox.netns()), Vec::<String>::new());
    }
}

#[test]
fn netns_that_is_not_a_namespace_is_code_4() {
    let node = loaded_node();
    let before = Footprint::of(&node, DEFAULT_NETWORK);
    let conf = node.conf().build().to_string();
    let not_netns = node.dir().join("not-a-netns");
    std::fs::write(&not_netns, b"").unwrap();
    for path in [std::path::Path::new("/tmp"), &not_netns] {
        let output = node.cni(&CniRequest {
            command: "ADD",
            container_id: &cni_ebpf_tests::names::unique("cnispec"),
            netns: Some(path),
            ifname: "eth0",
            args: None,
            stdin: conf.as_bytes(),
        });
        assert_refused(
            &node,
            &before,
            &output,
            &format!("ADD with CNI_NETNS {}", path.display()),
            4,
            &["CNI_NETNS", &path.to_string_lossy()],
        );
    }
}

#[test]
fn add_of_an_interface_name_taken_in_the_pod_is_code_111() {
    let node = loaded_node();
    let before = Footprint::of(&node, DEFAULT_NETWORK);
    let conf = node.conf().build();

    let mut sandbox = Sandbox::new(&node).ifname("net1");
    sandbox.netns().ip(&[
        "link", "add", "net1", "type", "veth", "peer", "name", "net1peer",
    ]);
    let output = sandbox.add(&conf);
    assert_refused(
        &node,
        &before,
        &output,
        "ADD onto an existing net1",
        111,
        &["net1"],
    );
    // The pod's own net1 is untouched: no address, still a veth.
    let mut links = pod_links(sandbox.netns());
    links.sort();
    assert_eq!(links, ["net1", "net1peer"]);
    assert_eq!(addresses(sandbox.netns(), "net1"), Vec::<String>::new());
    let kind = cni_ebpf_tests::links::list(sandbox.netns())
        .into_iter()
        .find(|l| l.name == "net1")
        .and_then(|l| l.kind);
    assert_eq!(kind.as_deref(), Some("veth"));
}

#[test]
fn del_of_an_attachment_never_added_succeeds_and_touches_nothing() {
    let node = loaded_node();
    let mut sandbox = Sandbox::new(&node);
    sandbox.add_ok(&node.conf().build());
    let before = Footprint::of(&node, DEFAULT_NETWORK);
    let stdin = node.conf().build().to_string();
    // Same container, another interface; then another container entirely.
    for (container_id, ifname) in [(sandbox.id(), "net1"), ("never-added", "eth0")] {
        let output = node.cni(&CniRequest {
            command: "DEL",
            container_id,
            netns: Some(sandbox.netns().path()),
            ifname,
            args: None,
            stdin: stdin.as_bytes(),
        });
        output.expect_success(&format!("DEL of {container_id}/{ifname}"));
        assert_eq!(Footprint::of(&node, DEFAULT_NETWORK), before);
    }
    sandbox
        .check()
        .expect_success("CHECK of the real attachment");
}
