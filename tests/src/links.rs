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
