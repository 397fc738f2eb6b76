//! Cluster mode against an etcd that serves TLS only and wants client
//! certificates of its CA (`--client-cert-auth`), with a CA, server and
//! client certificates made at test time: nodes with a certificate of the
//! CA join and their pods talk; a node without one, or with one of another
//! CA, or speaking plain HTTP, is refused and leases nothing (and joins
//! once a certificate of the CA is written over its files); bad TLS
//! settings stop the agent naming the flag and the file.

use std::{fs, time::Duration};

use cni_ebpf_tests::{
    Family,
    agent::Agent,
    cluster::{ClusterNode, Underlay},
    pki::{ClientFiles, Pki},
};

use super::cluster::{JOIN, pods_talk, wait_peer};

/// How long a refused agent is watched retrying before its (absent)
/// lease is checked: several reconnections at the 0.2–2 s backoff.
const REFUSED_FOR: Duration = Duration::from_secs(4);

/// The TLS flags of a node: the CA, and a client certificate if any.
fn tls_flags(pki: &Pki, client: Option<&ClientFiles>) -> Vec<String> {
    let mut flags = vec![format!("--etcd-cafile={}", pki.ca().display())];
    if let Some(client) = client {
        flags.push(format!("--etcd-certfile={}", client.cert.display()));
        flags.push(format!("--etcd-keyfile={}", client.key.display()));
    }
    flags
}

fn start(node: &ClusterNode, flags: &[String]) -> Agent {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    node.start_agent(&flags)
}

fn pki(underlay: &Underlay) -> &Pki {
    underlay.etcd.pki().expect("a TLS etcd")
}

#[test]
fn two_nodes_join_over_tls_and_their_pods_talk() {
    let underlay = Underlay::with_tls();
    let pki = pki(&underlay);
    let nodes = [underlay.add_node(0), underlay.add_node(0)];
    let agents: Vec<Agent> = nodes
        .iter()
        .map(|n| start(n, &tls_flags(pki, Some(&pki.client()))))
        .collect();
    let cidrs: Vec<String> = nodes.iter().map(|n| n.wait_pod_cidr(JOIN)).collect();
    assert_ne!(cidrs[0], cidrs[1]);
    let records = underlay.subnets();
    assert_eq!(records.len(), 2, "{records:?}");
    for agent in &agents {
        assert!(
            agent.stderr().iter().any(|l| l.contains("over TLS")),
            "{}",
            agent.stderr().join("\n")
        );
    }
    wait_peer(&agents[0], &nodes[1], &cidrs[1], "native");
    wait_peer(&agents[1], &nodes[0], &cidrs[0], "native");
    let pods = nodes.each_ref().map(|n| n.node.add_pod_with(n.conf()));
    pods_talk(&pods[0], &pods[1], Family::V4);
}

/// Waits until `agent` says it cannot reach etcd because of `reason`
/// (the first tries may only see the connection closed: in TLS 1.3 the
/// server refuses a client certificate after the client's side of the
/// handshake), keeps watching it retry, then checks that it still runs (a
/// rotated certificate may cure it) and leased nothing.
fn assert_refused(underlay: &Underlay, node: &ClusterNode, agent: &mut Agent, reason: &str) {
    let refused = agent.wait_for_line(JOIN, |l| {
        l.contains("etcd connection lost") && l.contains(reason)
    });
    std::thread::sleep(REFUSED_FOR);
    let stderr = agent.stderr().join("\n");
    eprintln!("{}:\n{stderr}", node.name);
    assert!(
        refused.is_some(),
        "{}: no `{reason}` in:\n{stderr}",
        node.name
    );
    assert!(agent.wait_exit(Duration::ZERO).is_none(), "{stderr}");
    assert!(node.node_state().is_none(), "{}: leased", node.name);
    let records = underlay.subnets();
    assert!(
        records
            .iter()
            .all(|(_, r)| r["nodeName"] != node.name.as_str()),
        "{}: {records:?}",
        node.name
    );
}

#[test]
fn a_node_without_a_client_certificate_of_the_ca_is_refused_until_given_one() {
    let underlay = Underlay::with_tls();
    let pki = pki(&underlay);
    // The second node's files, rotated below.
    let rotated = ClientFiles {
        cert: pki.dir().join("rotated.pem"),
        key: pki.dir().join("rotated-key.pem"),
    };
    let stranger = pki.stranger();
    fs::copy(&stranger.cert, &rotated.cert).unwrap();
    fs::copy(&stranger.key, &rotated.key).unwrap();
    let refusal = "received fatal alert: BadCertificate";
    let mut refused = Vec::new();
    for flags in [tls_flags(pki, None), tls_flags(pki, Some(&rotated))] {
        let node = underlay.add_node(0);
        let mut agent = start(&node, &flags);
        assert_refused(&underlay, &node, &mut agent, refusal);
        refused.push((node, agent));
    }
    assert!(underlay.subnets().is_empty(), "{:?}", underlay.subnets());

    // Rotation: a certificate of the CA written over the refused one is
    // used at the next reconnection, without a restart.
    let client = pki.client();
    fs::copy(&client.key, &rotated.key).unwrap();
    fs::copy(&client.cert, &rotated.cert).unwrap();
    let (node, agent) = &refused[1];
    let cidr = node.wait_pod_cidr(JOIN);
    let records = underlay.subnets();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].0, cidr);
    assert_eq!(records[0].1["nodeName"], node.name.as_str());
    assert!(agent.wait_for_line(JOIN, |l| l.contains("holds")).is_some());
}

#[test]
fn plain_http_against_a_tls_etcd_and_bad_tls_settings_fail_clearly() {
    let underlay = Underlay::with_tls();
    let pki = pki(&underlay);
    let plain = underlay.etcd.endpoint().replacen("https://", "http://", 1);

    // Plain HTTP to the TLS port: refused, with a hint.
    let node = underlay.add_node(0);
    let mut agent = node.start_agent_at(&plain, &[]);
    assert_refused(
        &underlay,
        &node,
        &mut agent,
        "if etcd serves TLS, give https://",
    );

    // Settings refused before connecting: the agent ends naming the flag
    // and the file.
    let garbage = pki.dir().join("garbage.pem");
    fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = pki.dir().join("missing.pem");
    let (client, stranger) = (pki.client(), pki.stranger());
    let ca = pki.ca();
    let flag = |name: &str, path: &std::path::Path| format!("--{name}={}", path.display());
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![flag("etcd-cafile", &missing)],
            format!("--etcd-cafile {}: cannot read it", missing.display()),
        ),
        (
            vec![flag("etcd-cafile", &garbage)],
            format!("--etcd-cafile {}: no PEM certificate", garbage.display()),
        ),
        (
            vec![
                flag("etcd-cafile", &ca),
                flag("etcd-certfile", &garbage),
                flag("etcd-keyfile", &client.key),
            ],
            format!("--etcd-certfile {}: no PEM certificate", garbage.display()),
        ),
        (
            vec![
                flag("etcd-cafile", &ca),
                flag("etcd-certfile", &client.cert),
                flag("etcd-keyfile", &ca),
            ],
            format!("--etcd-keyfile {}: no PEM private key", ca.display()),
        ),
        (
            vec![
                flag("etcd-cafile", &ca),
                flag("etcd-certfile", &client.cert),
                flag("etcd-keyfile", &stranger.key),
            ],
            format!(
                "--etcd-keyfile {} does not belong to the certificate in --etcd-certfile {}",
                stranger.key.display(),
                client.cert.display()
            ),
        ),
        (
            vec![
                flag("etcd-cafile", &ca),
                flag("etcd-certfile", &client.cert),
            ],
            "--etcd-certfile is set without --etcd-keyfile".into(),
        ),
        (
            vec![
                flag("etcd-certfile", &client.cert),
                flag("etcd-keyfile", &client.key),
            ],
            "--etcd-cafile is not set".into(),
        ),
    ];
    let node = underlay.add_node(0);
    for (flags, message) in cases {
        let mut agent = start(&node, &flags);
        assert!(
            agent.wait_exit(JOIN).is_some_and(|s| !s.success()),
            "{flags:?}: still running"
        );
        assert!(
            agent
                .wait_for_line(JOIN, |l| l.contains(&message))
                .is_some(),
            "{flags:?}: no `{message}` in:\n{}",
            agent.stderr().join("\n")
        );
    }
    // TLS files with a plain endpoint.
    let mut agent = node.start_agent_at(&plain, &[&flag("etcd-cafile", &ca)]);
    assert!(agent.wait_exit(JOIN).is_some_and(|s| !s.success()));
    let message = format!("--etcd-endpoints {plain} is plain HTTP, but TLS files are set");
    assert!(
        agent
            .wait_for_line(JOIN, |l| l.contains(&message))
            .is_some(),
        "no `{message}` in:\n{}",
        agent.stderr().join("\n")
    );
    assert!(node.node_state().is_none());
    assert!(underlay.subnets().is_empty(), "{:?}", underlay.subnets());
}
