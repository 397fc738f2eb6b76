//! The contenders and their worlds: each gets its own node namespace (but
//! `limit`, which has no node) and a pair of pods, client and server.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, bail};
use cni_ebpf_tests::{
    Netns, traffic,
    veth::{self, VethEnd},
};

use crate::cni::{Attachment, PluginNode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Contender {
    /// Two pods joined by a direct veth pair: what any datapath adds to.
    Limit,
    /// Our plugin.
    CniEbpf,
    /// Reference `bridge` + `host-local`, `ipMasq`.
    Bridge,
    /// Reference `ptp` + `host-local`, `ipMasq`.
    Ptp,
    /// A row of a scenario with its own contenders (masq, hostport,
    /// bandwidth), by its table name; never in [`Contender::ALL`].
    Named(&'static str),
}

impl Contender {
    /// Every contender, in the order each round runs them.
    pub const ALL: [Contender; 4] = [
        Contender::Limit,
        Contender::CniEbpf,
        Contender::Bridge,
        Contender::Ptp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::Limit => "limit",
            Contender::CniEbpf => "cni-ebpf",
            Contender::Bridge => "bridge",
            Contender::Ptp => "ptp",
            Contender::Named(name) => name,
        }
    }

    /// One subnet each, so an address in a log says whose it is.
    fn subnet(self) -> &'static str {
        match self {
            Contender::Limit => "10.200.0.0/24",
            Contender::CniEbpf => "10.201.0.0/24",
            Contender::Bridge => "10.202.0.0/24",
            Contender::Ptp => "10.203.0.0/24",
            Contender::Named(_) => "10.209.0.0/24",
        }
    }

    /// Whether a plugin attaches its pods (all but `limit`).
    pub fn has_plugin(self) -> bool {
        self != Contender::Limit
    }
}

/// A fresh node for `contender`'s plugin; `None` for `limit`.
pub fn plugin_node(contender: Contender) -> Result<Option<PluginNode>> {
    Ok(match contender {
        Contender::Limit => None,
        Contender::CniEbpf => Some(PluginNode::cni_ebpf(contender.subnet())),
        Contender::Bridge => Some(PluginNode::reference("bridge", contender.subnet())?),
        Contender::Ptp => Some(PluginNode::reference("ptp", contender.subnet())?),
        Contender::Named(name) => bail!("{name}: built by its own scenario"),
    })
}

/// A pod namespace with its address; DEL runs before the namespace goes.
pub struct Pod<'n> {
    // Field order is drop order.
    _attachment: Option<Attachment<'n>>,
    netns: Netns,
    ip: Ipv4Addr,
}

impl Pod<'_> {
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

/// The two pods a traffic scenario runs between.
pub struct PodPair<'n> {
    pub contender: Contender,
    pub client: Pod<'n>,
    pub server: Pod<'n>,
}

impl<'n> PodPair<'n> {
    /// Two pods of `contender`, attached through `node`'s plugin (or joined
    /// by a veth pair for `limit`), checked to reach each other.
    pub fn new(contender: Contender, node: Option<&'n PluginNode>) -> Result<Self> {
        let pair = match node {
            None => Self::direct(contender)?,
            Some(node) => Self {
                contender,
                client: attached_pod(contender, node)?,
                server: attached_pod(contender, node)?,
            },
        };
        if !traffic::ping(pair.client.netns(), IpAddr::V4(pair.server.ip()), 2) {
            bail!(
                "{}: client pod {} does not reach server pod {}",
                contender.name(),
                pair.client.ip(),
                pair.server.ip()
            );
        }
        Ok(pair)
    }

    /// `limit`: a direct veth pair, MTU 1500, one /24.
    fn direct(contender: Contender) -> Result<Self> {
        let client = Netns::with_loopback(&format!("bench-{}", contender.name()));
        let server = Netns::with_loopback(&format!("bench-{}", contender.name()));
        let client_ip = Ipv4Addr::new(10, 200, 0, 1);
        let server_ip = Ipv4Addr::new(10, 200, 0, 2);
        join_by_veth(
            &client,
            &server,
            &format!("{client_ip}/24"),
            &format!("{server_ip}/24"),
        );
        Ok(Self {
            contender,
            client: Pod {
                _attachment: None,
                netns: client,
                ip: client_ip,
            },
            server: Pod {
                _attachment: None,
                netns: server,
                ip: server_ip,
            },
        })
    }
}

fn attached_pod<'n>(contender: Contender, node: &'n PluginNode) -> Result<Pod<'n>> {
    let netns = Netns::with_loopback(&format!("bench-{}", contender.name()));
    let attachment = Attachment::add(node, &netns)?;
    Ok(Pod {
        ip: attachment.ip(),
        _attachment: Some(attachment),
        netns,
    })
}

/// Joins `client` and `server` by a veth pair named `eth0` on both sides,
/// MTU 1500, with `client_cidr` and `server_cidr` on its ends, both up.
pub fn join_by_veth(client: &Netns, server: &Netns, client_cidr: &str, server_cidr: &str) {
    veth::add_veth(
        VethEnd::new(client, "eth0", client_cidr),
        VethEnd::new(server, "eth0", server_cidr),
        Some(1500),
    );
}
