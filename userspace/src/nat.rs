//! The masquerade tables from userspace: listing translated flows and
//! expiring the idle ones (the datapath only refreshes them).

use std::{collections::HashSet, net::IpAddr, time::Duration};

use aya::maps::{Array, HashMap, MapData};
use cni_ebpf_common::{
    CtState, FlowKey, HostPortFlow, IpKey, NatEntry,
    map_names::{HOST_PORT_CT, NAT_FLOWS, NAT_IN, NAT_OUT},
};

use crate::{
    error::{Result, key_missing, map_error, open_map},
    paths::BpffsLayout,
};

/// How long a flow may stay idle, by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatTimeouts {
    pub tcp_syn_sent: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub udp: Duration,
    pub icmp: Duration,
}

impl Default for NatTimeouts {
    /// The kernel conntrack's defaults, but a shorter established timeout
    /// (Cilium's): an idle TCP flow is usually a dead one.
    fn default() -> Self {
        Self {
            tcp_syn_sent: Duration::from_secs(120),
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(120),
            icmp: Duration::from_secs(30),
        }
    }
}

impl NatTimeouts {
    pub fn for_state(&self, state: CtState) -> Duration {
        match state {
            CtState::TcpSynSent => self.tcp_syn_sent,
            CtState::TcpEstablished => self.tcp_established,
            CtState::TcpClosing => self.tcp_closing,
            CtState::Udp => self.udp,
            CtState::Icmp => self.icmp,
        }
    }
}

/// One masqueraded flow, both directions joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatFlow {
    pub proto: u8,
    pub pod: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub translated: (IpAddr, u16),
    pub state: Option<CtState>,
    /// Nanoseconds since the last packet either way.
    pub idle_ns: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    pub scanned: usize,
    pub expired: usize,
    pub live: usize,
}

type FlowMap = HashMap<MapData, FlowKey, NatEntry>;

fn open(layout: &BpffsLayout, name: &'static str) -> Result<FlowMap> {
    open_map(layout, name)
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The reply key that belongs to an outbound key and its translation.
fn reply_key(out_key: &FlowKey, translation: &NatEntry) -> FlowKey {
    FlowKey {
        src: out_key.dst,
        dst: translation.addr,
        src_port: out_key.dst_port,
        dst_port: translation.port,
        proto: out_key.proto,
        _pad: [0; 3],
    }
}

/// The flow's state as the two directions saw it.
fn joined_state(out: &NatEntry, reply: Option<&NatEntry>) -> Option<CtState> {
    let out_state = CtState::from_u8(out.state);
    let reply_state = reply.and_then(|r| CtState::from_u8(r.state));
    match (out_state, reply_state) {
        (Some(CtState::TcpClosing), _) | (_, Some(CtState::TcpClosing)) => {
            Some(CtState::TcpClosing)
        }
        (_, Some(CtState::TcpEstablished)) => Some(CtState::TcpEstablished),
        (state, _) => state,
    }
}

fn port(raw: u16) -> u16 {
    u16::from_be(raw)
}

/// Every translated flow.
pub fn flows(layout: &BpffsLayout) -> Result<Vec<NatFlow>> {
    let out = open(layout, NAT_OUT)?;
    let replies = open(layout, NAT_IN)?;
    let now = monotonic_ns();
    let mut flows = Vec::new();
    for entry in out.iter() {
        let (key, translation) = entry.map_err(map_error(NAT_OUT))?;
        let reply = replies.get(&reply_key(&key, &translation), 0).ok();
        let last = reply.map_or(translation.last_seen_ns, |r| {
            r.last_seen_ns.max(translation.last_seen_ns)
        });
        flows.push(NatFlow {
            proto: key.proto,
            pod: (IpKey::v6(key.src).to_ip(), port(key.src_port)),
            remote: (IpKey::v6(key.dst).to_ip(), port(key.dst_port)),
            translated: (IpKey::v6(translation.addr).to_ip(), port(translation.port)),
            state: joined_state(&translation, reply.as_ref()),
            idle_ns: now.saturating_sub(last),
        });
    }
    flows.sort_by_key(|f| (f.pod, f.remote));
    Ok(flows)
}

/// Removes flows idle past their state's timeout, and reply entries whose
/// outbound half is gone; then stores the true number of live flows for
/// the datapath's admission limit.
pub fn gc(layout: &BpffsLayout, timeouts: &NatTimeouts) -> Result<GcStats> {
    let mut out = open(layout, NAT_OUT)?;
    let mut replies = open(layout, NAT_IN)?;
    let now = monotonic_ns();
    let mut stats = GcStats::default();
    let mut expired = Vec::new();
    let mut kept_replies = HashSet::new();
    let idle = |translation: &NatEntry, reply: Option<&NatEntry>| {
        let last = reply.map_or(translation.last_seen_ns, |r| {
            r.last_seen_ns.max(translation.last_seen_ns)
        });
        let timeout =
            joined_state(translation, reply).map_or(timeouts.icmp, |s| timeouts.for_state(s));
        now.saturating_sub(last) > timeout.as_nanos() as u64
    };
    for entry in out.iter() {
        let (key, translation) = entry.map_err(map_error(NAT_OUT))?;
        stats.scanned += 1;
        let reply_key = reply_key(&key, &translation);
        let reply = replies.get(&reply_key, 0).ok();
        if idle(&translation, reply.as_ref()) {
            expired.push((key, reply_key));
        } else {
            kept_replies.insert(reply_key);
        }
    }
    for (key, reply_key) in &expired {
        // The datapath may have used the flow since the scan (a pod reusing
        // the port): look again just before removing, or its replies lose
        // their translation.
        let Ok(translation) = out.get(key, 0) else {
            continue;
        };
        if !idle(&translation, replies.get(reply_key, 0).ok().as_ref()) {
            kept_replies.insert(*reply_key);
            continue;
        }
        remove(&mut out, key, NAT_OUT)?;
        remove(&mut replies, reply_key, NAT_IN)?;
        stats.expired += 1;
    }
    // Replies left behind by an outbound entry the LRU evicted, once idle
    // themselves: a flow admitted during the scan has its reply entry but
    // may have had its outbound entry put where the scan had already been.
    let mut orphans = Vec::new();
    let mut admitted = 0;
    for (key, reply) in replies.iter().filter_map(|entry| entry.ok()) {
        if kept_replies.contains(&key) {
            continue;
        }
        if idle(&reply, None) {
            orphans.push(key);
        } else {
            admitted += 1;
        }
    }
    for key in &orphans {
        remove(&mut replies, key, NAT_IN)?;
    }
    stats.live = kept_replies.len() + admitted;
    let mut count: Array<MapData, u64> = open_map(layout, NAT_FLOWS)?;
    count
        .set(0, stats.live as u64, 0)
        .map_err(map_error(NAT_FLOWS))?;
    Ok(stats)
}

fn remove(map: &mut FlowMap, key: &FlowKey, name: &'static str) -> Result<()> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(e) if key_missing(&e) => Ok(()),
        Err(e) => Err(map_error(name)(e)),
    }
}

/// Expires idle connections through host ports (`HOST_PORT_CT`), by the same
/// per-state timeouts.
pub fn gc_host_port_flows(layout: &BpffsLayout, timeouts: &NatTimeouts) -> Result<GcStats> {
    let mut map: HashMap<MapData, FlowKey, HostPortFlow> = open_map(layout, HOST_PORT_CT)?;
    let now = monotonic_ns();
    let mut stats = GcStats::default();
    let mut expired = Vec::new();
    for entry in map.iter() {
        let (key, flow) = entry.map_err(map_error(HOST_PORT_CT))?;
        stats.scanned += 1;
        let timeout = CtState::from_u8(flow.state).map_or(timeouts.udp, |s| timeouts.for_state(s));
        if now.saturating_sub(flow.last_seen_ns) > timeout.as_nanos() as u64 {
            expired.push(key);
        }
    }
    for key in &expired {
        match map.remove(key) {
            Ok(()) => {}
            Err(e) if key_missing(&e) => {}
            Err(e) => return Err(map_error(HOST_PORT_CT)(e)),
        }
    }
    stats.expired = expired.len();
    stats.live = stats.scanned - stats.expired;
    Ok(stats)
}
