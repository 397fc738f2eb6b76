//! CHECK finds each thing ADD made that has since gone, and says which
//! (code 112); it needs the `prevResult` a runtime caches.

use std::{collections::BTreeSet, net::IpAddr};

use cni_ebpf_tests::{
    Family, Netns, Node, Pod,
    node::DEFAULT_NETWORK,
    spec::{Sandbox, delete_endpoint_entry, endpoint_slot_v4, write_endpoint_slot_v4},
    traffic::ping,
};

/// Damages one IPv4 attachment with `damage`, then expects CHECK to fail
/// with 112 and a message containing every one of `words` (`{host}`,
/// `{ip}`, `{cidr}` and `{default}` stand for the attachment's own).
fn assert_check_finds<R>(what: &str, damage: impl Fn(&Node, &Pod<'_>) -> R, words: &[&str]) {
    assert_check_finds_in(Family::V4, what, damage, words);
}

/// [`assert_check_finds`] with a pod of `family`; a dual-stack pod whose
/// `family` side is damaged must fail the same way.
fn assert_check_finds_in<R>(
    family: Family,
    what: &str,
    damage: impl Fn(&Node, &Pod<'_>) -> R,
    words: &[&str],
) {
    for dual_stack in [false, true] {
        let node = Node::new();
        let conf = if dual_stack {
            node.conf().dual_stack().build()
        } else {
            node.conf().family(family).build()
        };
        let pod = node.add_pod_with(conf);
        let what = format!("{what} ({family:?}, dual stack: {dual_stack})");
        pod.check("1.0.0").expect_success("CHECK before the damage");
        damage(&node, &pod);
        let output = pod.check("1.0.0");
        let msg = output.expect_error(&format!("CHECK after {what}"), 112);
        let ip = pod.addr(family);
        let cidr = format!("{ip}/{}", pod.prefix_len_of(family));
        for word in words {
            let word = word
                .replace("{host}", &pod.host_ifname())
                .replace("{ip}", &ip.to_string())
                .replace("{cidr}", &cidr)
                .replace("{default}", family.default_route());
            assert!(msg.contains(&word), "{what}: {word:?} not in {msg:?}");
        }
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
    for family in Family::ALL {
        assert_check_finds_in(
            family,
            "removing the pod's address",
            |_, pod| {
                let cidr = format!("{}/{}", pod.addr(family), pod.prefix_len_of(family));
                pod.netns().ip(&["addr", "del", &cidr, "dev", "eth0"]);
            },
            &["address", "{cidr}", "missing", "eth0"],
        );
    }
}

#[test]
fn check_finds_the_default_route_removed() {
    for family in Family::ALL {
        assert_check_finds_in(
            family,
            "removing the pod's default route",
            |_, pod| pod.netns().ip(&[family.flag(), "route", "del", "default"]),
            &["route", "{default}", "missing"],
        );
    }
}

#[test]
fn check_finds_the_endpoint_entry_removed() {
    for family in Family::ALL {
        assert_check_finds_in(
            family,
            "deleting the endpoint map entry",
            |node, pod| {
                let ip = pod.addr(family);
                delete_endpoint_entry(node, ip);
                assert!(
                    !node.endpoint_ips().contains(&ip.to_string()),
                    "bpftool did not delete the entry"
                );
            },
            &["endpoint", "{ip}"],
        );
    }
}

/// The copy of the entry that the IPv4 paths read first (`ENDPOINTS_V4`)
/// pointing at another interface, its record intact.
#[test]
fn check_finds_a_stale_endpoint_slot() {
    assert_check_finds(
        "pointing the endpoint's slot at another interface",
        |node, pod| {
            let mut slot = endpoint_slot_v4(node, pod.ip());
            assert_eq!(slot[0], 1, "the pod's slot is not live");
            slot[8] = slot[8].wrapping_add(100);
            write_endpoint_slot_v4(node, pod.ip(), &slot);
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
    for family in Family::ALL {
        assert_check_finds_in(
            family,
            "removing the IPAM file",
            |node, pod| {
                std::fs::remove_file(node.ipam_file(DEFAULT_NETWORK, pod.addr(family)))
                    .expect("removing the IPAM file");
            },
            &["{ip}", "not reserved"],
        );
    }
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
