//! The cni-ebpf CNI plugin: protocol, config, IPAM, and the netns/netlink
//! work of ADD, DEL and CHECK. The binary in `main.rs` only dispatches.

pub mod bandwidth;
pub mod cni;
pub mod commands;
pub mod error;
pub mod host_ports;
pub mod ipam;
pub mod ipv6;
pub mod logging;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod state;
pub mod uplink;
