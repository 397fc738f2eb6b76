use anyhow::Context as _;
use cni_ebpf_userspace::{BpffsLayout, EndpointMap};
use serde_json::json;

use crate::cmd::format_mac;

pub fn run(layout: &BpffsLayout, as_json: bool) -> anyhow::Result<()> {
    let map = EndpointMap::open(layout).context("opening the endpoints map")?;
    let entries = map.entries()?;
    if as_json {
        let rows: Vec<_> = entries
            .iter()
            .map(|(ip, ep)| {
                json!({
                    "ip": ip.to_string(),
                    "ifindex": ep.ifindex,
                    "podMac": format_mac(&ep.pod_mac),
                    "hostMac": format_mac(&ep.host_mac),
                    "owner": format!("{:016x}", ep.owner),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<40} {:>8}  {:<17}  {:<17}  OWNER",
        "ADDRESS", "IFINDEX", "POD MAC", "HOST MAC"
    );
    for (ip, ep) in &entries {
        println!(
            "{:<40} {:>8}  {}  {}  {:016x}",
            ip.to_string(),
            ep.ifindex,
            format_mac(&ep.pod_mac),
            format_mac(&ep.host_mac),
            ep.owner
        );
    }
    println!("{} endpoint address(es)", entries.len());
    Ok(())
}
