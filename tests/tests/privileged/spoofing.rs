//! Anti-spoofing: a pod can only send as itself.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use cni_ebpf_tests::{Node, Pod, traffic, traffic::UdpReceiver};

/// An address in the pod subnet that IPAM hands out only after 247 pods.
fn spare_address(pod: &Pod<'_>) -> Ipv4Addr {
    let [a, b, c, _] = pod.ip().octets();
    Ipv4Addr::new(a, b, c, 250)
}

/// Makes sure `pod` already knows the gateway's MAC and will not ARP with
/// a foreign source address: what is tested is the IP packet, not ARP.
fn settle_neighbour(pod: &Pod<'_>, peer: Ipv4Addr) {
    pod.netns()
        .set_sysctl("net.ipv4.conf.eth0.arp_announce", "2");
    assert!(
        traffic::ping(pod.netns(), IpAddr::V4(peer), 1),
        "baseline ping failed"
    );
}

#[test]
fn spoofed_source_is_dropped_and_counted() {
    let node = Node::new();
    let a = node.add_pod();
    let b = node.add_pod();
    settle_neighbour(&a, b.ip());
    let spoofed = spare_address(&a);
    a.netns()
        .ip(&["addr", "add", &format!("{spoofed}/32"), "dev", "eth0"]);

    let receiver = UdpReceiver::start(b.netns(), SocketAddr::new(IpAddr::V4(b.ip()), 0)).unwrap();
    let dropped_before = node.dropped_packets(&["spoofed-source", "unknown-source"], "from-pod");
    let sent = 5;
    traffic::udp_send(
        a.netns(),
        SocketAddr::new(IpAddr::V4(spoofed), 0),
        receiver.addr(),
        b"spoofed",
        sent,
    )
    .unwrap();
    // Then the same from a's own address: once it arrives, anything sent
    // before it on the same path has had its chance too.
    traffic::udp_send(
        a.netns(),
        SocketAddr::new(IpAddr::V4(a.ip()), 0),
        receiver.addr(),
        b"genuine",
        1,
    )
    .unwrap();
    assert!(
        receiver.wait_for(Duration::from_secs(5), |got| got
            .iter()
            .any(|(_, data)| data == b"genuine")),
        "the genuine datagram never arrived: {:?}",
        receiver.received()
    );
    let leaked: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|(from, _)| from.ip() == IpAddr::V4(spoofed))
        .collect();
    assert!(
        leaked.is_empty(),
        "spoofed datagrams reached pod b: {leaked:?}"
    );

    let dropped =
        node.dropped_packets(&["spoofed-source", "unknown-source"], "from-pod") - dropped_before;
    assert!(
        dropped >= u64::from(sent),
        "drop counters rose by {dropped}, expected >= {sent}: {:?}",
        node.drops()
    );
}

#[test]
fn spoofed_ping_source_gets_no_answer() {
    let node = Node::new();
    let a = node.add_pod();
    let b = node.add_pod();
    settle_neighbour(&a, b.ip());
    let spoofed = spare_address(&a);
    a.netns()
        .ip(&["addr", "add", &format!("{spoofed}/32"), "dev", "eth0"]);

    let dropped_before = node.dropped_packets(&["spoofed-source", "unknown-source"], "from-pod");
    let (sent, received) =
        traffic::ping_counts(a.netns(), Some(IpAddr::V4(spoofed)), IpAddr::V4(b.ip()), 2);
    assert_eq!(received, 0, "pings from a spoofed source were answered");
    let dropped =
        node.dropped_packets(&["spoofed-source", "unknown-source"], "from-pod") - dropped_before;
    assert!(
        dropped >= u64::from(sent),
        "drop counters rose by {dropped} for {sent} pings"
    );
    assert!(
        traffic::ping(a.netns(), IpAddr::V4(b.ip()), 1),
        "a's own address stopped working"
    );
}

#[test]
fn spoofed_mac_is_dropped_and_counted() {
    let node = Node::new();
    let a = node.add_pod();
    let b = node.add_pod();
    assert!(
        traffic::ping(a.netns(), IpAddr::V4(b.ip()), 1),
        "baseline ping failed"
    );
    a.netns()
        .ip(&["link", "set", "dev", "eth0", "address", "02:00:00:00:be:ef"]);
    // A new MAC flushes the neighbour table: pin the gateway so the pod
    // sends IP packets (with the foreign MAC) rather than ARP requests.
    let gateway = a
        .gateway()
        .expect("ADD result without a gateway")
        .to_string();
    let host_mac = a.result()["interfaces"][0]["mac"]
        .as_str()
        .expect("host veth MAC in the result")
        .to_string();
    a.netns().ip(&[
        "neigh",
        "replace",
        &gateway,
        "lladdr",
        &host_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);

    let reasons = ["spoofed-mac"];
    let dropped_before = node.dropped_packets(&reasons, "from-pod");
    let (sent, received) = traffic::ping_counts(a.netns(), None, IpAddr::V4(b.ip()), 2);
    assert_eq!(received, 0, "pings from a foreign MAC were answered");
    let dropped = node.dropped_packets(&reasons, "from-pod") - dropped_before;
    assert!(
        dropped >= u64::from(sent),
        "drop counters rose by {dropped} for {sent} pings: {:?}",
        node.drops()
    );
}
