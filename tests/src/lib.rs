//! Harness of the cni-ebpf integration tests, the demo and the benchmarks:
//! every topology is built from network namespaces made here (a node
//! namespace plays the host, more namespaces play pods and the outside
//! world), and every guard undoes what it made when dropped.
//!
//! Drop order is enforced by borrows: a [`Pod`] borrows its [`Node`], so pods
//! are deleted (CNI DEL) before their node's namespace goes, and the node's
//! bpffs mount is unmounted last.

pub mod agent;
pub mod binaries;
pub mod bpffs;
pub mod cluster;
pub mod containerd;
pub mod cri;
pub mod echo;
pub mod etcd;
pub mod ext;
pub mod firewall;
pub mod hash;
pub mod hostports;
pub mod kube_api;
pub mod kube_proxy;
pub mod links;
pub mod names;
pub mod netns;
pub mod node;
pub mod plugin;
pub mod pod;
pub mod process;
pub mod spec;
pub mod traffic;

pub use bpffs::Bpffs;
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
