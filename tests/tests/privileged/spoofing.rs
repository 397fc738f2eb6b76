//! Anti-spoofing: a pod can only send as itself, over either family.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use cni_ebpf_tests::{Family, Node, Pod, traffic, traffic::UdpReceiver};

/// An address in the pod subnet that IPAM hands out only after 247 pods.
fn spare_address(pod: &Pod<'_>, family: Family) -> IpAddr {
    match pod.addr(family) {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            Ipv4Addr::new(a, b, c, 250).into()
        }
        IpAddr::V6(ip) => {
            let mut segments = ip.segments();
            segments[7] = 0xfa;
            Ipv6Addr::from(segments).into()
        }
    }
}

/// Makes sure `pod` already knows the gateway's MAC and will not ARP (or
/// solicit) with a foreign source address: what is tested is the IP
/// packet, not neighbour resolution.
fn settle_neighbour(pod: &Pod<'_>, peer: IpAddr) {
    pod.netns()
        .set_sysctl("net.ipv4.conf.eth0.arp_announce", "2");
    assert!(traffic::ping(pod.netns(), peer, 1), "baseline ping failed");
}

/// Gives `pod` the extra address `spoofed` (usable at once).
fn add_spoofed_address(pod: &Pod<'_>, spoofed: IpAddr) {
    let (prefix, nodad) = if spoofed.is_ipv4() {
        (32, None)
    } else {
        (128, Some("nodad"))
    };
    let address = format!("{spoofed}/{prefix}");
    let mut args = vec!["addr", "add", address.as_str(), "dev", "eth0"];
    args.extend(nodad);
    pod.netns().ip(&args);
}

#[test]
fn spoofed_source_is_dropped_and_counted() {
    for family in Family::ALL {
        let node = Node::new();
        let a = node.add_pod_of(family);
        let b = node.add_pod_of(family);
        let (a_ip, b_ip) = (a.addr(family), b.addr(family));
        settle_neighbour(&a, b_ip);
        let spoofed = spare_address(&a, family);
        add_spoofed_address(&a, spoofed);

        let receiver = UdpReceiver::start(b.netns(), SocketAddr::new(b_ip, 0)).unwrap();
        let dropped_before =
            node.dropped_packets(&["spoofed-source", "unknown-source"], "from-pod");
        let sent = 5;
        traffic::udp_send(
            a.netns(),
            SocketAddr::new(spoofed, 0),
            receiver.addr(),
            b"spoofed",
            sent,
        )
        .unwrap();
        // Then the same from a's own address: once it arrives, anything sent
        // before it on the same path has had its chance too.
        traffic::udp_send(
            a.netns(),
            SocketAddr::new(a_ip, 0),
            receiver.addr(),
            b"genuine",
            1,
        )
        .unwrap();
        assert!(
            receiver.wait_for(Duration::from_secs(5), |got| got
                .iter()
                .any(|(_, data)| data == b"genuine")),
            "{family:?}: the genuine datagram never arrived: {:?}",
            receiver.received()
        );
        let leaked: Vec<_> = receiver
            .received()
            .into_iter()
            .filter(|(from, _)| from.ip() == spoofed)
            .collect();
        assert!(
            leaked.is_empty(),
            "{family:?}: spoofed datagrams reached pod b: {leaked:?}"
        );

        let dropped = node.dropped_packets(&["spoofed-source", "unknown-source"], "from-pod")
            - dropped_before;
        assert!(
            dropped >= u64::from(sent),
            "{family:?}: drop counters rose by {dropped}, expected >= {sent}: {:?}",
            node.drops()
        );
    }
}

#[test]
fn spoofed_ping_source_gets_no_answer() {
    for family in Family::ALL {
        let node = Node::new();
        let a = node.add_pod_of(family);
        let b = node.add_pod_of(family);
        let b_ip = b.addr(family);
        settle_neighbour(&a, b_ip);
        let spoofed = spare_address(&a, family);
        add_spoofed_address(&a, spoofed);

        let dropped_before =
            node.dropped_packets(&["spoofed-source", "unknown-source"], "from-pod");
        let (sent, received) = traffic::ping_counts(a.netns(), Some(spoofed), b_ip, 2);
        assert_eq!(
            received, 0,
            "{family:?}: pings from a spoofed source were answered"
        );
        let dropped = node.dropped_packets(&["spoofed-source", "unknown-source"], "from-pod")
            - dropped_before;
        assert!(
            dropped >= u64::from(sent),
            "{family:?}: drop counters rose by {dropped} for {sent} pings"
        );
        // From a's own address explicitly: IPv6 source selection prefers
        // the spoofed /128 (the longer match with b's address).
        assert_eq!(
            traffic::ping_counts(a.netns(), Some(a.addr(family)), b_ip, 1),
            (1, 1),
            "{family:?}: a's own address stopped working"
        );
    }
}

/// A pod that answers neighbour solicitations for an address that is not
/// its own (as an attacker would, to draw traffic meant for it): its
/// advertisements are dropped and the node never learns its MAC for it.
#[test]
fn advertising_an_ipv6_address_not_its_own_is_dropped() {
    let node = Node::new();
    let a = node.add_pod_of(Family::V6);
    let claimed = spare_address(&a, Family::V6);
    add_spoofed_address(&a, claimed);
    // The node sends what it has for `claimed` to A's link, so it asks A.
    let host_ifname = a.host_ifname();
    node.netns().ip(&[
        "-6",
        "route",
        "add",
        &format!("{claimed}/128"),
        "dev",
        &host_ifname,
    ]);
    let dropped_before = node.dropped_packets(&["spoofed-nd"], "from-pod");

    assert!(
        !traffic::ping(node.netns(), claimed, 2),
        "the node reached an address A only claims"
    );
    let dropped = node.dropped_packets(&["spoofed-nd"], "from-pod") - dropped_before;
    assert!(dropped >= 1, "no advertisement dropped: {:?}", node.drops());
    let a_mac = a.result()["interfaces"][1]["mac"].as_str().unwrap();
    let neighbours = node
        .netns()
        .ip(&["-6", "neigh", "show", "dev", &host_ifname]);
    assert!(
        !neighbours.contains(a_mac),
        "the node learnt A's MAC: {neighbours}"
    );
    // A's own address is still A's.
    assert!(traffic::ping(node.netns(), a.addr(Family::V6), 1));
}

#[test]
fn spoofed_mac_is_dropped_and_counted() {
    for family in Family::ALL {
        spoofed_mac_is_dropped_and_counted_in(family);
    }
}

fn spoofed_mac_is_dropped_and_counted_in(family: Family) {
    let node = Node::new();
    let a = node.add_pod_of(family);
    let b = node.add_pod_of(family);
    let b_ip = b.addr(family);
    assert!(traffic::ping(a.netns(), b_ip, 1), "baseline ping failed");
    a.netns()
        .ip(&["link", "set", "dev", "eth0", "address", "02:00:00:00:be:ef"]);
    // A new MAC flushes the neighbour table: pin the gateway so the pod
    // sends IP packets (with the foreign MAC) rather than ARP requests.
    let gateway = a
        .gateway_of(family)
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
    let (sent, received) = traffic::ping_counts(a.netns(), None, b_ip, 2);
    assert_eq!(
        received, 0,
        "{family:?}: pings from a foreign MAC were answered"
    );
    let dropped = node.dropped_packets(&reasons, "from-pod") - dropped_before;
    assert!(
        dropped >= u64::from(sent),
        "drop counters rose by {dropped} for {sent} pings: {:?}",
        node.drops()
    );
}
