//! The node's side of the underlay: the addresses peers reach it at (IPv4,
//! and IPv6 for native IPv6 routes when it has one), the interface holding
//! them and its MTU, and the node's own subnets (where a peer is one hop
//! away, so `auto` routes natively).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use super::error::{ClusterError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub ifname: String,
    pub address: Ipv4Addr,
    /// The IPv6 address peers route this node's IPv6 pods via: the one
    /// given, else the first global one of the IPv4 address's interface.
    pub address_v6: Option<Ipv6Addr>,
    pub mtu: u32,
    /// Every subnet this node has an address in, loopback and IPv6
    /// link-local aside.
    pub subnets: Vec<IpNet>,
}

impl Underlay {
    /// The interface holding `address`, or the default route's device and
    /// its first IPv4 address when none is given; and its IPv6 address.
    pub fn detect(address: Option<Ipv4Addr>, address_v6: Option<Ipv6Addr>) -> Result<Self> {
        let addresses = ipv4_addresses()?;
        let addresses_v6 = ipv6_addresses()?;
        let (ifname, address) = match address {
            Some(wanted) => addresses
                .iter()
                .find(|(_, net)| net.addr() == wanted)
                .map(|(ifname, net)| (ifname.clone(), net.addr()))
                .ok_or(ClusterError::NoSuchAddress(wanted.into()))?,
            None => {
                let ifname = default_route_device()?;
                let address = addresses
                    .iter()
                    .find(|(name, _)| *name == ifname)
                    .map(|(_, net)| net.addr())
                    .ok_or_else(|| {
                        ClusterError::Config(format!(
                            "the default route's device {ifname} has no IPv4 address: give --underlay-address"
                        ))
                    })?;
                (ifname, address)
            }
        };
        let mtu = mtu(&ifname).map_err(|e| ClusterError::io("reading the MTU of", &ifname, e))?;
        let address_v6 = match address_v6 {
            Some(wanted) => Some(
                addresses_v6
                    .iter()
                    .find(|(_, net)| net.addr() == wanted)
                    .map(|(_, net)| net.addr())
                    .ok_or(ClusterError::NoSuchAddress(wanted.into()))?,
            ),
            None => addresses_v6
                .iter()
                .find(|(name, net)| *name == ifname && is_global(net.addr()))
                .map(|(_, net)| net.addr()),
        };
        let mut subnets: Vec<IpNet> = addresses
            .iter()
            .filter(|(_, net)| !net.addr().is_loopback())
            .map(|(_, net)| IpNet::V4(net.trunc()))
            .chain(
                addresses_v6
                    .iter()
                    .filter(|(_, net)| is_global(net.addr()))
                    .map(|(_, net)| IpNet::V6(net.trunc())),
            )
            .collect();
        subnets.dedup();
        Ok(Self {
            ifname,
            address,
            address_v6,
            mtu,
            subnets,
        })
    }

    /// Whether `peer` is on one of this node's own subnets.
    pub fn is_neighbour(&self, peer: IpAddr) -> bool {
        self.subnets.iter().any(|net| net.contains(&peer))
    }
}

/// Neither loopback nor link-local: an address a peer can route to.
fn is_global(addr: Ipv6Addr) -> bool {
    !addr.is_loopback() && !addr.is_unicast_link_local() && !addr.is_multicast()
}

/// Every IPv4 address of the node with its interface and prefix.
fn ipv4_addresses() -> Result<Vec<(String, Ipv4Net)>> {
    let addrs =
        nix::ifaddrs::getifaddrs().map_err(|e| ClusterError::io("getifaddrs", "/", e.into()))?;
    Ok(addrs
        .filter_map(|ifaddr| {
            let ip = ifaddr.address?.as_sockaddr_in()?.ip();
            let mask = ifaddr.netmask?.as_sockaddr_in()?.ip();
            let prefix = u32::from(mask).leading_ones() as u8;
            Some((ifaddr.interface_name, Ipv4Net::new(ip, prefix).ok()?))
        })
        .collect())
}

/// Every IPv6 address of the node with its interface and prefix.
fn ipv6_addresses() -> Result<Vec<(String, Ipv6Net)>> {
    let addrs =
        nix::ifaddrs::getifaddrs().map_err(|e| ClusterError::io("getifaddrs", "/", e.into()))?;
    Ok(addrs
        .filter_map(|ifaddr| {
            let ip = ifaddr.address?.as_sockaddr_in6()?.ip();
            let mask = ifaddr.netmask?.as_sockaddr_in6()?.ip();
            let prefix = u128::from(mask).leading_ones() as u8;
            Some((ifaddr.interface_name, Ipv6Net::new(ip, prefix).ok()?))
        })
        .collect())
}

/// The device of the IPv4 default route, from the calling thread's
/// network namespace (`/proc/thread-self/net/route`).
fn default_route_device() -> Result<String> {
    let path = "/proc/thread-self/net/route";
    let table = std::fs::read_to_string(path).map_err(|e| ClusterError::io("reading", path, e))?;
    default_route_in(&table).ok_or_else(|| {
        ClusterError::Config(
            "this node has no IPv4 default route: give --underlay-address".to_string(),
        )
    })
}

/// The `Iface` of the first row with destination and mask 0.
fn default_route_in(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000")
            .then(|| fields[0].to_string())
    })
}

/// `SIOCGIFMTU` on a socket of the calling thread's namespace (sysfs may
/// show another namespace's interfaces).
fn mtu(ifname: &str) -> io::Result<u32> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= request.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(ifname.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the name and writes the MTU into `request`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the union's MTU member.
    Ok(unsafe { request.ifr_ifru.ifru_mtu } as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_row_names_the_device() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     underlay\t0063640A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     underlay\t00000000\t0163640A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_in(table).as_deref(), Some("underlay"));
        assert_eq!(default_route_in("Iface\tDestination\n"), None);
    }
}
