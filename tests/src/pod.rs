//! A pod: a namespace attached to a node through the plugin's ADD, and
//! detached with DEL when dropped.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use serde_json::Value;

use crate::{
    Family, names,
    netns::Netns,
    node::Node,
    plugin::{CniOutput, CniRequest},
};

/// The interface name inside pods.
pub const POD_IFNAME: &str = "eth0";

pub struct Pod<'n> {
    node: &'n Node,
    /// `None` once the test removed the namespace before DEL.
    netns: Option<Netns>,
    netns_path: PathBuf,
    netns_name: String,
    container_id: String,
    conf: Value,
    result: Value,
    /// `ips[]` of the result: address and prefix length.
    addresses: Vec<(IpAddr, u8)>,
    /// Whether a DEL already succeeded: a runtime then forgets the cached
    /// result, and so does the drop.
    deleted: bool,
}

impl<'n> Pod<'n> {
    /// Creates a pod namespace and runs ADD with `conf`; on failure the
    /// namespace is removed and the plugin's output returned.
    pub fn add(node: &'n Node, conf: Value) -> Result<Self, CniOutput> {
        let netns = Netns::with_loopback("pod");
        let container_id = names::unique("cnitest");
        let stdin = conf.to_string();
        let output = node.cni(&CniRequest {
            command: "ADD",
            container_id: &container_id,
            netns: Some(netns.path()),
            ifname: POD_IFNAME,
            args: None,
            stdin: stdin.as_bytes(),
        });
        if !output.success() {
            return Err(output);
        }
        let result = output.expect_result("ADD").clone();
        let addresses = result["ips"]
            .as_array()
            .unwrap_or_else(|| panic!("ADD result without ips: {result}"))
            .iter()
            .map(|ip| {
                let address = ip["address"]
                    .as_str()
                    .unwrap_or_else(|| panic!("ADD result ips[] without address: {result}"));
                let (ip, prefix) = address
                    .split_once('/')
                    .unwrap_or_else(|| panic!("ips[].address is not CIDR: {address}"));
                (
                    ip.parse()
                        .unwrap_or_else(|e| panic!("ips[].address {address}: {e}")),
                    prefix
                        .parse()
                        .unwrap_or_else(|e| panic!("ips[].address {address}: {e}")),
                )
            })
            .collect();
        Ok(Self {
            node,
            netns_path: netns.path().to_path_buf(),
            netns_name: netns.name().to_string(),
            netns: Some(netns),
            container_id,
            conf,
            addresses,
            result,
            deleted: false,
        })
    }

    /// The pod's namespace; panics after [`Pod::remove_netns`].
    pub fn netns(&self) -> &Netns {
        self.netns
            .as_ref()
            .expect("the pod's namespace was removed")
    }

    pub fn netns_name(&self) -> &str {
        &self.netns_name
    }

    pub fn node(&self) -> &'n Node {
        self.node
    }

    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// The config ADD ran with.
    pub fn conf(&self) -> &Value {
        &self.conf
    }

    /// The ADD result.
    pub fn result(&self) -> &Value {
        &self.result
    }

    /// The IPv4 address of the result, without prefix; panics if the pod
    /// has none.
    pub fn ip(&self) -> Ipv4Addr {
        match self.addr(Family::V4) {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => unreachable!(),
        }
    }

    /// The result's address of `family`, without prefix; panics if the
    /// pod has none.
    pub fn addr(&self, family: Family) -> IpAddr {
        self.address(family).0
    }

    /// The prefix length of the IPv4 address.
    pub fn prefix_len(&self) -> u8 {
        self.address(Family::V4).1
    }

    /// The prefix length of the address of `family`.
    pub fn prefix_len_of(&self, family: Family) -> u8 {
        self.address(family).1
    }

    fn address(&self, family: Family) -> (IpAddr, u8) {
        self.addresses
            .iter()
            .copied()
            .find(|(ip, _)| Family::of(*ip) == family)
            .unwrap_or_else(|| panic!("no {family:?} address in the ADD result {}", self.result))
    }

    /// Every address of the result, without prefix.
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.addresses.iter().map(|(ip, _)| *ip).collect()
    }

    /// The IPv4 `ips[].gateway` of the result.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        match self.gateway_of(Family::V4)? {
            IpAddr::V4(gw) => Some(gw),
            IpAddr::V6(_) => None,
        }
    }

    /// The `ips[].gateway` of `family` in the result.
    pub fn gateway_of(&self, family: Family) -> Option<IpAddr> {
        self.result["ips"]
            .as_array()?
            .iter()
            .filter_map(|ip| ip["gateway"].as_str()?.parse::<IpAddr>().ok())
            .find(|gw| Family::of(*gw) == family)
    }

    /// The network name of the config.
    pub fn network(&self) -> &str {
        self.conf["name"].as_str().unwrap_or_default()
    }

    /// The host-side veth: the result's interface without a `sandbox`.
    pub fn host_ifname(&self) -> String {
        self.result["interfaces"]
            .as_array()
            .and_then(|interfaces| {
                interfaces
                    .iter()
                    .find(|i| i.get("sandbox").is_none())?
                    .get("name")?
                    .as_str()
            })
            .unwrap_or_else(|| panic!("no host interface in the ADD result: {}", self.result))
            .to_string()
    }

    /// The config with `prevResult` set to the ADD result, converted to
    /// `cni_version` as a runtime would pass it to CHECK or DEL.
    pub fn conf_with_prev_result(&self, cni_version: &str) -> Value {
        let mut conf = self.conf.clone();
        conf["cniVersion"] = Value::String(cni_version.to_string());
        let mut prev = self.result.clone();
        prev["cniVersion"] = Value::String(cni_version.to_string());
        conf["prevResult"] = prev;
        conf
    }

    /// One call about this attachment with `stdin` as config.
    pub fn call(&self, command: &str, stdin: &Value) -> CniOutput {
        let stdin = stdin.to_string();
        self.node.cni(&CniRequest {
            command,
            container_id: &self.container_id,
            netns: Some(&self.netns_path),
            ifname: POD_IFNAME,
            args: None,
            stdin: stdin.as_bytes(),
        })
    }

    /// CHECK with the ADD result as `prevResult`, in `cni_version`.
    pub fn check(&self, cni_version: &str) -> CniOutput {
        self.call("CHECK", &self.conf_with_prev_result(cni_version))
    }

    /// DEL as a runtime sends it: with the cached ADD result the first
    /// time, without one after a DEL succeeded.
    pub fn del(&mut self) -> CniOutput {
        let version = self.conf["cniVersion"]
            .as_str()
            .unwrap_or("1.0.0")
            .to_string();
        let conf = if self.deleted {
            self.conf.clone()
        } else {
            self.conf_with_prev_result(&version)
        };
        let output = self.call("DEL", &conf);
        if output.success() {
            self.deleted = true;
        }
        output
    }

    /// Removes the pod's namespace (as when a sandbox died) but keeps its
    /// path for later calls.
    pub fn remove_netns(&mut self) {
        self.netns = None;
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if !self.deleted {
            let output = self.del();
            if !output.success() {
                eprintln!(
                    "[harness] DEL of pod {} on drop failed: {}",
                    self.netns_name,
                    output.describe()
                );
            }
        }
    }
}
