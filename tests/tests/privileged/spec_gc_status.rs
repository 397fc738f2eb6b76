//! GC and STATUS (1.1.0). GC removes every attachment of the network that
//! the runtime does not list, with all it holds, and keeps the listed ones
//! working; STATUS says whether ADD can be served (50) and whether existing
//! pods lost their datapath state (51).

use std::{collections::BTreeSet, net::IpAddr};

use cni_ebpf_tests::{
    CniOutput, CniRequest, Node,
    node::DEFAULT_NETWORK,
    spec::{
        Footprint, Sandbox, delete_endpoint_entry, host_veths, link_pins, records, run_reference,
    },
    traffic::ping,
};
use serde_json::{Value, json};

const OTHER_NETWORK: &str = "othernet";

/// A call about the whole network (GC, STATUS): no attachment variables.
fn network_call(node: &Node, command: &str, conf: &Value) -> CniOutput {
    let stdin = conf.to_string();
    node.cni(&CniRequest {
        command,
        container_id: "",
        netns: None,
        ifname: "",
        args: None,
        stdin: stdin.as_bytes(),
    })
}

fn host_of(sandbox: &Sandbox<'_>) -> String {
    sandbox.result()["interfaces"][0]["name"]
        .as_str()
        .expect("host interface")
        .to_string()
}

fn set<const N: usize>(items: [String; N]) -> BTreeSet<String> {
    items.into_iter().collect()
}

#[test]
fn gc_removes_unlisted_attachments_and_keeps_listed_ones() {
    let node = Node::new();
    // tcx mode, so that link pins exist to be collected too.
    let mut conf = node.conf().cni_version("1.1.0").build();
    conf["attachMode"] = json!("tcx");
    let mut other = node
        .conf()
        .cni_version("1.1.0")
        .name(OTHER_NETWORK)
        .subnet("10.244.2.0/24")
        .build();
    other["attachMode"] = json!("tcx");

    let mut kept = Sandbox::new(&node);
    kept.add_ok(&conf);
    let mut gone: Vec<Sandbox<'_>> = (0..2).map(|_| Sandbox::new(&node)).collect();
    for sandbox in &mut gone {
        sandbox.add_ok(&conf);
    }
    let mut neighbour = Sandbox::new(&node);
    neighbour.add_ok(&other);
    let all_pins = link_pins(&node);
    assert_eq!(all_pins.len(), 4, "tcx pins: {all_pins:?}");

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        { "containerID": kept.id(), "ifname": "eth0" },
        // Listed but unknown: nothing to keep, nothing to fail on.
        { "containerID": "long-gone", "ifname": "eth0" },
    ]);
    network_call(&node, "GC", &gc).expect_success("GC");

    let survivors = [host_of(&kept), host_of(&neighbour)];
    assert_eq!(host_veths(&node), set(survivors.clone()), "host veths");
    assert_eq!(link_pins(&node), set(survivors), "link pins");
    assert_eq!(
        node.endpoint_ips(),
        set([kept.ip().to_string(), neighbour.ip().to_string()]),
        "endpoints"
    );
    assert_eq!(
        node.ipam_reservations(DEFAULT_NETWORK),
        BTreeSet::from([IpAddr::V4(kept.ip())]),
        "reservations"
    );
    assert_eq!(
        records(&node, DEFAULT_NETWORK),
        set([format!("{}-eth0", kept.id())]),
        "records"
    );
    for sandbox in &gone {
        assert_eq!(
            crate::pod_links(sandbox.netns()),
            Vec::<String>::new(),
            "{} still has its interface",
            sandbox.id()
        );
    }
    // The other network is not GC'd by this network's GC.
    assert_eq!(
        node.ipam_reservations(OTHER_NETWORK),
        BTreeSet::from([IpAddr::V4(neighbour.ip())])
    );
    assert_eq!(
        records(&node, OTHER_NETWORK),
        set([format!("{}-eth0", neighbour.id())])
    );

    // The kept attachments still work and still pass CHECK.
    kept.check().expect_success("CHECK of the kept attachment");
    neighbour
        .check()
        .expect_success("CHECK of the other network's");
    assert!(ping(kept.netns(), IpAddr::V4(neighbour.ip()), 2));
    assert!(ping(neighbour.netns(), IpAddr::V4(kept.ip()), 1));

    // GC is idempotent, and a runtime's later DEL of a collected one is fine.
    network_call(&node, "GC", &gc).expect_success("second GC");
    for sandbox in &mut gone {
        sandbox.del().expect_success("DEL after GC");
    }
    assert_eq!(
        Footprint::of(&node, DEFAULT_NETWORK).reservations,
        BTreeSet::from([IpAddr::V4(kept.ip())])
    );
}

#[test]
fn gc_with_the_older_key_also_collects_orphans() {
    let node = Node::new();
    let conf = node.conf().cni_version("1.1.0").build();
    let mut pods: Vec<Sandbox<'_>> = (0..2).map(|_| Sandbox::new(&node)).collect();
    for sandbox in &mut pods {
        sandbox.add_ok(&conf);
    }
    // An ADD that died before its record: a host veth and nothing else.
    node.netns().ip(&[
        "link",
        "add",
        "ce00aa11bb22cc",
        "type",
        "veth",
        "peer",
        "name",
        "orphanpeer",
    ]);
    // A name outside the plugin's pattern is not its to remove.
    node.netns().ip(&[
        "link",
        "add",
        "cevendor0",
        "type",
        "veth",
        "peer",
        "name",
        "vendorpeer",
    ]);
    // A reservation made by the reference host-local with no attachment.
    let ipam_only = json!({
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK,
        "type": "ipam-only",
        "ipam": conf["ipam"],
    })
    .to_string();
    let reference = run_reference(
        node.netns(),
        "host-local",
        &CniRequest {
            command: "ADD",
            container_id: "reference-only",
            netns: Some(node.netns().path()),
            ifname: "eth0",
            args: None,
            stdin: ipam_only.as_bytes(),
        },
    );
    let reference_ip =
        cni_ebpf_tests::spec::result_ip(reference.expect_result("host-local ADD"), 0);
    assert_eq!(node.ipam_reservations(DEFAULT_NETWORK).len(), 3);

    let mut gc = conf.clone();
    gc["cni.dev/attachments"] = json!([{ "containerID": pods[0].id(), "ifname": "eth0" }]);
    network_call(&node, "GC", &gc).expect_success("GC with cni.dev/attachments");

    assert_eq!(host_veths(&node), set([host_of(&pods[0])]));
    assert!(
        node.links().contains(&"cevendor0".to_string()),
        "GC removed a link that is not the plugin's"
    );
    assert!(!node.links().contains(&"orphanpeer".to_string()));
    assert_eq!(
        node.ipam_reservations(DEFAULT_NETWORK),
        BTreeSet::from([IpAddr::V4(pods[0].ip())]),
        "the reference's {reference_ip} or pod 1's reservation was kept"
    );
    assert_eq!(node.endpoint_ips(), set([pods[0].ip().to_string()]));
    pods[0].check().expect_success("CHECK of the kept pod");
}

#[test]
fn gc_without_the_list_is_code_7_and_removes_nothing() {
    let node = Node::new();
    let conf = node.conf().cni_version("1.1.0").build();
    let mut sandbox = Sandbox::new(&node);
    sandbox.add_ok(&conf);
    let before = Footprint::of(&node, DEFAULT_NETWORK);

    let msg = network_call(&node, "GC", &conf).expect_error("GC without the list", 7);
    assert!(msg.contains("cni.dev/valid-attachments"), "{msg}");
    let mut bad = conf.clone();
    bad["cni.dev/valid-attachments"] = json!([{ "containerID": sandbox.id() }]);
    let msg = network_call(&node, "GC", &bad).expect_error("GC with an entry without ifname", 7);
    assert!(msg.contains("ifname"), "{msg}");

    assert_eq!(Footprint::of(&node, DEFAULT_NETWORK), before);
    sandbox
        .check()
        .expect_success("CHECK after the refused GCs");
}

#[test]
fn gc_with_an_empty_list_empties_the_network() {
    let node = Node::new();
    // Three addresses, all taken: only GC can make room.
    let conf = node
        .conf()
        .cni_version("1.1.0")
        .range("10.244.1.10", "10.244.1.12")
        .build();
    let mut pods: Vec<Sandbox<'_>> = (0..3).map(|_| Sandbox::new(&node)).collect();
    for sandbox in &mut pods {
        sandbox.add_ok(&conf);
    }
    Sandbox::new(&node)
        .add(&conf)
        .expect_error("ADD into the full range", 110);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    network_call(&node, "GC", &gc).expect_success("GC");
    let footprint = Footprint::of(&node, DEFAULT_NETWORK);
    assert!(footprint.host_veths.is_empty(), "{footprint:?}");
    assert!(footprint.reservations.is_empty(), "{footprint:?}");
    assert!(footprint.endpoints.is_empty(), "{footprint:?}");
    assert!(footprint.records.is_empty(), "{footprint:?}");
    let mut again = Sandbox::new(&node);
    again.add_ok(&conf);
    assert!(pods.iter().any(|p| p.ip() == again.ip()), "{}", again.ip());
}

#[test]
fn status_succeeds_on_a_fresh_and_on_a_busy_node() {
    let node = Node::new();
    let conf = node.conf().cni_version("1.1.0").build();
    let output = network_call(&node, "STATUS", &conf);
    output.expect_success("STATUS on a fresh node");
    assert!(output.stdout.trim().is_empty(), "{}", output.stdout);
    let _pods = [
        node.add_pod_with(conf.clone()),
        node.add_pod_with(conf.clone()),
    ];
    network_call(&node, "STATUS", &conf).expect_success("STATUS with pods");
}

#[test]
fn status_is_50_when_the_datapath_cannot_load() {
    let node = Node::new();
    let mut conf = node.conf().cni_version("1.1.0").build();
    conf["bpffsRoot"] = json!(node.dir().join("not-bpffs"));
    let output = network_call(&node, "STATUS", &conf);
    let msg = output.expect_error("STATUS with bpffsRoot off bpffs", 50);
    assert!(msg.contains("cannot serve ADD"), "{msg}");
    let details = output.json.as_ref().unwrap()["details"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        msg.to_lowercase().contains("bpf") || details.contains("bpf"),
        "neither message nor details say bpffs: {msg} / {details}"
    );
    // ...and ADD indeed cannot be served.
    let mut sandbox = Sandbox::new(&node);
    sandbox.add(&conf).expect_error("ADD off bpffs", 100);
}

#[test]
fn status_is_51_when_pods_lost_their_endpoint_entries() {
    let node = Node::new();
    let conf = node.conf().cni_version("1.1.0").build();
    let mut pods: Vec<Sandbox<'_>> = (0..2).map(|_| Sandbox::new(&node)).collect();
    for sandbox in &mut pods {
        sandbox.add_ok(&conf);
    }
    network_call(&node, "STATUS", &conf).expect_success("STATUS before");

    delete_endpoint_entry(&node, pods[1].ip());
    let msg = network_call(&node, "STATUS", &conf).expect_error("STATUS after", 51);
    assert!(msg.contains("1 pod address"), "{msg}");
    assert!(msg.contains("endpoints map"), "{msg}");

    // Once the lost pod is gone, the node is healthy again.
    pods[1].del().expect_success("DEL of the damaged pod");
    network_call(&node, "STATUS", &conf).expect_success("STATUS after DEL");
}

#[test]
fn status_is_51_when_the_maps_are_gone() {
    let node = Node::new();
    let conf = node.conf().cni_version("1.1.0").build();
    let mut sandbox = Sandbox::new(&node);
    sandbox.add_ok(&conf);
    // What a bpffs remount or an overzealous cleanup does.
    std::fs::remove_file(cni_ebpf_tests::spec::endpoints_map(&node)).unwrap();
    let msg = network_call(&node, "STATUS", &conf).expect_error("STATUS without maps", 51);
    assert!(msg.contains("1 existing attachment"), "{msg}");
}

/// The addresses of a result, without prefix.
fn result_addresses(result: &Value) -> BTreeSet<IpAddr> {
    result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

#[test]
fn gc_of_dual_stack_pods_releases_both_families() {
    let node = Node::new();
    let conf = node.conf().cni_version("1.1.0").dual_stack().build();
    let mut kept = Sandbox::new(&node);
    kept.add_ok(&conf);
    let mut gone = Sandbox::new(&node);
    gone.add_ok(&conf);
    let kept_ips = result_addresses(kept.result());
    assert_eq!(kept_ips.len(), 2, "{}", kept.result());
    // The kept pod's entries: its two addresses and its link-local key.
    let endpoints = node.endpoints();
    let owner = &endpoints
        .iter()
        .find(|e| e["ip"] == kept.ip().to_string())
        .expect("the kept pod's endpoint")["owner"];
    let kept_keys: BTreeSet<String> = endpoints
        .iter()
        .filter(|e| e["owner"] == *owner)
        .filter_map(|e| Some(e["ip"].as_str()?.to_string()))
        .collect();
    assert_eq!(kept_keys.len(), 3, "{kept_keys:?}");
    assert_eq!(node.endpoint_ips().len(), 6, "{endpoints:?}");

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": kept.id(), "ifname": "eth0" }]);
    network_call(&node, "GC", &gc).expect_success("GC");
    assert_eq!(node.ipam_reservations(DEFAULT_NETWORK), kept_ips);
    assert_eq!(node.endpoint_ips(), kept_keys, "{:?}", node.endpoints());
    assert_eq!(host_veths(&node), set([host_of(&kept)]), "host veths");
}
