//! Veth pairs between namespaces: the joins every topology makes (pod
//! pairs, uplinks, underlays).

use crate::netns::Netns;

/// One end of a veth pair: the namespace it lives in, its name there, and
/// the address (CIDR) it gets, if any.
#[derive(Debug, Clone, Copy)]
pub struct VethEnd<'a> {
    pub netns: &'a Netns,
    pub name: &'a str,
    pub cidr: Option<&'a str>,
}

impl<'a> VethEnd<'a> {
    /// The end `name` in `netns`, addressed `cidr`.
    pub fn new(netns: &'a Netns, name: &'a str, cidr: &'a str) -> Self {
        Self {
            netns,
            name,
            cidr: Some(cidr),
        }
    }
}

/// A veth pair from `a` to `b` (`mtu` on both ends when given), each end
/// addressed and up: `a`'s first, then `b`'s.
pub fn add_veth(a: VethEnd<'_>, b: VethEnd<'_>, mtu: Option<u32>) {
    let b_path = b.netns.path().to_string_lossy().into_owned();
    let mtu = mtu.map(|mtu| mtu.to_string());
    let mut args = vec!["link", "add", a.name];
    if let Some(mtu) = &mtu {
        args.extend(["mtu", mtu]);
    }
    args.extend(["type", "veth", "peer", "name", b.name]);
    if let Some(mtu) = &mtu {
        args.extend(["mtu", mtu]);
    }
    args.extend(["netns", &b_path]);
    a.netns.ip(&args);
    for end in [a, b] {
        match end.cidr {
            // IPv6 without duplicate address detection, like the plugins' pods.
            Some(cidr) if cidr.contains(':') => {
                end.netns
                    .ip(&["addr", "add", cidr, "dev", end.name, "nodad"]);
            }
            Some(cidr) => {
                end.netns.ip(&["addr", "add", cidr, "dev", end.name]);
            }
            None => {}
        }
        end.netns.ip(&["link", "set", end.name, "up"]);
    }
}
