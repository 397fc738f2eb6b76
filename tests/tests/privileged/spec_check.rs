//! CHECK finds each thing ADD made that has since gone, and says which
//! (code 112); it needs the `prevResult` a runtime caches.

use std::{collections::BTreeSet, net::IpAddr};

use cni_ebpf_tests::{
    Netns, Node, Pod,
    node::DEFAULT_NETWORK,
    spec::{Sandbox, delete_endpoint_entry},
    traffic::ping,
};

/// Damages one attachment with `damage`, then expects CHECK to fail with
/// 112 and a message containing every one of `words` (`{host}`, `{ip}` and
/// `{cidr}` stand for the attachment's own).
fn assert_check_finds<R>(what: &str, damage: impl FnOnce(&Node, &Pod<'_>) -> R, words: &[&str]) {
    let node = Node::new();
    let pod = node.add_pod();
    pod.check("1.0.0").expect_success("CHECK before the damage");
    damage(&node, &pod);
    let output = pod.check("1.0.0");
    let msg = output.expect_error(&format!("CHECK after {what}"), 112);
    let cidr = format!("{}/{}", pod.ip(), pod.prefix_len());
    for word in words {
        let word = word
            .replace("{host}", &pod.host_ifname())
            .replace("{ip}", &pod.ip().to_string())
            .replace("{cidr}", &cidr);
        assert!(msg.contains(&word), "{what}: {word:?} not in {msg:?}");
    }
}

#[test]
fn check_finds_the_host_veth_gone() {
    assert_check_finds(
        "deleting the host veth",
        |node, pod| node.netns().ip(&["link", "del", &pod.host_ifname()]),
        &["host veth", "{host}", "missing"],
    );
}

#[test]
fn check_finds_the_pod_interface_down() {
    assert_check_finds(
        "setting eth0 down",
        |_, pod| pod.netns().ip(&["link", "set", "eth0", "down"]),
        &["eth0", "down"],
    );
}

#[test]
fn check_finds_the_pod_address_removed() {
    assert_check_finds(
        "removing the pod's address",
        |_, pod| {
            let cidr = format!("{}/{}", pod.ip(), pod.prefix_len());
            pod.netns().ip(&["addr", "del", &cidr, "dev", "eth0"]);
        },
        &["address", "{cidr}", "missing", "eth0"],
    );
}

#[test]
fn check_finds_the_default_route_removed() {
    assert_check_finds(
        "removing the pod's default route",
        |_, pod| pod.netns().ip(&["route", "del", "default"]),
        &["route", "0.0.0.0/0", "missing"],
    );
}

#[test]
fn check_finds_the_endpoint_entry_removed() {
    assert_check_finds(
        "deleting the endpoint map entry",
        |node, pod| {
            delete_endpoint_entry(node, pod.ip());
            assert!(
                !node.endpoint_ips().contains(&pod.ip().to_string()),
                "bpftool did not delete the entry"
            );
        },
        &["endpoint", "{ip}"],
    );
}

#[test]
fn check_finds_the_program_detached() {
    assert_check_finds(
        "deleting the tc filter",
        |node, pod| {
            node.netns().exec_ok(
                "tc",
                &["filter", "del", "dev", &pod.host_ifname(), "ingress"],
            );
        },
        &["from-pod program", "not attached", "{host}"],
    );
}

#[test]
fn check_finds_the_reservation_removed() {
    assert_check_finds(
        "removing the IPAM file",
        |node, pod| {
            std::fs::remove_file(node.ipam_file(DEFAULT_NETWORK, IpAddr::V4(pod.ip())))
                .expect("removing the IPAM file");
        },
        &["{ip}", "not reserved"],
    );
}

#[test]
fn check_finds_a_prev_result_address_it_never_assigned() {
    let node = Node::new();
    let pod = node.add_pod();
    let mut conf = pod.conf_with_prev_result("1.0.0");
    conf["prevResult"]["ips"][0]["address"] = "10.244.1.200/24".into();
    let msg = pod
        .call("CHECK", &conf)
        .expect_error("CHECK with a foreign prevResult", 112);
    assert!(msg.contains("10.244.1.200/24"), "{msg}");
}

#[test]
fn check_without_prev_result_is_refused_naming_it() {
    let node = Node::new();
    let pod = node.add_pod();
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let mut conf = pod.conf().clone();
        conf["cniVersion"] = version.into();
        let msg = pod
            .call("CHECK", &conf)
            .expect_error(&format!("CHECK {version} without prevResult"), 7);
        assert!(msg.contains("prevResult"), "{msg}");
    }
}

#[test]
fn check_of_an_attachment_never_added_is_code_112() {
    let node = Node::new();
    let pod = node.add_pod();
    // Another container in a namespace of its own, with the pod's result.
    let stranger = Netns::with_loopback("pod");
    let conf = pod.conf_with_prev_result("1.0.0").to_string();
    let output = node.cni(&cni_ebpf_tests::CniRequest {
        command: "CHECK",
        container_id: "never-added",
        netns: Some(stranger.path()),
        ifname: "eth0",
        args: None,
        stdin: conf.as_bytes(),
    });
    let msg = output.expect_error("CHECK of an unknown container", 112);
    assert!(msg.contains("never-added"), "{msg}");
}

#[test]
fn damage_that_check_reports_really_breaks_the_pod() {
    // CHECK's findings are not cosmetic: the same damage stops traffic.
    let node = Node::new();
    let peer = node.add_pod();
    let mut sandbox = Sandbox::new(&node);
    sandbox.add_ok(&node.conf().build());
    assert!(ping(peer.netns(), IpAddr::V4(sandbox.ip()), 1));
    delete_endpoint_entry(&node, sandbox.ip());
    assert!(
        !ping(peer.netns(), IpAddr::V4(sandbox.ip()), 2),
        "the pod is reachable without its endpoint entry"
    );
    sandbox
        .check()
        .expect_error("CHECK without the endpoint entry", 112);
    // DEL still cleans up what is left.
    let host = host_of(&sandbox);
    sandbox.del().expect_success("DEL after damage");
    assert!(!node.links().contains(&host));
    assert_eq!(
        node.ipam_reservations(DEFAULT_NETWORK),
        BTreeSet::from([IpAddr::V4(peer.ip())]),
        "only the peer's reservation is left"
    );
}

fn host_of(sandbox: &Sandbox<'_>) -> String {
    sandbox.result()["interfaces"][0]["name"]
        .as_str()
        .expect("host interface")
        .to_string()
}
