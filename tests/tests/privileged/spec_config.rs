//! What a runtime may put in the config and `CNI_ARGS`: unknown keys are
//! tolerated, requested addresses and MACs are honoured from every place
//! the conventions define, and a taken address is refused.

use std::net::{IpAddr, Ipv4Addr};

use cni_ebpf_tests::{
    Node,
    node::DEFAULT_NETWORK,
    spec::{Footprint, Sandbox, addresses, link},
    traffic::ping,
};
use serde_json::{Value, json};

/// The pod got exactly `ip` and `mac`, and the node's state agrees.
fn assert_attached_as(node: &Node, sandbox: &Sandbox<'_>, ip: Ipv4Addr, mac: Option<&str>) {
    let result = sandbox.result();
    assert_eq!(
        result["ips"][0]["address"],
        format!("{ip}/24"),
        "the requested address was not used: {result}"
    );
    assert_eq!(addresses(sandbox.netns(), "eth0"), [format!("{ip}/24")]);
    let file = node.ipam_file(DEFAULT_NETWORK, IpAddr::V4(ip));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap_or_default(),
        format!("{}\r\neth0", sandbox.id()),
        "{}",
        file.display()
    );
    let endpoint = node
        .endpoints()
        .into_iter()
        .find(|e| e["ip"] == ip.to_string())
        .unwrap_or_else(|| panic!("no endpoint for {ip}: {:?}", node.endpoints()));
    if let Some(mac) = mac {
        assert_eq!(result["interfaces"][1]["mac"], mac, "{result}");
        assert_eq!(link(sandbox.netns(), "eth0")["address"], mac);
        assert_eq!(
            endpoint["podMac"]
                .as_str()
                .map(str::to_lowercase)
                .as_deref(),
            Some(mac),
            "{endpoint}"
        );
    }
    sandbox.check().expect_success("CHECK");
}

#[test]
fn unknown_config_keys_are_tolerated() {
    let node = Node::new();
    let mut conf = node.conf().build();
    conf["someVendorKey"] = json!({ "nested": [1, 2, 3] });
    conf["capabilities"] = json!({ "ips": true, "mac": true, "portMappings": true });
    conf["runtimeConfig"] = json!({ "portMappings": [], "bandwidth": {}, "futureThing": "x" });
    conf["ipam"]["somethingNew"] = json!(true);
    conf["args"] = json!({ "other": { "labels": [] } });
    let peer = node.add_pod();
    let mut sandbox = Sandbox::new(&node);
    sandbox.add_ok(&conf);
    sandbox.check().expect_success("CHECK with unknown keys");
    assert!(ping(sandbox.netns(), IpAddr::V4(peer.ip()), 1));
    sandbox.del().expect_success("DEL with unknown keys");
    assert_eq!(node.ipam_reservations(DEFAULT_NETWORK).len(), 1);
}

#[test]
fn runtime_config_ips_and_mac_are_applied() {
    let node = Node::new();
    let ip = Ipv4Addr::new(10, 244, 1, 77);
    let mac = "0a:58:0a:f4:01:4d";
    let mut conf = node.conf().build();
    conf["capabilities"] = json!({ "ips": true, "mac": true });
    conf["runtimeConfig"] = json!({ "ips": [format!("{ip}/24")], "mac": mac });
    let mut sandbox = Sandbox::new(&node);
    sandbox.add_ok(&conf);
    assert_attached_as(&node, &sandbox, ip, Some(mac));

    // Traffic to and from the chosen address flows.
    let peer = node.add_pod();
    assert!(ping(peer.netns(), IpAddr::V4(ip), 1));
}

#[test]
fn args_cni_ips_is_applied() {
    let node = Node::new();
    let ip = Ipv4Addr::new(10, 244, 1, 78);
    let mut conf = node.conf().build();
    conf["args"] = json!({ "cni": { "ips": [ip.to_string()] } });
    let mut sandbox = Sandbox::new(&node);
    sandbox.add_ok(&conf);
    assert_attached_as(&node, &sandbox, ip, None);
}

#[test]
fn cni_args_ip_mac_and_kubernetes_keys_are_accepted() {
    let node = Node::new();
    let conf = node.conf().build();

    // What kubelet's runtimes send, without IgnoreUnknown: all known keys.
    let kubelet = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                   K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=8a8b8c8d-1111-2222-3333-444455556666";
    let mut plain = Sandbox::new(&node).args(kubelet);
    plain.add_ok(&conf);
    plain.check().expect_success("CHECK with the kubelet keys");

    let ip = Ipv4Addr::new(10, 244, 1, 79);
    let mac = "0a:58:0a:f4:01:4f";
    let mut sandbox = Sandbox::new(&node).args(&format!(
        "IgnoreUnknown=1;{kubelet};IP={ip};MAC={mac};Extra=1"
    ));
    sandbox.add_ok(&conf);
    assert_attached_as(&node, &sandbox, ip, Some(mac));
    assert!(ping(plain.netns(), IpAddr::V4(ip), 1));

    sandbox.del().expect_success("DEL with CNI_ARGS");
    assert!(!node.ipam_file(DEFAULT_NETWORK, IpAddr::V4(ip)).exists());
}

#[test]
fn requested_address_that_is_taken_is_code_111() {
    let node = Node::new();
    let ip = Ipv4Addr::new(10, 244, 1, 80);
    let mut conf = node.conf().build();
    conf["runtimeConfig"] = json!({ "ips": [ip.to_string()] });
    let mut first = Sandbox::new(&node);
    first.add_ok(&conf);
    let before = Footprint::of(&node, DEFAULT_NETWORK);

    for (how, args) in [
        ("runtimeConfig.ips", None),
        ("CNI_ARGS IP=", Some(format!("IP={ip}"))),
    ] {
        let mut sandbox = Sandbox::new(&node);
        let mut conf = node.conf().build();
        if let Some(args) = &args {
            sandbox = sandbox.args(args);
        } else {
            conf["runtimeConfig"] = json!({ "ips": [ip.to_string()] });
        }
        let output = sandbox.add(&conf);
        let msg = output.expect_error(&format!("ADD of a taken address by {how}"), 111);
        assert!(msg.contains(&ip.to_string()), "{msg}");
        assert_eq!(
            Footprint::of(&node, DEFAULT_NETWORK),
            before,
            "the refused ADD ({how}) left state behind"
        );
    }
    // The holder is undisturbed.
    assert_eq!(
        std::fs::read_to_string(node.ipam_file(DEFAULT_NETWORK, IpAddr::V4(ip))).unwrap(),
        format!("{}\r\neth0", first.id())
    );
    first.check().expect_success("CHECK of the holder");
}

#[test]
fn requested_address_outside_every_range_is_code_7() {
    let node = Node::new();
    let mut conf = node.conf().build();
    conf["runtimeConfig"] = json!({ "ips": ["10.99.0.5/24"] });
    let mut sandbox = Sandbox::new(&node);
    let msg = sandbox
        .add(&conf)
        .expect_error("ADD of an address outside the ranges", 7);
    assert!(msg.contains("10.99.0.5"), "{msg}");
    assert!(node.ipam_reservations(DEFAULT_NETWORK).is_empty());
    assert_eq!(crate::pod_links(sandbox.netns()), Vec::<String>::new());
}

#[test]
fn malformed_runtime_config_is_code_7_naming_the_field() {
    let node = Node::new();
    let cases: [(&str, Value); 2] = [
        ("runtimeConfig.mac", json!({ "mac": "not-a-mac" })),
        ("runtimeConfig.ips", json!({ "ips": ["10.244.1.300"] })),
    ];
    for (field, runtime) in cases {
        let mut conf = node.conf().build();
        conf["runtimeConfig"] = runtime;
        let mut sandbox = Sandbox::new(&node);
        let msg = sandbox.add(&conf).expect_error(field, 7);
        assert!(msg.contains(field), "{field} not named: {msg}");
        assert_eq!(crate::pod_links(sandbox.netns()), Vec::<String>::new());
    }
}

/// A second network in the same pod (what Multus does), configured with no
/// routes of its own.
#[test]
fn second_network_in_the_same_pod() {
    let node = Node::new();
    let peer = node.add_pod();
    let mut primary = Sandbox::new(&node);
    primary.add_ok(&node.conf().build());
    let mut secondary = node
        .conf()
        .name("secondnet")
        .subnet("10.244.2.0/24")
        .build();
    secondary["ipam"]["routes"] = json!([]);
    let stdin = secondary.to_string();
    let request = |command| cni_ebpf_tests::CniRequest {
        command,
        container_id: primary.id(),
        netns: Some(primary.netns().path()),
        ifname: "net1",
        args: None,
        stdin: stdin.as_bytes(),
    };
    let result = node
        .cni(&request("ADD"))
        .expect_result("ADD of net1")
        .clone();
    assert_eq!(
        addresses(primary.netns(), "net1"),
        [result["ips"][0]["address"].as_str().unwrap()]
    );
    primary.check().expect_success("CHECK of eth0 next to net1");
    assert!(ping(primary.netns(), IpAddr::V4(peer.ip()), 1));
    node.cni(&request("DEL")).expect_success("DEL of net1");
    assert_eq!(crate::pod_links(primary.netns()), ["eth0"]);
    primary
        .check()
        .expect_success("CHECK of eth0 after net1 is gone");
}
