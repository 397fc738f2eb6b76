//! ADD and DEL leave exactly what they should: DEL removes the host veth,
//! the endpoint entry and the reservation, is idempotent, and still works
//! when the pod's namespace is already gone.

use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

use cni_ebpf_tests::{
    Bpffs, CniRequest, Family, Node, Pod, links,
    node::DEFAULT_NETWORK,
    traffic::{self, ping},
};

use crate::{faults::pinned_map_entries, pod_links};

#[test]
fn add_creates_veth_endpoint_and_reservation() {
    for family in Family::ALL {
        add_creates_veth_endpoint_and_reservation_in(family);
    }
}

fn add_creates_veth_endpoint_and_reservation_in(family: Family) {
    let node = Node::new();
    let pod = node.add_pod_of(family);
    let ip = pod.addr(family);

    assert!(
        node.links().contains(&pod.host_ifname()),
        "host veth {} missing: {:?}",
        pod.host_ifname(),
        node.links()
    );
    assert_eq!(pod_links(pod.netns()), ["eth0"]);
    assert!(
        node.endpoint_ips().contains(&ip.to_string()),
        "no endpoint for {ip}: {:?}",
        node.endpoints()
    );
    assert!(
        node.ipam_file(DEFAULT_NETWORK, ip).is_file(),
        "no IPAM file for {ip}"
    );

    let endpoint = node
        .endpoints()
        .into_iter()
        .find(|e| e["ip"] == ip.to_string())
        .unwrap();
    let host_mac = pod.result()["interfaces"][0]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    let pod_mac = pod.result()["interfaces"][1]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert_eq!(
        endpoint["hostMac"].as_str().map(str::to_lowercase),
        Some(host_mac),
        "{endpoint}"
    );
    assert_eq!(
        endpoint["podMac"].as_str().map(str::to_lowercase),
        Some(pod_mac),
        "{endpoint}"
    );
    // An IPv6 pod's link-local address is a key too (its neighbor
    // discovery comes from there); an IPv4 pod has its address only.
    let keys = node.endpoint_ips();
    let link_local = keys.iter().filter(|k| k.starts_with("fe80:")).count();
    let expected = if family == Family::V6 { 1 } else { 0 };
    assert_eq!(link_local, expected, "{family:?}: {keys:?}");
    assert_eq!(keys.len(), 1 + expected, "{family:?}: {keys:?}");
}

#[test]
fn del_removes_veth_endpoint_and_reservation() {
    for family in Family::ALL {
        del_removes_veth_endpoint_and_reservation_in(family);
    }
}

fn del_removes_veth_endpoint_and_reservation_in(family: Family) {
    let node = Node::new();
    let mut pod = node.add_pod_of(family);
    let ip = pod.addr(family);
    let host_ifname = pod.host_ifname();

    pod.del().expect_success("DEL");
    assert!(
        !node.links().contains(&host_ifname),
        "host veth {host_ifname} left: {:?}",
        node.links()
    );
    assert_eq!(
        pod_links(pod.netns()),
        Vec::<String>::new(),
        "pod interface left behind"
    );
    assert!(
        !node.endpoint_ips().contains(&ip.to_string()),
        "endpoint {ip} left: {:?}",
        node.endpoints()
    );
    assert!(
        !node.ipam_file(DEFAULT_NETWORK, ip).exists(),
        "IPAM file for {ip} left"
    );
    // Nothing else either (an IPv6 pod's link-local key included).
    assert!(node.endpoint_ips().is_empty(), "{:?}", node.endpoints());
}

#[test]
fn del_frees_both_names_at_once_so_the_same_pod_can_be_added_again() {
    let node = Node::new();
    let peer = node.add_pod();
    let mut pod = node.add_pod();
    let host_ifname = pod.host_ifname();
    pod.del().expect_success("DEL");
    // Both names are free when DEL returns, whatever is still being deleted.
    let pod_now = links::names_now(pod.netns());
    assert!(!pod_now.iter().any(|l| l == "eth0"), "{pod_now:?}");
    let node_now = links::names_now(node.netns());
    assert!(!node_now.contains(&host_ifname), "{node_now:?}");
    // Straight away, as a runtime retrying a sandbox would: the same
    // container ID, interface and namespace get the same names again.
    let stdin = pod.conf().to_string();
    let request = CniRequest {
        command: "ADD",
        container_id: pod.container_id(),
        netns: Some(pod.netns().path()),
        ifname: "eth0",
        args: None,
        stdin: stdin.as_bytes(),
    };
    let output = node.cni(&request);
    let result = output.expect_result("ADD of the same pod right after DEL");
    let address = result["ips"][0]["address"].as_str().expect("an address");
    let ip: IpAddr = address.split('/').next().unwrap().parse().unwrap();
    assert!(node.links().contains(&host_ifname), "{:?}", node.links());
    assert_eq!(pod_links(pod.netns()), ["eth0"], "the old pod end is left");
    assert!(
        ping(peer.netns(), ip, 2),
        "the new attachment carries no traffic"
    );
    // The runtime's own DEL of the second attachment (the pod's drop sees
    // its first DEL done and sends one without a result).
    let del = CniRequest {
        command: "DEL",
        ..request
    };
    node.cni(&del)
        .expect_success("DEL of the second attachment");
    assert_eq!(pod_links(pod.netns()), Vec::<String>::new());
}

/// Each pod is counted at a per-CPU slot of its own (`ENDPOINT_COUNTERS`,
/// named by its endpoint entries), claimed in `ENDPOINT_SLOTS` at ADD and
/// freed by DEL.
#[test]
fn each_pod_counts_in_a_slot_of_its_own_that_del_frees() {
    let node = Node::new();
    let a = node.add_pod();
    let mut b = node.add_pod();
    // Two endpoint entries (its address and its link-local one).
    let v6 = node.add_pod_of(Family::V6);
    assert!(ping(a.netns(), IpAddr::V4(b.ip()), 3));
    let endpoints = node.endpoints();
    let slots_of = |ifindex: &serde_json::Value| -> BTreeSet<u64> {
        endpoints
            .iter()
            .filter(|e| &e["ifindex"] == ifindex)
            .map(|e| e["statsSlot"].as_u64().unwrap())
            .collect()
    };
    let ifindexes: BTreeSet<u64> = endpoints
        .iter()
        .map(|e| e["ifindex"].as_u64().unwrap())
        .collect();
    assert_eq!(ifindexes.len(), 3, "{endpoints:?}");
    assert_eq!(endpoints.len(), 4, "{endpoints:?}");
    let mut all_slots = BTreeSet::new();
    for ifindex in &ifindexes {
        // One slot per pod, whichever of its addresses, and none shared.
        let slots = slots_of(&(*ifindex).into());
        assert_eq!(slots.len(), 1, "{endpoints:?}");
        assert!(!slots.contains(&0), "{endpoints:?}");
        all_slots.extend(slots);
    }
    assert_eq!(all_slots.len(), 3, "a slot shared: {endpoints:?}");
    let packets = |ip: String, direction: &str| -> u64 {
        node.endpoints()
            .iter()
            .find(|e| e["ip"] == ip)
            .map_or(0, |e| e[direction]["packets"].as_u64().unwrap())
    };
    assert!(packets(a.ip().to_string(), "fromPod") >= 3);
    assert!(packets(b.ip().to_string(), "toPod") >= 3);
    assert_eq!(pinned_map_entries(&node, "ENDPOINT_SLOTS"), 3);

    b.del().expect_success("DEL");
    assert_eq!(
        pinned_map_entries(&node, "ENDPOINT_SLOTS"),
        2,
        "DEL left its counter slot claimed"
    );
    let c = node.add_pod();
    assert_eq!(pinned_map_entries(&node, "ENDPOINT_SLOTS"), 3);
    assert_eq!(
        packets(c.ip().to_string(), "toPod"),
        0,
        "a new pod starts from zero"
    );
    drop(v6);
}

#[test]
fn del_twice_succeeds() {
    for family in Family::ALL {
        let node = Node::new();
        let mut pod = node.add_pod_of(family);
        pod.del().expect_success("first DEL");
        pod.del().expect_success("second DEL");
        assert!(node.ipam_reservations(DEFAULT_NETWORK).is_empty());
        assert!(node.endpoint_ips().is_empty(), "{:?}", node.endpoints());
    }
}

#[test]
fn dual_stack_add_holds_both_families_and_del_releases_both() {
    let node = Node::new();
    let mut pod = node.add_pod_with(node.conf().dual_stack().build());
    let ips = pod.addrs();
    assert_eq!(
        ips.iter().map(|ip| Family::of(*ip)).collect::<Vec<_>>(),
        Family::ALL,
        "{}",
        pod.result()
    );
    assert_eq!(
        node.ipam_reservations(DEFAULT_NETWORK),
        ips.iter().copied().collect::<BTreeSet<_>>()
    );
    let keys = node.endpoint_ips();
    for ip in &ips {
        assert!(keys.contains(&ip.to_string()), "{ip} not in {keys:?}");
    }
    pod.del().expect_success("DEL");
    assert!(node.ipam_reservations(DEFAULT_NETWORK).is_empty());
    assert!(node.endpoint_ips().is_empty(), "{:?}", node.endpoints());
}

#[test]
fn del_after_netns_is_gone_releases_address_and_endpoint() {
    for family in Family::ALL {
        del_after_netns_is_gone_releases_address_and_endpoint_in(family);
    }
}

fn del_after_netns_is_gone_releases_address_and_endpoint_in(family: Family) {
    let node = Node::new();
    let mut pod = node.add_pod_of(family);
    let ip = pod.addr(family);
    let host_ifname = pod.host_ifname();

    pod.remove_netns();
    pod.del().expect_success("DEL with the netns gone");
    assert!(
        !node.ipam_file(DEFAULT_NETWORK, ip).exists(),
        "IPAM file for {ip} left"
    );
    assert!(
        !node.endpoint_ips().contains(&ip.to_string()),
        "endpoint {ip} left: {:?}",
        node.endpoints()
    );
    assert!(
        !node.links().contains(&host_ifname),
        "host veth {host_ifname} left"
    );
    pod.del().expect_success("second DEL with the netns gone");
}

#[test]
fn address_is_reused_only_after_del() {
    let node = Node::new();
    let conf = node.conf().range("10.244.1.20", "10.244.1.21").build();
    let mut first = node.add_pod_with(conf.clone());
    let second = node.add_pod_with(conf.clone());
    assert_ne!(first.ip(), second.ip());
    let freed = first.ip();
    first.del().expect_success("DEL");
    let third = node.add_pod_with(conf);
    assert_eq!(
        third.ip(),
        freed,
        "the freed address was not handed out again"
    );
    assert_eq!(node.endpoint_ips().len(), 2, "{:?}", node.endpoints());
}

#[test]
fn concurrent_adds_on_a_fresh_node_get_distinct_addresses() {
    const PODS: usize = 4;
    let node = Node::new();
    // The first calls race to load and pin the datapath and to reserve.
    let pods: Vec<Pod<'_>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..PODS).map(|_| scope.spawn(|| node.add_pod())).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread panicked"))
            .collect()
    });
    let ips: BTreeSet<_> = pods.iter().map(|p| p.ip()).collect();
    assert_eq!(ips.len(), PODS, "duplicate addresses: {ips:?}");
    assert_eq!(node.endpoint_ips().len(), PODS, "{:?}", node.endpoints());
    assert_eq!(node.ipam_reservations(DEFAULT_NETWORK).len(), PODS);
    for pod in &pods[1..] {
        if !ping(pods[0].netns(), IpAddr::V4(pod.ip()), 1) {
            let retry = traffic::ping_counts(pods[0].netns(), None, IpAddr::V4(pod.ip()), 3);
            panic!(
                "pod 0 ({}) cannot reach {} (retry: {retry:?} sent/received)\nendpoints: {:?}\ndrops: {:?}\nstats: {:?}\nneigh: {}",
                pods[0].ip(),
                pod.ip(),
                node.endpoints(),
                node.drops(),
                node.stats(),
                pods[0].netns().ip(&["neigh"]),
            );
        }
    }
}

#[test]
fn mtu_from_the_config_is_applied_to_both_ends() {
    let node = Node::new();
    let pod = node.add_pod_with(node.conf().mtu(1400).build());
    let pod_link = pod.netns().ip(&["-j", "link", "show", "dev", "eth0"]);
    let host_link = node
        .netns()
        .ip(&["-j", "link", "show", "dev", &pod.host_ifname()]);
    for (side, json) in [("pod", pod_link), ("host", host_link)] {
        let links: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(links[0]["mtu"], 1400, "{side} side: {json}");
    }
}

#[test]
fn del_without_cni_netns_releases_address_and_endpoint() {
    let node = Node::new();
    let mut pod = node.add_pod();
    let ip = IpAddr::V4(pod.ip());
    pod.remove_netns();

    // skel requires CNI_NETNS for ADD and CHECK only; runtimes leave it
    // empty for DEL once the sandbox is gone.
    let stdin = pod.conf_with_prev_result("1.0.0").to_string();
    node.cni(&CniRequest {
        command: "DEL",
        container_id: pod.container_id(),
        netns: None,
        ifname: "eth0",
        args: None,
        stdin: stdin.as_bytes(),
    })
    .expect_success("DEL without CNI_NETNS");
    assert!(
        !node.ipam_file(DEFAULT_NETWORK, ip).exists(),
        "IPAM file for {ip} left"
    );
    assert!(
        !node.endpoint_ips().contains(&ip.to_string()),
        "endpoint {ip} left: {:?}",
        node.endpoints()
    );
}

#[test]
fn nodes_sharing_a_bpffs_mount_keep_separate_state() {
    let bpffs = Arc::new(Bpffs::new());
    let first = Node::with_bpffs(Arc::clone(&bpffs));
    let second = Node::with_bpffs(Arc::clone(&bpffs));
    // The same subnet on both: only the bpffs root tells them apart.
    let a = [first.add_pod(), first.add_pod()];
    let b = second.add_pod();

    let first_ips: BTreeSet<String> = a.iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(first.endpoint_ips(), first_ips);
    assert_eq!(second.endpoint_ips(), BTreeSet::from([b.ip().to_string()]));
    assert!(ping(a[0].netns(), IpAddr::V4(a[1].ip()), 1));
    assert_eq!(
        first.dropped_packets(&["unknown-source", "spoofed-source"], "from-pod"),
        0
    );
}
