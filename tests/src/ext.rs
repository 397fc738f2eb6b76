//! Topologies and servers for traffic that leaves a node: an `ext`
//! namespace behind the node's uplink with servers that report the peer
//! address they saw, packet watchers, two nodes joined by an underlay, and
//! readers of the masquerade table (`cni-ebpfd nat` / `gc`).
#![allow(unused_imports)]

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::socket::{
    self, AddressFamily, Backlog, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};
use serde_json::{Value, json};

use crate::{
    Bpffs, Node, firewall,
    hash::{ByteStream, Fnv64},
    netns::Netns,
    node::Ext,
};

pub use crate::wait::wait_until;
pub use crate::sockets::{set_udp_no_check, tcp_connect_from, tcp_listen};
pub use crate::conf::{masquerade_conf, with_keys};
pub use crate::uplink::uplink_with_default_route;
pub use crate::peer_server::{Exchange, PeerClient, PeerServer, ServerConn};
pub use crate::udp_echo::{UdpEcho, parse_echo_answer, udp_request};
#[allow(unused_imports)]
use crate::background::*;
#[allow(unused_imports)]
use crate::sockets::timeval;

/// Panics unless `node` forwards nothing itself (`ip_forward=0`) and has
/// empty iptables and nftables rulesets: the datapath alone moves traffic.
pub fn assert_node_untouched(node: &Node) {
    assert_eq!(
        node.netns().sysctl("net.ipv4.ip_forward"),
        "0",
        "ip_forward is on in node {}",
        node.name()
    );
    assert_eq!(
        firewall::rules(node.netns()),
        Vec::<String>::new(),
        "firewall state in node {}",
        node.name()
    );
}

/// A packet as a raw socket saw it arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenPacket {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The transport header and payload.
    pub l4: Vec<u8>,
}

impl SeenPacket {
    /// The big-endian 16-bit word at `index` of the transport header: for
    /// UDP 0 is the source port, 1 the destination port, 3 the checksum.
    pub fn word(&self, index: usize) -> Option<u16> {
        let bytes = self.l4.get(index * 2..index * 2 + 2)?;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// Whether the Internet checksum over the transport bytes (as ICMP
    /// computes it) is right.
    pub fn icmp_checksum_ok(&self) -> bool {
        let mut sum = 0u32;
        for pair in self.l4.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }
}

/// Whether `udp` (header and payload, as quoted or received) carries a
/// right checksum for `src` -> `dst`, or none at all.
pub fn udp_checksum_ok(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> bool {
    let Some(len) = udp
        .get(4..6)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return false;
    };
    if udp.len() < len || len < 8 {
        return false;
    }
    if udp[6..8] == [0, 0] {
        return true;
    }
    let mut sum = 17u32 + len as u32;
    let pseudo = [src.octets(), dst.octets()].concat();
    for pair in pseudo.chunks(2).chain(udp[..len].chunks(2)) {
        sum += u32::from(u16::from_be_bytes([
            pair[0],
            pair.get(1).copied().unwrap_or(0),
        ]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// A raw IPv4 socket of one protocol in a namespace, recording a copy of
/// every packet of that protocol the namespace receives.
pub struct PacketWatch {
    seen: Arc<Mutex<Vec<SeenPacket>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl PacketWatch {
    /// Watches `protocol` (ICMP or UDP) arriving in `ns`.
    pub fn start(ns: &Netns, protocol: SockProtocol) -> io::Result<Self> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            ns.spawn(move || {
                let fd = match socket::socket(
                    AddressFamily::Inet,
                    SockType::Raw,
                    SockFlag::SOCK_CLOEXEC,
                    protocol,
                )
                .and_then(|fd| {
                    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeval(POLL))?;
                    Ok(fd)
                }) {
                    Ok(fd) => fd,
                    Err(e) => {
                        let _ = ready_tx.send(Err(io::Error::from(e)));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let deadline = Instant::now() + HOLD_LIMIT;
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok(n) = socket::recv(fd.as_fd().as_raw_fd(), &mut buf, MsgFlags::empty())
                    else {
                        continue;
                    };
                    if let Some(packet) = parse_ipv4(&buf[..n]) {
                        seen.lock().unwrap().push(packet);
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(IO_TIMEOUT)
            .map_err(|_| io::Error::other("watch thread did not start"))??;
        Ok(Self {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Packets seen so far.
    pub fn seen(&self) -> Vec<SeenPacket> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until at least `n` packets matching `wanted` were seen, or
    /// `timeout` (the watch thread may lag behind the socket that got the
    /// same packet); returns the matching ones.
    pub fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
        wanted: impl Fn(&SeenPacket) -> bool,
    ) -> Vec<SeenPacket> {
        let matching = || -> Vec<SeenPacket> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .filter(|p| wanted(p))
                .cloned()
                .collect()
        };
        wait_until(timeout, || matching().len() >= n);
        matching()
    }
}

impl Drop for PacketWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn parse_ipv4(packet: &[u8]) -> Option<SeenPacket> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let addr =
        |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    let l4 = packet.get(ihl..)?;
    Some(SeenPacket {
        src: addr(12),
        dst: addr(16),
        l4: l4.to_vec(),
    })
}

/// One row of `cni-ebpfd nat --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatFlow {
    pub proto: String,
    pub pod: SocketAddr,
    pub remote: SocketAddr,
    pub translated: SocketAddr,
    pub state: Option<String>,
    pub idle_ms: u64,
}

/// `cni-ebpfd nat --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatTable {
    pub flows: Vec<NatFlow>,
    pub count: u64,
    pub limit: u64,
    pub capacity: u64,
}

/// Reads `node`'s masquerade table with `cni-ebpfd nat --json`.
pub fn nat_table(node: &Node) -> NatTable {
    let stdout = node.agent("nat", &["--json"]);
    let raw: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("cni-ebpfd nat --json: {e}: {stdout}"));
    let addr = |row: &Value, key: &str| -> SocketAddr {
        row[key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("nat row without a valid {key:?}: {row}"))
    };
    let flows = raw["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("cni-ebpfd nat --json without flows: {raw}"))
        .iter()
        .map(|row| NatFlow {
            proto: row["proto"].as_str().unwrap_or_default().to_string(),
            pod: addr(row, "pod"),
            remote: addr(row, "remote"),
            translated: addr(row, "translated"),
            state: row["state"].as_str().map(str::to_string),
            idle_ms: row["idleMs"].as_u64().unwrap_or(u64::MAX),
        })
        .collect();
    let number = |key: &str| {
        raw[key]
            .as_u64()
            .unwrap_or_else(|| panic!("cni-ebpfd nat --json without {key:?}: {raw}"))
    };
    NatTable {
        flows,
        count: number("count"),
        limit: number("limit"),
        capacity: number("capacity"),
    }
}

/// `cni-ebpfd gc --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOutcome {
    pub scanned: u64,
    pub expired: u64,
    pub live: u64,
}

/// Runs one `cni-ebpfd gc --json` with `timeouts` (flags such as
/// `--udp-timeout 0`) on `node`.
pub fn nat_gc(node: &Node, timeouts: &[&str]) -> GcOutcome {
    let mut args = timeouts.to_vec();
    args.push("--json");
    let stdout = node.agent("gc", &args);
    let raw: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("cni-ebpfd gc --json: {e}: {stdout}"));
    let number = |key: &str| {
        raw[key]
            .as_u64()
            .unwrap_or_else(|| panic!("cni-ebpfd gc --json without {key:?}: {raw}"))
    };
    GcOutcome {
        scanned: number("scanned"),
        expired: number("expired"),
        live: number("live"),
    }
}

/// The cluster CIDR both nodes of [`TwoNodes`] carve their pod CIDRs from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// One node of a [`TwoNodes`] topology: its underlay address and pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSide {
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: &'static str,
}

/// Node A's side.
pub const SIDE_A: NodeSide = NodeSide {
    underlay_ip: Ipv4Addr::new(10, 99, 0, 1),
    pod_cidr: "10.244.1.0/24",
};
/// Node B's side.
pub const SIDE_B: NodeSide = NodeSide {
    underlay_ip: Ipv4Addr::new(10, 99, 0, 2),
    pod_cidr: "10.244.2.0/24",
};

/// The name of the underlay veth in both nodes.
pub const UNDERLAY: &str = "underlay";

/// Two nodes joined by an underlay veth (`10.99.0.1/24` and `10.99.0.2/24`),
/// each with its own bpffs directory (one shared mount) and pod CIDR.
pub struct TwoNodes {
    pub a: Node,
    pub b: Node,
}

impl TwoNodes {
    pub fn new() -> Self {
        let bpffs = Arc::new(Bpffs::new());
        let a = Node::with_bpffs(bpffs.clone());
        let b = Node::with_bpffs(bpffs);
        let b_path = b.netns().path().to_string_lossy().into_owned();
        a.netns().ip(&[
            "link", "add", UNDERLAY, "type", "veth", "peer", "name", UNDERLAY, "netns", &b_path,
        ]);
        for (node, side) in [(&a, SIDE_A), (&b, SIDE_B)] {
            node.netns().ip(&[
                "addr",
                "add",
                &format!("{}/24", side.underlay_ip),
                "dev",
                UNDERLAY,
            ]);
            node.netns().ip(&["link", "set", UNDERLAY, "up"]);
        }
        Self { a, b }
    }

    /// Node A's config: its pod CIDR, masquerade on except inside the
    /// cluster, the underlay as uplink and a route to B's pods via B.
    pub fn conf_a(&self) -> Value {
        node_conf(&self.a, SIDE_A, SIDE_B)
    }

    /// Node B's config, as [`TwoNodes::conf_a`] the other way round.
    pub fn conf_b(&self) -> Value {
        node_conf(&self.b, SIDE_B, SIDE_A)
    }
}

impl Default for TwoNodes {
    fn default() -> Self {
        Self::new()
    }
}

fn node_conf(node: &Node, own: NodeSide, other: NodeSide) -> Value {
    with_keys(
        node.conf().subnet(own.pod_cidr).build(),
        json!({
            "ipMasq": true,
            "nonMasqueradeCIDRs": [CLUSTER_CIDR],
            "uplink": UNDERLAY,
            "nodeRoutes": [{ "dst": other.pod_cidr, "gw": other.underlay_ip.to_string() }],
        }),
    )
}
