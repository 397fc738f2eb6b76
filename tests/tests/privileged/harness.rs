//! The harness itself, without the plugin: namespaces, bpffs, traffic
//! helpers and the checks the plugin tests rely on must be able to fail.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use cni_ebpf_tests::{
    Bpffs, Netns, firewall, links,
    traffic::{self, UdpReceiver},
};

/// Two namespaces joined by a veth made inside them, 10.199.0.1/24 and
/// 10.199.0.2/24.
fn veth_pair() -> (Netns, Netns) {
    let a = Netns::with_loopback("a");
    let b = Netns::with_loopback("b");
    let b_path = b.path().to_string_lossy().into_owned();
    a.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b_path,
    ]);
    a.ip(&["addr", "add", "10.199.0.1/24", "dev", "eth0"]);
    b.ip(&["addr", "add", "10.199.0.2/24", "dev", "eth0"]);
    a.ip(&["link", "set", "eth0", "up"]);
    b.ip(&["link", "set", "eth0", "up"]);
    (a, b)
}

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 199, 0, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 199, 0, 2));

fn mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_string_lossy();
    mounts
        .lines()
        .any(|line| line.split_whitespace().nth(4) == Some(path.as_ref()))
}

#[test]
fn netns_is_created_empty_and_removed_on_drop() {
    let ns = Netns::new("probe");
    let path = ns.path().to_path_buf();
    let name = ns.name().to_string();
    assert!(path.exists());
    let listed = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        listed.contains(&name),
        "ip netns list lacks {name}: {listed}"
    );
    assert_eq!(links::names(&ns), ["lo"]);
    drop(ns);
    assert!(!path.exists(), "{} left behind", path.display());
    assert!(!mounted(&path));
}

#[test]
fn sysctl_is_written_in_the_namespace_only() {
    let a = Netns::new("a");
    let b = Netns::new("b");
    a.set_sysctl("net.ipv4.ip_forward", "1");
    assert_eq!(a.sysctl("net.ipv4.ip_forward"), "1");
    assert_eq!(b.sysctl("net.ipv4.ip_forward"), "0");
    a.set_sysctl("net.ipv4.ip_forward", "0");
    assert_eq!(a.sysctl("net.ipv4.ip_forward"), "0");
}

#[test]
fn bpffs_is_private_and_unmounted_on_drop() {
    let first = Bpffs::new();
    let second = Bpffs::new();
    let mountpoint = first.mountpoint().to_path_buf();
    assert!(mounted(&mountpoint));
    let statfs = nix::sys::statfs::statfs(&mountpoint).unwrap();
    assert_eq!(
        statfs.filesystem_type().0 as i64,
        0xcafe_4a11,
        "not a bpffs"
    );
    std::fs::create_dir(first.root("node")).unwrap();
    assert!(!second.root("node").exists(), "bpffs instances share state");
    drop(first);
    assert!(!mounted(&mountpoint));
    assert!(!mountpoint.exists());
}

#[test]
fn ping_and_tcp_cross_a_veth_and_fail_without_it() {
    let (a, b) = veth_pair();
    assert!(traffic::ping(&a, B, 2));
    assert!(traffic::ping(&b, A, 2));
    let transfer = traffic::tcp_transfer(&b, &a, B, 0, 1 << 20).unwrap();
    assert!(transfer.intact(), "{transfer:?}");
    assert_eq!(transfer.received_bytes, 1 << 20);

    b.ip(&["link", "set", "eth0", "down"]);
    assert!(
        !traffic::ping(&a, B, 1),
        "ping succeeded over a link that is down"
    );
    assert!(traffic::tcp_transfer(&b, &a, B, 0, 1024).is_err());
}

#[test]
fn udp_receiver_records_sources() {
    let (a, b) = veth_pair();
    let receiver = UdpReceiver::start(&b, SocketAddr::new(B, 0)).unwrap();
    traffic::udp_send(&a, SocketAddr::new(A, 0), receiver.addr(), b"hello", 3).unwrap();
    assert!(receiver.wait_for(Duration::from_secs(5), |got| got.len() == 3));
    assert!(
        receiver
            .received()
            .iter()
            .all(|(from, data)| from.ip() == A && data == b"hello")
    );
}

#[test]
fn firewall_check_sees_iptables_and_nftables_state() {
    let ns = Netns::new("fw");
    assert_eq!(firewall::rules(&ns), Vec::<String>::new());
    ns.exec_ok("nft", &["add", "table", "inet", "probe"]);
    assert!(
        !firewall::rules(&ns).is_empty(),
        "an nftables table went unseen"
    );

    let ns = Netns::new("fw");
    ns.exec_ok("iptables", &["-A", "FORWARD", "-j", "ACCEPT"]);
    let found = firewall::rules(&ns);
    assert!(found.iter().any(|l| l.contains("-A FORWARD")), "{found:?}");
}

#[test]
fn link_kinds_show_bridges() {
    let ns = Netns::new("br");
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    let found = links::list(&ns);
    assert!(
        found
            .iter()
            .any(|l| l.name == "br0" && l.kind.as_deref() == Some("bridge")),
        "{found:?}"
    );
}
