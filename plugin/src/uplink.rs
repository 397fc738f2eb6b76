//! The node side of a network: its uplink (where masqueraded and cross-node
//! traffic leaves and arrives), masquerade, the destinations that keep a
//! pod's own source address, and routes to other nodes' pod CIDRs.
//!
//! Config keys (all optional; read in `cni::config`):
//! - `ipMasq`: masquerade pod traffic leaving the node (as the bridge plugin,
//!   both families);
//! - `ipMasqV6`: masquerade IPv6 or not, whatever `ipMasq` says (default:
//!   as `ipMasq`; pods with global IPv6 addresses often need none);
//! - `nonMasqueradeCIDRs`: destinations that keep the pod's address
//!   (default: the network's own ranges; add the cluster's pod CIDR);
//! - `uplink`: the uplink device (default: the device of the default route);
//! - `masqueradeAddress`: the address to masquerade to (default: the
//!   uplink's first IPv4 address);
//! - `masqueradeAddressV6`: the same for IPv6 (default: the uplink's first
//!   IPv6 address that is not link-local);
//! - `nodeRoutes`: `[{"dst": "<other node's pod CIDR>", "gw": "<its node IP>"}]`,
//!   installed in the node namespace;
//! - `natPortRange`: `"61000-65535"`, ports tried when a flow's own is taken;
//! - `serviceCIDRs`: service addresses that netfilter (kube-proxy)
//!   translates (ClusterIP ranges, externalIPs, LoadBalancer IPs); setting
//!   it hands their traffic, and the flows netfilter translated, to the
//!   node's stack (see the datapath's `netfilter` module).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cni_ebpf_common::{NODE_F_SERVICES, NodeConfig};
use cni_ebpf_userspace::{
    AttachMode, Datapath,
    attach::{attach_from_uplink, attach_to_uplink},
    node::{self, DEFAULT_NAT_MAX_FLOWS, DEFAULT_NAT_PORTS, NodeSettings},
};
use ipnet::IpNet;
use serde::Deserialize;

use crate::{
    cni::config::invalid_field as invalid,
    commands::datapath_error,
    error::{CniError, CniResult},
    netlink::Netlink,
};

/// A `nodeRoutes` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeRoute {
    pub dst: IpNet,
    pub gw: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UplinkConf {
    pub masquerade: bool,
    pub masquerade_v6: bool,
    pub no_masquerade: Vec<IpNet>,
    pub uplink: Option<String>,
    pub masquerade_address: Option<Ipv4Addr>,
    pub masquerade_address_v6: Option<Ipv6Addr>,
    pub node_routes: Vec<NodeRoute>,
    pub nat_ports: Option<(u16, u16)>,
    pub service_cidrs: Vec<IpNet>,
    /// `uplinkXdp`: `xdp_uplink` in front of `from_uplink` (native mode).
    pub xdp: bool,
}

impl UplinkConf {
    /// Whether netfilter translates service addresses on this node.
    pub fn services(&self) -> bool {
        !self.service_cidrs.is_empty()
    }
}

/// Whether the node forwards IPv4 on every interface (a kubeadm node does);
/// if not, the uplink forwards only what pods and services need.
fn forwards_everywhere() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/forwarding").is_ok_and(|v| v.trim() == "1")
}

/// Turns on forwarding for what arrives on `ifname` (the check is on the
/// input device): the stack forwards the flows the datapath hands to
/// netfilter without the node forwarding on every interface. IPv4's
/// `conf.<dev>.forwarding` is that switch; IPv6's is `force_forwarding`
/// (Linux 6.17+; its `conf.<dev>.forwarding` only makes the interface a
/// router), skipped on kernels without it or without IPv6.
pub fn enable_forwarding(ifname: &str) -> CniResult<()> {
    set_one(&format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding"))?;
    let v6 = format!("/proc/sys/net/ipv6/conf/{ifname}/force_forwarding");
    if std::path::Path::new(&v6).exists() {
        set_one(&v6)?;
    }
    Ok(())
}

/// Lets the datapath's guard ask the FIB whether an IPv6 destination is
/// the node's own: `bpf_fib_lookup` answers only for a device whose IPv6
/// `forwarding` is on, and the guard asks from the loopback (turning it on
/// there changes nothing else: no neighbour discovery, no router
/// advertisements, no anycast for its `/128`).
fn enable_fib_probe_v6() -> CniResult<()> {
    let path = "/proc/sys/net/ipv6/conf/lo/forwarding";
    if !std::path::Path::new(path).exists() {
        return Ok(());
    }
    set_one(path)
}

fn set_one(path: &str) -> CniResult<()> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|e| CniError::io(format!("writing {path}"), e))
}

/// Makes the node ready for traffic leaving and arriving through its uplink
/// and for the hooks on the node's own sockets (host ports, TCP pacing);
/// cheap when it already is (one map read, one route lookup and one address
/// dump).
/// Does nothing on a node without an uplink (no default route, none named)
/// unless `node_sockets` asks for the node's addresses and netns cookie.
pub async fn ensure(
    conf: &UplinkConf,
    own_subnets: &[IpNet],
    node: &Netlink,
    datapath: &mut Datapath,
    mode: AttachMode,
    node_sockets: bool,
) -> CniResult<()> {
    for route in &conf.node_routes {
        node.replace_route(route.dst, route.gw).await?;
    }
    let uplink = match &conf.uplink {
        Some(name) => Some(name.clone()),
        None => node.default_route_device().await?,
    };
    if uplink.is_none() && conf.masquerade {
        return Err(CniError::invalid_config(
            "invalid field \"ipMasq\": the node has no default route and no \"uplink\" is set",
        ));
    }
    if uplink.is_none() && !node_sockets {
        return Ok(());
    }
    let uplink_index = match &uplink {
        Some(name) => Some(
            node.link(name)
                .await?
                .ok_or_else(|| invalid("uplink", format!("no interface {name} on the node")))?
                .index,
        ),
        None => None,
    };
    let masquerade = match (conf.masquerade, uplink_index) {
        (true, Some(index)) => Some(match conf.masquerade_address {
            Some(a) => a,
            None => first_ipv4(node, index).await?.ok_or_else(|| {
                invalid(
                    "masqueradeAddress",
                    "the uplink has no IPv4 address to masquerade to",
                )
            })?,
        }),
        _ => None,
    };
    let masquerade_v6 = match (conf.masquerade_v6, uplink_index) {
        (true, Some(index)) => match conf.masquerade_address_v6 {
            Some(a) => Some(a),
            None => masquerade_v6_address(node, index, own_subnets).await?,
        },
        _ => None,
    };
    let nat_ports = conf.nat_ports.unwrap_or(DEFAULT_NAT_PORTS);
    let ephemeral_ports = node::ephemeral_ports();
    if let Some((low, high)) = ephemeral_ports
        && (masquerade.is_some() || masquerade_v6.is_some())
        && nat_ports.0 <= high
        && low <= nat_ports.1
    {
        log::warn!(
            "natPortRange {}-{} overlaps the node's ephemeral ports {low}-{high} \
             (net.ipv4.ip_local_port_range): a masqueraded flow may take the port of \
             one of the node's own connections",
            nat_ports.0,
            nat_ports.1
        );
    }
    let settings = NodeSettings {
        uplink_ifindex: uplink_index.unwrap_or(0),
        masquerade,
        masquerade_v6,
        nat_ports,
        ephemeral_ports,
        nat_max_flows: DEFAULT_NAT_MAX_FLOWS,
        netns_cookie: node::current_netns_cookie()
            .map_err(|e| CniError::io("reading the node's netns cookie", e))?,
        services: conf.services() && uplink_index.is_some(),
        uplink_guard: conf.services() && !forwards_everywhere(),
        uplink_xdp: conf.xdp && uplink_index.is_some(),
    };
    let wanted = settings.to_config();

    let layout = datapath.layout().clone();
    let current =
        node::read_config(&layout).map_err(|e| datapath_error("reading the node config", e))?;
    // Service CIDRs first: the datapath reads them once the flag is set.
    if conf.services() {
        node::add_services(&layout, &conf.service_cidrs)
            .map_err(|e| datapath_error("writing the service CIDRs", e))?;
    }
    // IPv6 first: the IPv4 config's write is what a new uplink waits for.
    let wanted_v6 = settings.to_config_v6();
    if node::read_config_v6(&layout)
        .map_err(|e| datapath_error("reading the IPv6 node config", e))?
        != wanted_v6
    {
        node::write_config_v6(&layout, &wanted_v6)
            .map_err(|e| datapath_error("writing the IPv6 node config", e))?;
    }
    let attach_needed = |current: &NodeConfig| {
        current.uplink_ifindex != wanted.uplink_ifindex
            || (wanted.flags & !current.flags & NODE_F_SERVICES != 0)
    };
    if attach_needed(&current) {
        let _lock = layout
            .lock()
            .map_err(|e| datapath_error("locking the datapath", e))?;
        let current =
            node::read_config(&layout).map_err(|e| datapath_error("reading the node config", e))?;
        if attach_needed(&current)
            && let Some(uplink) = &uplink
        {
            if current.uplink_ifindex != wanted.uplink_ifindex {
                attach_from_uplink(datapath, uplink, mode)
                    .map_err(|e| datapath_error(&format!("attaching to the uplink {uplink}"), e))?;
            }
            if wanted.flags & NODE_F_SERVICES != 0 {
                // NodePorts and replies of services whose endpoints are off
                // the node arrive here and are forwarded by the stack.
                enable_forwarding(uplink)?;
                if settings.uplink_guard {
                    enable_fib_probe_v6()?;
                }
                attach_to_uplink(datapath, uplink, mode).map_err(|e| {
                    datapath_error(&format!("attaching to egress of the uplink {uplink}"), e)
                })?;
            }
        }
        node::write_config(&layout, &wanted)
            .map_err(|e| datapath_error("writing the node config", e))?;
    } else if current != wanted {
        node::write_config(&layout, &wanted)
            .map_err(|e| datapath_error("writing the node config", e))?;
    }

    if conf.xdp
        && let (Some(uplink), Some(index)) = (&uplink, uplink_index)
    {
        // Idempotent (a pin check); under the lock so that two ADDs do not
        // both attach.
        let _lock = layout
            .lock()
            .map_err(|e| datapath_error("locking the datapath", e))?;
        cni_ebpf_userspace::attach::attach_xdp_uplink(datapath, uplink, index).map_err(|e| {
            datapath_error(
                &format!("attaching XDP (native mode) to the uplink {uplink}"),
                e,
            )
        })?;
    }

    let node_addrs: Vec<IpAddr> = node
        .all_addresses()
        .await?
        .iter()
        .map(IpNet::addr)
        .collect();
    node::sync_node_addrs(&layout, &node_addrs)
        .map_err(|e| datapath_error("writing the node's addresses", e))?;

    let mut no_masq: Vec<IpNet> = own_subnets.iter().map(IpNet::trunc).collect();
    no_masq.extend(conf.no_masquerade.iter().map(IpNet::trunc));
    node::add_no_masquerade(&layout, &no_masq)
        .map_err(|e| datapath_error("writing the no-masquerade CIDRs", e))
}

/// The uplink's first IPv6 address that is not link-local, to masquerade
/// IPv6 to. A network with IPv6 ranges needs one; without, IPv6 is simply
/// not masqueraded.
async fn masquerade_v6_address(
    node: &Netlink,
    index: u32,
    own_subnets: &[IpNet],
) -> CniResult<Option<Ipv6Addr>> {
    let found = node
        .addresses(index)
        .await?
        .into_iter()
        .find_map(|net| match net.addr() {
            IpAddr::V6(v6) if !v6.is_unicast_link_local() && !v6.is_loopback() => Some(v6),
            _ => None,
        });
    if found.is_none() && own_subnets.iter().any(|net| matches!(net, IpNet::V6(_))) {
        return Err(invalid(
            "masqueradeAddressV6",
            "the uplink has no IPv6 address to masquerade to (set it, or \"ipMasqV6\": false)",
        ));
    }
    Ok(found)
}

async fn first_ipv4(node: &Netlink, index: u32) -> CniResult<Option<Ipv4Addr>> {
    Ok(node
        .addresses(index)
        .await?
        .into_iter()
        .find_map(|net| match net.addr() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }))
}
