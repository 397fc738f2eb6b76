//! Helpers of the CNI spec tests: attachments made with any `CNI_*`
//! variables, the reference plugins run the way a runtime runs them, and
//! what one network holds on a node.

use std::{
    collections::BTreeSet,
    fs::File,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use crate::{CniOutput, CniRequest, Netns, Node, Plugin, links, names, plugin::CNI_PATH};

/// Every spec version the plugin speaks, oldest first.
pub const ALL_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The plugin's own `type`; any other type names a reference plugin.
pub const PLUGIN_TYPE: &str = "cni-ebpf";

/// Whether `version` has CHECK (0.4.0 and later).
pub fn has_check(version: &str) -> bool {
    !version.starts_with("0.3.")
}

/// Runs the reference plugin `name` from [`CNI_PATH`] inside `ns`, as a
/// runtime does: `CNI_*` environment, config on stdin, result on stdout.
pub fn run_reference(ns: &Netns, name: &str, request: &CniRequest<'_>) -> CniOutput {
    Plugin::at(Path::new(CNI_PATH).join(name)).call(ns, request)
}

/// `conf` with `prevResult` set to `result`, both in `conf`'s version.
pub fn with_prev_result(conf: &Value, result: &Value) -> Value {
    let mut conf = conf.clone();
    let mut prev = result.clone();
    prev["cniVersion"] = conf["cniVersion"].clone();
    conf["prevResult"] = prev;
    conf
}

/// One attachment made with raw calls: its own pod namespace, container
/// ID, interface name and `CNI_ARGS`. After a successful [`Sandbox::add`]
/// it is deleted (DEL with the ADD result) when dropped.
pub struct Sandbox<'n> {
    node: &'n Node,
    netns: Netns,
    container_id: String,
    ifname: String,
    args: Option<String>,
    /// The config and result of the last successful ADD, until a DEL.
    added: Option<(Value, Value)>,
}

impl<'n> Sandbox<'n> {
    /// A fresh pod namespace, a unique container ID and `eth0`.
    pub fn new(node: &'n Node) -> Self {
        Self {
            node,
            netns: Netns::with_loopback("pod"),
            container_id: names::unique("cnispec"),
            ifname: "eth0".to_string(),
            args: None,
            added: None,
        }
    }

    pub fn ifname(mut self, ifname: &str) -> Self {
        self.ifname = ifname.to_string();
        self
    }

    pub fn container_id(mut self, container_id: &str) -> Self {
        self.container_id = container_id.to_string();
        self
    }

    /// `CNI_ARGS` of every call.
    pub fn args(mut self, args: &str) -> Self {
        self.args = Some(args.to_string());
        self
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn id(&self) -> &str {
        &self.container_id
    }

    pub fn name(&self) -> &str {
        &self.ifname
    }

    /// One call of `plugin` (this plugin, or a reference plugin by type)
    /// about this attachment.
    pub fn call_plugin(&self, plugin: &str, command: &str, conf: &Value) -> CniOutput {
        let stdin = conf.to_string();
        let request = CniRequest {
            command,
            container_id: &self.container_id,
            netns: Some(self.netns.path()),
            ifname: &self.ifname,
            args: self.args.as_deref(),
            stdin: stdin.as_bytes(),
        };
        if plugin == PLUGIN_TYPE {
            self.node.cni(&request)
        } else {
            run_reference(self.node.netns(), plugin, &request)
        }
    }

    /// One call of this plugin about this attachment.
    pub fn call(&self, command: &str, conf: &Value) -> CniOutput {
        self.call_plugin(PLUGIN_TYPE, command, conf)
    }

    /// ADD with `conf`; a success is remembered for [`Sandbox::del`].
    pub fn add(&mut self, conf: &Value) -> CniOutput {
        let output = self.call("ADD", conf);
        if output.success() {
            let result = output.expect_result("ADD").clone();
            self.added = Some((conf.clone(), result));
        }
        output
    }

    /// ADD with `conf`; panics unless it succeeds. Returns the result.
    pub fn add_ok(&mut self, conf: &Value) -> Value {
        let output = self.add(conf);
        output.expect_result(&format!("ADD of {}", self.container_id));
        self.result().clone()
    }

    /// The result of the successful ADD; panics without one.
    pub fn result(&self) -> &Value {
        &self
            .added
            .as_ref()
            .unwrap_or_else(|| panic!("{} was not added", self.container_id))
            .1
    }

    /// `ips[0].address` of the ADD result, without its prefix.
    pub fn ip(&self) -> Ipv4Addr {
        result_ip(self.result(), 0)
    }

    /// The ADD config with the ADD result as `prevResult`.
    pub fn conf_with_prev_result(&self) -> Value {
        let (conf, result) = self
            .added
            .as_ref()
            .unwrap_or_else(|| panic!("{} was not added", self.container_id));
        with_prev_result(conf, result)
    }

    /// CHECK with the ADD config and result.
    pub fn check(&self) -> CniOutput {
        self.call("CHECK", &self.conf_with_prev_result())
    }

    /// DEL with the ADD config and result; forgets them on success.
    pub fn del(&mut self) -> CniOutput {
        let output = self.call("DEL", &self.conf_with_prev_result());
        if output.success() {
            self.added = None;
        }
        output
    }
}

impl Drop for Sandbox<'_> {
    fn drop(&mut self) {
        if self.added.is_some() {
            let output = self.del();
            if !output.success() {
                eprintln!(
                    "[harness] DEL of {} on drop failed: {}",
                    self.container_id,
                    output.describe()
                );
            }
        }
    }
}

/// Address `index` of a result's `ips`, without its prefix.
pub fn result_ip(result: &Value, index: usize) -> Ipv4Addr {
    let address = result["ips"][index]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips[{index}].address in {result}"));
    address
        .split('/')
        .next()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("ips[{index}].address {address} is not an IPv4 CIDR"))
}

/// What one network holds on a node; equal before and after a call that
/// must change nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// Host veths (`ce` + 12 hex digits) in the node namespace.
    pub host_veths: BTreeSet<String>,
    /// IPAM files of the network.
    pub reservations: BTreeSet<IpAddr>,
    /// Entries of the endpoints map (every network of the node).
    pub endpoints: BTreeSet<String>,
    /// Attachment records of the network (`<containerID>-<ifname>`).
    pub records: BTreeSet<String>,
    /// Pinned tcx links of endpoints (named by host veth).
    pub link_pins: BTreeSet<String>,
}

impl Footprint {
    /// Needs the datapath loaded (the endpoints map pinned).
    pub fn of(node: &Node, network: &str) -> Self {
        Self {
            host_veths: host_veths(node),
            reservations: node.ipam_reservations(network),
            endpoints: node.endpoint_ips(),
            records: records(node, network),
            link_pins: link_pins(node),
        }
    }
}

/// Host veths of the plugin in the node namespace.
pub fn host_veths(node: &Node) -> BTreeSet<String> {
    links::names(node.netns())
        .into_iter()
        .filter(|name| is_host_veth(name))
        .collect()
}

fn is_host_veth(name: &str) -> bool {
    name.len() == 14
        && name.starts_with("ce")
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The attachment records of `network`, as `<containerID>-<ifname>`.
pub fn records(node: &Node, network: &str) -> BTreeSet<String> {
    file_names(&node.state_dir().join(network))
        .into_iter()
        .filter_map(|name| name.strip_suffix(".json").map(str::to_string))
        .collect()
}

/// The pinned endpoint links under `<bpffsRoot>/links`.
pub fn link_pins(node: &Node) -> BTreeSet<String> {
    file_names(&node.bpffs_root().join("links"))
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The pinned endpoints map of a node.
pub fn endpoints_map(node: &Node) -> PathBuf {
    node.bpffs_root().join("maps").join("ENDPOINTS")
}

/// Deletes the endpoints map entry of `ip` behind the plugin's back, with
/// `bpftool` (the key is the IPv4-mapped IPv6 address), and for IPv4 empties
/// its slot of `ENDPOINTS_V4` too: nothing the datapath reads is left.
pub fn delete_endpoint_entry(node: &Node, ip: impl Into<std::net::IpAddr>) {
    let ip = ip.into();
    if let std::net::IpAddr::V4(v4) = ip {
        write_endpoint_slot_v4(node, v4, &[0; 64]);
    }
    let map = endpoints_map(node);
    let mut args = vec![
        "map".to_string(),
        "delete".to_string(),
        "pinned".to_string(),
        map.to_string_lossy().into_owned(),
        "key".to_string(),
        "hex".to_string(),
    ];
    let key = match ip {
        std::net::IpAddr::V4(ip) => [[0u8; 10].as_slice(), &[0xff, 0xff], &ip.octets()].concat(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    args.extend(key.iter().map(|b| format!("{b:02x}")));
    node.netns().exec_ok("bpftool", &args);
}

/// The pinned `ENDPOINTS_V4` of a node.
fn endpoint_slots_map(node: &Node) -> String {
    endpoints_map(node)
        .with_file_name("ENDPOINTS_V4")
        .to_string_lossy()
        .into_owned()
}

/// `bpftool`'s words for the key of the slot where `ip` would be.
fn slot_key(ip: std::net::Ipv4Addr) -> Vec<String> {
    let index = cni_ebpf_common::endpoint_v4_index(ip.octets());
    let mut key = vec!["key".to_string(), "hex".to_string()];
    key.extend(index.to_ne_bytes().iter().map(|b| format!("{b:02x}")));
    key
}

/// Writes the 64 bytes of the slot of `ENDPOINTS_V4` where `ip` would be,
/// behind the plugin's back.
pub fn write_endpoint_slot_v4(node: &Node, ip: std::net::Ipv4Addr, value: &[u8; 64]) {
    let mut args = vec![
        "map".to_string(),
        "update".to_string(),
        "pinned".to_string(),
        endpoint_slots_map(node),
    ];
    args.extend(slot_key(ip));
    args.push("value".to_string());
    args.push("hex".to_string());
    args.extend(value.iter().map(|b| format!("{b:02x}")));
    node.netns().exec_ok("bpftool", &args);
}

/// The 64 bytes of the slot of `ENDPOINTS_V4` where `ip` would be.
pub fn endpoint_slot_v4(node: &Node, ip: std::net::Ipv4Addr) -> [u8; 64] {
    let mut args = vec![
        "-j".to_string(),
        "map".to_string(),
        "lookup".to_string(),
        "pinned".to_string(),
        endpoint_slots_map(node),
    ];
    args.extend(slot_key(ip));
    let out = node.netns().exec_ok("bpftool", &args);
    let entry: serde_json::Value = serde_json::from_str(&out).expect("bpftool JSON");
    let bytes: Vec<u8> = entry["value"]
        .as_array()
        .expect("a value")
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    bytes.try_into().expect("64 bytes")
}

/// What the slot of `ENDPOINTS_V4` where `ip` would be says: whether it is
/// live, the address it holds and that endpoint's host veth ifindex.
pub fn endpoint_slot_v4_fields(
    node: &Node,
    ip: std::net::Ipv4Addr,
) -> (bool, std::net::Ipv4Addr, u32) {
    use cni_ebpf_common::{Endpoint, EndpointV4};
    use std::mem::offset_of;
    let slot = endpoint_slot_v4(node, ip);
    let bytes = |at: usize| -> [u8; 4] { slot[at..at + 4].try_into().unwrap() };
    (
        u32::from_ne_bytes(bytes(offset_of!(EndpointV4, live))) != 0,
        bytes(offset_of!(EndpointV4, addr)).into(),
        u32::from_ne_bytes(bytes(
            offset_of!(EndpointV4, endpoint) + offset_of!(Endpoint, ifindex),
        )),
    )
}

/// The IPv4 addresses on `ifname` in `ns`.
pub fn addresses(ns: &Netns, ifname: &str) -> Vec<String> {
    address_list(ns, &["-j", "-4", "addr", "show", "dev", ifname])
}

/// The addresses of either family on `ifname` in `ns`, link-local ones left
/// out.
pub fn global_addresses(ns: &Netns, ifname: &str) -> Vec<String> {
    address_list(
        ns,
        &["-j", "addr", "show", "dev", ifname, "scope", "global"],
    )
}

/// `address/prefix` of every address `ip <args>` (a JSON `addr show`) lists.
fn address_list(ns: &Netns, args: &[&str]) -> Vec<String> {
    let json = ns.ip(args);
    let links: Vec<Value> =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("ip -j addr: {e}: {json}"));
    links
        .iter()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a.get("local")?.as_str()?,
                a.get("prefixlen")?.as_u64()?
            ))
        })
        .collect()
}

/// `ip -j link show dev ifname` in `ns`: the link's JSON object.
pub fn link(ns: &Netns, ifname: &str) -> Value {
    let json = ns.ip(&["-j", "link", "show", "dev", ifname]);
    let mut links: Vec<Value> =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("ip -j link: {e}: {json}"));
    links.remove(0)
}

/// Panics unless nothing holds the flock on `path` (tried without
/// blocking for up to `wait`).
pub fn assert_unlocked(path: &Path, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(_lock) => return,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err((_, errno)) => panic!("{} is still locked: {errno}", path.display()),
        }
    }
}
