//! `floor`: the least any datapath built on veth pairs and tc can do for
//! pod ↔ pod. Each pod's veth goes to a node namespace, as with every
//! plugin, and the host end runs a four-instruction program that calls
//! `bpf_redirect_peer` to the other pod's host veth: no map, no check, no
//! counter, no rewrite (the pods hold a permanent neighbour entry for each
//! other with their own host veth's MAC, so the frame needs none). What
//! `floor` adds to `limit` is the second hop's price (one more pass through
//! the receive path and the tc hook); what `cni-ebpf` adds to `floor` is
//! what its program does.
//!
//! The program is assembled and loaded with raw `bpf(2)` calls
//! (`cni_ebpf_tests::raw_bpf`): four instructions with the target's
//! ifindex as an immediate. It is attached through tcx (a link held open by
//! the pair): cheaper than clsact if anything, so the floor stays a floor.

use std::{net::IpAddr, os::fd::OwnedFd};

use anyhow::{Context, Result};
use cni_ebpf_tests::{
    Netns,
    raw_bpf::{self, ATTACH_TCX_INGRESS, Insn, PROG_TYPE_SCHED_CLS},
    veth::{self, VethEnd},
};

/// `BPF_FUNC_redirect_peer`.
const REDIRECT_PEER: i32 = 155;

/// `r0 = bpf_redirect_peer(target, 0); exit`.
fn load_redirect_peer(target_ifindex: u32) -> Result<OwnedFd> {
    raw_bpf::load(
        PROG_TYPE_SCHED_CLS,
        ATTACH_TCX_INGRESS,
        "floor",
        &[
            Insn::mov64_imm(1, target_ifindex as i32),
            Insn::mov64_imm(2, 0),
            Insn::call(REDIRECT_PEER),
            Insn::exit(),
        ],
    )
    .context("loading the floor program")
}

/// The node namespace of a `floor` pair and the links that make it one;
/// dropping it detaches them and removes the namespace.
pub struct FloorNode {
    _links: Vec<OwnedFd>,
    _netns: Netns,
}

/// Joins `client` (addressed `client_ip`) and `server` (`server_ip`), both
/// `/prefix`, through a node namespace: a veth pair from each to the node,
/// the floor program on both host ends, and a permanent neighbour entry in
/// each pod for the other with its own host veth's MAC.
pub fn join(
    client: &Netns,
    server: &Netns,
    client_ip: IpAddr,
    server_ip: IpAddr,
    prefix: &str,
) -> Result<FloorNode> {
    let node = Netns::with_loopback("bench-floor-node");
    let ends = [
        (client, client_ip, server_ip, "fl-client"),
        (server, server_ip, client_ip, "fl-server"),
    ];
    for (pod, ip, _, host) in ends {
        let cidr = format!("{ip}/{prefix}");
        veth::add_veth(
            VethEnd {
                netns: &node,
                name: host,
                cidr: None,
            },
            VethEnd::new(pod, "eth0", &cidr),
            Some(1500),
        );
    }
    let ifindex = |name: &str| -> Result<u32> {
        node.run(|| nix::net::if_::if_nametoindex(name))
            .with_context(|| format!("ifindex of {name}"))
    };
    let (client_host, server_host) = (ifindex("fl-client")?, ifindex("fl-server")?);
    let mut links = Vec::new();
    for (from, to) in [(client_host, server_host), (server_host, client_host)] {
        let prog = load_redirect_peer(to)?;
        let link = node.run(|| raw_bpf::link(&prog, from, ATTACH_TCX_INGRESS));
        links.push(link.context("attaching the floor program (tcx)")?);
    }
    for (pod, _, other, host) in ends {
        let brief = node.ip(&["-br", "link", "show", "dev", host]);
        let mac = brief
            .split_whitespace()
            .nth(2)
            .with_context(|| format!("no MAC in {brief:?}"))?;
        pod.ip(&[
            "neigh",
            "replace",
            &other.to_string(),
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
    }
    Ok(FloorNode {
        _links: links,
        _netns: node,
    })
}
