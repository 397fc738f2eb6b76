//! Sharing one data directory with the reference `host-local` binary.
//! host-local only writes files under its dataDir (it never enters the
//! netns), so these tests need no privileges and touch no network.

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use super::host_local::{allocate, held_by, release, reservations};
use super::{Allocation, HostLocalConfig};
use crate::error::code;

const REFERENCE: &str = "/usr/lib/cni/host-local";

fn reference_available() -> bool {
    if Path::new(REFERENCE).exists() {
        return true;
    }
    eprintln!("note: {REFERENCE} not found, skipping the interoperability test");
    false
}

fn netconf(data_dir: &Path, network: &str, subnet: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": network,
        "type": "cni-ebpf",
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": subnet}]]},
    })
}

fn spawn_reference(command: &str, container_id: &str, netconf: &Value) -> Child {
    let mut child = Command::new(REFERENCE)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning host-local");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(netconf.to_string().as_bytes()).unwrap();
    child
}

/// The reference's result (Ok) or error object (Err).
fn finish(child: Child) -> Result<Value, Value> {
    let out = child.wait_with_output().unwrap();
    let stdout: Value = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "host-local printed non-JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stdout)
    }
}

fn reference(command: &str, container_id: &str, netconf: &Value) -> Result<Value, Value> {
    finish(spawn_reference(command, container_id, netconf))
}

/// The single address of a reference ADD result.
fn reference_ip(result: &Value) -> IpAddr {
    let address = result["ips"][0]["address"]
        .as_str()
        .expect("ips[0].address");
    address.split('/').next().unwrap().parse().unwrap()
}

fn our_ip(allocations: &[Allocation]) -> IpAddr {
    assert_eq!(allocations.len(), 1);
    allocations[0].address.addr()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn interleaved_with_reference_host_local() {
    if !reference_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = netconf(tmp.path(), "shared", "10.77.0.0/29");
    let cfg = HostLocalConfig::parse(&conf["ipam"], "shared").unwrap();

    // .1 is the gateway, .2-.6 are allocatable; both sides alternate.
    let mut handed_out = vec![
        reference_ip(&reference("ADD", "ref-1", &conf).unwrap()),
        our_ip(&allocate(&cfg, "ours-1", "eth0", &[]).unwrap()),
        reference_ip(&reference("ADD", "ref-2", &conf).unwrap()),
        our_ip(&allocate(&cfg, "ours-2", "eth0", &[]).unwrap()),
        reference_ip(&reference("ADD", "ref-3", &conf).unwrap()),
    ];
    let expected: Vec<IpAddr> = (2..=6).map(|i| ip(&format!("10.77.0.{i}"))).collect();
    assert_eq!(
        handed_out, expected,
        "both sides follow one round-robin order"
    );

    let err = allocate(&cfg, "ours-3", "eth0", &[]).unwrap_err();
    assert_eq!(err.code, code::ADDRESS_EXHAUSTED);
    let ref_err = reference("ADD", "ref-4", &conf).unwrap_err();
    assert!(
        ref_err["msg"]
            .as_str()
            .unwrap()
            .contains("no IP addresses available"),
        "{ref_err}"
    );

    // Each side reads the other's files: CHECK, then cross releases.
    reference("CHECK", "ours-2", &conf).expect("reference CHECK finds our reservation");
    assert_eq!(held_by(&cfg, "ref-2", "eth0").unwrap(), [ip("10.77.0.4")]);
    reference("DEL", "ours-1", &conf).unwrap();
    assert!(held_by(&cfg, "ours-1", "eth0").unwrap().is_empty());
    assert_eq!(release(&cfg, "ref-1", "eth0").unwrap(), [ip("10.77.0.2")]);
    handed_out.retain(|a| *a != ip("10.77.0.2") && *a != ip("10.77.0.3"));

    // Round-robin resumes after the reference's last reservation (.6).
    handed_out.push(our_ip(&allocate(&cfg, "ours-4", "eth0", &[]).unwrap()));
    handed_out.push(reference_ip(&reference("ADD", "ref-5", &conf).unwrap()));
    assert_eq!(&handed_out[3..], [ip("10.77.0.2"), ip("10.77.0.3")]);

    let on_disk: Vec<(IpAddr, String)> = reservations(&cfg)
        .unwrap()
        .into_iter()
        .map(|r| (r.ip, r.container_id))
        .collect();
    let unique: HashSet<IpAddr> = handed_out.iter().copied().collect();
    assert_eq!(
        unique.len(),
        handed_out.len(),
        "an address was handed out twice"
    );
    assert_eq!(on_disk.len(), handed_out.len());
    assert!(on_disk.iter().all(|(ip, _)| unique.contains(ip)));

    // Both sides release everything; nothing remains.
    for id in ["ref-2", "ref-3", "ref-5"] {
        reference("DEL", id, &conf).unwrap();
    }
    // The reference's DEL is idempotent too.
    reference("DEL", "ref-2", &conf).unwrap();
    for id in ["ours-2", "ours-4"] {
        assert_eq!(release(&cfg, id, "eth0").unwrap().len(), 1);
    }
    assert!(reservations(&cfg).unwrap().is_empty());
}

#[test]
fn concurrent_with_reference_host_local() {
    if !reference_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = netconf(tmp.path(), "racy", "10.78.0.0/27");
    let cfg = HostLocalConfig::parse(&conf["ipam"], "racy").unwrap();
    const EACH: usize = 10;

    let children: Vec<Child> = (0..EACH)
        .map(|i| spawn_reference("ADD", &format!("ref-{i}"), &conf))
        .collect();
    let ours: Vec<IpAddr> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..EACH)
            .map(|i| {
                let cfg = &cfg;
                scope.spawn(move || {
                    our_ip(&allocate(cfg, &format!("ours-{i}"), "eth0", &[]).unwrap())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let theirs: Vec<IpAddr> = children
        .into_iter()
        .map(|child| reference_ip(&finish(child).unwrap()))
        .collect();

    let all: HashSet<IpAddr> = ours.iter().chain(&theirs).copied().collect();
    assert_eq!(
        all.len(),
        2 * EACH,
        "an address was handed out twice: {ours:?} {theirs:?}"
    );
    let on_disk: HashSet<IpAddr> = reservations(&cfg).unwrap().iter().map(|r| r.ip).collect();
    assert_eq!(on_disk, all);

    let deleting: Vec<Child> = (0..EACH)
        .map(|i| spawn_reference("DEL", &format!("ours-{i}"), &conf))
        .collect();
    for i in 0..EACH {
        release(&cfg, &format!("ref-{i}"), "eth0").unwrap();
    }
    for child in deleting {
        finish(child).unwrap();
    }
    assert!(reservations(&cfg).unwrap().is_empty());
}
