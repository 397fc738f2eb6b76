//! The contenders and their worlds: each gets its own node namespace (but
//! `limit`, which has no node) and a pair of pods, client and server.

use std::{net::IpAddr, time::Duration};

use anyhow::{Result, bail};
use cni_ebpf_tests::{
    Family, Netns, traffic,
    veth::{self, VethEnd},
    wait,
};

use crate::{
    cni::{Attachment, PluginNode},
    floor::{self, FloorNode},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Contender {
    /// Two pods joined by a direct veth pair: what any datapath adds to.
    Limit,
    /// Each pod's veth to a node namespace whose tc hook only calls
    /// `bpf_redirect_peer` (`floor.rs`): the least a veth datapath costs.
    Floor,
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
    pub const ALL: [Contender; 5] = [
        Contender::Limit,
        Contender::Floor,
        Contender::CniEbpf,
        Contender::Bridge,
        Contender::Ptp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::Limit => "limit",
            Contender::Floor => "floor",
            Contender::CniEbpf => "cni-ebpf",
            Contender::Bridge => "bridge",
            Contender::Ptp => "ptp",
            Contender::Named(name) => name,
        }
    }

    /// One subnet each, so an address in a log says whose it is.
    fn subnet(self, family: Family) -> &'static str {
        match (self, family) {
            (Contender::Limit, Family::V4) => "10.200.0.0/24",
            (Contender::Floor, Family::V4) => "10.204.0.0/24",
            (Contender::CniEbpf, Family::V4) => "10.201.0.0/24",
            (Contender::Bridge, Family::V4) => "10.202.0.0/24",
            (Contender::Ptp, Family::V4) => "10.203.0.0/24",
            (Contender::Named(_), Family::V4) => "10.209.0.0/24",
            (Contender::Limit, Family::V6) => "fd00:200::/64",
            (Contender::Floor, Family::V6) => "fd00:204::/64",
            (Contender::CniEbpf, Family::V6) => "fd00:201::/64",
            (Contender::Bridge, Family::V6) => "fd00:202::/64",
            (Contender::Ptp, Family::V6) => "fd00:203::/64",
            (Contender::Named(_), Family::V6) => "fd00:209::/64",
        }
    }

    /// Whether a plugin attaches its pods (all but `limit` and `floor`).
    pub fn has_plugin(self) -> bool {
        !matches!(self, Contender::Limit | Contender::Floor)
    }
}

/// A fresh node for `contender`'s plugin, its pods addressed in `family`;
/// `None` for `limit` and `floor`.
pub fn plugin_node(contender: Contender, family: Family) -> Result<Option<PluginNode>> {
    let subnet = contender.subnet(family);
    Ok(match contender {
        Contender::Limit | Contender::Floor => None,
        Contender::CniEbpf => Some(PluginNode::cni_ebpf(subnet)),
        Contender::Bridge => Some(PluginNode::reference("bridge", subnet)?),
        Contender::Ptp => Some(PluginNode::reference("ptp", subnet)?),
        Contender::Named(name) => bail!("{name}: built by its own scenario"),
    })
}

/// A pod namespace with its address; DEL runs before the namespace goes.
pub struct Pod<'n> {
    // Field order is drop order.
    _attachment: Option<Attachment<'n>>,
    netns: Netns,
    ip: IpAddr,
}

impl Pod<'_> {
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

/// The two pods a traffic scenario runs between.
pub struct PodPair<'n> {
    pub contender: Contender,
    /// The node whose plugin attached the pods (`None` for `limit` and
    /// `floor`).
    pub node: Option<&'n PluginNode>,
    pub client: Pod<'n>,
    pub server: Pod<'n>,
    /// `floor`'s node namespace and program links.
    _floor: Option<FloorNode>,
}

impl<'n> PodPair<'n> {
    /// Two pods of `contender`, attached through `node`'s plugin (or joined
    /// by a veth pair in `family` for `limit`), checked to reach each other.
    pub fn new(contender: Contender, node: Option<&'n PluginNode>, family: Family) -> Result<Self> {
        let pair = match node {
            None => Self::direct(contender, family)?,
            Some(node) => Self {
                contender,
                node: Some(node),
                client: attached_pod(contender, node)?,
                server: attached_pod(contender, node)?,
                _floor: None,
            },
        };
        if let Some(node) = pair.node.and_then(PluginNode::ebpf_node) {
            // Where the node agent puts pods of `attachMode: auto` a second
            // or two after their ADD (tcx); no-op for the other modes.
            node.agent("promote", &[]);
        }
        if let (Family::V6, Some(node)) = (family, pair.node) {
            // ptp gives every host veth the gateway address, and the kernel
            // runs DAD on each: until it ends (a second or two), the address
            // is tentative and the node forwards nothing to that pod.
            wait_for_dad(
                contender.name(),
                &[node.netns(), pair.client.netns(), pair.server.netns()],
            );
        }
        // A fresh IPv6 veth can take a second to resolve its first
        // neighbour (the first solicitation goes unanswered): a few tries.
        let reached = (0..3).any(|_| traffic::ping(pair.client.netns(), pair.server.ip(), 2));
        if !reached {
            bail!(
                "{}: client pod {} does not reach server pod {}",
                contender.name(),
                pair.client.ip(),
                pair.server.ip()
            );
        }
        Ok(pair)
    }

    /// The bpffs root of our node, whose programs a profiled run reads.
    pub fn bpffs_root(&self) -> Option<&std::path::Path> {
        Some(self.node?.ebpf_node()?.bpffs_root())
    }

    /// `limit`: a direct veth pair, MTU 1500, one subnet (the first two
    /// addresses of `limit`'s); `floor`: the same pods and addresses, each
    /// with its own veth to a node namespace (`floor.rs`).
    fn direct(contender: Contender, family: Family) -> Result<Self> {
        let client = Netns::with_loopback(&format!("bench-{}", contender.name()));
        let server = Netns::with_loopback(&format!("bench-{}", contender.name()));
        let (network, prefix) = contender.subnet(family).split_once('/').unwrap();
        let network: IpAddr = network.parse()?;
        let nth = |n: u8| -> IpAddr {
            match network {
                IpAddr::V4(v4) => std::net::Ipv4Addr::from(v4.to_bits() + u32::from(n)).into(),
                IpAddr::V6(v6) => std::net::Ipv6Addr::from(v6.to_bits() + u128::from(n)).into(),
            }
        };
        let (client_ip, server_ip) = (nth(1), nth(2));
        let floor = if contender == Contender::Floor {
            Some(floor::join(&client, &server, client_ip, server_ip, prefix)?)
        } else {
            join_by_veth(
                &client,
                &server,
                &format!("{client_ip}/{prefix}"),
                &format!("{server_ip}/{prefix}"),
            );
            None
        };
        Ok(Self {
            contender,
            node: None,
            _floor: floor,
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

/// Waits (10 s at most, said on stderr) until no IPv6 address in
/// `namespaces` is still tentative (DAD running): until then the kernel
/// neither uses nor answers for it.
pub fn wait_for_dad(what: &str, namespaces: &[&Netns]) {
    let settled = wait::wait_until(Duration::from_secs(10), || {
        namespaces.iter().all(|ns| {
            ns.ip(&["-6", "addr", "show", "tentative"])
                .trim()
                .is_empty()
        })
    });
    if !settled {
        eprintln!("{what}: an IPv6 address is still tentative after 10 s");
    }
}

fn attached_pod<'n>(contender: Contender, node: &'n PluginNode) -> Result<Pod<'n>> {
    let netns = Netns::with_loopback(&format!("bench-{}", contender.name()));
    let attachment = Attachment::add(node, &netns)?;
    Ok(Pod {
        ip: attachment.addr(),
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
