//! `cni-ebpfd peers`: other nodes and how their pods are reached, by hand
//! (the agent's cluster mode programs the same from the datastore).

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context as _;
use cni_ebpf_userspace::{
    BpffsLayout,
    peers::{self, Peer, PeerMode, Peers, TUNNEL_OVERHEAD, TunnelSettings},
};
use ipnet::IpNet;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum PeersCommand {
    /// The peers the datapath knows.
    List,
    /// Reach the pods of `pod_cidr` via the node at `underlay`.
    Add {
        #[arg(long)]
        pod_cidr: IpNet,
        #[arg(long)]
        underlay: IpAddr,
        #[arg(long, value_enum, default_value = "native")]
        mode: Mode,
    },
    /// Forget the peer holding `pod_cidr`.
    Del {
        #[arg(long)]
        pod_cidr: IpNet,
    },
    /// Create the node's VXLAN device and attach its programs.
    Tunnel {
        #[arg(long, default_value_t = 1)]
        vni: u32,
        #[arg(long, default_value_t = 8472)]
        port: u16,
        /// This node's underlay address.
        #[arg(long)]
        local: Ipv4Addr,
        /// The underlay device.
        #[arg(long)]
        underlay_dev: String,
        /// The underlay's MTU (the device gets 50 less).
        #[arg(long, default_value_t = 1500)]
        underlay_mtu: u32,
        /// An address of the node's own pod CIDR: the source of the node's
        /// own packets to other nodes' pods (one per family: repeat it).
        #[arg(long)]
        address: Vec<IpAddr>,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum Mode {
    Native,
    Vxlan,
}

pub fn run(layout: &BpffsLayout, command: &PeersCommand, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    runtime.block_on(async {
        match command {
            PeersCommand::List => {
                let peers = peers::list(layout)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&peers)?);
                } else {
                    println!("{:<20} {:<16} MODE", "POD CIDR", "UNDERLAY");
                    for p in peers {
                        println!("{:<20} {:<16} {:?}", p.pod_cidr, p.underlay, p.mode);
                    }
                }
            }
            PeersCommand::Add {
                pod_cidr,
                underlay,
                mode,
            } => {
                let mode = match mode {
                    Mode::Native => PeerMode::Native,
                    Mode::Vxlan => PeerMode::Vxlan,
                };
                Peers::connect(layout)?
                    .apply(&Peer {
                        pod_cidr: *pod_cidr,
                        underlay: *underlay,
                        mode,
                    })
                    .await
                    .with_context(|| format!("programming peer {pod_cidr}"))?;
            }
            PeersCommand::Del { pod_cidr } => Peers::connect(layout)?
                .remove(*pod_cidr)
                .await
                .with_context(|| format!("removing peer {pod_cidr}"))?,
            PeersCommand::Tunnel {
                vni,
                port,
                local,
                underlay_dev,
                underlay_mtu,
                address,
            } => Peers::connect(layout)?
                .ensure_tunnel(&TunnelSettings {
                    vni: *vni,
                    port: *port,
                    local: *local,
                    underlay_ifname: underlay_dev.clone(),
                    mtu: underlay_mtu - TUNNEL_OVERHEAD,
                    addresses: address.clone(),
                })
                .await
                .context("setting up the tunnel")?,
        }
        Ok(())
    })
}
