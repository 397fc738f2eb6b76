//! A plugin chain run the way a runtime runs a conflist: ADD through every
//! plugin in order, each after the first getting the previous result as
//! `prevResult`; DEL through them in reverse, each with the final ADD
//! result. Used for the reference `bridge` + `portmap` / `bandwidth` chains
//! and for our single plugin with `runtimeConfig`, so both are timed alike:
//! the sum of the calls, spawn to exit.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::{
    Netns,
    conf::with_keys,
    names,
    plugin_node::{CNI_PATH, NETWORK, PluginNode},
};

/// The version of every chain: Debian's reference plugins stop at 1.0.0.
pub const CHAIN_VERSION: &str = "1.0.0";

/// The plugins of one pod's chain: binary and the config it reads.
#[derive(Clone)]
pub struct Chain {
    links: Vec<(PathBuf, Value)>,
}

impl Chain {
    /// The node's own plugin with `extra` keys (`ipMasq`, `capabilities`,
    /// `runtimeConfig`, …) set on its config.
    pub fn new(node: &PluginNode, extra: Value) -> Self {
        let mut first = with_keys(node.conf().clone(), extra);
        first["cniVersion"] = json!(CHAIN_VERSION);
        Self {
            links: vec![(node.binary().to_path_buf(), first)],
        }
    }

    /// Appends the reference plugin `conf["type"]` from [`CNI_PATH`].
    pub fn then(mut self, conf: Value) -> Self {
        let plugin = conf["type"].as_str().unwrap_or_default().to_string();
        let conf = with_keys(
            conf,
            json!({ "cniVersion": CHAIN_VERSION, "name": NETWORK }),
        );
        self.links.push((Path::new(CNI_PATH).join(plugin), conf));
        self
    }
}

/// A pod attached by a chain; DEL runs on [`ChainPod::del`] or on drop.
pub struct ChainPod<'n> {
    node: &'n PluginNode,
    chain: Chain,
    container_id: String,
    netns: PathBuf,
    result: Value,
    addr: IpAddr,
    add_time: Duration,
    /// What the last plugin of the chain wrote to stderr at ADD.
    add_log: String,
    deleted: bool,
}

impl<'n> ChainPod<'n> {
    pub fn add(node: &'n PluginNode, chain: &Chain, pod: &Netns) -> Result<Self> {
        let mut attached = Self {
            node,
            chain: chain.clone(),
            container_id: names::unique("bench"),
            netns: pod.path().to_path_buf(),
            result: Value::Null,
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            add_time: Duration::ZERO,
            add_log: String::new(),
            // Nothing to delete until the first ADD succeeded.
            deleted: true,
        };
        for (index, (binary, conf)) in chain.links.iter().enumerate() {
            let mut stdin = conf.clone();
            if index > 0 {
                stdin["prevResult"] = attached.result.clone();
            }
            let output = node.call_binary(
                binary,
                "ADD",
                &attached.container_id,
                &attached.netns,
                &stdin,
            )?;
            attached.add_time += output.elapsed;
            attached.add_log = output.stderr.clone();
            if !output.success() {
                bail!(
                    "ADD of {} into {} failed: {}",
                    binary.display(),
                    pod.name(),
                    output.describe()
                );
            }
            // From here on the drop deletes the whole chain.
            attached.deleted = false;
            attached.result = serde_json::from_str(&output.stdout)
                .with_context(|| format!("ADD result is not JSON: {}", output.stdout))?;
        }
        attached.addr = first_address(&attached.result)?;
        Ok(attached)
    }

    /// The pod's first address from the ADD result, of either family.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The pod's IPv4 address: what the chained scenarios, IPv4 only, use.
    pub fn ip(&self) -> Ipv4Addr {
        match self.addr {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => panic!("{ip}: the chained scenarios run over IPv4 only"),
        }
    }

    /// What the last plugin of the chain wrote to stderr at ADD.
    pub fn add_log(&self) -> &str {
        &self.add_log
    }

    /// The chain's ADD time, summed over its plugins.
    pub fn add_time(&self) -> Duration {
        self.add_time
    }

    /// DEL through the chain; returns its summed time.
    pub fn del(mut self) -> Result<Duration> {
        self.delete()
    }

    fn delete(&mut self) -> Result<Duration> {
        self.deleted = true;
        let mut total = Duration::ZERO;
        let mut failures = Vec::new();
        for (binary, conf) in self.chain.links.iter().rev() {
            let mut stdin = conf.clone();
            stdin["prevResult"] = self.result.clone();
            match self
                .node
                .call_binary(binary, "DEL", &self.container_id, &self.netns, &stdin)
            {
                Ok(output) => {
                    total += output.elapsed;
                    if !output.success() {
                        failures.push(format!("{}: {}", binary.display(), output.describe()));
                    }
                }
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        if !failures.is_empty() {
            bail!(
                "DEL of {} failed: {}",
                self.container_id,
                failures.join("; ")
            );
        }
        Ok(total)
    }
}

impl Drop for ChainPod<'_> {
    fn drop(&mut self) {
        if !self.deleted
            && let Err(e) = self.delete()
        {
            eprintln!("[bench] {e:#}");
        }
    }
}

/// A pod namespace and its chain attachment (DEL before the namespace goes).
pub struct ChainedPod<'n> {
    // Field order is drop order.
    pub attachment: ChainPod<'n>,
    pub netns: Netns,
}

impl<'n> ChainedPod<'n> {
    pub fn new(node: &'n PluginNode, chain: &Chain, role: &str) -> Result<Self> {
        let netns = Netns::with_loopback(role);
        Ok(Self {
            attachment: ChainPod::add(node, chain, &netns)?,
            netns,
        })
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.attachment.ip()
    }
}

/// `ips[0].address` of a result, without the prefix length.
fn first_address(result: &Value) -> Result<IpAddr> {
    let address = result["ips"][0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("ADD result without ips[0].address: {result}"))?;
    let ip = address.split_once('/').map_or(address, |(ip, _)| ip);
    ip.parse()
        .with_context(|| format!("ips[0].address {address:?}"))
}
