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
pub use crate::packet_watch::{PacketWatch, SeenPacket, udp_checksum_ok};
pub use crate::nat_table::{GcOutcome, NatFlow, NatTable, nat_gc, nat_table};
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
