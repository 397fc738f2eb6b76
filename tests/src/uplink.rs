//! A node's uplink to the outside world: an `ext` namespace behind a veth,
//! and the node's default route through it.

use std::net::Ipv4Addr;

use crate::{
    Node,
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
}

/// The node's end of the uplink.
pub const UPLINK: &str = "uplink";

/// A veth `uplink` from `node` to `eth0` of a new `ext` namespace,
/// addressed `10.250.0.1/24` (node) and `10.250.0.2/24` (ext): gives the
/// node an address of its own, as a real node's uplink does.
pub fn add_uplink(node: &Netns) -> Ext {
    let ext = Netns::with_loopback("ext");
    let node_ip = Ipv4Addr::new(10, 250, 0, 1);
    let ext_ip = Ipv4Addr::new(10, 250, 0, 2);
    veth::add_veth(
        VethEnd::new(node, UPLINK, &format!("{node_ip}/24")),
        VethEnd::new(&ext, "eth0", &format!("{ext_ip}/24")),
        None,
    );
    Ext {
        netns: ext,
        node_ip,
        ext_ip,
    }
}

/// [`add_uplink`] plus the node's default route via the `ext` side, so a
/// plugin finds the uplink (and the masquerade address) as on a real node.
pub fn add_uplink_with_default_route(node: &Netns) -> Ext {
    let ext = add_uplink(node);
    node.ip(&[
        "route",
        "add",
        "default",
        "via",
        &ext.ext_ip.to_string(),
        "dev",
        UPLINK,
    ]);
    ext
}

/// [`Node::add_uplink`] plus a default route via the `ext` side, so the
/// plugin finds the uplink (and the masquerade address) as on a real node.
pub fn uplink_with_default_route(node: &Node) -> Ext {
    add_uplink_with_default_route(node.netns())
}
