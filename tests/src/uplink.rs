//! A node's uplink to the outside world: an `ext` namespace behind a veth,
//! and the node's default route through it.

use crate::{Node, node::Ext};

/// [`Node::add_uplink`] plus a default route via the `ext` side, so the
/// plugin finds the uplink (and the masquerade address) as on a real node.
pub fn uplink_with_default_route(node: &Node) -> Ext {
    let ext = node.add_uplink();
    node.netns().ip(&[
        "route",
        "add",
        "default",
        "via",
        &ext.ext_ip.to_string(),
        "dev",
        "uplink",
    ]);
    ext
}
