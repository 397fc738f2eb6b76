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
pub use crate::two_nodes::{CLUSTER_CIDR, NodeSide, SIDE_A, SIDE_B, TwoNodes, UNDERLAY};
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
