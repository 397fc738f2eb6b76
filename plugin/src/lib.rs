//! The cni-ebpf CNI plugin: protocol, config, IPAM, and the netns/netlink
//! work of ADD, DEL and CHECK. The binary in `main.rs` only dispatches.

pub mod cni;
pub mod error;
pub mod ipam;
