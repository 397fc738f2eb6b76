//! Links of a namespace, read with `ip -j` (and over netlink for what
//! this iproute2 does not show).

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
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

/// Link names of `ns` read over netlink in this process: no `ip` to
/// spawn, so what a plugin call just left is seen before anything running
/// in the background changes it.
pub fn names_now(ns: &Netns) -> Vec<String> {
    ns.run(dump_links)
        .unwrap_or_else(|e| panic!("dumping the links of {}: {e}", ns.name()))
        .iter()
        .filter_map(|link| {
            link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            })
        })
        .collect()
}

/// Whether `name` is a veth DEL retired (down, renamed `cez` + 8 hex
/// digits) and deletes in the background.
pub fn is_retired(name: &str) -> bool {
    name.len() == 11 && name.starts_with("cez") && name[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Link names of `ns` once the veths DEL retired are deleted (which the
/// plugin leaves to a child process, tens of milliseconds), or after 2 s
/// with those still there: a leak still shows.
pub fn names_settled(ns: &Netns) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let names = names(ns);
        if !names.iter().any(|n| is_retired(n)) || std::time::Instant::now() > deadline {
            return names;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A link's GSO and GRO maximum sizes, as `RTM_GETLINK` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GsoSizes {
    /// `IFLA_GSO_MAX_SIZE` (IPv6, and IPv4 on kernels before 6.3).
    pub gso: u32,
    /// `IFLA_GRO_MAX_SIZE`.
    pub gro: u32,
    /// `IFLA_GSO_IPV4_MAX_SIZE` (6.3).
    pub gso_ipv4: u32,
    /// `IFLA_GRO_IPV4_MAX_SIZE` (6.3).
    pub gro_ipv4: u32,
}

/// The GSO/GRO sizes of `ifname` in `ns` (iproute2 6.1 cannot show the
/// IPv4 ones); panics when there is no such link.
pub fn gso_sizes(ns: &Netns, ifname: &str) -> GsoSizes {
    let links = ns
        .run(dump_links)
        .unwrap_or_else(|e| panic!("dumping the links of {}: {e}", ns.name()));
    let link = links
        .iter()
        .find(|link| {
            link.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(name) if name == ifname))
        })
        .unwrap_or_else(|| panic!("no link {ifname} in {}", ns.name()));
    let mut sizes = GsoSizes::default();
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::GsoMaxSize(n) => sizes.gso = *n,
            LinkAttribute::GroMaxSize(n) => sizes.gro = *n,
            LinkAttribute::GsoIpv4MaxSize(n) => sizes.gso_ipv4 = *n,
            LinkAttribute::GroIpv4MaxSize(n) => sizes.gro_ipv4 = *n,
            _ => {}
        }
    }
    sizes
}

/// Every link of the calling thread's namespace (a synchronous dump).
fn dump_links() -> std::io::Result<Vec<LinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut links = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(links),
                NetlinkPayload::Error(e) => {
                    return Err(e.code.map_or_else(
                        || std::io::Error::other("netlink error"),
                        |code| std::io::Error::from_raw_os_error(-code.get()),
                    ));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    links.push(link);
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}
