//! The old home of the helpers for traffic that leaves a node; each now
//! lives in a module of its own, named for what it is, and is re-exported
//! here so that `cni_ebpf_tests::ext::…` paths keep working:
//!
//! - [`crate::conf`]: extra keys on a plugin config, masquerade;
//! - [`crate::uplink`]: the `ext` namespace behind a node's uplink;
//! - [`crate::peer_server`]: a TCP server that reports the peer address;
//! - [`crate::udp_echo`]: its UDP counterpart;
//! - [`crate::packet_watch`]: packets seen through a raw socket, checksums;
//! - [`crate::sockets`]: listeners and clients with `SO_REUSEPORT`, UDP
//!   without checksums;
//! - [`crate::nat_table`]: `cni-ebpfd nat` and `gc` as data;
//! - [`crate::two_nodes`]: two nodes joined by an underlay;
//! - [`crate::wait`] and [`crate::node::assert_node_untouched`].

pub use crate::conf::{masquerade_conf, masquerading, with_keys};
pub use crate::nat_table::{GcOutcome, NatFlow, NatTable, nat_gc, nat_table};
pub use crate::node::assert_node_untouched;
pub use crate::packet_watch::{PacketWatch, SeenPacket, udp_checksum_ok};
pub use crate::peer_server::{Exchange, PeerClient, PeerServer, ServerConn};
pub use crate::sockets::{set_udp_no_check, tcp_connect_from, tcp_listen};
pub use crate::two_nodes::{
    CLUSTER_CIDR, CLUSTER_CIDR_V6, NodeSide, SIDE_A, SIDE_B, TwoNodes, UNDERLAY,
};
pub use crate::udp_echo::{UdpEcho, parse_echo_answer, udp_request};
pub use crate::uplink::{full_checksums, uplink_with_default_route};
pub use crate::wait::wait_until;
