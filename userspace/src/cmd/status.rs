use anyhow::Context as _;
use cni_ebpf_common::{IpKey, MAX_ENDPOINTS, MAX_HOST_PORTS, NODE_F_MASQUERADE};
use cni_ebpf_userspace::{
    BpffsLayout, EndpointMap, attachments, datapath::BUILD_ID, host_ports, nat, node,
};
use serde_json::json;

/// Names of the directories under `dir` (pinned builds, links).
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn run(layout: &BpffsLayout, as_json: bool) -> anyhow::Result<()> {
    let builds = names(&layout.root().join("programs"));
    let endpoints = EndpointMap::open(layout)
        .and_then(|m| m.entries())
        .context("reading the endpoints map (is the datapath loaded under this root?)")?;
    let config = node::read_config(layout).context("reading the node config")?;
    let nat_flows = nat::flows(layout).map(|f| f.len()).unwrap_or(0);
    let ports = host_ports::published(layout).map(|p| p.len()).unwrap_or(0);
    let uplink = if config.uplink_ifindex == 0 {
        None
    } else {
        nix::net::if_::if_indextoname(config.uplink_ifindex)
            .ok()
            .and_then(|n| n.into_string().ok())
            .or(Some(format!("ifindex {}", config.uplink_ifindex)))
    };
    let masquerade = (config.flags & NODE_F_MASQUERADE != 0)
        .then(|| IpKey::v6(config.masq_addr).to_ip().to_string());
    // Absent on a node whose datapath predates IPv6 masquerade.
    let masquerade_v6 = node::read_config_v6(layout)
        .ok()
        .filter(|v6| v6.flags & NODE_F_MASQUERADE != 0)
        .map(|v6| std::net::Ipv6Addr::from(v6.masq_addr).to_string());
    let links = names(&layout.links_dir()).len();
    let attached = attachments::list(layout).context("listing the attachments")?;
    let this_build: Vec<u32> = std::fs::read_dir(layout.programs_dir(BUILD_ID))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| aya::programs::ProgramInfo::from_pin(e.path()).ok())
                .map(|info| info.id())
                .collect()
        })
        .unwrap_or_default();
    let on_this_build = attached
        .iter()
        .filter(|a| this_build.contains(&a.program_id))
        .count();
    if as_json {
        let out = json!({
            "bpffsRoot": layout.root(),
            "thisBuild": BUILD_ID,
            "pinnedBuilds": builds,
            "endpoints": endpoints.len(),
            "endpointCapacity": MAX_ENDPOINTS,
            "uplink": uplink,
            "masquerade": masquerade,
            "masqueradeV6": masquerade_v6,
            "natFlows": nat_flows,
            "natFlowLimit": config.nat_max_flows,
            "hostPorts": ports,
            "hostPortCapacity": MAX_HOST_PORTS,
            "tcxLinks": links,
            "attachments": attached,
            "attachmentsOnThisBuild": on_this_build,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("bpffs root      {}", layout.root().display());
    println!("this build      {BUILD_ID} (pinned: {})", builds.join(", "));
    println!(
        "endpoints       {} address(es) of {MAX_ENDPOINTS}",
        endpoints.len()
    );
    println!("uplink          {}", uplink.as_deref().unwrap_or("none"));
    println!("masquerade      {}", masquerade.as_deref().unwrap_or("off"));
    println!(
        "masquerade v6   {}",
        masquerade_v6.as_deref().unwrap_or("off")
    );
    println!(
        "NAT flows       {nat_flows} (new ones refused past {})",
        config.nat_max_flows
    );
    println!("host ports      {ports} of {MAX_HOST_PORTS}");
    println!("tcx links       {links}");
    println!(
        "attachments     {} ({on_this_build} on this build's programs)",
        attached.len()
    );
    for a in &attached {
        println!(
            "  {:<44} {:<14} id {}",
            a.point.to_string(),
            a.program,
            a.program_id
        );
    }
    Ok(())
}
