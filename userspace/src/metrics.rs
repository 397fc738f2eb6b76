//! Prometheus text exposition of the datapath's state: per-endpoint
//! traffic, drops by reason, verdicts (NAT allocations and retries among
//! them), map fill levels, and the agent's own garbage collection.

use std::fmt::Write as _;

use cni_ebpf_common::{MAX_ENDPOINTS, MAX_HOST_PORTS, MAX_NAT_FLOWS, MAX_NETFILTER_FLOWS};

use crate::{
    BpffsLayout, EndpointMap, counters, error::Result, host_ports, nat, node, rate, stats,
};

/// What the agent itself did, for the `gc` metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentCounters {
    pub gc_runs: u64,
    pub gc_expired: u64,
    pub gc_errors: u64,
    /// Map entries and link pins of vanished interfaces removed.
    pub reconcile_removed: u64,
    /// Programs attached again to interfaces that lost them.
    pub reconcile_reattached: u64,
    /// Attachments moved onto another generation of the programs.
    pub upgrade_swapped: u64,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every metric; a map that cannot be read is left out, not fatal.
pub fn render(layout: &BpffsLayout, agent: &AgentCounters) -> Result<String> {
    let mut out = String::new();
    let endpoints = EndpointMap::open(layout)?.entries()?;

    family(
        &mut out,
        "cni_ebpf_endpoint_packets_total",
        "counter",
        "Packets of an endpoint by direction (to-pod counts what the datapath delivered).",
    );
    family(
        &mut out,
        "cni_ebpf_endpoint_bytes_total",
        "counter",
        "Bytes of an endpoint by direction.",
    );
    if let Ok(all) = stats::all(layout) {
        for (ifindex, s) in all {
            let ip = endpoints
                .iter()
                .find(|(_, e)| e.ifindex == ifindex)
                .map_or_else(String::new, |(ip, _)| ip.to_string());
            for (direction, count) in [("from-pod", s.from_pod), ("to-pod", s.to_pod)] {
                let labels = format!("ifindex=\"{ifindex}\",ip=\"{ip}\",direction=\"{direction}\"");
                let _ = writeln!(
                    out,
                    "cni_ebpf_endpoint_packets_total{{{labels}}} {}",
                    count.packets
                );
                let _ = writeln!(
                    out,
                    "cni_ebpf_endpoint_bytes_total{{{labels}}} {}",
                    count.bytes
                );
            }
        }
    }

    family(
        &mut out,
        "cni_ebpf_drops_total",
        "counter",
        "Dropped packets by reason and direction.",
    );
    for d in counters::drops(layout)? {
        let _ = writeln!(
            out,
            "cni_ebpf_drops_total{{reason=\"{}\",direction=\"{}\"}} {}",
            d.reason.name(),
            counters::direction_name(d.direction),
            d.count.packets
        );
    }
    family(
        &mut out,
        "cni_ebpf_verdicts_total",
        "counter",
        "Packets the datapath passed on, by verdict (nat-new-flow counts NAT allocations, nat-port-retry their retries).",
    );
    for (verdict, count) in counters::verdicts(layout)? {
        let _ = writeln!(
            out,
            "cni_ebpf_verdicts_total{{verdict=\"{}\"}} {}",
            verdict.name(),
            count.packets
        );
    }

    family(
        &mut out,
        "cni_ebpf_map_entries",
        "gauge",
        "Entries in a map (fill level against cni_ebpf_map_capacity).",
    );
    family(
        &mut out,
        "cni_ebpf_map_capacity",
        "gauge",
        "Entries a map can hold (for NAT: flows admitted before new ones are refused).",
    );
    let nat_limit = node::read_config(layout).map_or(0, |c| c.nat_max_flows);
    let nat_count = nat::flows(layout).map(|f| f.len()).unwrap_or(0);
    let ports = host_ports::published(layout).map(|p| p.len()).unwrap_or(0);
    let limits = rate::owners(layout).map(|o| o.len()).unwrap_or(0);
    let netfilter_flows = node::netfilter_flows(layout).unwrap_or(0);
    for (map, entries, capacity) in [
        ("ENDPOINTS", endpoints.len(), u64::from(MAX_ENDPOINTS)),
        ("NAT", nat_count, u64::from(nat_limit.min(MAX_NAT_FLOWS))),
        ("HOST_PORTS", ports, u64::from(MAX_HOST_PORTS)),
        ("RATE_LIMITS", limits, u64::from(MAX_ENDPOINTS)),
        (
            "NETFILTER_FLOWS",
            netfilter_flows,
            u64::from(MAX_NETFILTER_FLOWS),
        ),
    ] {
        let _ = writeln!(out, "cni_ebpf_map_entries{{map=\"{map}\"}} {entries}");
        let _ = writeln!(out, "cni_ebpf_map_capacity{{map=\"{map}\"}} {capacity}");
    }

    family(
        &mut out,
        "cni_ebpf_gc_runs_total",
        "counter",
        "Garbage collections of the NAT and host-port connection tables.",
    );
    let _ = writeln!(out, "cni_ebpf_gc_runs_total {}", agent.gc_runs);
    family(
        &mut out,
        "cni_ebpf_gc_expired_total",
        "counter",
        "Flows the garbage collection expired.",
    );
    let _ = writeln!(out, "cni_ebpf_gc_expired_total {}", agent.gc_expired);
    family(
        &mut out,
        "cni_ebpf_gc_errors_total",
        "counter",
        "Garbage collections that failed.",
    );
    let _ = writeln!(out, "cni_ebpf_gc_errors_total {}", agent.gc_errors);
    for (name, help, value) in [
        (
            "cni_ebpf_reconcile_removed_total",
            "Map entries and link pins of vanished pod interfaces the agent removed.",
            agent.reconcile_removed,
        ),
        (
            "cni_ebpf_reconcile_reattached_total",
            "Programs the agent attached again to interfaces that had lost them.",
            agent.reconcile_reattached,
        ),
        (
            "cni_ebpf_upgrade_swapped_total",
            "Attachments the agent moved onto another generation of the programs.",
            agent.upgrade_swapped,
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    Ok(out)
}
