//! BIG TCP on the pod veths (`"bigTcp": true`: GSO and GRO maximum size
//! 192 KiB, IPv4 and IPv6, on both ends): pod → pod on one node with and
//! without it, against two namespaces joined by a bare veth with the
//! kernel's default 64 KiB; and pod → outside, masqueraded out of an uplink
//! with the default 64 KiB GSO maximum (which segments every packet over it
//! in software), with and without it. Throughput is what it is for; the
//! round trip and the connect rate show whether it costs small flows
//! anything.

use std::net::IpAddr;

use anyhow::Result;
use cni_ebpf_tests::{Family, uplink};
use serde_json::json;

use crate::{
    Plan,
    chain::{Chain, ChainedPod},
    cni::PluginNode,
    flows::{self, Path},
    masquerade::AgentGc,
    metric::Metric,
    topology::{Contender, PodPair},
};

pub const SCENARIO: &str = "bigtcp";
pub const HEADING: &str = "BIG TCP (192 KiB GSO/GRO) against 64 KiB: pod → pod, and pod → outside through a 64 KiB uplink";

const OURS_BIG: Contender = Contender::Named("cni-ebpf bigTcp");
const OURS_OUT: Contender = Contender::Named("cni-ebpf → outside");
const OURS_OUT_BIG: Contender = Contender::Named("cni-ebpf bigTcp → outside");

pub fn run(plan: &Plan) -> Result<Vec<Metric>> {
    let limit = PodPair::new(Contender::Limit, None, Family::V4)?;
    let ours = PluginNode::cni_ebpf("10.213.0.0/24");
    let ours_pair = PodPair::new(Contender::CniEbpf, Some(&ours), Family::V4)?;
    let mut big = PluginNode::cni_ebpf("10.214.0.0/24");
    big.set_big_tcp(true);
    let big_pair = PodPair::new(OURS_BIG, Some(&big), Family::V4)?;

    let mut paths: Vec<Path<'_>> = [&limit, &ours_pair, &big_pair]
        .into_iter()
        .map(|pair| {
            let IpAddr::V4(server_ip) = pair.server.ip() else {
                unreachable!("the pairs are IPv4")
            };
            Path {
                row: pair.contender,
                client: pair.client.netns(),
                server: pair.server.netns(),
                server_ip: server_ip.into(),
                connect_ip: server_ip.into(),
                mapped: None,
            }
        })
        .collect();

    // Pod → outside: a node with an uplink to an `ext` namespace each.
    let out = PluginNode::cni_ebpf("10.215.0.0/24");
    let mut out_big = PluginNode::cni_ebpf("10.216.0.0/24");
    out_big.set_big_tcp(true);
    let out_nodes = [(OURS_OUT, &out), (OURS_OUT_BIG, &out_big)];
    let mut outside = Vec::new();
    for (row, node) in out_nodes {
        let ext = uplink::add_uplink_with_default_route(node.netns());
        let chain = Chain::new(node, json!({ "ipMasq": true }));
        let pod = ChainedPod::new(node, &chain, "bench-bigtcp-out")?;
        outside.push((row, ext, pod));
    }
    for (row, ext, pod) in &outside {
        paths.push(Path {
            row: *row,
            client: &pod.netns,
            server: &ext.netns,
            server_ip: ext.ext_ip.into(),
            connect_ip: ext.ext_ip.into(),
            mapped: None,
        });
    }
    let gc = AgentGc {
        nodes: out_nodes.to_vec(),
    };
    flows::measure(SCENARIO, "", &paths, Contender::Limit, plan, &gc)
}
