//! Privileged integration tests: real topologies in network namespaces,
//! one module per area. They need root and fail without it; every test
//! builds its own namespaces and bpffs, so they run in parallel.
//!
//! The plugin and `cni-ebpfd` come from `$CNI_EBPF_BIN_DIR` (set by `cargo
//! xtask test`) or `target/debug`: build the workspace before running.

#[path = "privileged/agent.rs"]
mod agent;
#[path = "privileged/bandwidth.rs"]
mod bandwidth;
#[path = "privileged/big_tcp.rs"]
mod big_tcp;
#[path = "privileged/cluster.rs"]
mod cluster;
#[path = "privileged/cluster_tls.rs"]
mod cluster_tls;
#[path = "privileged/containerd.rs"]
mod containerd;
#[path = "privileged/cross_node.rs"]
mod cross_node;
#[path = "privileged/endpoint_slots.rs"]
mod endpoint_slots;
#[path = "privileged/errors.rs"]
mod errors;
#[path = "privileged/faults.rs"]
mod faults;
#[path = "privileged/harness.rs"]
mod harness;
#[path = "privileged/host_ports.rs"]
mod host_ports;
#[path = "privileged/host_to_pod.rs"]
mod host_to_pod;
#[path = "privileged/image.rs"]
mod image;
#[path = "privileged/install.rs"]
mod install;
#[path = "privileged/lifecycle.rs"]
mod lifecycle;
#[path = "privileged/masquerade.rs"]
mod masquerade;
#[path = "privileged/netfilter_handoff.rs"]
mod netfilter_handoff;
#[path = "privileged/pod_to_pod.rs"]
mod pod_to_pod;
#[path = "privileged/resources.rs"]
mod resources;
#[path = "privileged/runtimes.rs"]
mod runtimes;
#[path = "privileged/services.rs"]
mod services;
#[path = "privileged/soak.rs"]
mod soak;
#[path = "privileged/spec_chaining.rs"]
mod spec_chaining;
#[path = "privileged/spec_check.rs"]
mod spec_check;
#[path = "privileged/spec_concurrency.rs"]
mod spec_concurrency;
#[path = "privileged/spec_config.rs"]
mod spec_config;
#[path = "privileged/spec_errors.rs"]
mod spec_errors;
#[path = "privileged/spec_gc_status.rs"]
mod spec_gc_status;
#[path = "privileged/spec_ipam.rs"]
mod spec_ipam;
#[path = "privileged/spec_versions.rs"]
mod spec_versions;
#[path = "privileged/spoofing.rs"]
mod spoofing;
#[path = "privileged/tunnel.rs"]
mod tunnel;
#[path = "privileged/upgrade.rs"]
mod upgrade;
#[path = "privileged/uplink_xdp.rs"]
mod uplink_xdp;
#[path = "privileged/versions.rs"]
mod versions;

use std::{collections::BTreeSet, net::IpAddr};

use cni_ebpf_tests::{Node, links};

/// What a node holds that a failed or undone call must not add to.
#[derive(Debug, PartialEq, Eq)]
struct NodeState {
    links: BTreeSet<String>,
    reservations: BTreeSet<IpAddr>,
    endpoints: BTreeSet<String>,
}

impl NodeState {
    fn of(node: &Node, network: &str) -> Self {
        Self {
            links: node.links().into_iter().collect(),
            reservations: node.ipam_reservations(network),
            endpoints: node.endpoint_ips(),
        }
    }
}

/// Link names of a pod namespace other than `lo`.
fn pod_links(ns: &cni_ebpf_tests::Netns) -> Vec<String> {
    links::names_settled(ns)
        .into_iter()
        .filter(|l| l != "lo")
        .collect()
}
