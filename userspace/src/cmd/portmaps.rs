use anyhow::Context as _;
use cni_ebpf_common::IPPROTO_UDP;
use cni_ebpf_userspace::{BpffsLayout, host_ports};
use serde_json::json;

pub fn run(layout: &BpffsLayout, as_json: bool) -> anyhow::Result<()> {
    let published = host_ports::published(layout).context("reading the host ports")?;
    let proto = |p: u8| if p == IPPROTO_UDP { "udp" } else { "tcp" };
    if as_json {
        let rows: Vec<_> = published
            .iter()
            .map(|(m, owner)| {
                json!({
                    "protocol": proto(m.proto),
                    "hostIP": m.host_ip.map(|ip| ip.to_string()),
                    "hostPort": m.host_port,
                    "podIP": m.pod_addr.to_string(),
                    "containerPort": m.pod_port,
                    "owner": format!("{owner:016x}"),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<5} {:<16} {:>8}  {:<16} {:>8}  OWNER",
        "PROTO", "HOST IP", "PORT", "POD IP", "PORT"
    );
    for (m, owner) in &published {
        println!(
            "{:<5} {:<16} {:>8}  {:<16} {:>8}  {owner:016x}",
            proto(m.proto),
            m.host_ip.map_or("*".to_string(), |ip| ip.to_string()),
            m.host_port,
            m.pod_addr.to_string(),
            m.pod_port
        );
    }
    println!("{} host port(s)", published.len());
    Ok(())
}
