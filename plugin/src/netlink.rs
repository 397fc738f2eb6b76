//! The rtnetlink requests of ADD, DEL and CHECK, over a socket opened in
//! one namespace (a socket stays in the namespace it was created in, so the
//! plugin holds one for the node and one for the pod at the same time).

use std::net::IpAddr;

use futures::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags},
    link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteScope},
    tc::{TcAttribute, TcFilterBpfOption, TcMessage, TcOption},
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::{
    error::{CniError, CniResult},
    names,
    netns::NetNs,
};

/// One end of a veth pair as ADD wants it.
#[derive(Debug, Clone)]
pub struct VethEnd {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// GSO and GRO maximum size, IPv4 and IPv6, when above the kernel's
    /// 64 KiB default (BIG TCP).
    pub big_tcp: Option<u32>,
}

/// The four attributes of BIG TCP: `IFLA_GSO_MAX_SIZE`/`IFLA_GRO_MAX_SIZE`
/// (IPv6, and IPv4 before 6.3) and `IFLA_GSO_IPV4_MAX_SIZE`/
/// `IFLA_GRO_IPV4_MAX_SIZE` (6.3; ignored by older kernels). Given at
/// creation, they cost no request of their own.
fn big_tcp_attributes(size: Option<u32>) -> Vec<LinkAttribute> {
    size.map_or_else(Vec::new, |size| {
        vec![
            LinkAttribute::GsoMaxSize(size),
            LinkAttribute::GroMaxSize(size),
            LinkAttribute::GsoIpv4MaxSize(size),
            LinkAttribute::GroIpv4MaxSize(size),
        ]
    })
}

/// What CHECK and DEL need to know of an existing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// `IFLA_LINK`: a veth's peer (its ifindex in the peer's namespace).
    pub peer: Option<u32>,
}

/// A route as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteState {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

pub struct Netlink {
    handle: Handle,
}

/// Where the default route is looked up: TEST-NET-1 (RFC 5737), which no
/// network routes, so normally only a default route covers it.
const DEFAULT_ROUTE_PROBE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 1);

/// The answer of a route lookup for the default route.
enum Lookup {
    /// The main table's default route, through this device.
    Found(u32),
    /// No route at all.
    NoRoute,
    /// An answer the lookup cannot vouch for.
    Unsure,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

impl Netlink {
    /// A socket in the calling thread's namespace; must run inside a tokio
    /// runtime (the connection is spawned on it).
    pub fn connect() -> CniResult<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| CniError::netlink("opening a netlink socket", e))?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// A socket in `ns`.
    pub fn connect_in(ns: &NetNs) -> CniResult<Self> {
        let _inside = ns.enter()?;
        Self::connect()
    }

    /// Creates the pair with both ends configured, the `pod` end directly
    /// inside `pod_ns` (nothing to move afterwards) and the host end up. The
    /// pod end cannot come up in the same request: the kernel configures the
    /// peer before the pair is joined (`veth_open` answers ENOTCONN).
    pub async fn create_veth(
        &self,
        host: &VethEnd,
        pod: &VethEnd,
        pod_ns: &NetNs,
    ) -> CniResult<()> {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(pod.name.clone())
            .mtu(pod.mtu)
            .address(pod.mac.to_vec())
            .setns_by_fd(pod_ns.raw_fd());
        for attribute in big_tcp_attributes(pod.big_tcp) {
            peer = peer.append_extra_attribute(attribute);
        }
        let mut message = LinkVeth::new(&host.name, &pod.name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .mtu(host.mtu)
            .address(host.mac.to_vec())
            .up();
        for attribute in big_tcp_attributes(host.big_tcp) {
            message = message.append_extra_attribute(attribute);
        }
        let message = message.build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| {
                if errno(&e) == Some(libc::EEXIST) {
                    CniError::new(
                        crate::error::code::ALREADY_EXISTS,
                        format!(
                            "interface {} (node) or {} (pod) already exists",
                            host.name, pod.name
                        ),
                    )
                } else {
                    CniError::netlink(format!("creating veth {}/{}", host.name, pod.name), e)
                }
            })
    }

    pub async fn set_up(&self, index: u32) -> CniResult<()> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| CniError::netlink(format!("setting link {index} up"), e))
    }

    pub async fn link(&self, name: &str) -> CniResult<Option<LinkState>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(message)) => Ok(Some(link_state(&message))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(CniError::netlink(format!("reading link {name}"), e)),
        }
    }

    pub async fn link_names(&self) -> CniResult<Vec<String>> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| CniError::netlink("listing links", e))?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })
            })
            .collect())
    }

    /// Deletes a link by name; false when there was none. Deleting either end
    /// of a veth deletes the pair.
    pub async fn delete_link(&self, name: &str) -> CniResult<bool> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(CniError::netlink(format!("deleting link {name}"), e)),
        }
    }

    /// Takes `link` out of use in one request, without deleting it (which
    /// costs the caller the kernel's unregistration, 15–30 ms here): down,
    /// so its routes go with it and a veth peer loses its carrier, and
    /// renamed to [`names::tombstone`] of its ifindex, so its name is free
    /// for the next ADD at once. False when it was gone already.
    pub async fn retire_link(&self, link: &LinkState) -> CniResult<bool> {
        let message = LinkUnspec::new_with_index(link.index)
            .down()
            .name(names::tombstone(link.index))
            .build();
        match self.handle.link().set(message).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(CniError::netlink(
                format!("retiring link {}", link.index),
                e,
            )),
        }
    }

    /// Adds `address` without the prefix route: the pod reaches everything,
    /// its own subnet included, through the gateway. IPv6 addresses skip
    /// duplicate address detection (IPAM made the address unique), so they
    /// are usable at once instead of after DAD's second.
    pub async fn add_address(&self, index: u32, address: IpNet) -> CniResult<()> {
        let mut request = self
            .handle
            .address()
            .add(index, address.addr(), address.prefix_len());
        let mut flags = AddressFlags::Noprefixroute;
        if address.addr().is_ipv6() {
            flags |= AddressFlags::Nodad;
        }
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(flags));
        request
            .execute()
            .await
            .map_err(|e| CniError::netlink(format!("adding address {address}"), e))
    }

    pub async fn addresses(&self, index: u32) -> CniResult<Vec<IpNet>> {
        self.address_dump(Some(index)).await
    }

    /// Every address of the namespace.
    pub async fn all_addresses(&self) -> CniResult<Vec<IpNet>> {
        self.address_dump(None).await
    }

    async fn address_dump(&self, index: Option<u32>) -> CniResult<Vec<IpNet>> {
        let mut request = self.handle.address().get();
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        let messages: Vec<_> = request
            .execute()
            .try_collect()
            .await
            .map_err(|e| CniError::netlink("listing addresses", e))?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNet::new(*ip, m.header.prefix_len).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds a route through `oif`: via `gateway`, or on-link when none.
    pub async fn add_route(&self, dst: IpNet, gateway: Option<IpAddr>, oif: u32) -> CniResult<()> {
        let invalid = |e| CniError::invalid_config(format!("route {dst}: {e}"));
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(invalid)?
            .output_interface(oif);
        builder = match gateway {
            Some(gw) => builder.gateway(gw).map_err(invalid)?,
            None => builder.scope(RouteScope::Link),
        };
        self.handle
            .route()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| {
                let what = match gateway {
                    Some(gw) => format!("adding route {dst} via {gw}"),
                    None => format!("adding route {dst}"),
                };
                CniError::netlink(what, e)
            })
    }

    /// Names of the BPF programs in the filters on the clsact ingress hook
    /// of link `index`.
    pub async fn ingress_bpf_programs(&self, index: u32) -> CniResult<Vec<String>> {
        let messages: Vec<TcMessage> = self
            .handle
            .traffic_filter(index as i32)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await
            .map_err(|e| {
                CniError::netlink(format!("listing ingress filters of link {index}"), e)
            })?;
        Ok(messages
            .iter()
            .flat_map(|m| &m.attributes)
            .filter_map(|a| match a {
                TcAttribute::Options(options) => Some(options),
                _ => None,
            })
            .flatten()
            .filter_map(|o| match o {
                TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name.clone()),
                _ => None,
            })
            .collect())
    }

    /// Adds or replaces `dst via gw` in the main table.
    pub async fn replace_route(&self, dst: IpNet, gw: IpAddr) -> CniResult<()> {
        let invalid = |e| CniError::invalid_config(format!("nodeRoutes {dst}: {e}"));
        let message = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(invalid)?
            .gateway(gw)
            .map_err(invalid)?
            .build();
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|e| CniError::netlink(format!("installing route {dst} via {gw}"), e))
    }

    /// The device of the IPv4 default route, if there is one.
    pub async fn default_route_device(&self) -> CniResult<Option<String>> {
        let oif = match self.default_route_by_lookup().await? {
            Lookup::Found(oif) => Some(oif),
            Lookup::NoRoute => None,
            // The dump grows with the routes: one /32 per pod.
            Lookup::Unsure => self
                .routes(true)
                .await?
                .into_iter()
                .find(|r| r.dst.prefix_len() == 0)
                .and_then(|r| r.oif),
        };
        let Some(oif) = oif else {
            return Ok(None);
        };
        let mut links = self.handle.link().get().match_index(oif).execute();
        let message = links
            .try_next()
            .await
            .map_err(|e| CniError::netlink(format!("reading link {oif}"), e))?;
        Ok(message.and_then(|m| {
            m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            })
        }))
    }

    /// Asks the kernel which FIB entry routes [`DEFAULT_ROUTE_PROBE`]
    /// (`ip route get fibmatch`): one request, whatever the size of the
    /// table. Only a plain answer counts: a /0 of the main table with a
    /// device. Anything else (a route covering the probe, policy routing
    /// into another table, a multipath or blackhole default) leaves the
    /// question to the dump.
    async fn default_route_by_lookup(&self) -> CniResult<Lookup> {
        let mut query = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(DEFAULT_ROUTE_PROBE, 32)
            .build();
        query.header.flags = RouteFlags::FibMatch;
        let mut answers = self.handle.route().get(query).execute();
        let answer = match answers.try_next().await {
            Ok(Some(answer)) => answer,
            Ok(None) => return Ok(Lookup::Unsure),
            // No table the rules consult has a route for it: no default route.
            Err(e) if errno(&e) == Some(libc::ENETUNREACH) => return Ok(Lookup::NoRoute),
            Err(_) => return Ok(Lookup::Unsure),
        };
        let table = answer
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(table) => Some(*table),
                _ => None,
            })
            .unwrap_or(u32::from(answer.header.table));
        let oif = answer.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(oif) => Some(*oif),
            _ => None,
        });
        Ok(match oif {
            Some(oif)
                if answer.header.destination_prefix_length == 0
                    && table == u32::from(RouteHeader::RT_TABLE_MAIN) =>
            {
                Lookup::Found(oif)
            }
            _ => Lookup::Unsure,
        })
    }

    /// Routes of the main table in `family` (true: IPv4).
    pub async fn routes(&self, ipv4: bool) -> CniResult<Vec<RouteState>> {
        let query = if ipv4 {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        };
        let messages: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| CniError::netlink("listing routes", e))?;
        Ok(messages.iter().filter_map(route_state).collect())
    }
}

fn link_state(message: &LinkMessage) -> LinkState {
    let mut state = LinkState {
        index: message.header.index,
        mac: None,
        mtu: None,
        up: message.header.flags.contains(LinkFlags::Up),
        peer: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Address(bytes) => state.mac = bytes.as_slice().try_into().ok(),
            LinkAttribute::Mtu(mtu) => state.mtu = Some(*mtu),
            LinkAttribute::Link(peer) => state.peer = Some(*peer),
            _ => {}
        }
    }
    state
}

fn route_address(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_state(message: &RouteMessage) -> Option<RouteState> {
    let prefix = message.header.destination_prefix_length;
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(a) => dst = route_address(a),
            RouteAttribute::Gateway(a) => gateway = route_address(a),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    let unspecified = match message.header.address_family {
        netlink_packet_route::AddressFamily::Inet6 => IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED),
    };
    let dst = IpNet::new(dst.unwrap_or(unspecified), prefix).ok()?;
    Some(RouteState { dst, gateway, oif })
}
