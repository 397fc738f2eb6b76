//! A node's uplink to the outside world: an `ext` namespace behind a veth,
//! and the node's default route through it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    Family, Node,
    netns::Netns,
    veth::{self, VethEnd},
};

/// The outside world behind a node's uplink.
pub struct Ext {
    pub netns: Netns,
    /// The node's address on the uplink.
    pub node_ip: Ipv4Addr,
    /// This namespace's address.
    pub ext_ip: Ipv4Addr,
    pub node_ip6: Ipv6Addr,
    pub ext_ip6: Ipv6Addr,
}

impl Ext {
    /// The node's uplink address of `family`.
    pub fn node_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.node_ip.into(),
            Family::V6 => self.node_ip6.into(),
        }
    }

    /// This namespace's address of `family`.
    pub fn ext_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ext_ip.into(),
            Family::V6 => self.ext_ip6.into(),
        }
    }
}

/// The node's end of the uplink.
pub const UPLINK: &str = "uplink";

/// Makes `ifname` in `ns` (a veth) compute its checksums in full, as a NIC
/// puts them on the wire: a veth otherwise sends TCP and UDP with only the
/// pseudo-header sum (`CHECKSUM_PARTIAL`), which survives a veth crossing as
/// metadata of the socket buffer but not as an XDP frame, so a frame XDP on
/// the other end redirects would arrive with a wrong checksum.
pub fn full_checksums(ns: &Netns, ifname: &str) {
    ns.exec_ok("ethtool", &["-K", ifname, "tx", "off"]);
}

/// A veth `uplink` from `node` to `eth0` of a new `ext` namespace,
/// addressed `10.250.0.1/24` and `fd00:250::1/64` (node), `10.250.0.2/24`
/// and `fd00:250::2/64` (ext): gives the node addresses of its own, as a
/// real node's uplink does.
pub fn add_uplink(node: &Netns) -> Ext {
    let ext = Netns::with_loopback("ext");
    let node_ip = Ipv4Addr::new(10, 250, 0, 1);
    let ext_ip = Ipv4Addr::new(10, 250, 0, 2);
    let node_ip6 = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1);
    let ext_ip6 = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 2);
    veth::add_veth(
        VethEnd::new(node, UPLINK, &format!("{node_ip}/24")),
        VethEnd::new(&ext, "eth0", &format!("{ext_ip}/24")),
        None,
    );
    for (ns, dev, ip6) in [(node, UPLINK, node_ip6), (&ext, "eth0", ext_ip6)] {
        ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", dev, "nodad"]);
    }
    if crate::node::uplink_xdp_requested() {
        full_checksums(&ext, "eth0");
    }
    Ext {
        netns: ext,
        node_ip,
        ext_ip,
        node_ip6,
        ext_ip6,
    }
}

/// [`add_uplink`] plus the node's default route via the `ext` side, so a
/// plugin finds the uplink (and the masquerade address) as on a real node.
pub fn add_uplink_with_default_route(node: &Netns) -> Ext {
    let ext = add_uplink(node);
    for via in [IpAddr::V4(ext.ext_ip), IpAddr::V6(ext.ext_ip6)] {
        node.ip(&[
            Family::of(via).flag(),
            "route",
            "add",
            "default",
            "via",
            &via.to_string(),
            "dev",
            UPLINK,
        ]);
    }
    ext
}

/// [`Node::add_uplink`] plus a default route via the `ext` side, so the
/// plugin finds the uplink (and the masquerade address) as on a real node.
pub fn uplink_with_default_route(node: &Node) -> Ext {
    add_uplink_with_default_route(node.netns())
}
