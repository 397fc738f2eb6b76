//! Other nodes and how their pods are reached: natively, by a route to the
//! peer's pod CIDR via its underlay address (the node's routing table, which
//! the datapath's `bpf_redirect_neigh` follows), or through the node's
//! collect-metadata VXLAN device (a `PEERS` entry that `from_pod` and
//! `to_tunnel` key packets with, plus a route over the device for the
//! node's own traffic). The agent programs these from the cluster datastore;
//! `cni-ebpfd peer` does it by hand. Both families: a peer's IPv6 pod CIDR
//! is routed via its IPv6 underlay address natively, or tunneled to its
//! IPv4 underlay address (the outer family is the underlay address's).
//!
//! [`Peers`] holds one rtnetlink connection for every change: the agent
//! programs peers for as long as it runs.

use std::net::{IpAddr, Ipv4Addr};

use aya::maps::{Array, LpmTrie, MapData, lpm_trie::Key};
use cni_ebpf_common::{
    IpKey, PEER_F_TUNNEL, Peer as PeerEntry, TunnelConfig,
    map_names::{PEERS, TUNNEL},
    program_names::{FROM_TUNNEL, TO_TUNNEL},
};
use futures::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::link::LinkFlags;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::{
    AttachMode, Datapath,
    attach::attach_tunnel,
    attachments::filters_on,
    error::{DatapathError, Result, key_missing, map_error, open_map},
    paths::BpffsLayout,
    tc_filters::Hook,
};

/// The VXLAN device every node names the same.
pub const TUNNEL_DEVICE: &str = "cnie-vxlan";
/// VXLAN and outer IPv4/UDP/Ethernet headers: pods' MTU is the underlay's
/// minus this.
pub const TUNNEL_OVERHEAD: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerMode {
    Native,
    Vxlan,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub pod_cidr: IpNet,
    pub underlay: IpAddr,
    pub mode: PeerMode,
}

/// The node's side of the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSettings {
    pub vni: u32,
    /// UDP port of VXLAN (IANA: 4789; flannel and Linux's default: 8472).
    pub port: u16,
    /// This node's underlay address (outer source).
    pub local: Ipv4Addr,
    pub underlay_ifname: String,
    /// The device's MTU: the underlay's minus [`TUNNEL_OVERHEAD`].
    pub mtu: u32,
    /// Addresses of the node's own pod CIDRs (one per family) put on the
    /// device: the sources of the node's own packets to other nodes' pods,
    /// so that their answers come back through the tunnel too.
    pub addresses: Vec<IpAddr>,
}

fn netlink_error(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> DatapathError {
    let op = op.into();
    move |source| DatapathError::Netlink { op, source }
}

fn lpm_key(net: &IpNet) -> Key<[u8; 16]> {
    let net = net.trunc();
    let prefix = match net {
        IpNet::V4(v4) => 96 + u32::from(v4.prefix_len()),
        IpNet::V6(v6) => u32::from(v6.prefix_len()),
    };
    Key::new(prefix, IpKey::from_ip(net.addr()).addr)
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(netlink_error(format!("looking up {name}"))(e)),
    }
}

/// The node's peers in the datapath (`PEERS` and the routes) and its
/// tunnel device, over one rtnetlink connection.
pub struct Peers {
    layout: BpffsLayout,
    netlink: Handle,
}

impl Peers {
    /// Opens the connection, whose task runs on the calling tokio runtime;
    /// in the node's network namespace.
    pub fn connect(layout: &BpffsLayout) -> Result<Self> {
        let (connection, netlink, _) = rtnetlink::new_connection()
            .map_err(|e| DatapathError::io("netlink socket", "rtnetlink", e))?;
        tokio::spawn(connection);
        Ok(Self {
            layout: layout.clone(),
            netlink,
        })
    }

    /// Creates the node's VXLAN device (collect-metadata, no ARP, no
    /// learning) if it is missing, attaches `from_tunnel`/`to_tunnel` to it,
    /// puts the node's addresses on it and records it in `TUNNEL`.
    /// Idempotent.
    pub async fn ensure_tunnel(&self, tunnel: &TunnelSettings) -> Result<()> {
        let mut datapath = Datapath::open_or_load(self.layout.clone())?;
        let handle = &self.netlink;
        let underlay = link_index(handle, &tunnel.underlay_ifname)
            .await?
            .ok_or_else(|| {
                DatapathError::io(
                    "find the underlay device",
                    tunnel.underlay_ifname.as_str(),
                    std::io::ErrorKind::NotFound.into(),
                )
            })?;
        let index = match link_index(handle, TUNNEL_DEVICE).await? {
            Some(index) => index,
            None => {
                // A collect-metadata device carries no VNI of its own: its
                // socket looks every packet up under VNI 0 (the key holds it).
                let message = LinkVxlan::new(TUNNEL_DEVICE, 0)
                    .collect_metadata(true)
                    .port(tunnel.port)
                    .dev(underlay)
                    .learning(false)
                    .mtu(tunnel.mtu)
                    .build();
                handle
                    .link()
                    .add(message)
                    .execute()
                    .await
                    .map_err(netlink_error(format!("creating {TUNNEL_DEVICE}")))?;
                let index = link_index(handle, TUNNEL_DEVICE).await?.ok_or_else(|| {
                    DatapathError::io(
                        "find the tunnel device",
                        TUNNEL_DEVICE,
                        std::io::ErrorKind::NotFound.into(),
                    )
                })?;
                // No neighbour resolution over the device: the datapath keys
                // every packet with the peer's address itself.
                let mut message = LinkUnspec::new_with_index(index).up().build();
                message.header.flags |= LinkFlags::Noarp;
                message.header.change_mask |= LinkFlags::Noarp;
                handle
                    .link()
                    .set(message)
                    .execute()
                    .await
                    .map_err(netlink_error(format!("bringing {TUNNEL_DEVICE} up")))?;
                index
            }
        };
        for &address in &tunnel.addresses {
            let prefix = if address.is_ipv4() { 32 } else { 128 };
            match handle.address().add(index, address, prefix).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                Err(e) => {
                    return Err(netlink_error(format!(
                        "adding {address} to {TUNNEL_DEVICE}"
                    ))(e));
                }
            }
        }
        // Replies of service flows whose endpoint is behind the tunnel arrive
        // here and are forwarded by the stack after conntrack (the forwarding
        // check is on the input device); `from_tunnel` lets nothing else
        // through to be routed on. IPv6's switch is `force_forwarding`
        // (Linux 6.17+, as the plugin sets it on host veths and the uplink).
        let forwarding = format!("/proc/sys/net/ipv4/conf/{TUNNEL_DEVICE}/forwarding");
        std::fs::write(&forwarding, "1").map_err(|e| DatapathError::io("write", forwarding, e))?;
        let forwarding_v6 = format!("/proc/sys/net/ipv6/conf/{TUNNEL_DEVICE}/force_forwarding");
        if std::path::Path::new(&forwarding_v6).exists() {
            std::fs::write(&forwarding_v6, "1")
                .map_err(|e| DatapathError::io("write", forwarding_v6, e))?;
        }
        for (hook, program) in [(Hook::Ingress, FROM_TUNNEL), (Hook::Egress, TO_TUNNEL)] {
            let attached = filters_on(index, TUNNEL_DEVICE, hook)?
                .iter()
                .any(|f| f.program == program);
            if !attached {
                attach_tunnel(&mut datapath, TUNNEL_DEVICE, hook, AttachMode::Clsact)?;
            }
        }
        let mut map: Array<MapData, TunnelConfig> = open_map(datapath.layout(), TUNNEL)?;
        map.set(
            0,
            TunnelConfig {
                ifindex: index,
                vni: tunnel.vni,
            },
            0,
        )
        .map_err(map_error(TUNNEL))
    }

    /// Programs how `peer`'s pods are reached; idempotent (a peer that
    /// changes mode is reprogrammed).
    pub async fn apply(&self, peer: &Peer) -> Result<()> {
        let handle = &self.netlink;
        let mut map: LpmTrie<MapData, [u8; 16], PeerEntry> = open_map(&self.layout, PEERS)?;
        let entry = PeerEntry {
            underlay: IpKey::from_ip(peer.underlay).addr,
            flags: match peer.mode {
                PeerMode::Native => 0,
                PeerMode::Vxlan => PEER_F_TUNNEL,
            },
            _pad: 0,
        };
        map.insert(&lpm_key(&peer.pod_cidr), entry, 0)
            .map_err(map_error(PEERS))?;
        let dst = peer.pod_cidr.trunc();
        let route_error = |e| DatapathError::io("route", dst.to_string(), std::io::Error::other(e));
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(route_error)?;
        let message = match peer.mode {
            PeerMode::Native => route.gateway(peer.underlay).map_err(route_error)?.build(),
            PeerMode::Vxlan => {
                let index = link_index(handle, TUNNEL_DEVICE).await?.ok_or_else(|| {
                    DatapathError::io(
                        "route over the tunnel",
                        TUNNEL_DEVICE,
                        std::io::ErrorKind::NotFound.into(),
                    )
                })?;
                let source = tunnel_address(handle, index, dst.addr().is_ipv6()).await?;
                let mut builder = route.output_interface(index);
                if let Some(source) = source {
                    builder = builder.pref_source(source).map_err(route_error)?;
                }
                builder.build()
            }
        };
        handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(netlink_error(format!("route to {dst} ({:?})", peer.mode)))
    }

    /// Forgets a peer: its `PEERS` entry and its route. Idempotent.
    pub async fn remove(&self, pod_cidr: IpNet) -> Result<()> {
        let mut map: LpmTrie<MapData, [u8; 16], PeerEntry> = open_map(&self.layout, PEERS)?;
        match map.remove(&lpm_key(&pod_cidr)) {
            Ok(()) => {}
            Err(e) if key_missing(&e) => {}
            Err(e) => return Err(map_error(PEERS)(e)),
        }
        let dst = pod_cidr.trunc();
        let message = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| DatapathError::io("route", dst.to_string(), std::io::Error::other(e)))?
            .build();
        match self.netlink.route().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(netlink_error(format!("removing the route to {dst}"))(e)),
        }
    }
}

/// The VXLAN device's ifindex, 0 when the node has none.
pub fn tunnel_ifindex(layout: &BpffsLayout) -> Result<u32> {
    let map: Array<MapData, TunnelConfig> = open_map(layout, TUNNEL)?;
    Ok(map.get(&0, 0).map_err(map_error(TUNNEL))?.ifindex)
}

/// The tunnel device's first address of the family (`v6` or IPv4).
async fn tunnel_address(handle: &Handle, index: u32, v6: bool) -> Result<Option<IpAddr>> {
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(netlink_error("listing the tunnel's addresses"))?
    {
        for attribute in message.attributes {
            if let netlink_packet_route::address::AddressAttribute::Address(ip) = attribute
                && ip.is_ipv6() == v6
                && !is_link_local(ip)
            {
                return Ok(Some(ip));
            }
        }
    }
    Ok(None)
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// The peers the datapath knows (their routes are not read back).
pub fn list(layout: &BpffsLayout) -> Result<Vec<Peer>> {
    let map: LpmTrie<MapData, [u8; 16], PeerEntry> = open_map(layout, PEERS)?;
    map.iter()
        .map(|item| {
            let (key, entry) = item.map_err(map_error(PEERS))?;
            let ip = IpKey::v6(key.data()).to_ip();
            let prefix = match ip {
                IpAddr::V4(_) => key.prefix_len().saturating_sub(96),
                IpAddr::V6(_) => key.prefix_len(),
            };
            Ok(Peer {
                pod_cidr: IpNet::new(ip, prefix as u8).unwrap_or(IpNet::from(ip)),
                underlay: IpKey::v6(entry.underlay).to_ip(),
                mode: if entry.flags & PEER_F_TUNNEL != 0 {
                    PeerMode::Vxlan
                } else {
                    PeerMode::Native
                },
            })
        })
        .collect()
}
