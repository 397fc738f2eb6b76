//! Prometheus metrics (text format 0.0.4): the datapath's state, read from
//! its maps on each scrape (per-endpoint traffic, drops by reason, verdicts
//! with NAT allocations and retries among them, map fill levels), and the
//! agent's own work (garbage collection, repairs, upgrades).
//!
//! Counters are named without `_total`: the encoder appends it.

use std::fmt;

use cni_ebpf_common::{
    ENDPOINT_F_HOST_PORTS, ENDPOINT_F_RATE_LIMITED, MAX_ENDPOINTS, MAX_HOST_PORTS, MAX_NAT_FLOWS,
    MAX_NETFILTER_FLOWS,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text},
    metrics::{
        counter::{ConstCounter, Counter},
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use crate::{
    BpffsLayout, EndpointMap, attach, counters, error::Result, host_ports, nat, node, rate, stats,
};

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// What the agent itself did. Clones count into the same series.
#[derive(Debug, Clone, Default)]
pub struct AgentMetrics {
    pub gc_runs: Counter,
    pub gc_expired: Counter,
    pub gc_errors: Counter,
    /// Map entries and link pins of vanished interfaces removed.
    pub reconcile_removed: Counter,
    /// Programs attached again to interfaces that lost them.
    pub reconcile_reattached: Counter,
    /// Attachments moved onto another generation of the programs.
    pub upgrade_swapped: Counter,
    /// Uplinks that asked for `xdp_uplink` but run another XDP program
    /// (left in place), as the last reconciliation found them.
    pub uplink_xdp_foreign: Gauge,
    /// Pods moved from clsact onto tcx (`attachMode: auto`).
    pub tcx_moved: Counter,
    /// Pods of `attachMode: auto` still on clsact after the last pass.
    pub tcx_waiting: Gauge,
}

/// Every metric of the agent: its own counters, and a collector that reads
/// the datapath pinned under `layout` on each scrape.
pub fn registry(layout: BpffsLayout) -> (Registry, AgentMetrics) {
    let mut registry = Registry::default();
    let agent = AgentMetrics::register(&mut registry);
    registry.register_collector(Box::new(DatapathCollector { layout }));
    (registry, agent)
}

impl AgentMetrics {
    fn register(registry: &mut Registry) -> Self {
        let agent = Self::default();
        for (name, help, counter) in [
            (
                "cni_ebpf_gc_runs",
                "Garbage collections of the NAT and host-port connection tables",
                &agent.gc_runs,
            ),
            (
                "cni_ebpf_gc_expired",
                "Flows the garbage collection expired",
                &agent.gc_expired,
            ),
            (
                "cni_ebpf_gc_errors",
                "Garbage collections that failed",
                &agent.gc_errors,
            ),
            (
                "cni_ebpf_reconcile_removed",
                "Map entries and link pins of vanished pod interfaces the agent removed",
                &agent.reconcile_removed,
            ),
            (
                "cni_ebpf_reconcile_reattached",
                "Programs the agent attached again to interfaces that had lost them",
                &agent.reconcile_reattached,
            ),
            (
                "cni_ebpf_upgrade_swapped",
                "Attachments the agent moved onto another generation of the programs",
                &agent.upgrade_swapped,
            ),
            (
                "cni_ebpf_tcx_moved",
                "Pods (attachMode auto) the agent moved from clsact onto tcx",
                &agent.tcx_moved,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "cni_ebpf_uplink_xdp_foreign",
            "Uplinks with uplinkXdp that run another XDP program, left in place (the tc program serves them)",
            agent.uplink_xdp_foreign.clone(),
        );
        registry.register(
            "cni_ebpf_tcx_waiting",
            "Pods (attachMode auto) still on clsact, waiting to be moved onto tcx",
            agent.tcx_waiting.clone(),
        );
        agent
    }
}

/// The text exposition of everything in `registry`. Fails when the datapath
/// cannot be read (the collector logs why).
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

#[derive(Debug)]
struct DatapathCollector {
    layout: BpffsLayout,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let state = DatapathState::read(&self.layout).map_err(|e| {
            log::error!(
                "metrics: reading the datapath under {}: {e}",
                self.layout.root().display()
            );
            fmt::Error
        })?;
        state.encode(&mut encoder)
    }
}

#[derive(Debug, EncodeLabelSet)]
struct EndpointLabels {
    ifindex: u32,
    /// Empty when the interface has counters but no address any more.
    ip: String,
    direction: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
    direction: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
struct HookLabels {
    hook: &'static str,
}

/// One scrape's reading of the maps.
struct DatapathState {
    /// (labels, packets, bytes)
    traffic: Vec<(EndpointLabels, u64, u64)>,
    drops: Vec<(DropLabels, u64)>,
    verdicts: Vec<(VerdictLabels, u64)>,
    /// (map, entries, capacity)
    maps: Vec<(MapLabels, u64, u64)>,
    /// (hook, 1 when pods need it and it is not attached)
    hooks_missing: Vec<(HookLabels, u64)>,
}

impl DatapathState {
    /// Reads every map; one that cannot be read is left out, except the
    /// endpoints and the drop and verdict counters, without which the
    /// datapath is not there to describe.
    fn read(layout: &BpffsLayout) -> Result<Self> {
        let endpoints = EndpointMap::open(layout)?.entries()?;
        let mut traffic = Vec::new();
        for (ifindex, s) in stats::all(layout).unwrap_or_default() {
            let ip = endpoints
                .iter()
                .find(|(_, e)| e.ifindex == ifindex)
                .map_or_else(String::new, |(ip, _)| ip.to_string());
            for (direction, count) in [("from-pod", s.from_pod), ("to-pod", s.to_pod)] {
                let labels = EndpointLabels {
                    ifindex,
                    ip: ip.clone(),
                    direction,
                };
                traffic.push((labels, count.packets, count.bytes));
            }
        }
        let drops = counters::drops(layout)?
            .into_iter()
            .map(|d| {
                let labels = DropLabels {
                    reason: d.reason.name(),
                    direction: counters::direction_name(d.direction),
                };
                (labels, d.count.packets)
            })
            .collect();
        let verdicts = counters::verdicts(layout)?
            .into_iter()
            .map(|(verdict, count)| {
                let labels = VerdictLabels {
                    verdict: verdict.name(),
                };
                (labels, count.packets)
            })
            .collect();
        let nat_limit = node::read_config(layout).map_or(0, |c| c.nat_max_flows);
        let maps = [
            ("ENDPOINTS", endpoints.len(), MAX_ENDPOINTS),
            (
                "NAT",
                nat::flows(layout).map(|f| f.len()).unwrap_or(0),
                nat_limit.min(MAX_NAT_FLOWS),
            ),
            (
                "HOST_PORTS",
                host_ports::published(layout).map(|p| p.len()).unwrap_or(0),
                MAX_HOST_PORTS,
            ),
            (
                "RATE_LIMITS",
                rate::owners(layout).map(|o| o.len()).unwrap_or(0),
                MAX_ENDPOINTS,
            ),
            (
                "NETFILTER_FLOWS",
                node::netfilter_flows(layout).unwrap_or(0),
                MAX_NETFILTER_FLOWS,
            ),
        ]
        .into_iter()
        .map(|(map, entries, capacity)| (MapLabels { map }, entries as u64, u64::from(capacity)))
        .collect();
        // A node without cgroup v2 serves such pods without these hooks.
        let needs = |flag: u32| endpoints.iter().any(|(_, e)| e.flags & flag != 0);
        let hooks_missing = [
            (
                "host-ports",
                needs(ENDPOINT_F_HOST_PORTS),
                attach::socket_hooks_attached(layout),
            ),
            (
                "tcp-pacing",
                needs(ENDPOINT_F_RATE_LIMITED),
                attach::pacing_attached(layout),
            ),
        ]
        .into_iter()
        .map(|(hook, needed, attached)| (HookLabels { hook }, u64::from(needed && !attached)))
        .collect();
        Ok(Self {
            traffic,
            drops,
            verdicts,
            maps,
            hooks_missing,
        })
    }

    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        family(
            encoder,
            "cni_ebpf_endpoint_packets",
            "Packets of an endpoint by direction (to-pod counts what the datapath delivered).",
            self.traffic
                .iter()
                .map(|(labels, packets, _)| (labels, ConstCounter::new(*packets))),
        )?;
        family(
            encoder,
            "cni_ebpf_endpoint_bytes",
            "Bytes of an endpoint by direction.",
            self.traffic
                .iter()
                .map(|(labels, _, bytes)| (labels, ConstCounter::new(*bytes))),
        )?;
        family(
            encoder,
            "cni_ebpf_drops",
            "Dropped packets by reason and direction.",
            self.drops
                .iter()
                .map(|(labels, packets)| (labels, ConstCounter::new(*packets))),
        )?;
        family(
            encoder,
            "cni_ebpf_verdicts",
            "Packets the datapath passed on, by verdict (nat-new-flow counts NAT allocations, nat-port-retry their retries).",
            self.verdicts
                .iter()
                .map(|(labels, packets)| (labels, ConstCounter::new(*packets))),
        )?;
        family(
            encoder,
            "cni_ebpf_map_entries",
            "Entries in a map (fill level against cni_ebpf_map_capacity).",
            self.maps
                .iter()
                .map(|(labels, entries, _)| (labels, ConstGauge::new(*entries))),
        )?;
        family(
            encoder,
            "cni_ebpf_map_capacity",
            "Entries a map can hold (for NAT: flows admitted before new ones are refused).",
            self.maps
                .iter()
                .map(|(labels, _, capacity)| (labels, ConstGauge::new(*capacity))),
        )?;
        family(
            encoder,
            "cni_ebpf_node_hooks_missing",
            "1 when pods need a hook on the node's own sockets that is not attached (host-ports: connections from the node to host ports; tcp-pacing).",
            self.hooks_missing
                .iter()
                .map(|(labels, missing)| (labels, ConstGauge::new(*missing))),
        )
    }
}

/// One metric family: its HELP and TYPE, then a sample per label set.
fn family<'a, L, M, S>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: S,
) -> fmt::Result
where
    L: EncodeLabelSet + 'a,
    M: EncodeMetric,
    S: IntoIterator<Item = (&'a L, M)>,
{
    let mut samples = samples.into_iter().peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cni_ebpf_common::{Direction, DropReason, Verdict};

    use super::*;

    /// A datapath read once, so the exposition can be checked without one.
    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
            let endpoint = |direction| EndpointLabels {
                ifindex: 7,
                ip: "10.244.1.2".into(),
                direction,
            };
            DatapathState {
                traffic: vec![
                    (endpoint("from-pod"), 3, 180),
                    (endpoint("to-pod"), 2, 1500),
                ],
                drops: vec![(
                    DropLabels {
                        reason: DropReason::UnknownSource.name(),
                        direction: counters::direction_name(Direction::FromPod),
                    },
                    5,
                )],
                verdicts: vec![(
                    VerdictLabels {
                        verdict: Verdict::NatNewFlow.name(),
                    },
                    1,
                )],
                maps: vec![(MapLabels { map: "ENDPOINTS" }, 1, u64::from(MAX_ENDPOINTS))],
                hooks_missing: vec![(HookLabels { hook: "host-ports" }, 1)],
            }
            .encode(&mut encoder)
        }
    }

    #[test]
    fn exposition_has_the_names_labels_and_values_the_readme_lists() {
        let mut registry = Registry::default();
        let agent = AgentMetrics::register(&mut registry);
        registry.register_collector(Box::new(Fixed));
        agent.gc_runs.inc_by(3);
        agent.upgrade_swapped.inc();
        agent.uplink_xdp_foreign.set(1);
        let text = render(&registry).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "# TYPE cni_ebpf_endpoint_packets_total counter",
            r#"cni_ebpf_endpoint_packets_total{ifindex="7",ip="10.244.1.2",direction="from-pod"} 3"#,
            r#"cni_ebpf_endpoint_bytes_total{ifindex="7",ip="10.244.1.2",direction="to-pod"} 1500"#,
            r#"cni_ebpf_drops_total{reason="unknown-source",direction="from-pod"} 5"#,
            r#"cni_ebpf_verdicts_total{verdict="nat-new-flow"} 1"#,
            "# TYPE cni_ebpf_map_entries gauge",
            r#"cni_ebpf_map_entries{map="ENDPOINTS"} 1"#,
            r#"cni_ebpf_map_capacity{map="ENDPOINTS"} 65536"#,
            "# TYPE cni_ebpf_node_hooks_missing gauge",
            r#"cni_ebpf_node_hooks_missing{hook="host-ports"} 1"#,
            "cni_ebpf_gc_runs_total 3",
            "cni_ebpf_gc_expired_total 0",
            "cni_ebpf_gc_errors_total 0",
            "cni_ebpf_reconcile_removed_total 0",
            "cni_ebpf_reconcile_reattached_total 0",
            "cni_ebpf_upgrade_swapped_total 1",
            "# TYPE cni_ebpf_uplink_xdp_foreign gauge",
            "cni_ebpf_uplink_xdp_foreign 1",
        ] {
            assert!(
                lines.contains(&expected),
                "{expected:?} missing from\n{text}"
            );
        }
    }
}
