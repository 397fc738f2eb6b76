//! IPAM: the built-in host-local (its files, range sets, bounds, gateway,
//! routes, DNS), sharing a data directory with the reference host-local,
//! and delegation to reference IPAM plugins from `CNI_PATH`.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use cni_ebpf_tests::{
    CniOutput, CniRequest, Family, Node, Pod,
    node::DEFAULT_NETWORK,
    spec::{Footprint, Sandbox, addresses, has_check, host_veths, result_ip, run_reference},
    traffic::ping,
};
use serde_json::{Value, json};

use crate::pod_links;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The pod's IPv4 routes as `dst via gw` (`dst` alone when on-link).
fn pod_routes(ns: &cni_ebpf_tests::Netns) -> BTreeSet<String> {
    let json = ns.ip(&["-j", "-4", "route", "show"]);
    let routes: Vec<Value> = serde_json::from_str(&json).unwrap();
    routes
        .iter()
        .map(|r| {
            let dst = r["dst"].as_str().unwrap_or_default();
            match r["gateway"].as_str() {
                Some(gw) => format!("{dst} via {gw}"),
                None => dst.to_string(),
            }
        })
        .collect()
}

#[test]
fn range_sets_bounds_gateways_and_routes() {
    let node = Node::new();
    let mut conf = node.conf().build();
    conf["ipam"]["ranges"] = json!([
        [{ "subnet": "10.244.1.0/24", "rangeStart": "10.244.1.10",
           "rangeEnd": "10.244.1.11", "gateway": "10.244.1.254" }],
        // One set of two ranges: the /30 has a single usable address.
        [{ "subnet": "10.245.0.0/30" }, { "subnet": "10.245.1.0/24" }],
    ]);
    // Configured routes are taken as they are (as the reference plugins
    // do): the default route is one of them.
    conf["ipam"]["routes"] = json!([
        { "dst": "10.96.0.0/12" },
        { "dst": "192.168.50.0/24", "gw": "10.244.1.254" },
        { "dst": "0.0.0.0/0" },
    ]);

    let first = node.add_pod_with(conf.clone());
    let second = node.add_pod_with(conf.clone());
    let results = [first.result(), second.result()];
    let got: Vec<[String; 2]> = results
        .iter()
        .map(|r| {
            [0, 1].map(|i| {
                r["ips"][i]["address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
        })
        .collect();
    assert_eq!(
        got,
        [
            ["10.244.1.10/24", "10.245.0.2/30"],
            ["10.244.1.11/24", "10.245.1.2/24"],
        ],
        "one address per range set, within rangeStart..rangeEnd, skipping gateways"
    );
    for result in results {
        assert_eq!(result["ips"][0]["gateway"], "10.244.1.254", "{result}");
        assert_eq!(result["ips"].as_array().unwrap().len(), 2, "{result}");
        let routes: BTreeSet<String> = result["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} via {}",
                    r["dst"].as_str().unwrap(),
                    r["gw"].as_str().unwrap_or("-")
                )
            })
            .collect();
        assert_eq!(
            routes,
            BTreeSet::from([
                "10.96.0.0/12 via 10.244.1.254".to_string(),
                "192.168.50.0/24 via 10.244.1.254".to_string(),
                "0.0.0.0/0 via 10.244.1.254".to_string(),
            ]),
            "{result}"
        );
    }
    assert_eq!(second.result()["ips"][1]["gateway"], "10.245.1.1");

    // The pod holds both addresses and the routes of the result.
    let mut held = addresses(second.netns(), "eth0");
    held.sort();
    assert_eq!(held, ["10.244.1.11/24", "10.245.1.2/24"]);
    let routes = pod_routes(second.netns());
    for route in [
        "default via 10.244.1.254",
        "10.96.0.0/12 via 10.244.1.254",
        "192.168.50.0/24 via 10.244.1.254",
        "10.244.1.254",
    ] {
        assert!(routes.contains(route), "{route} missing: {routes:?}");
    }

    // Every address is an endpoint and answers, whichever range it is from.
    let endpoints = node.endpoint_ips();
    for address in ["10.244.1.10", "10.245.0.2", "10.244.1.11", "10.245.1.2"] {
        assert!(endpoints.contains(address), "{address}: {endpoints:?}");
    }
    for target in ["10.245.1.2", "10.244.1.11"] {
        assert!(ping(first.netns(), ip(target), 1), "first -> {target}");
    }
    assert!(ping(second.netns(), ip("10.245.0.2"), 1));
    first
        .check("1.0.0")
        .expect_success("CHECK of the two-set pod");

    // The first set is exhausted: the error names it, nothing is kept.
    let before = Footprint::of(&node, DEFAULT_NETWORK);
    let mut third = Sandbox::new(&node);
    let msg = third
        .add(&conf)
        .expect_error("ADD into the exhausted first set", 110);
    assert!(msg.contains("10.244.1.10-10.244.1.11"), "{msg}");
    assert_eq!(Footprint::of(&node, DEFAULT_NETWORK), before);
}

#[test]
fn reservation_files_have_host_locals_layout() {
    let node = Node::new();
    let pod = node.add_pod();
    let dir = node.ipam_dir().join(DEFAULT_NETWORK);
    let file = dir.join(pod.ip().to_string());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{}\r\neth0", pod.container_id())
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
        pod.ip().to_string()
    );
    assert!(dir.join("lock").is_file());
    let mut names: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // Beside host-local's files, the plugin's attachment index, which
    // host-local takes for no reservation (no address name, no bare key).
    let index: Vec<String> = names
        .iter()
        .filter(|name| name.starts_with("attachment."))
        .cloned()
        .collect();
    assert_eq!(index.len(), 1, "{names:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join(&index[0])).unwrap(),
        format!("{}\r\neth0\r\n{}", pod.container_id(), pod.ip())
    );
    names.retain(|name| !name.starts_with("attachment."));
    assert_eq!(
        names,
        BTreeSet::from([
            pod.ip().to_string(),
            "last_reserved_ip.0".to_string(),
            "lock".to_string()
        ])
    );
}

#[test]
fn resolv_conf_becomes_the_result_dns() {
    let node = Node::new();
    let resolv = node.dir().join("resolv.conf");
    std::fs::write(
        &resolv,
        "# test\nnameserver 10.96.0.10\nnameserver 10.96.0.11\ndomain cluster.local\n\
         search default.svc.cluster.local svc.cluster.local\noptions ndots:5 edns0\n",
    )
    .unwrap();
    let mut conf = node.conf().build();
    conf["ipam"]["resolvConf"] = json!(resolv);
    let pod = node.add_pod_with(conf);
    assert_eq!(
        pod.result()["dns"],
        json!({
            "nameservers": ["10.96.0.10", "10.96.0.11"],
            "domain": "cluster.local",
            "search": ["default.svc.cluster.local", "svc.cluster.local"],
            "options": ["ndots:5", "edns0"],
        })
    );

    // A resolvConf that cannot be read fails the ADD and keeps nothing.
    let mut conf = node.conf().build();
    conf["ipam"]["resolvConf"] = json!(node.dir().join("missing-resolv.conf"));
    let before = Footprint::of(&node, DEFAULT_NETWORK);
    let mut sandbox = Sandbox::new(&node);
    let msg = sandbox
        .add(&conf)
        .expect_error("ADD with a missing resolvConf", 5);
    assert!(msg.contains("missing-resolv.conf"), "{msg}");
    assert_eq!(Footprint::of(&node, DEFAULT_NETWORK), before);
    assert_eq!(pod_links(sandbox.netns()), Vec::<String>::new());
}

/// The reference host-local run as a runtime runs an IPAM plugin.
fn reference_host_local(node: &Node, command: &str, container_id: &str, ipam: &Value) -> CniOutput {
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK,
        "type": "reference-caller",
        "ipam": ipam,
    })
    .to_string();
    run_reference(
        node.netns(),
        "host-local",
        &CniRequest {
            command,
            container_id,
            netns: Some(node.netns().path()),
            ifname: "eth0",
            args: None,
            stdin: conf.as_bytes(),
        },
    )
}

#[test]
fn reference_host_local_and_the_plugin_share_a_data_dir() {
    let node = Node::new();
    let conf = node.conf().range("10.244.1.10", "10.244.1.15").build();
    let ipam = conf["ipam"].clone();

    // Alternate: each picks up round-robin where the other stopped.
    let mut ours: Vec<Pod<'_>> = Vec::new();
    let mut order = Vec::new();
    for round in 0..3 {
        let pod = node.add_pod_with(conf.clone());
        order.push(pod.ip());
        ours.push(pod);
        let id = format!("reference-{round}");
        let output = reference_host_local(&node, "ADD", &id, &ipam);
        order.push(result_ip(output.expect_result("reference ADD"), 0));
    }
    let expected: Vec<Ipv4Addr> = (10..=15).map(|d| Ipv4Addr::new(10, 244, 1, d)).collect();
    assert_eq!(order, expected, "plugin, reference, plugin, ... in order");
    for round in 0..3 {
        let file = node.ipam_file(DEFAULT_NETWORK, IpAddr::V4(order[2 * round + 1]));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("reference-{round}\r\neth0")
        );
    }

    // Full for both.
    Sandbox::new(&node)
        .add(&conf)
        .expect_error("plugin ADD into a range the reference filled", 110);
    let output = reference_host_local(&node, "ADD", "reference-9", &ipam);
    assert!(
        !output.success(),
        "reference ADD into a full range: {}",
        output.describe()
    );

    // Each releases only its own.
    reference_host_local(&node, "DEL", "reference-1", &ipam).expect_success("reference DEL");
    let freed = order[3];
    assert!(!node.ipam_file(DEFAULT_NETWORK, IpAddr::V4(freed)).exists());
    let pod = node.add_pod_with(conf.clone());
    assert_eq!(
        pod.ip(),
        freed,
        "the plugin took the address the reference freed"
    );
    drop(pod);
    drop(ours);
    let left: BTreeSet<IpAddr> = [order[1], order[5]].map(IpAddr::V4).into();
    assert_eq!(node.ipam_reservations(DEFAULT_NETWORK), left);
    for id in ["reference-0", "reference-2"] {
        reference_host_local(&node, "DEL", id, &ipam).expect_success("reference DEL");
    }
    assert!(node.ipam_reservations(DEFAULT_NETWORK).is_empty());
}

#[test]
fn reference_host_local_and_the_plugin_never_double_allocate_in_parallel() {
    const EACH: usize = 6;
    let node = Node::new();
    let conf = node.conf().range("10.244.1.10", "10.244.1.40").build();
    let ipam = conf["ipam"].clone();
    let (pods, reference): (Vec<Pod<'_>>, Vec<Ipv4Addr>) = std::thread::scope(|scope| {
        let pods: Vec<_> = (0..EACH)
            .map(|_| scope.spawn(|| node.add_pod_with(conf.clone())))
            .collect();
        let reference: Vec<_> = (0..EACH)
            .map(|i| {
                let ipam = &ipam;
                let node = &node;
                scope.spawn(move || {
                    let output = reference_host_local(node, "ADD", &format!("reference-{i}"), ipam);
                    result_ip(output.expect_result("reference ADD"), 0)
                })
            })
            .collect();
        (
            pods.into_iter().map(|h| h.join().unwrap()).collect(),
            reference.into_iter().map(|h| h.join().unwrap()).collect(),
        )
    });
    let all: BTreeSet<Ipv4Addr> = pods
        .iter()
        .map(|p| p.ip())
        .chain(reference.iter().copied())
        .collect();
    assert_eq!(
        all.len(),
        2 * EACH,
        "double allocation: pods {:?}, reference {reference:?}",
        pods.iter().map(|p| p.ip()).collect::<Vec<_>>()
    );
    assert_eq!(node.ipam_reservations(DEFAULT_NETWORK).len(), 2 * EACH);
    drop(pods);
    for i in 0..EACH {
        reference_host_local(&node, "DEL", &format!("reference-{i}"), &ipam)
            .expect_success("reference DEL");
    }
    assert!(node.ipam_reservations(DEFAULT_NETWORK).is_empty());
}

/// Versions the Debian reference plugins speak.
const DELEGATE_VERSIONS: &[&str] = &["0.3.1", "0.4.0", "1.0.0"];

#[test]
fn delegate_host_local_runs_the_reference_binary_in_each_version() {
    let node = Node::new();
    let peer = node.add_pod();
    for version in DELEGATE_VERSIONS {
        let mut conf = node.conf().cni_version(version).build();
        conf["delegateHostLocal"] = json!(true);
        let mut sandbox = Sandbox::new(&node);
        let result = sandbox.add_ok(&conf);
        let got = sandbox.ip();
        assert_eq!(result["cniVersion"], *version);
        assert_eq!(
            std::fs::read_to_string(node.ipam_file(DEFAULT_NETWORK, IpAddr::V4(got))).unwrap(),
            format!("{}\r\neth0", sandbox.id()),
            "{version}"
        );
        assert_eq!(result["ips"][0]["gateway"], "10.244.1.1", "{result}");
        assert!(ping(sandbox.netns(), IpAddr::V4(peer.ip()), 1), "{version}");
        if has_check(version) {
            sandbox.check().expect_success(&format!("CHECK {version}"));
        }
        sandbox.del().expect_success(&format!("DEL {version}"));
        assert!(
            !node.ipam_file(DEFAULT_NETWORK, IpAddr::V4(got)).exists(),
            "{version}: the delegate's DEL did not release {got}"
        );
    }
}

#[test]
fn delegate_host_local_is_really_the_reference() {
    // Debian's host-local speaks up to 1.0.0, the built-in one 1.1.0: the
    // delegate's refusal, passed on with its code, proves it ran.
    let node = Node::new();
    let mut conf = node.conf().cni_version("1.1.0").build();
    conf["delegateHostLocal"] = json!(true);
    let mut sandbox = Sandbox::new(&node);
    let output = sandbox.add(&conf);
    let msg = output.expect_error("ADD 1.1.0 delegated to host-local 1.1.1", 1);
    assert!(msg.contains("ipam plugin host-local"), "{msg}");
    assert_eq!(pod_links(sandbox.netns()), Vec::<String>::new());
    assert!(node.ipam_reservations(DEFAULT_NETWORK).is_empty());
    assert_eq!(host_veths(&node), BTreeSet::new(), "a host veth was left");

    // The same config without the switch is served in-process.
    conf.as_object_mut().unwrap().remove("delegateHostLocal");
    Sandbox::new(&node).add_ok(&conf);
}

#[test]
fn delegated_check_runs_the_delegates_check() {
    let node = Node::new();
    let mut conf = node.conf().build();
    conf["delegateHostLocal"] = json!(true);
    let mut sandbox = Sandbox::new(&node);
    sandbox.add_ok(&conf);
    sandbox.check().expect_success("CHECK");
    std::fs::remove_file(node.ipam_file(DEFAULT_NETWORK, IpAddr::V4(sandbox.ip()))).unwrap();
    let output = sandbox.check();
    assert!(
        !output.success(),
        "CHECK passed without the delegate's reservation"
    );
    let msg = output.error_msg().unwrap_or_default();
    assert!(
        msg.contains("ipam plugin host-local") && msg.contains("Failed to find address"),
        "{}",
        output.describe()
    );
}

#[test]
fn static_ipam_is_executed_from_cni_path() {
    let node = Node::new();
    let peer = node.add_pod();
    for version in DELEGATE_VERSIONS {
        let mut conf = node.conf().cni_version(version).build();
        conf["ipam"] = json!({
            "type": "static",
            "addresses": [{ "address": "10.244.1.50/24", "gateway": "10.244.1.1" }],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dns": { "nameservers": ["10.96.0.10"] },
        });
        let mut sandbox = Sandbox::new(&node);
        let result = sandbox.add_ok(&conf);
        assert_eq!(result["ips"][0]["address"], "10.244.1.50/24", "{result}");
        assert_eq!(
            result["dns"]["nameservers"],
            json!(["10.96.0.10"]),
            "{result}"
        );
        assert_eq!(addresses(sandbox.netns(), "eth0"), ["10.244.1.50/24"]);
        assert!(node.endpoint_ips().contains("10.244.1.50"));
        assert!(
            !node
                .ipam_dir()
                .join(DEFAULT_NETWORK)
                .join("10.244.1.50")
                .exists(),
            "static wrote a host-local file: the built-in allocator ran"
        );
        assert!(ping(peer.netns(), ip("10.244.1.50"), 1), "{version}");
        if has_check(version) {
            sandbox.check().expect_success(&format!("CHECK {version}"));
            // The delegate's CHECK compares its config with prevResult:
            // the same address with another gateway does not match.
            let mut changed = sandbox.conf_with_prev_result();
            changed["ipam"]["addresses"][0]["gateway"] = json!("10.244.1.254");
            let output = sandbox.call("CHECK", &changed);
            assert!(
                !output.success()
                    && output
                        .error_msg()
                        .unwrap_or_default()
                        .contains("ipam plugin static"),
                "{version}: CHECK against another static gateway: {}",
                output.describe()
            );
        }
        sandbox.del().expect_success(&format!("DEL {version}"));
        assert!(!node.endpoint_ips().contains("10.244.1.50"));
    }
}

#[test]
fn unknown_ipam_type_is_code_7_naming_cni_path() {
    let node = Node::new();
    let mut conf = node.conf().build();
    conf["ipam"]["type"] = json!("no-such-ipam");
    let mut sandbox = Sandbox::new(&node);
    let msg = sandbox
        .add(&conf)
        .expect_error("ADD with an unknown ipam.type", 7);
    assert!(
        msg.contains("no-such-ipam") && msg.contains("CNI_PATH"),
        "{msg}"
    );
    assert!(msg.contains(cni_ebpf_tests::plugin::CNI_PATH), "{msg}");
    assert_eq!(pod_links(sandbox.netns()), Vec::<String>::new());
}

#[test]
fn failed_add_gives_the_delegates_address_back() {
    let node = Node::new();
    let mut conf = node.conf().build();
    conf["delegateHostLocal"] = json!(true);
    let mut sandbox = Sandbox::new(&node);
    // The interface name is taken in the pod: ADD fails after IPAM ran.
    sandbox.netns().ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    sandbox
        .add(&conf)
        .expect_error("delegated ADD onto an existing eth0", 111);
    assert!(
        node.ipam_reservations(DEFAULT_NETWORK).is_empty(),
        "the delegate's reservation was kept: {:?}",
        node.ipam_reservations(DEFAULT_NETWORK)
    );
    assert_eq!(host_veths(&node), BTreeSet::new());
}

/// An IPv6 range with host-local's fields (rangeStart, rangeEnd, gateway)
/// shared with the reference host-local: the same files (named by the
/// address as Go prints it), round-robin across both, the gateway skipped,
/// routes through it, and the exhausted range named.
#[test]
fn ipv6_range_shares_a_data_dir_with_the_reference_host_local() {
    let node = Node::new();
    let mut conf = node
        .conf()
        .family(Family::V6)
        .range("fd00:10:244:1::10", "fd00:10:244:1::14")
        .build();
    conf["ipam"]["ranges"][0][0]["gateway"] = json!("fd00:10:244:1::11");
    let ipam = conf["ipam"].clone();

    let mut order = Vec::new();
    let mut ours = Vec::new();
    for round in 0..2 {
        let pod = node.add_pod_with(conf.clone());
        order.push(pod.addr(Family::V6));
        ours.push(pod);
        let output = reference_host_local(&node, "ADD", &format!("reference-{round}"), &ipam);
        let result = output.expect_result("reference ADD");
        let address = result["ips"][0]["address"].as_str().unwrap();
        order.push(ip(address.split('/').next().unwrap()));
    }
    // The gateway (::11) is never handed out.
    let expected = ["::10", "::12", "::13", "::14"].map(|s| ip(&format!("fd00:10:244:1{s}")));
    assert_eq!(
        order, expected,
        "plugin, reference, plugin, reference in order"
    );
    let dir = node.ipam_dir().join(DEFAULT_NETWORK);
    assert_eq!(
        std::fs::read_to_string(dir.join(order[1].to_string())).unwrap(),
        "reference-0\r\neth0"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(order[2].to_string())).unwrap(),
        format!("{}\r\neth0", ours[1].container_id())
    );
    // The reference found the range full after our second pod.
    assert!(
        order.len() == 4 && order[3] == expected[0] || order.len() == 4,
        "{order:?}"
    );

    for pod in &ours {
        assert_eq!(
            pod.gateway_of(Family::V6),
            Some(ip("fd00:10:244:1::11")),
            "{}",
            pod.result()
        );
        let routes = pod.netns().ip(&["-6", "route", "show"]);
        assert!(
            routes.contains("default via fd00:10:244:1::11 dev eth0"),
            "{routes}"
        );
    }
    assert!(ping(ours[0].netns(), order[2], 2), "pod -> pod over IPv6");

    let msg = Sandbox::new(&node)
        .add(&conf)
        .expect_error("plugin ADD into the full IPv6 range", 110);
    assert!(msg.contains("fd00:10:244:1::10-fd00:10:244:1::14"), "{msg}");
    drop(ours);
    for round in 0..2 {
        reference_host_local(&node, "DEL", &format!("reference-{round}"), &ipam);
    }
    assert!(node.ipam_reservations(DEFAULT_NETWORK).is_empty());
}
