//! containerd's CRI drives the plugin as kubelet does: pod sandboxes with a
//! hostPort and the `kubernetes.io/{ingress,egress}-bandwidth` annotations
//! come up through RunPodSandbox, their addresses come back in
//! PodSandboxStatus, they reach each other, the outside (masqueraded) and
//! are reached through the host port, the annotated limit holds from the
//! first second, a sandbox whose ADD fails leaves nothing (containerd sends
//! DEL after it), and StopPodSandbox + RemovePodSandbox leave nothing.
//!
//! One containerd for the whole scenario: starting it and importing the
//! sandbox image is most of the cost.

use std::{net::Ipv4Addr, time::Duration};

use cni_ebpf_tests::{
    Netns,
    containerd::Containerd,
    cri::{PROTOCOL_TCP, PodSandboxConfig, PortMapping},
    ext::{self, PeerClient, PeerServer},
    hostports::{at, published, sock},
    node::{DEFAULT_NETWORK, Node},
    spec::Footprint,
};
use serde_json::{Value, json};

use crate::bandwidth::{LIMIT_BITS, MARGIN, udp_flood};

const HOST_PORT: u16 = 30088;
const POD_PORT: u16 = 8080;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The conflist a node would hold: cni-ebpf alone, with the capabilities
/// declared and masquerade on; no `cgroupRoot` (containerd's mount
/// namespace has no cgroup v2, as a cgroup v1 node).
fn conflist(node: &Node) -> Value {
    let mut plugin = node.conf().build();
    let object = plugin.as_object_mut().unwrap();
    let version = object.remove("cniVersion").unwrap();
    let name = object.remove("name").unwrap();
    plugin["capabilities"] = json!({"portMappings": true, "bandwidth": true});
    plugin["ipMasq"] = json!(true);
    json!({"cniVersion": version, "name": name, "plugins": [plugin]})
}

fn with_host_port(mut config: PodSandboxConfig) -> PodSandboxConfig {
    config.port_mappings.push(PortMapping {
        protocol: PROTOCOL_TCP,
        container_port: i32::from(POD_PORT),
        host_port: i32::from(HOST_PORT),
        host_ip: String::new(),
    });
    config
}

/// Panics unless a TCP exchange from `from` to `dest` reaches `server`,
/// seen from `seen_ip`.
fn assert_tcp_reaches(
    server: &PeerServer,
    from: &Netns,
    dest: Ipv4Addr,
    port: u16,
    seen: Ipv4Addr,
) {
    let dest = sock(dest, port);
    let before = server.conns().len();
    let (seen_as, exchange) = from
        .run(|| {
            let client = PeerClient::connect(dest, CONNECT_TIMEOUT)?;
            let seen_as = client.seen_as;
            Ok::<_, std::io::Error>((seen_as, client.exchange(256 * 1024, 11)?))
        })
        .unwrap_or_else(|e| panic!("TCP {} -> {dest}: {e}", from.name()));
    assert_eq!(
        seen_as.ip(),
        std::net::IpAddr::V4(seen),
        "{} -> {dest}",
        from.name()
    );
    assert!(exchange.intact(), "{exchange:?}");
    assert_eq!(server.conns().len(), before + 1);
}

#[test]
fn kubelets_calls_through_containerds_cri() {
    let node = Node::new();
    let outside = ext::uplink_with_default_route(&node);
    let containerd = Containerd::start(&node, &conflist(&node));

    let mut web = with_host_port(containerd.sandbox_config("web"));
    for direction in ["ingress", "egress"] {
        web.annotations.insert(
            format!("kubernetes.io/{direction}-bandwidth"),
            format!("{}M", LIMIT_BITS / 1_000_000),
        );
    }
    let web_id = containerd
        .run_pod_sandbox(web)
        .unwrap_or_else(|e| panic!("RunPodSandbox web: {e}\n{}", containerd.log()));
    let client_id = containerd
        .run_pod_sandbox(containerd.sandbox_config("client"))
        .unwrap_or_else(|e| panic!("RunPodSandbox client: {e}\n{}", containerd.log()));
    let (web_ip, web_ns) = containerd.sandbox_network(&web_id);
    let (client_ip, client_ns) = containerd.sandbox_network(&client_id);
    eprintln!("containerd: web at {web_ip}, client at {client_ip}");
    assert_ne!(web_ip, client_ip);

    // Pod <-> pod, both ways.
    let web_server = PeerServer::start(&web_ns, at(Ipv4Addr::UNSPECIFIED, POD_PORT)).unwrap();
    let client_server = PeerServer::start(&client_ns, at(Ipv4Addr::UNSPECIFIED, POD_PORT)).unwrap();
    assert_tcp_reaches(&web_server, &client_ns, web_ip, POD_PORT, client_ip);
    assert_tcp_reaches(&client_server, &web_ns, client_ip, POD_PORT, web_ip);
    // Outside -> hostPort -> pod, and from the other pod.
    assert_tcp_reaches(
        &web_server,
        &outside.netns,
        outside.node_ip,
        HOST_PORT,
        outside.ext_ip,
    );
    assert_tcp_reaches(
        &web_server,
        &client_ns,
        outside.node_ip,
        HOST_PORT,
        client_ip,
    );
    // Pod -> outside, masqueraded to the node's address.
    let outside_server =
        PeerServer::start(&outside.netns, at(Ipv4Addr::UNSPECIFIED, POD_PORT)).unwrap();
    assert_tcp_reaches(
        &outside_server,
        &client_ns,
        outside.ext_ip,
        POD_PORT,
        outside.node_ip,
    );

    // The annotations' 20M hold from the first second (containerd passes
    // a 2^32-1 bit burst for them).
    let flood = udp_flood(&client_ns, client_ip, &web_ns);
    let ratio = flood.received_bps / LIMIT_BITS as f64;
    eprintln!(
        "containerd: web's egress flood got {:.2} Mbit/s over 3 s under {} Mbit/s ({:.1}%)",
        flood.received_bps / 1e6,
        LIMIT_BITS / 1_000_000,
        ratio * 100.0
    );
    assert!(
        ratio > 0.5 && ratio <= MARGIN,
        "{:.1}% of the limit",
        ratio * 100.0
    );

    // The node has no cgroup v2 in containerd's mount namespace: the pod
    // started, and the plugin said what it lacks (containerd logs its
    // stderr).
    assert!(
        containerd.log().contains("no cgroup v2 mount found"),
        "the plugin's warning is not in containerd's log"
    );

    // A sandbox whose ADD fails (the host port is taken): containerd tears
    // the network down with DEL, and nothing of it is left.
    let before = Footprint::of(&node, DEFAULT_NETWORK);
    let err = containerd
        .run_pod_sandbox(with_host_port(containerd.sandbox_config("clash")))
        .expect_err("RunPodSandbox of a second pod on the same host port");
    eprintln!("containerd: the clashing sandbox failed: {err}");
    assert!(err.message.contains("30088"), "{err}");
    assert_eq!(Footprint::of(&node, DEFAULT_NETWORK), before);
    assert_eq!(published(&node).len(), 1, "{:?}", published(&node));

    // Stop and remove: nothing left on the node.
    drop((web_server, client_server, outside_server));
    drop((web_ns, client_ns));
    for id in [&web_id, &client_id] {
        containerd
            .remove_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("Stop/RemovePodSandbox {id}: {e}\n{}", containerd.log()));
    }
    let after = Footprint::of(&node, DEFAULT_NETWORK);
    assert!(
        after.host_veths.is_empty()
            && after.reservations.is_empty()
            && after.endpoints.is_empty()
            && after.records.is_empty()
            && after.link_pins.is_empty(),
        "left after RemovePodSandbox: {after:?}"
    );
    assert!(published(&node).is_empty(), "{:?}", published(&node));
    assert!(
        containerd.pod_processes().is_empty(),
        "{:?}",
        containerd.pod_processes()
    );
    // DEL leaves the veth's deletion to a child it does not wait for; it
    // must not become a zombie of containerd's (reaped by init, or by
    // containerd's own wait).
    let zombies = containerd.zombies();
    assert!(zombies.is_empty(), "zombies under containerd: {zombies:?}");
}
