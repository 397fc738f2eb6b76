//! A runtime starting many pods at once on a fresh node: every ADD races to
//! load the datapath and to reserve; every DEL races to release.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use cni_ebpf_tests::{
    Node, Pod,
    node::DEFAULT_NETWORK,
    spec::{Footprint, Sandbox, assert_unlocked, host_veths, records},
    traffic::ping,
};

const PODS: usize = 32;

/// Longer than this for one ADD on an idle node means something waited on
/// a lock it should not have.
const QUICK: Duration = Duration::from_secs(5);

#[test]
fn parallel_adds_and_dels_on_a_fresh_node() {
    let node = Node::new();
    let mut pods: Vec<Pod<'_>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..PODS).map(|_| scope.spawn(|| node.add_pod())).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an ADD thread panicked"))
            .collect()
    });

    let ips: BTreeSet<String> = pods.iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(ips.len(), PODS, "duplicate addresses");
    let footprint = Footprint::of(&node, DEFAULT_NETWORK);
    assert_eq!(footprint.endpoints, ips, "endpoints");
    assert_eq!(
        footprint.reservations,
        pods.iter().map(|p| IpAddr::V4(p.ip())).collect(),
        "reservations"
    );
    assert_eq!(
        footprint.host_veths,
        pods.iter().map(|p| p.host_ifname()).collect(),
        "host veths"
    );
    assert_eq!(
        footprint.records,
        pods.iter()
            .map(|p| format!("{}-eth0", p.container_id()))
            .collect(),
        "records"
    );
    // Every pod is wired: the first reaches the last, the last the first,
    // and every one answers CHECK.
    assert!(ping(pods[0].netns(), IpAddr::V4(pods[PODS - 1].ip()), 1));
    assert!(ping(pods[PODS - 1].netns(), IpAddr::V4(pods[0].ip()), 1));
    for pod in &pods {
        pod.check("1.0.0")
            .expect_success("CHECK after the parallel ADDs");
    }

    std::thread::scope(|scope| {
        for pod in &mut pods {
            scope.spawn(move || pod.del().expect_success("parallel DEL"));
        }
    });
    let footprint = Footprint::of(&node, DEFAULT_NETWORK);
    assert!(footprint.reservations.is_empty(), "{footprint:?}");
    assert!(footprint.endpoints.is_empty(), "{footprint:?}");
    assert!(footprint.host_veths.is_empty(), "{footprint:?}");
    assert!(records(&node, DEFAULT_NETWORK).is_empty());
    for pod in &pods {
        assert_eq!(crate::pod_links(pod.netns()), Vec::<String>::new());
    }

    // No lock is left held: both can be taken at once, and an ADD is quick.
    assert_unlocked(&node.ipam_dir().join(DEFAULT_NETWORK).join("lock"), QUICK);
    assert_unlocked(&node.state_dir().join("lock"), QUICK);
    let mut again = Sandbox::new(&node);
    let add = again.add(&node.conf().build());
    add.expect_result("ADD after the DELs");
    assert!(add.elapsed < QUICK, "ADD took {:?}", add.elapsed);
    let del = again.del();
    del.expect_success("DEL of the late pod");
    assert!(del.elapsed < QUICK, "DEL took {:?}", del.elapsed);
    assert!(host_veths(&node).is_empty());
}

#[test]
fn parallel_adds_into_a_small_range_fill_it_exactly() {
    // More ADDs than addresses: as many succeed as there are addresses,
    // the rest fail with 110 and leave nothing behind.
    const RANGE: usize = 8;
    let node = Node::new();
    let conf = node.conf().range("10.244.1.100", "10.244.1.107").build();
    let outcomes: Vec<Result<Pod<'_>, cni_ebpf_tests::CniOutput>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..RANGE + 4)
            .map(|_| scope.spawn(|| Pod::add(&node, conf.clone())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (added, refused): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(Result::is_ok);
    assert_eq!(
        added.len(),
        RANGE,
        "refusals: {:?}",
        refused
            .iter()
            .map(|r| r.as_ref().err().map(|o| o.describe()))
            .collect::<Vec<_>>()
    );
    for refusal in &refused {
        let output = refusal.as_ref().err().unwrap();
        output.expect_error("ADD into the full range", 110);
    }
    let pods: Vec<Pod<'_>> = added.into_iter().map(Result::unwrap).collect();
    let footprint = Footprint::of(&node, DEFAULT_NETWORK);
    assert_eq!(footprint.reservations.len(), RANGE);
    assert_eq!(footprint.endpoints.len(), RANGE);
    assert_eq!(
        footprint.host_veths.len(),
        RANGE,
        "a refused ADD left its veth"
    );
    assert_eq!(footprint.records.len(), RANGE);
    drop(pods);
}
