//! Links of a namespace, read with `ip -j`.

use serde_json::Value;

use crate::netns::Netns;

/// One link: its name and, with `-d`, its kind (`veth`, `bridge`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// `linkinfo.info_kind`; `None` for `lo` and kindless devices.
    pub kind: Option<String>,
}

/// Every link of `ns` with its kind (`ip -d -j link`).
pub fn list(ns: &Netns) -> Vec<Link> {
    let stdout = ns.exec_ok("ip", &["-d", "-j", "link", "show"]);
    let links: Vec<Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("parsing `ip -d -j link` in {}: {e}: {stdout}", ns.name()));
    links
        .iter()
        .map(|link| Link {
            name: link["ifname"].as_str().unwrap_or_default().to_string(),
            kind: link["linkinfo"]["info_kind"].as_str().map(str::to_string),
        })
        .collect()
}

/// Link names of `ns`.
pub fn names(ns: &Netns) -> Vec<String> {
    list(ns).into_iter().map(|link| link.name).collect()
}

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
        if let Some(cidr) = end.cidr {
            end.netns.ip(&["addr", "add", cidr, "dev", end.name]);
        }
        end.netns.ip(&["link", "set", end.name, "up"]);
    }
}
