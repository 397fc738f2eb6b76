//! Spec versions: VERSION, and CHECK after ADD as a runtime sends it.

use cni_ebpf_tests::{CniRequest, Node};
use serde_json::json;

const VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

#[test]
fn version_lists_supported_versions() {
    let node = Node::new();
    for version in VERSIONS {
        let stdin = json!({ "cniVersion": version }).to_string();
        let output = node.cni(&CniRequest {
            command: "VERSION",
            container_id: "",
            netns: None,
            ifname: "",
            args: None,
            stdin: stdin.as_bytes(),
        });
        let result = output.expect_result("VERSION");
        let supported: Vec<&str> = result["supportedVersions"]
            .as_array()
            .unwrap_or_else(|| panic!("no supportedVersions: {result}"))
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for expected in VERSIONS {
            assert!(
                supported.contains(expected),
                "{expected} missing from {supported:?}"
            );
        }
    }
}

#[test]
fn add_result_and_check_in_each_version() {
    let node = Node::new();
    for version in VERSIONS {
        let pod = node.add_pod_with(node.conf().cni_version(version).build());
        assert_eq!(pod.result()["cniVersion"], *version, "{}", pod.result());
        let interfaces = pod.result()["interfaces"].as_array().expect("interfaces");
        assert_eq!(interfaces.len(), 2, "{}", pod.result());
        assert_eq!(interfaces[1]["name"], "eth0");
        assert_eq!(
            interfaces[1]["sandbox"],
            pod.netns().path().to_string_lossy().as_ref()
        );
        assert_eq!(pod.result()["ips"][0]["interface"], 1);
        pod.check(version)
            .expect_success(&format!("CHECK {version}"));
    }
}

#[test]
fn check_fails_when_the_pod_interface_is_gone() {
    let node = Node::new();
    let pod = node.add_pod();
    pod.check("1.0.0").expect_success("CHECK before damage");
    pod.netns().ip(&["link", "del", "eth0"]);
    let output = pod.check("1.0.0");
    assert!(
        !output.success(),
        "CHECK passed with eth0 deleted: {}",
        output.describe()
    );
    assert!(
        output.error_code().is_some(),
        "CHECK failed without an error object: {}",
        output.describe()
    );
}
