//! Harness of the cni-ebpf integration tests, the demo and the benchmarks:
//! every topology is built from network namespaces made here (a node
//! namespace plays the host, more namespaces play pods and the outside
//! world), and every guard undoes what it made when dropped.
//!
//! Drop order is enforced by borrows: a [`Pod`] borrows its [`Node`], so pods
//! are deleted (CNI DEL) before their node's namespace goes, and the node's
//! bpffs mount is unmounted last.

pub mod agent;
mod background;
pub mod binaries;
pub mod bpffs;
pub mod chain;
pub mod cluster;
pub mod conf;
pub mod containerd;
pub mod cri;
pub mod echo;
pub mod etcd;
pub mod exec;
pub mod ext;
pub mod family;
pub mod firewall;
pub mod foreign_xdp;
pub mod hash;
pub mod hostports;
pub mod kube_api;
pub mod kube_proxy;
pub mod links;
pub mod names;
pub mod nat_table;
pub mod netns;
pub mod node;
pub mod packet_watch;
pub mod peer_server;
pub mod pki;
pub mod plugin;
pub mod plugin_node;
pub mod pod;
pub mod process;
pub mod raw_bpf;
pub mod sockets;
pub mod spec;
pub mod stop;
pub mod tc_hooks;
pub mod tcp_counters;
pub mod traffic;
pub mod two_nodes;
pub mod udp_echo;
pub mod uplink;
pub mod veth;
pub mod wait;

pub use bpffs::Bpffs;
pub use family::Family;
pub use netns::{Netns, NsCommand};
pub use node::{ConfBuilder, Ext, Node};
pub use plugin::{CniOutput, CniRequest, Plugin};
pub use pod::Pod;

/// Panics with a clear message unless the process runs as root: the tests
/// build namespaces and load BPF, and a skipped test would hide a regression.
pub fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!(
            "the cni-ebpf integration harness needs root (network namespaces, bpffs, BPF); \
             run as root, e.g. `sudo cargo xtask test`"
        );
    }
}
