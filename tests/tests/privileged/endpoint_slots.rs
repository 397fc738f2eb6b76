//! `ENDPOINTS_V4`, the array copy of IPv4 endpoints the datapath reads
//! first: ADD fills a pod's slot, DEL retires it, an address whose slot
//! another holds is served from `ENDPOINTS`, and a load brings slots that
//! an older build left behind back in step with `ENDPOINTS`.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use cni_ebpf_tests::{
    Node, Pod,
    agent::Agent,
    ext::wait_until,
    spec::{endpoint_slot_v4, endpoint_slot_v4_fields, write_endpoint_slot_v4},
    traffic::ping,
};

/// `pod`'s row in `cni-ebpfd endpoints --json`.
fn row(node: &Node, pod: &Pod<'_>) -> serde_json::Value {
    let ip = pod.ip().to_string();
    let endpoints = node.endpoints();
    endpoints
        .iter()
        .find(|e| e["ip"] == ip)
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint {ip}: {endpoints:?}"))
}

/// `slotV4` of `pod`'s row.
fn in_slot(node: &Node, pod: &Pod<'_>) -> bool {
    row(node, pod)["slotV4"]
        .as_bool()
        .expect("slotV4 of an IPv4 address")
}

fn ifindex(node: &Node, pod: &Pod<'_>) -> u32 {
    row(node, pod)["ifindex"].as_u64().unwrap() as u32
}

fn talk(a: &Pod<'_>, b: &Pod<'_>, when: &str) {
    assert!(
        ping(a.netns(), IpAddr::V4(b.ip()), 2) && ping(b.netns(), IpAddr::V4(a.ip()), 2),
        "{} and {} do not reach each other {when}",
        a.ip(),
        b.ip()
    );
}

#[test]
fn add_fills_a_pods_slot_and_del_retires_it() {
    let node = Node::new();
    let a = node.add_pod();
    let mut b = node.add_pod();
    for pod in [&a, &b] {
        assert!(in_slot(&node, pod), "{} has no slot", pod.ip());
        assert_eq!(
            endpoint_slot_v4_fields(&node, pod.ip()),
            (true, pod.ip(), ifindex(&node, pod))
        );
    }
    talk(&a, &b, "in their slots");
    let b_ip = b.ip();
    b.del().expect_success("DEL");
    assert!(
        !endpoint_slot_v4_fields(&node, b_ip).0,
        "DEL left its slot live"
    );
    let c = node.add_pod();
    assert!(in_slot(&node, &c));
    talk(&a, &c, "after a DEL and an ADD");
}

/// Two addresses with the same low 12 bits: the first holds the slot, the
/// second is served from `ENDPOINTS`; once the first is gone, a load gives
/// the second its slot.
#[test]
fn addresses_that_share_a_slot_are_served_from_endpoints() {
    let node = Node::new();
    let conf = |address: &str| {
        node.conf()
            .subnet("10.244.0.0/16")
            .range(address, address)
            .build()
    };
    let mut first = node.add_pod_with(conf("10.244.1.5"));
    let second = node.add_pod_with(conf("10.244.17.5"));
    let third = node.add_pod_with(conf("10.244.2.9"));
    assert!(in_slot(&node, &first));
    assert!(!in_slot(&node, &second), "the second took the first's slot");
    assert_eq!(
        endpoint_slot_v4_fields(&node, second.ip()),
        (true, first.ip(), ifindex(&node, &first))
    );
    talk(&first, &second, "sharing a slot");
    talk(&second, &third, "sharing a slot");
    // CHECK reads the entry where the datapath does: the first's slot is
    // not the second's entry.
    second
        .check("1.0.0")
        .expect_success("CHECK of the pod whose slot another holds");

    let first_ip = first.ip();
    first.del().expect_success("DEL of the slot's holder");
    assert!(!endpoint_slot_v4_fields(&node, first_ip).0);
    talk(&second, &third, "after the holder's DEL");

    node.agent("load", &["--replace"]);
    assert!(in_slot(&node, &second), "the load left the free slot empty");
    talk(&second, &third, "in its own slot");
}

/// What a build without `ENDPOINTS_V4` leaves (its ADD fills no slot, its
/// DEL retires none) is repaired by the load of this build's programs,
/// before they run, and by the agent while they run.
#[test]
fn a_load_brings_the_slots_back_in_step_with_endpoints() {
    let node = Node::new();
    let a = node.add_pod();
    let b = node.add_pod();
    // b as an older build's ADD leaves it: in ENDPOINTS alone.
    write_endpoint_slot_v4(&node, b.ip(), &[0; 64]);
    assert!(!in_slot(&node, &b));
    talk(&a, &b, "with b in ENDPOINTS alone");
    // A pod an older build's DEL removed from ENDPOINTS alone: its slot
    // still live, pointing at a's veth.
    let gone = Ipv4Addr::new(10, 244, 1, 200);
    let mut stale = endpoint_slot_v4(&node, a.ip());
    stale[4..8].copy_from_slice(&gone.octets());
    write_endpoint_slot_v4(&node, gone, &stale);
    assert!(endpoint_slot_v4_fields(&node, gone).0);

    node.agent("load", &["--replace"]);
    assert!(in_slot(&node, &b), "b has no slot after the load");
    assert!(
        !endpoint_slot_v4_fields(&node, gone).0,
        "the slot of an address without an endpoint is still live"
    );
    talk(&a, &b, "after the load");

    // The same, left by an older plugin while this build's programs run
    // (an upgrade's rollout), after the agent started: its next pass
    // repairs it (every pass adopts the attachments, which syncs).
    let _agent = Agent::start(&node, &["--gc-interval", "1"]);
    write_endpoint_slot_v4(&node, b.ip(), &[0; 64]);
    write_endpoint_slot_v4(&node, gone, &stale);
    let repaired = wait_until(Duration::from_secs(10), || {
        in_slot(&node, &b) && !endpoint_slot_v4_fields(&node, gone).0
    });
    assert!(repaired, "the agent left the slots out of step");
    talk(&a, &b, "after the agent's repair");
}
