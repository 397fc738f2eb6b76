//! Every spec version the plugin claims, as a table: VERSION, the shape of
//! the ADD result, CHECK where the version has it, DEL, and code 1 for
//! versions and verbs it does not have.

use std::net::IpAddr;

use cni_ebpf_tests::{
    CniRequest, Netns, Node, names,
    node::DEFAULT_NETWORK,
    spec::{ALL_VERSIONS, Footprint, Sandbox, addresses, global_addresses, has_check},
    traffic::ping,
};
use serde_json::{Value, json};

use crate::pod_links;

fn version_call(node: &Node, stdin: &Value) -> Value {
    let stdin = stdin.to_string();
    node.cni(&CniRequest {
        command: "VERSION",
        container_id: "",
        netns: None,
        ifname: "",
        args: None,
        stdin: stdin.as_bytes(),
    })
    .expect_result("VERSION")
    .clone()
}

/// A call with no attachment (GC, STATUS).
fn network_call(node: &Node, command: &str, conf: &Value) -> cni_ebpf_tests::CniOutput {
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

#[test]
fn version_lists_all_five_and_answers_in_the_callers_version() {
    let node = Node::new();
    for version in ALL_VERSIONS {
        let result = version_call(&node, &json!({ "cniVersion": version }));
        assert_eq!(result["cniVersion"], *version, "{result}");
        assert_eq!(result["supportedVersions"], json!(ALL_VERSIONS), "{result}");
    }
    // Unknown or absent: the newest version answers.
    for stdin in [json!({ "cniVersion": "0.2.0" }), json!({})] {
        let result = version_call(&node, &stdin);
        assert_eq!(result["cniVersion"], "1.1.0", "{stdin} -> {result}");
        assert_eq!(result["supportedVersions"], json!(ALL_VERSIONS));
    }
}

#[test]
fn unsupported_cni_version_is_code_1_and_creates_nothing() {
    let node = Node::new();
    for version in ["0.1.0", "0.2.0", "1.0", "1.2.0", "2.0.0"] {
        let conf = node.conf().cni_version(version).build();
        let mut sandbox = Sandbox::new(&node);
        let output = sandbox.add(&conf);
        let msg = output.expect_error(&format!("ADD with cniVersion {version}"), 1);
        assert!(
            msg.contains(version) && msg.contains("1.1.0"),
            "the message names neither the version nor the supported ones: {msg}"
        );
        assert_eq!(pod_links(sandbox.netns()), Vec::<String>::new());
        assert!(node.ipam_reservations(DEFAULT_NETWORK).is_empty());
        assert!(
            !node.bpffs_root().join("maps").exists(),
            "a refused call loaded the datapath"
        );
    }
}

/// ADD, CHECK (0.4.0+) and DEL in each version, with the result checked
/// field by field against what the pod really got.
#[test]
fn add_check_del_in_every_version() {
    let node = Node::new();
    let peer = node.add_pod();
    let empty = Footprint::of(&node, DEFAULT_NETWORK);
    for version in ALL_VERSIONS {
        let conf = node.conf().cni_version(version).build();
        let mut sandbox = Sandbox::new(&node);
        let result = sandbox.add_ok(&conf);
        let ip = sandbox.ip();

        assert_eq!(result["cniVersion"], *version, "{result}");
        let interfaces = result["interfaces"].as_array().expect("interfaces");
        assert_eq!(interfaces.len(), 2, "{version}: {result}");
        assert!(interfaces[0].get("sandbox").is_none(), "{result}");
        assert_eq!(interfaces[1]["name"], "eth0", "{result}");
        assert_eq!(
            interfaces[1]["sandbox"],
            sandbox.netns().path().to_string_lossy().as_ref(),
            "{result}"
        );
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 1, "{result}");
        if version.starts_with("0.") {
            assert_eq!(
                ips[0]["version"], "4",
                "{version} needs ips[].version: {result}"
            );
        } else {
            assert!(
                ips[0].get("version").is_none(),
                "{version} has no ips[].version: {result}"
            );
        }
        assert_eq!(ips[0]["interface"], 1, "{result}");
        assert_eq!(ips[0]["gateway"], "10.244.1.1", "{result}");
        assert!(
            result["routes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["dst"] == "0.0.0.0/0")),
            "no default route: {result}"
        );
        assert!(result["dns"].is_object(), "{result}");

        // The result describes the pod as it is.
        let address = ips[0]["address"].as_str().unwrap();
        assert_eq!(addresses(sandbox.netns(), "eth0"), [address], "{version}");
        let pod_mac = cni_ebpf_tests::spec::link(sandbox.netns(), "eth0")["address"].clone();
        assert_eq!(interfaces[1]["mac"], pod_mac, "{version}");
        assert!(
            ping(sandbox.netns(), IpAddr::V4(peer.ip()), 1),
            "{version}: pod {ip} cannot reach its peer"
        );

        let check = sandbox.check();
        if has_check(version) {
            check.expect_success(&format!("CHECK {version}"));
        } else {
            let msg = check.expect_error(&format!("CHECK {version}"), 1);
            assert!(msg.contains("CHECK"), "{msg}");
            assert_eq!(
                check.json.as_ref().unwrap()["cniVersion"],
                *version,
                "errors are printed in the config's version"
            );
        }

        sandbox.del().expect_success(&format!("DEL {version}"));
        assert_eq!(
            Footprint::of(&node, DEFAULT_NETWORK),
            empty,
            "{version}: DEL left state behind"
        );
        assert_eq!(pod_links(sandbox.netns()), Vec::<String>::new());
    }
}

#[test]
fn gc_and_status_need_1_1_0() {
    let node = Node::new();
    let _pod = node.add_pod();
    let before = Footprint::of(&node, DEFAULT_NETWORK);
    for version in ALL_VERSIONS {
        let mut conf = node.conf().cni_version(version).build();
        conf["cni.dev/valid-attachments"] = json!([]);
        for command in ["GC", "STATUS"] {
            // GC with an empty list would remove the pod: STATUS only.
            if *version == "1.1.0" {
                if command == "STATUS" {
                    network_call(&node, command, &conf).expect_success("STATUS 1.1.0");
                }
                continue;
            }
            let output = network_call(&node, command, &conf);
            let msg = output.expect_error(&format!("{command} {version}"), 1);
            assert!(
                msg.contains(command) && msg.contains("1.1.0"),
                "{command} {version}: {msg}"
            );
        }
    }
    assert_eq!(
        Footprint::of(&node, DEFAULT_NETWORK),
        before,
        "a refused GC removed something"
    );
}

#[test]
fn del_in_an_older_version_than_add_cleans_up() {
    // A runtime upgraded between ADD and DEL may speak an older version to
    // an attachment, with the cached result converted.
    let node = Node::new();
    let conf = node.conf().cni_version("1.1.0").build();
    let mut sandbox = Sandbox::new(&node);
    sandbox.add_ok(&conf);
    let mut old = sandbox.conf_with_prev_result();
    old["cniVersion"] = json!("0.3.1");
    old["prevResult"]["cniVersion"] = json!("0.3.1");
    for ip in old["prevResult"]["ips"].as_array_mut().unwrap() {
        ip["version"] = json!("4");
    }
    sandbox.call("DEL", &old).expect_success("DEL 0.3.1");
    assert!(node.ipam_reservations(DEFAULT_NETWORK).is_empty());
    assert!(node.endpoint_ips().is_empty(), "{:?}", node.endpoints());
    assert_eq!(pod_links(sandbox.netns()), Vec::<String>::new());
    sandbox.del().expect_success("a second DEL in 1.1.0");
}

#[test]
fn errors_before_parsing_use_a_supported_version() {
    // An error about the environment is still printed in the config's
    // version when the config has a supported one.
    let node = Node::new();
    let netns = Netns::with_loopback("pod");
    let conf = node.conf().cni_version("0.4.0").build().to_string();
    let output = node.cni(&CniRequest {
        command: "ADD",
        container_id: &names::unique("cnispec"),
        netns: Some(netns.path()),
        ifname: "this-is-too-long0",
        args: None,
        stdin: conf.as_bytes(),
    });
    output.expect_error("ADD with a bad CNI_IFNAME", 4);
    assert_eq!(output.json.as_ref().unwrap()["cniVersion"], "0.4.0");
}

/// A dual-stack pod in each version: both families in `ips` (0.3.x with
/// `version` "4" and "6", later versions without it), a gateway and a
/// default route per family, both addresses held and reachable, CHECK
/// (0.4.0+) and DEL releasing both.
#[test]
fn dual_stack_add_check_del_in_every_version() {
    use cni_ebpf_tests::Family;
    let node = Node::new();
    let peer = node.add_pod_with(node.conf().dual_stack().build());
    let empty = Footprint::of(&node, DEFAULT_NETWORK);
    for version in ALL_VERSIONS {
        let conf = node.conf().dual_stack().cni_version(version).build();
        let mut sandbox = Sandbox::new(&node);
        let result = sandbox.add_ok(&conf).clone();
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2, "{version}: {result}");
        let mut families = Vec::new();
        for ip in ips {
            let address: IpAddr = ip["address"]
                .as_str()
                .and_then(|a| a.split('/').next()?.parse().ok())
                .unwrap_or_else(|| panic!("{version}: {result}"));
            let family = Family::of(address);
            families.push(family);
            if version.starts_with("0.") {
                assert_eq!(ip["version"], family.version(), "{version}: {result}");
            } else {
                assert!(ip.get("version").is_none(), "{version}: {result}");
            }
            let gateway: IpAddr = ip["gateway"]
                .as_str()
                .and_then(|g| g.parse().ok())
                .unwrap_or_else(|| panic!("{version}: no gateway in {result}"));
            assert_eq!(Family::of(gateway), family, "{version}: {result}");
            let routes = result["routes"].as_array().expect("routes");
            assert!(
                routes
                    .iter()
                    .any(|r| r["dst"] == family.default_route() && r["gw"] == gateway.to_string()),
                "{version}: no {} via {gateway}: {result}",
                family.default_route()
            );
            let held = global_addresses(sandbox.netns(), "eth0");
            assert!(
                held.contains(&ip["address"].as_str().unwrap().to_string()),
                "{version}: {held:?}"
            );
            assert!(
                ping(peer.netns(), address, 1),
                "{version}: {address} unreachable"
            );
        }
        assert_eq!(families, Family::ALL, "{version}: {result}");
        if has_check(version) {
            sandbox.check().expect_success(&format!("CHECK {version}"));
        }
        sandbox.del().expect_success(&format!("DEL {version}"));
        assert_eq!(Footprint::of(&node, DEFAULT_NETWORK), empty, "{version}");
    }
}
