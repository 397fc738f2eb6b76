//! STAND-IN for the datapath's peer API (the VXLAN half of issue 15 lands
//! this module on main with the same signatures; take that one at merge).
//! Here only native peers work, as routes via `ip`; VXLAN is refused.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
};

use ipnet::IpNet;

use crate::BpffsLayout;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMode {
    Native,
    Vxlan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pod_cidr: IpNet,
    pub underlay: IpAddr,
    pub mode: PeerMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSettings {
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub underlay_ifname: String,
    pub mtu: u32,
}

pub type Result<T> = std::result::Result<T, String>;

/// Idempotent. Native: `ip route replace <pod_cidr> via <underlay>`.
pub async fn apply(_layout: &BpffsLayout, peer: &Peer) -> Result<()> {
    match peer.mode {
        PeerMode::Native => ip(&[
            "route",
            "replace",
            &peer.pod_cidr.to_string(),
            "via",
            &peer.underlay.to_string(),
        ]),
        PeerMode::Vxlan => Err("the VXLAN datapath is not in this build".to_string()),
    }
}

pub async fn remove(_layout: &BpffsLayout, pod_cidr: IpNet) -> Result<()> {
    match ip(&["route", "del", &pod_cidr.to_string()]) {
        Err(e) if e.contains("No such process") => Ok(()),
        other => other,
    }
}

pub fn list(_layout: &BpffsLayout) -> Result<Vec<Peer>> {
    Ok(Vec::new())
}

pub async fn ensure_tunnel(_layout: &BpffsLayout, _tunnel: &TunnelSettings) -> Result<()> {
    Err("the VXLAN datapath is not in this build".to_string())
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
