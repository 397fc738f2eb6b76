//! What each container runtime sends, as it sends it: containerd's CRI
//! (go-cni: Go field names, `HostPort`, `IngressBurst: 2^32-1` for "unset"),
//! CRI-O (ocicni: lowercase keys, an empty `hostIP`, its own "unset" burst)
//! and Podman's CNI backend (lowercase keys, `hostIP` left out, one entry per
//! protocol). Each payload publishes its host port (reached from outside and
//! from another pod) and, where the runtime passes limits, is limited from
//! the first second; wrongly typed capability fields are refused by name.

use std::{net::Ipv4Addr, time::Duration};

use cni_ebpf_tests::{
    Netns,
    ext::{PeerClient, PeerServer, UdpEcho, parse_echo_answer, with_keys},
    hostports::{HostPortNode, TestCgroup, at, sock},
    node::DEFAULT_NETWORK,
    spec::{Footprint, Sandbox},
    traffic,
};
use serde_json::{Value, json};

use crate::bandwidth::{LIMIT_BITS, MARGIN, udp_flood};

const HOST_PORT: u16 = 30088;
const POD_PORT: u16 = 8080;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A runtime's CNI call for a pod sandbox: the capability arguments and
/// the `CNI_ARGS` it passes.
struct Payload {
    runtime: &'static str,
    cni_version: &'static str,
    runtime_config: Value,
    cni_args: &'static str,
}

/// containerd 1.6's CRI through go-cni, for a pod with a hostPort and the
/// `kubernetes.io/{ingress,egress}-bandwidth: 20M` annotations.
fn containerd() -> Payload {
    Payload {
        runtime: "containerd",
        cni_version: "1.0.0",
        runtime_config: json!({
            "portMappings": [
                {"HostPort": HOST_PORT, "ContainerPort": POD_PORT, "Protocol": "tcp", "HostIP": ""},
                {"HostPort": HOST_PORT, "ContainerPort": POD_PORT, "Protocol": "udp", "HostIP": ""}
            ],
            "bandwidth": {
                "IngressRate": LIMIT_BITS, "IngressBurst": 4_294_967_295u64,
                "EgressRate": LIMIT_BITS, "EgressBurst": 4_294_967_295u64
            }
        }),
        cni_args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
                   K8S_POD_INFRA_CONTAINER_ID=0123456789ab;K8S_POD_UID=1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    }
}

/// CRI-O through ocicni: lowercase keys, `hostIP` always written (empty
/// when unset), bandwidth fields `omitempty` with CRI-O's own "unset"
/// burst (`math.MaxUint32*8 - 1`), protocols lower-cased.
fn cri_o() -> Payload {
    Payload {
        runtime: "CRI-O",
        cni_version: "1.0.0",
        runtime_config: json!({
            "portMappings": [
                {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp", "hostIP": ""},
                {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "udp", "hostIP": ""}
            ],
            "bandwidth": {"egressRate": LIMIT_BITS, "egressBurst": 34_359_738_359u64}
        }),
        cni_args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
                   K8S_POD_INFRA_CONTAINER_ID=0123456789ab;K8S_POD_UID=1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    }
}

/// Podman's CNI backend (`-p 30088:8080/tcp -p 30088:8080/udp`): lowercase
/// keys, `hostIP` omitted when unset, a 0.4.0 conflist, no bandwidth.
fn podman() -> Payload {
    Payload {
        runtime: "Podman",
        cni_version: "0.4.0",
        runtime_config: json!({
            "portMappings": [
                {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"},
                {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "udp"}
            ]
        }),
        cni_args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_INFRA_CONTAINER_ID=0123456789ab;\
                   K8S_POD_NAME=web",
    }
}

/// `hp`'s config as `payload`'s runtime passes it to a plugin that declared
/// the `portMappings` and `bandwidth` capabilities.
fn conf(hp: &HostPortNode, payload: &Payload) -> Value {
    conf_with(hp.node.conf().build(), &hp.cgroup, payload)
}

fn conf_with(conf: Value, cgroup: &TestCgroup, payload: &Payload) -> Value {
    with_keys(
        conf,
        json!({
            "cniVersion": payload.cni_version,
            "capabilities": {"portMappings": true, "bandwidth": true},
            "cgroupRoot": cgroup.path(),
            "runtimeConfig": payload.runtime_config,
        }),
    )
}

/// Panics unless a TCP exchange from `from` to `dest` reaches `server`,
/// seen from `seen_ip`.
fn assert_tcp_reaches(server: &PeerServer, from: &Netns, dest: Ipv4Addr, seen_ip: Ipv4Addr) {
    let dest = sock(dest, HOST_PORT);
    let before = server.conns().len();
    let (seen, exchange) = from
        .run(|| {
            let client = PeerClient::connect(dest, CONNECT_TIMEOUT)?;
            let seen = client.seen_as;
            Ok::<_, std::io::Error>((seen, client.exchange(64 * 1024, 7)?))
        })
        .unwrap_or_else(|e| panic!("TCP {} -> {dest}: {e}", from.name()));
    assert_eq!(seen.ip(), std::net::IpAddr::V4(seen_ip), "seen as {seen}");
    assert!(exchange.intact(), "{exchange:?}");
    assert_eq!(server.conns().len(), before + 1);
}

/// Panics unless a datagram from `from` to `dest` is echoed by the pod.
fn assert_udp_reaches(from: &Netns, dest: Ipv4Addr) {
    let dest = sock(dest, HOST_PORT);
    let answer = from
        .run(|| {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.set_read_timeout(Some(Duration::from_secs(5)))?;
            socket.send_to(b"which runtime?", dest)?;
            let mut buf = [0u8; 2048];
            let (n, from) = traffic::recv_from(&socket, &mut buf)?;
            let (_, echoed) = parse_echo_answer(&buf[..n])?;
            Ok::<_, std::io::Error>((from, echoed))
        })
        .unwrap_or_else(|e| panic!("UDP {} -> {dest}: {e}", from.name()));
    assert_eq!(answer, (dest, b"which runtime?".to_vec()));
}

#[test]
fn each_runtimes_payload_publishes_its_host_ports() {
    for payload in [containerd(), cri_o(), podman()] {
        let hp = HostPortNode::new();
        let conf = conf(&hp, &payload);
        let mut sandbox = Sandbox::new(&hp.node).args(payload.cni_args);
        let output = sandbox.add(&conf);
        output.expect_result(&format!("ADD with {}'s payload", payload.runtime));
        let server = PeerServer::start(sandbox.netns(), at(Ipv4Addr::UNSPECIFIED, POD_PORT))
            .expect("TCP server");
        let _echo = UdpEcho::start(sandbox.netns(), at(Ipv4Addr::UNSPECIFIED, POD_PORT), false)
            .expect("UDP echo");
        let client = hp.node.add_pod();

        assert_tcp_reaches(&server, &hp.ext.netns, hp.node_ip(), hp.ext.ext_ip);
        assert_tcp_reaches(&server, client.netns(), hp.node_ip(), client.ip());
        assert_udp_reaches(&hp.ext.netns, hp.node_ip());
        assert_udp_reaches(client.netns(), hp.node_ip());
        eprintln!(
            "{}: host ports reached from outside and from a pod",
            payload.runtime
        );

        sandbox
            .check()
            .expect_success(&format!("CHECK with {}'s payload", payload.runtime));
        sandbox
            .del()
            .expect_success(&format!("DEL with {}'s payload", payload.runtime));
    }
}

#[test]
fn containerds_bandwidth_annotations_limit_from_the_first_second() {
    // containerd passes IngressBurst/EgressBurst 2^32-1 for "unset": taken
    // as written that is 512 MB at line rate, the whole of a 3 s flood.
    let hp = HostPortNode::new();
    let mut limited = Sandbox::new(&hp.node);
    limited.add_ok(&conf(&hp, &containerd()));
    let other = hp.node.add_pod();

    let egress = udp_flood(other.netns(), other.ip(), limited.netns());
    let ingress = udp_flood(limited.netns(), limited.ip(), other.netns());
    for (what, goodput) in [("egress", egress), ("ingress", ingress)] {
        let ratio = goodput.received_bps / LIMIT_BITS as f64;
        eprintln!(
            "containerd annotations, {what}: {:.2} Mbit/s over 3 s under {} Mbit/s = {:.1}%",
            goodput.received_bps / 1e6,
            LIMIT_BITS / 1_000_000,
            ratio * 100.0
        );
        assert!(
            ratio > 0.5 && ratio <= MARGIN,
            "{what}: {:.1}% of the limit over the first 3 s",
            ratio * 100.0
        );
    }
}

#[test]
fn wrongly_typed_capability_fields_are_code_7_by_name_and_unknown_ones_are_ignored() {
    let hp = HostPortNode::new();
    // Loads the datapath, so the footprint below can be read.
    let _first = hp.node.add_pod();
    let before = Footprint::of(&hp.node, DEFAULT_NETWORK);
    for (runtime_config, field) in [
        (
            json!({"portMappings": [{"HostPort": "30088", "ContainerPort": 8080}]}),
            "runtimeConfig.portMappings[0].hostPort",
        ),
        (
            json!({"portMappings": [{"HostPort": 30088, "ContainerPort": 8080, "Protocol": 6}]}),
            "runtimeConfig.portMappings[0].protocol",
        ),
        (
            json!({"portMappings": [{"HostPort": 30088, "ContainerPort": 8080, "HostIP": 0}]}),
            "runtimeConfig.portMappings[0].hostIP",
        ),
        (
            json!({"portMappings": [{"HostPort": 30088, "ContainerPort": 8080, "Protocol": "sctp"}]}),
            "runtimeConfig.portMappings[0].protocol",
        ),
        (
            json!({"bandwidth": {"IngressRate": "20M", "IngressBurst": 4_294_967_295u64}}),
            "runtimeConfig.bandwidth.ingressRate",
        ),
        (
            json!({"ipRanges": [[{"subnet": "10.99.0.0/24"}]]}),
            "runtimeConfig.ipRanges",
        ),
    ] {
        let payload = Payload {
            runtime_config,
            ..containerd()
        };
        let mut sandbox = Sandbox::new(&hp.node);
        let msg = sandbox
            .add(&conf(&hp, &payload))
            .expect_error(&format!("ADD naming {field}"), 7);
        assert!(
            msg.contains(&format!("\"{field}\"")),
            "{field} not named: {msg}"
        );
        assert_eq!(Footprint::of(&hp.node, DEFAULT_NETWORK), before, "{field}");
    }

    // Fields no runtime is known to send are ignored, as Go ignores them.
    let payload = Payload {
        runtime_config: json!({
            "portMappings": [{"HostPort": HOST_PORT, "ContainerPort": POD_PORT, "Name": "web", "Range": 1}],
            "bandwidth": {"IngressRate": LIMIT_BITS, "IngressBurst": 4_294_967_295u64, "Shaper": "tbf"},
            "io.kubernetes.cri.pod-annotations": {"a": "b"}
        }),
        ..containerd()
    };
    let mut sandbox = Sandbox::new(&hp.node);
    sandbox.add_ok(&conf(&hp, &payload));
    sandbox.del().expect_success("DEL");
}

/// `value` with every object key upper-cased, at every level.
fn shout(value: &Value) -> Value {
    match value {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .map(|(key, value)| (key.to_uppercase(), shout(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(shout).collect()),
        other => other.clone(),
    }
}

#[test]
fn every_key_of_the_config_matches_without_regard_to_case() {
    // Go plugins read `"IPMASQ"` as ipMasq, `"RANGESTART"` as rangeStart;
    // each reader here (IPAM, the uplink, bandwidth, the verbs' own fields)
    // must too, and the pins and state land where the keys say.
    let hp = HostPortNode::new();
    let mut conf = hp.node.conf().range("10.244.1.77", "10.244.1.80").build();
    conf["ipMasq"] = json!(true);
    conf["egressRate"] = json!(LIMIT_BITS);
    conf["egressBurst"] = json!(LIMIT_BITS / 10);
    conf["cgroupRoot"] = json!(hp.cgroup.path());
    conf["capabilities"] = json!({"portMappings": true});
    conf["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": HOST_PORT, "containerPort": POD_PORT}]});
    let conf = shout(&conf);
    assert!(
        conf.get("IPMASQ").is_some() && conf["IPAM"]["RANGES"][0][0].get("RANGESTART").is_some()
    );

    let mut sandbox = Sandbox::new(&hp.node);
    let result = sandbox.add_ok(&conf);
    assert_eq!(result["ips"][0]["address"], "10.244.1.77/24", "{result}");
    let record = hp
        .node
        .state_dir()
        .join(DEFAULT_NETWORK)
        .join(format!("{}-eth0.json", sandbox.id()));
    let record: Value = serde_json::from_slice(
        &std::fs::read(&record)
            .unwrap_or_else(|e| panic!("the attachment record under the STATEDIR given: {e}")),
    )
    .unwrap();
    assert_eq!(record["egressLimit"]["rateBits"], LIMIT_BITS, "{record}");

    // Masquerade (IPMASQ) and the host port (RUNTIMECONFIG.PORTMAPPINGS).
    let outside = PeerServer::start(&hp.ext.netns, at(Ipv4Addr::UNSPECIFIED, HOST_PORT)).unwrap();
    assert_tcp_reaches(&outside, sandbox.netns(), hp.ext.ext_ip, hp.node_ip());
    let server = PeerServer::start(sandbox.netns(), at(Ipv4Addr::UNSPECIFIED, POD_PORT)).unwrap();
    assert_tcp_reaches(&server, &hp.ext.netns, hp.node_ip(), hp.ext.ext_ip);

    // CHECK and DEL with the result as "PREVRESULT", its keys shouted too.
    let with_prev = shout(&sandbox.conf_with_prev_result());
    sandbox
        .call("CHECK", &with_prev)
        .expect_success("CHECK with shouted keys");
    sandbox
        .call("DEL", &with_prev)
        .expect_success("DEL with shouted keys");
    sandbox.del().expect_success("DEL again");
    assert!(
        hp.node.ipam_reservations(DEFAULT_NETWORK).is_empty(),
        "{:?}",
        hp.node.ipam_reservations(DEFAULT_NETWORK)
    );
}
