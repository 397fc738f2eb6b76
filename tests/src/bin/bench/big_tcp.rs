//! BIG TCP on the pod veths (`"bigTcp": true`: GSO and GRO maximum size
//! 192 KiB, IPv4 and IPv6, on both ends): pod → pod on one node with and
//! without it, against two namespaces joined by a bare veth with the
//! kernel's default 64 KiB. Throughput is what it is for; the round trip and
//! the connect rate show whether it costs small flows anything.

use std::net::IpAddr;

use anyhow::Result;
use cni_ebpf_tests::Family;

use crate::{
    Plan,
    cni::PluginNode,
    flows::{self, Path},
    metric::Metric,
    topology::{Contender, PodPair},
};

pub const SCENARIO: &str = "bigtcp";
pub const HEADING: &str = "pod → pod with BIG TCP (192 KiB GSO/GRO) against 64 KiB and a bare veth";

const OURS_BIG: Contender = Contender::Named("cni-ebpf bigTcp");

pub fn run(plan: &Plan) -> Result<Vec<Metric>> {
    let limit = PodPair::new(Contender::Limit, None, Family::V4)?;
    let ours = PluginNode::cni_ebpf("10.213.0.0/24");
    let ours_pair = PodPair::new(Contender::CniEbpf, Some(&ours), Family::V4)?;
    let mut big = PluginNode::cni_ebpf("10.214.0.0/24");
    big.set_big_tcp(true);
    let big_pair = PodPair::new(OURS_BIG, Some(&big), Family::V4)?;

    let paths: Vec<Path<'_>> = [&limit, &ours_pair, &big_pair]
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
    flows::measure(SCENARIO, "", &paths, Contender::Limit, plan, &())
}
