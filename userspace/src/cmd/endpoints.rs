use anyhow::Context as _;
use cni_ebpf_common::EndpointStats;
use cni_ebpf_userspace::{BpffsLayout, EndpointMap, stats};
use serde_json::json;

use crate::cmd::format_mac;

pub fn run(layout: &BpffsLayout, as_json: bool) -> anyhow::Result<()> {
    let map = EndpointMap::open(layout).context("opening the endpoints map")?;
    let entries = map.entries()?;
    let traffic = stats::all(layout).unwrap_or_default();
    let traffic_of = |ifindex: u32| {
        traffic
            .iter()
            .find(|(i, _)| *i == ifindex)
            .map(|(_, s)| *s)
            .unwrap_or(EndpointStats::default())
    };
    // The copies the IPv4 paths read first (ENDPOINTS_V4).
    let in_slot = |ip: &std::net::IpAddr, ep: &cni_ebpf_common::Endpoint| {
        ip.is_ipv4()
            .then(|| map.slot_v4(*ip).ok().flatten().as_ref() == Some(ep))
    };
    let interfaces = cni_ebpf_userspace::attachments::interfaces().unwrap_or_default();
    // tcx when the host veth's link pin is there (`attachMode: tcx`, or
    // moved by the agent), else its clsact filter.
    let attach_of = |ifindex: u32| {
        let (_, name) = interfaces.iter().find(|(i, _)| *i == ifindex)?;
        Some(if layout.endpoint_link(name).exists() {
            "tcx"
        } else {
            "clsact"
        })
    };
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
                    // Its slot of ENDPOINT_COUNTERS (0: counted by ifindex).
                    "statsSlot": ep.stats_slot,
                    "attach": attach_of(ep.ifindex),
                    // IPv4: whether its live slot of ENDPOINTS_V4 holds it
                    // (false: another address holds the slot, and the
                    // datapath finds this one in ENDPOINTS).
                    "slotV4": in_slot(ip, ep),
                    // `attachMode: auto`: the agent moves it onto tcx.
                    "tcxLater": ep.flags & cni_ebpf_common::ENDPOINT_F_TCX_LATER != 0,
                    // Netfilter translated a flow of this pod: its packets
                    // are checked against NETFILTER_FLOWS.
                    "netfilterFlows": ep.flags & cni_ebpf_common::ENDPOINT_F_NETFILTER_FLOWS != 0,
                    "fromPod": {"packets": traffic_of(ep.ifindex).from_pod.packets, "bytes": traffic_of(ep.ifindex).from_pod.bytes},
                    "toPod": {"packets": traffic_of(ep.ifindex).to_pod.packets, "bytes": traffic_of(ep.ifindex).to_pod.bytes},
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:>8}  {:<17}  {:<17}  {:>12} {:>12}  OWNER",
        "ADDRESS", "IFINDEX", "POD MAC", "HOST MAC", "FROM POD", "TO POD"
    );
    for (ip, ep) in &entries {
        let t = traffic_of(ep.ifindex);
        println!(
            "{:<16} {:>8}  {}  {}  {:>12} {:>12}  {:016x}",
            ip.to_string(),
            ep.ifindex,
            format_mac(&ep.pod_mac),
            format_mac(&ep.host_mac),
            format!("{}p", t.from_pod.packets),
            format!("{}p", t.to_pod.packets),
            ep.owner
        );
    }
    println!("{} endpoint address(es)", entries.len());
    Ok(())
}
