use std::time::Duration;

use anyhow::Context as _;
use cni_ebpf_userspace::{BpffsLayout, nat};

/// Idle timeouts by connection state, in seconds.
#[derive(clap::Args, Debug, Clone)]
pub struct Timeouts {
    #[arg(long, default_value_t = 120)]
    pub tcp_syn_timeout: u64,
    #[arg(long, default_value_t = 6 * 3600)]
    pub tcp_established_timeout: u64,
    #[arg(long, default_value_t = 10)]
    pub tcp_closing_timeout: u64,
    #[arg(long, default_value_t = 120)]
    pub udp_timeout: u64,
    #[arg(long, default_value_t = 30)]
    pub icmp_timeout: u64,
}

impl Timeouts {
    pub fn to_nat(&self) -> nat::NatTimeouts {
        nat::NatTimeouts {
            tcp_syn_sent: Duration::from_secs(self.tcp_syn_timeout),
            tcp_established: Duration::from_secs(self.tcp_established_timeout),
            tcp_closing: Duration::from_secs(self.tcp_closing_timeout),
            udp: Duration::from_secs(self.udp_timeout),
            icmp: Duration::from_secs(self.icmp_timeout),
        }
    }
}

pub fn run(layout: &BpffsLayout, timeouts: &Timeouts, as_json: bool) -> anyhow::Result<()> {
    let timeouts = timeouts.to_nat();
    let nat = nat::gc(layout, &timeouts).context("expiring NAT flows")?;
    let ports = nat::gc_host_port_flows(layout, &timeouts).context("expiring host-port flows")?;
    let stats = nat::GcStats {
        scanned: nat.scanned + ports.scanned,
        expired: nat.expired + ports.expired,
        live: nat.live + ports.live,
    };
    if as_json {
        println!(
            "{}",
            serde_json::json!({"scanned": stats.scanned, "expired": stats.expired, "live": stats.live})
        );
    } else {
        println!(
            "scanned {} flow(s), expired {}, {} live",
            stats.scanned, stats.expired, stats.live
        );
    }
    Ok(())
}
