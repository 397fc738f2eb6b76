//! The plugin first in a chain, followed by the reference `tuning` and
//! `firewall`, driven as a runtime drives a conflist: ADD each in turn with
//! the previous result, CHECK each with the final result, DEL in reverse.

use std::{collections::BTreeSet, net::IpAddr};

use cni_ebpf_tests::{
    CniOutput, Netns, Node,
    node::DEFAULT_NETWORK,
    spec::{Footprint, PLUGIN_TYPE, Sandbox},
    traffic::{ping, tcp_transfer},
};
use serde_json::{Value, json};

const CHAIN_VERSION: &str = "1.0.0";

/// A conflist: name and version shared, one object per plugin.
struct Chain {
    name: String,
    plugins: Vec<Value>,
}

impl Chain {
    /// The config plugin `index` receives, with `prev` as `prevResult`.
    fn conf(&self, index: usize, prev: Option<&Value>) -> Value {
        let mut conf = self.plugins[index].clone();
        conf["name"] = json!(self.name);
        conf["cniVersion"] = json!(CHAIN_VERSION);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn plugin_type(&self, index: usize) -> &str {
        self.plugins[index]["type"].as_str().unwrap()
    }

    /// ADD through the chain; every intermediate result, the last being
    /// the one a runtime caches.
    fn add(&self, sandbox: &mut Sandbox<'_>) -> Vec<Value> {
        let mut results: Vec<Value> = Vec::new();
        for index in 0..self.plugins.len() {
            let conf = self.conf(index, results.last());
            let kind = self.plugin_type(index);
            let output = if kind == PLUGIN_TYPE {
                sandbox.add(&conf)
            } else {
                sandbox.call_plugin(kind, "ADD", &conf)
            };
            results.push(output.expect_result(&format!("ADD of {kind}")).clone());
        }
        results
    }

    fn each(
        &self,
        sandbox: &Sandbox<'_>,
        command: &str,
        cached: &Value,
        reverse: bool,
    ) -> Vec<(String, CniOutput)> {
        let mut order: Vec<usize> = (0..self.plugins.len()).collect();
        if reverse {
            order.reverse();
        }
        order
            .into_iter()
            .map(|index| {
                let kind = self.plugin_type(index).to_string();
                let output = sandbox.call_plugin(&kind, command, &self.conf(index, Some(cached)));
                (kind, output)
            })
            .collect()
    }
}

fn iptables_save(ns: &Netns) -> String {
    ns.exec_ok("iptables-save", &[] as &[&str])
}

#[test]
fn chain_with_tuning_and_firewall() {
    let node = Node::new();
    let peer = node.add_pod();
    let mut ours = node.conf().build();
    for key in ["name", "cniVersion"] {
        ours.as_object_mut().unwrap().remove(key);
    }
    let chain = Chain {
        name: DEFAULT_NETWORK.to_string(),
        plugins: vec![
            ours,
            json!({
                "type": "tuning",
                "sysctl": { "net.ipv4.conf.eth0.rp_filter": "2" },
                "mtu": 1400,
                "dataDir": node.dir().join("tuning"),
            }),
            json!({ "type": "firewall", "backend": "iptables" }),
        ],
    };
    let mut sandbox = Sandbox::new(&node);
    assert_ne!(
        sandbox.netns().sysctl("net.ipv4.conf.default.rp_filter"),
        "2"
    );

    let results = chain.add(&mut sandbox);
    let cached = results.last().unwrap().clone();
    let ip = sandbox.ip();
    // tuning and firewall pass the plugin's result on.
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["ips"], results[0]["ips"], "plugin {index}: {result}");
        assert_eq!(
            result["interfaces"], results[0]["interfaces"],
            "plugin {index}"
        );
    }

    // tuning's effect, inside the pod only.
    assert_eq!(sandbox.netns().sysctl("net.ipv4.conf.eth0.rp_filter"), "2");
    let mtu = cni_ebpf_tests::spec::link(sandbox.netns(), "eth0")["mtu"].clone();
    assert_eq!(mtu, 1400);
    let host = results[0]["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(cni_ebpf_tests::spec::link(node.netns(), &host)["mtu"], 1500);
    // firewall's rules, in the node namespace only.
    let rules = iptables_save(node.netns());
    assert!(
        rules.contains(&format!("-s {ip}/32")) || rules.contains(&format!("-d {ip}/32")),
        "no firewall rule for {ip} in the node:\n{rules}"
    );
    let pod_rules = iptables_save(sandbox.netns());
    assert!(
        !pod_rules.contains(&ip.to_string()),
        "rules in the pod:\n{pod_rules}"
    );

    for (kind, output) in chain.each(&sandbox, "CHECK", &cached, false) {
        output.expect_success(&format!("CHECK of {kind} with the chain's result"));
    }

    // Traffic flows both ways, TCP included across the MTU difference.
    assert!(ping(sandbox.netns(), IpAddr::V4(peer.ip()), 2));
    assert!(ping(peer.netns(), IpAddr::V4(ip), 1));
    let transfer = tcp_transfer(sandbox.netns(), peer.netns(), IpAddr::V4(ip), 0, 2 << 20)
        .expect("TCP peer -> chained pod");
    assert!(transfer.intact(), "{transfer:?}");
    let transfer = tcp_transfer(
        peer.netns(),
        sandbox.netns(),
        IpAddr::V4(peer.ip()),
        0,
        2 << 20,
    )
    .expect("TCP chained pod -> peer");
    assert!(transfer.intact(), "{transfer:?}");

    // Our CHECK still finds damage when called inside the chain.
    sandbox.netns().ip(&["route", "del", "default"]);
    let outputs = chain.each(&sandbox, "CHECK", &cached, false);
    let ours = &outputs[0].1;
    let msg = ours.expect_error("chained CHECK without the default route", 112);
    assert!(msg.contains("0.0.0.0/0"), "{msg}");
    sandbox.netns().ip(&[
        "route",
        "add",
        "default",
        "via",
        cached["ips"][0]["gateway"].as_str().unwrap(),
        "dev",
        "eth0",
    ]);
    chain.each(&sandbox, "CHECK", &cached, false)[0]
        .1
        .expect_success("CHECK after the route is back");

    // DEL in reverse order, each with the cached result.
    let deletes = chain.each(&sandbox, "DEL", &cached, true);
    for (kind, output) in &deletes {
        output.expect_success(&format!("DEL of {kind}"));
    }
    let rules = iptables_save(node.netns());
    assert!(
        !rules.contains(&format!("{ip}/32")),
        "firewall rules for {ip} left:\n{rules}"
    );
    assert_eq!(
        node.ipam_reservations(DEFAULT_NETWORK),
        BTreeSet::from([IpAddr::V4(peer.ip())]),
        "only the peer's reservation is left"
    );
    let footprint = Footprint::of(&node, DEFAULT_NETWORK);
    assert!(
        !footprint.endpoints.contains(&ip.to_string()),
        "{footprint:?}"
    );
    assert!(!footprint.host_veths.contains(&host), "{footprint:?}");
    assert_eq!(crate::pod_links(sandbox.netns()), Vec::<String>::new());
    // DEL is idempotent: the sandbox's own, after the chain's, succeeds.
    sandbox.del().expect_success("a repeated DEL");
}
