use anyhow::Context as _;
use std::net::{IpAddr, SocketAddr};

use cni_ebpf_common::{
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, MAX_NAT_FLOWS, wire::IPPROTO_ICMPV6,
};
use cni_ebpf_userspace::{BpffsLayout, nat, node};
use serde_json::json;

fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "icmp6".into(),
        other => other.to_string(),
    }
}

/// `a.b.c.d:port` or `[v6]:port`.
fn endpoint((addr, port): (IpAddr, u16)) -> String {
    SocketAddr::new(addr, port).to_string()
}

pub fn run(layout: &BpffsLayout, as_json: bool) -> anyhow::Result<()> {
    let flows = nat::flows(layout).context("reading the NAT maps")?;
    let limit = node::read_config(layout).map_or(0, |c| c.nat_max_flows);
    if as_json {
        let rows: Vec<_> = flows
            .iter()
            .map(|f| {
                json!({
                    "proto": proto_name(f.proto),
                    "pod": endpoint(f.pod),
                    "remote": endpoint(f.remote),
                    "translated": endpoint(f.translated),
                    "state": f.state.map(|s| s.name()),
                    "idleMs": f.idle_ns / 1_000_000,
                })
            })
            .collect();
        let out =
            json!({"flows": rows, "count": flows.len(), "limit": limit, "capacity": MAX_NAT_FLOWS});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<5} {:<22} {:<22} {:<22} {:<12} {:>9}",
        "PROTO", "POD", "REMOTE", "TRANSLATED", "STATE", "IDLE(s)"
    );
    for f in &flows {
        println!(
            "{:<5} {:<22} {:<22} {:<22} {:<12} {:>9.1}",
            proto_name(f.proto),
            endpoint(f.pod),
            endpoint(f.remote),
            endpoint(f.translated),
            f.state.map_or("?", |s| s.name()),
            f.idle_ns as f64 / 1e9
        );
    }
    println!(
        "{} flow(s); new flows are refused past {limit} (maps hold {MAX_NAT_FLOWS})",
        flows.len()
    );
    Ok(())
}
