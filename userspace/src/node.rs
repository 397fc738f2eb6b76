//! Node-wide settings of the datapath: the uplink, masquerade, and the
//! destinations that keep a pod's own source address.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key};
use cni_ebpf_common::{
    FlowKey, IpKey, MAX_NAT_FLOWS, NODE_F_MASQUERADE, NODE_F_SERVICES, NODE_F_UPLINK_GUARD,
    NODE_F_UPLINK_XDP, NodeConfig, NodeConfigV6,
    map_names::{NETFILTER_FLOWS, NO_MASQ, NODE_ADDRS, NODE_CONFIG, NODE_CONFIG_V6, SERVICES},
};
use ipnet::IpNet;

use crate::{
    error::{Result, key_missing, map_error, open_map},
    paths::BpffsLayout,
};

/// Source ports tried when a flow's own port is taken: above Linux's default
/// ephemeral range (32768-60999), so they do not collide with the node's own
/// connections.
pub const DEFAULT_NAT_PORTS: (u16, u16) = (61_000, 65_535);
/// Headroom below the LRU maps' size: new flows are refused (and counted)
/// before the maps would evict live ones.
pub const DEFAULT_NAT_MAX_FLOWS: u32 = MAX_NAT_FLOWS / 8 * 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSettings {
    pub uplink_ifindex: u32,
    /// `Some` turns masquerade on.
    pub masquerade: Option<Ipv4Addr>,
    /// `Some` turns masquerade of IPv6 on.
    pub masquerade_v6: Option<Ipv6Addr>,
    pub nat_ports: (u16, u16),
    /// The node's own ephemeral ports ([`ephemeral_ports`]), which
    /// masqueraded flows never keep.
    pub ephemeral_ports: Option<(u16, u16)>,
    pub nat_max_flows: u32,
    /// Cookie of the node's network namespace ([`current_netns_cookie`]).
    pub netns_cookie: u64,
    /// Netfilter (kube-proxy) translates service addresses on this node:
    /// see the datapath's `netfilter` module.
    pub services: bool,
    /// The uplink forwards only for pods and services (the node does not
    /// forward otherwise): see `NODE_F_UPLINK_GUARD`.
    pub uplink_guard: bool,
    /// `uplinkXdp`: see `NODE_F_UPLINK_XDP`.
    pub uplink_xdp: bool,
}

/// `SO_NETNS_COOKIE` of the calling thread's network namespace.
pub fn current_netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` outlive the call and match in size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl NodeSettings {
    pub fn to_config(&self) -> NodeConfig {
        NodeConfig {
            masq_addr: self
                .masquerade
                .map(|a| IpKey::v4(a.octets()).addr)
                .unwrap_or_default(),
            uplink_ifindex: self.uplink_ifindex,
            flags: if self.masquerade.is_some() {
                NODE_F_MASQUERADE
            } else {
                0
            } | if self.services { NODE_F_SERVICES } else { 0 }
                | if self.uplink_guard {
                    NODE_F_UPLINK_GUARD
                } else {
                    0
                }
                | if self.uplink_xdp {
                    NODE_F_UPLINK_XDP
                } else {
                    0
                },
            nat_port_min: self.nat_ports.0,
            nat_port_max: self.nat_ports.1,
            nat_max_flows: self.nat_max_flows,
            netns_cookie: self.netns_cookie,
        }
    }

    pub fn to_config_v6(&self) -> NodeConfigV6 {
        NodeConfigV6 {
            masq_addr: self.masquerade_v6.map(|a| a.octets()).unwrap_or_default(),
            flags: if self.masquerade_v6.is_some() {
                NODE_F_MASQUERADE
            } else {
                0
            },
            ephemeral_min: self.ephemeral_ports.map_or(0, |p| p.0),
            ephemeral_max: self.ephemeral_ports.map_or(0, |p| p.1),
        }
    }
}

/// The calling thread's namespace's ephemeral port range
/// (`net.ipv4.ip_local_port_range`, used by IPv6 sockets too); `None` when
/// unreadable.
pub fn ephemeral_ports() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    parse_port_range(&text)
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    match (ports.next()?, ports.next()?) {
        (Ok(min), Ok(max)) if min <= max => Some((min, max)),
        _ => None,
    }
}

pub fn read_config_v6(layout: &BpffsLayout) -> Result<NodeConfigV6> {
    let map: Array<MapData, NodeConfigV6> = open_map(layout, NODE_CONFIG_V6)?;
    map.get(&0, 0).map_err(map_error(NODE_CONFIG_V6))
}

pub fn write_config_v6(layout: &BpffsLayout, config: &NodeConfigV6) -> Result<()> {
    let mut map: Array<MapData, NodeConfigV6> = open_map(layout, NODE_CONFIG_V6)?;
    map.set(0, config, 0).map_err(map_error(NODE_CONFIG_V6))
}

pub fn read_config(layout: &BpffsLayout) -> Result<NodeConfig> {
    let map: Array<MapData, NodeConfig> = open_map(layout, NODE_CONFIG)?;
    map.get(&0, 0).map_err(map_error(NODE_CONFIG))
}

pub fn write_config(layout: &BpffsLayout, config: &NodeConfig) -> Result<()> {
    let mut map: Array<MapData, NodeConfig> = open_map(layout, NODE_CONFIG)?;
    map.set(0, config, 0).map_err(map_error(NODE_CONFIG))
}

fn lpm_key(net: &IpNet) -> Key<[u8; 16]> {
    let (addr, prefix) = match net.trunc() {
        IpNet::V4(v4) => (IpAddr::V4(v4.network()), 96 + u32::from(v4.prefix_len())),
        IpNet::V6(v6) => (IpAddr::V6(v6.network()), u32::from(v6.prefix_len())),
    };
    Key::new(prefix, IpKey::from_ip(addr).addr)
}

/// Adds destinations that must keep the pod's source address; idempotent.
pub fn add_no_masquerade(layout: &BpffsLayout, nets: &[IpNet]) -> Result<()> {
    add_cidrs(layout, NO_MASQ, nets)
}

/// Adds service addresses (ClusterIP ranges, externalIPs, LoadBalancer
/// IPs) whose traffic netfilter translates; idempotent.
pub fn add_services(layout: &BpffsLayout, nets: &[IpNet]) -> Result<()> {
    add_cidrs(layout, SERVICES, nets)
}

fn add_cidrs(layout: &BpffsLayout, name: &'static str, nets: &[IpNet]) -> Result<()> {
    let mut map: LpmTrie<MapData, [u8; 16], u8> = open_map(layout, name)?;
    for net in nets {
        map.insert(&lpm_key(net), 1, 0).map_err(map_error(name))?;
    }
    Ok(())
}

/// The no-masquerade destinations, for inspection.
pub fn no_masquerade(layout: &BpffsLayout) -> Result<Vec<IpNet>> {
    cidrs(layout, NO_MASQ)
}

/// The service CIDRs, for inspection.
pub fn services(layout: &BpffsLayout) -> Result<Vec<IpNet>> {
    cidrs(layout, SERVICES)
}

/// How many flows netfilter translated the datapath sends back through the
/// stack (`NETFILTER_FLOWS`, an LRU map).
pub fn netfilter_flows(layout: &BpffsLayout) -> Result<usize> {
    let map: HashMap<MapData, FlowKey, u8> = open_map(layout, NETFILTER_FLOWS)?;
    Ok(map.keys().filter(|k| k.is_ok()).count())
}

fn cidrs(layout: &BpffsLayout, name: &'static str) -> Result<Vec<IpNet>> {
    let map: LpmTrie<MapData, [u8; 16], u8> = open_map(layout, name)?;
    map.keys()
        .map(|key| {
            let key = key.map_err(map_error(name))?;
            let ip = IpKey::v6(key.data()).to_ip();
            let prefix = match ip {
                IpAddr::V4(_) => key.prefix_len().saturating_sub(96),
                IpAddr::V6(_) => key.prefix_len(),
            };
            Ok(IpNet::new(ip, prefix as u8).unwrap_or(IpNet::from(ip)))
        })
        .collect()
}

/// Makes `NODE_ADDRS` hold exactly `addrs`: pod traffic to them stays on the
/// node. Writes only what changed, and returns how many entries it added or
/// removed.
pub fn sync_node_addrs(layout: &BpffsLayout, addrs: &[IpAddr]) -> Result<usize> {
    sync_into(&mut open_map(layout, NODE_ADDRS)?, addrs)
}

fn sync_into(map: &mut HashMap<MapData, IpKey, u8>, addrs: &[IpAddr]) -> Result<usize> {
    let wanted: Vec<IpKey> = addrs.iter().map(|a| IpKey::from_ip(*a)).collect();
    let present: Vec<IpKey> = map.keys().filter_map(|k| k.ok()).collect();
    let mut changed = 0;
    for key in present.iter().filter(|k| !wanted.contains(k)) {
        match map.remove(key) {
            Ok(()) => changed += 1,
            Err(e) if key_missing(&e) => {}
            Err(e) => return Err(map_error(NODE_ADDRS)(e)),
        }
    }
    for key in wanted.iter().filter(|k| !present.contains(k)) {
        map.insert(key, 1, 0).map_err(map_error(NODE_ADDRS))?;
        changed += 1;
    }
    Ok(changed)
}

/// Brings `NODE_ADDRS` up to date with the addresses of the calling
/// thread's network namespace, if the plugin keeps it (it fills it on nodes
/// with an uplink or host ports; an empty map is left alone). Returns how
/// many entries changed.
pub fn refresh_node_addrs(layout: &BpffsLayout) -> Result<usize> {
    let mut map: HashMap<MapData, IpKey, u8> = open_map(layout, NODE_ADDRS)?;
    if map.keys().next().is_none() {
        return Ok(0);
    }
    let addrs: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .map_err(|e| crate::error::DatapathError::io("getifaddrs", "/", e.into()))?
        .filter_map(|ifaddr| {
            let address = ifaddr.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    sync_into(&mut map, &addrs)
}

/// The cgroup v2 mount point of this mount namespace: where the plugin
/// attaches its cgroup hooks unless its `cgroupRoot` says otherwise.
pub fn cgroup2_mount() -> std::io::Result<Option<PathBuf>> {
    Ok(cgroup2_mount_in(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Whether `path` is a directory of a cgroup v2 hierarchy (where cgroup
/// hooks can attach), `Err` with why not.
pub fn check_cgroup2(path: &Path) -> std::result::Result<(), String> {
    match nix::sys::statfs::statfs(path) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => Ok(()),
        Ok(_) => Err(format!("{} is not a cgroup v2 directory", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The first cgroup v2 mount point listed in `mountinfo`.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| Path::new(mount_point).to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ephemeral_port_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range("x y"), None);
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "25 1 0:22 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                    30 1 0:26 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount_in("25 1 0:22 / /x rw - cgroup c rw\n"), None);
    }
}
