//! IP families as a test parameter: every test that has a meaning in both
//! runs once per family from one body (`for family in Family::ALL`), with the
//! family's subnet, default route and addresses.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The pod subnet [`crate::Node::conf`] uses for this family.
    pub fn subnet(self) -> &'static str {
        match self {
            Family::V4 => crate::node::DEFAULT_SUBNET,
            Family::V6 => crate::node::DEFAULT_SUBNET_V6,
        }
    }

    /// `0.0.0.0/0` or `::/0`.
    pub fn default_route(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }

    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// `-4` or `-6`, for `ip` and `ping`.
    pub fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// `ips[].version` of a 0.3.x result.
    pub fn version(self) -> &'static str {
        match self {
            Family::V4 => "4",
            Family::V6 => "6",
        }
    }
}
