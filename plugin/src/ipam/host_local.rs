//! ADD, DEL, CHECK and GC of the host-local IPAM, served in-process with the
//! reference plugin's semantics (`allocator.go`, `main.go`): one address per
//! range set, round-robin, all-or-nothing, release by (container, ifname).

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::attachments::Attachments;
use super::config::HostLocalConfig;
use super::range::RangeSet;
use super::store::{Holder, Reservation, Store};
use crate::error::{CniError, CniResult, code};

/// One allocated address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address with its subnet's prefix length.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

/// Allocates one address from every range set for (container, ifname), all
/// under one lock. `requested` addresses (from runtimeConfig `ips` or
/// CNI_ARGS `IP`) are each taken from the set containing them; the other
/// sets allocate round-robin after their `last_reserved_ip.N`. On any
/// failure the addresses reserved so far are released again.
pub fn allocate(
    cfg: &HostLocalConfig,
    container_id: &str,
    ifname: &str,
    requested: &[IpAddr],
) -> CniResult<Vec<Allocation>> {
    check_container_id(container_id)?;
    let requested = requested_per_set(cfg, requested)?;
    let store = Store::open(cfg)?;
    let mut attachments = Attachments::open(&store)?;
    let mut held = attachments.held(container_id, ifname)?;
    // Empty while the index is trusted: the exclusive create decides then.
    let mut taken: HashSet<IpAddr> = attachments.known().iter().map(|r| r.ip).collect();

    let mut allocations = Vec::with_capacity(cfg.range_sets.len());
    for (index, set) in cfg.range_sets.iter().enumerate() {
        let attempt = match requested[index] {
            Some(ip) => reserve_requested(&store, &taken, index, set, ip, container_id, ifname),
            None => reserve_next(&store, &taken, &held, index, set, container_id, ifname),
        };
        match attempt {
            Ok(allocation) => {
                let ip = allocation.address.addr();
                taken.insert(ip);
                held.push(Reservation {
                    ip,
                    container_id: container_id.trim().to_owned(),
                    ifname: Some(ifname.to_owned()),
                });
                allocations.push(allocation);
            }
            Err(mut err) => {
                roll_back(&store, &allocations);
                err.msg = format!("failed to allocate for range {index}: {}", err.msg);
                return Err(err);
            }
        }
    }
    let ips: Vec<IpAddr> = exact(&held, container_id, ifname).collect();
    attachments.record(container_id, ifname, &ips);
    attachments.seal();
    Ok(allocations)
}

/// Releases every address held by (container, ifname). As in host-local,
/// files in the legacy ID-only format are released only when no file names
/// the interface. Releasing nothing is not an error.
pub fn release(cfg: &HostLocalConfig, container_id: &str, ifname: &str) -> CniResult<Vec<IpAddr>> {
    check_container_id(container_id)?;
    let store = Store::open(cfg)?;
    let mut attachments = Attachments::open(&store)?;
    let held = attachments.held(container_id, ifname)?;
    let mut ips: Vec<IpAddr> = exact(&held, container_id, ifname).collect();
    let legacy = ips.is_empty();
    if legacy {
        ips = held.iter().map(|r| r.ip).collect();
    }
    ips.sort();

    let mut released = Vec::with_capacity(ips.len());
    let mut kept = Vec::new();
    let mut failure = None;
    for ip in ips {
        match store.remove(ip) {
            Ok(true) => released.push(ip),
            Ok(false) => {}
            // Keep releasing the rest, then report.
            Err(e) => {
                kept.push(ip);
                failure = Some(e);
            }
        }
    }
    if !legacy {
        attachments.record(container_id, ifname, &kept);
    }
    attachments.seal();
    match failure {
        Some(err) => Err(err),
        None => Ok(released),
    }
}

/// The addresses held by (container, ifname), including legacy ID-only
/// files of the container (host-local's `GetByID`/`FindByID`).
pub fn held_by(cfg: &HostLocalConfig, container_id: &str, ifname: &str) -> CniResult<Vec<IpAddr>> {
    check_container_id(container_id)?;
    let store = Store::open(cfg)?;
    let mut attachments = Attachments::open(&store)?;
    let mut ips: Vec<IpAddr> = attachments
        .held(container_id, ifname)?
        .iter()
        .map(|r| r.ip)
        .collect();
    attachments.seal();
    ips.sort();
    Ok(ips)
}

/// Every reservation of the network, sorted by address (for GC). Reads
/// the directory whole, and brings the attachment index up to date with it.
pub fn reservations(cfg: &HostLocalConfig) -> CniResult<Vec<Reservation>> {
    let store = Store::open(cfg)?;
    let mut all = Attachments::scan(&store)?;
    all.sort_by_key(|r| r.ip);
    Ok(all)
}

/// The addresses of `held` written for exactly (container, ifname).
fn exact<'a>(
    held: &'a [Reservation],
    container_id: &'a str,
    ifname: &'a str,
) -> impl Iterator<Item = IpAddr> + 'a {
    held.iter()
        .filter(move |r| r.holder(container_id, ifname) == Some(Holder::Exact))
        .map(|r| r.ip)
}

fn check_container_id(container_id: &str) -> CniResult<()> {
    if container_id.trim().is_empty() {
        return Err(CniError::invalid_env("CNI_CONTAINERID is empty"));
    }
    Ok(())
}

/// Assigns each requested address to the range set holding it, before
/// anything is written: an address outside every set, two in one set, or a
/// gateway is a configuration error.
fn requested_per_set(
    cfg: &HostLocalConfig,
    requested: &[IpAddr],
) -> CniResult<Vec<Option<IpAddr>>> {
    let mut per_set = vec![None; cfg.range_sets.len()];
    for ip in requested.iter().map(|ip| ip.to_canonical()) {
        let Some((index, set)) = cfg
            .range_sets
            .iter()
            .enumerate()
            .find(|(_, set)| set.contains(ip))
        else {
            let sets: Vec<String> = cfg.range_sets.iter().map(RangeSet::to_string).collect();
            return Err(CniError::invalid_config(format!(
                "requested IP address {ip} is not in any range set ({})",
                sets.join("; ")
            )));
        };
        if set.range_for(ip).is_some_and(|r| r.gateway == ip) {
            return Err(CniError::invalid_config(format!(
                "requested IP address {ip} is the subnet's gateway"
            )));
        }
        match per_set[index] {
            Some(other) if other != ip => {
                return Err(CniError::invalid_config(format!(
                    "requested IP addresses {other} and {ip} are both in range set {set}"
                )));
            }
            _ => per_set[index] = Some(ip),
        }
    }
    Ok(per_set)
}

fn reserve_requested(
    store: &Store,
    taken: &HashSet<IpAddr>,
    index: usize,
    set: &RangeSet,
    ip: IpAddr,
    container_id: &str,
    ifname: &str,
) -> CniResult<Allocation> {
    let range = set
        .range_for(ip)
        .expect("requested_per_set only assigns addresses inside the set");
    if taken.contains(&ip) || !store.reserve(ip, container_id, ifname, index)? {
        return Err(CniError::new(
            code::ALREADY_EXISTS,
            format!("requested IP address {ip} is not available in range set {set}"),
        ));
    }
    Ok(Allocation {
        address: IpNet::new_assert(ip, range.subnet.prefix_len()),
        gateway: Some(range.gateway),
    })
}

fn reserve_next(
    store: &Store,
    taken: &HashSet<IpAddr>,
    held: &[Reservation],
    index: usize,
    set: &RangeSet,
    container_id: &str,
    ifname: &str,
) -> CniResult<Allocation> {
    // The spec forbids a second allocation for the same attachment.
    if let Some(held) = held.iter().find(|r| set.contains(r.ip)) {
        return Err(CniError::new(
            code::ALREADY_EXISTS,
            format!(
                "{} has been allocated to {}, duplicate allocation is not allowed",
                held.ip,
                container_id.trim()
            ),
        ));
    }
    for (range, ip) in set.candidates(store.last_reserved_ip(index)) {
        // A file appearing since the listing (a writer ignoring the lock)
        // makes reserve() return false: move on to the next address.
        if !taken.contains(&ip) && store.reserve(ip, container_id, ifname, index)? {
            return Ok(Allocation {
                address: IpNet::new_assert(ip, range.subnet.prefix_len()),
                gateway: Some(range.gateway),
            });
        }
    }
    Err(CniError::new(
        code::ADDRESS_EXHAUSTED,
        format!("no IP addresses available in range set: {set}"),
    ))
}

fn roll_back(store: &Store, allocations: &[Allocation]) {
    for allocation in allocations {
        if let Err(e) = store.remove(allocation.address.addr()) {
            log::warn!("rolling back {}: {e}", allocation.address);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use super::*;

    fn config(dir: &Path, ranges: Value) -> HostLocalConfig {
        HostLocalConfig::parse(
            &json!({"type": "host-local", "dataDir": dir, "ranges": ranges}),
            "net1",
        )
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn addresses(allocations: &[Allocation]) -> Vec<String> {
        allocations.iter().map(|a| a.address.to_string()).collect()
    }

    #[test]
    fn allocates_after_gateway_with_prefix_and_gateway() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "10.1.0.0/29"}]]));
        let got = allocate(&cfg, "c1", "eth0", &[]).unwrap();
        assert_eq!(
            got,
            [Allocation {
                address: "10.1.0.2/29".parse().unwrap(),
                gateway: Some(ip("10.1.0.1")),
            }]
        );
        let file = tmp.path().join("net1/10.1.0.2");
        assert_eq!(std::fs::read(file).unwrap(), b"c1\r\neth0");
        assert_eq!(held_by(&cfg, "c1", "eth0").unwrap(), [ip("10.1.0.2")]);
        assert!(held_by(&cfg, "c1", "eth1").unwrap().is_empty());
    }

    #[test]
    fn round_robin_resumes_after_last_reserved_ip() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "10.1.0.0/29"}]]));
        std::fs::create_dir_all(tmp.path().join("net1")).unwrap();
        std::fs::write(tmp.path().join("net1/last_reserved_ip.0"), "10.1.0.4").unwrap();
        let first = allocate(&cfg, "c1", "eth0", &[]).unwrap();
        assert_eq!(addresses(&first), ["10.1.0.5/29"]);
        // A released address is not reused until the range wraps around.
        release(&cfg, "c1", "eth0").unwrap();
        let second = allocate(&cfg, "c2", "eth0", &[]).unwrap();
        assert_eq!(addresses(&second), ["10.1.0.6/29"]);
        let third = allocate(&cfg, "c3", "eth0", &[]).unwrap();
        assert_eq!(addresses(&third), ["10.1.0.2/29"]);
    }

    #[test]
    fn exhaustion_names_the_range_set() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(
            tmp.path(),
            json!([[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.2", "rangeEnd": "10.1.0.3"}]]),
        );
        allocate(&cfg, "c1", "eth0", &[]).unwrap();
        allocate(&cfg, "c2", "eth0", &[]).unwrap();
        let err = allocate(&cfg, "c3", "eth0", &[]).unwrap_err();
        assert_eq!(err.code, code::ADDRESS_EXHAUSTED);
        assert_eq!(
            err.msg,
            "failed to allocate for range 0: no IP addresses available in range set: 10.1.0.2-10.1.0.3"
        );
    }

    #[test]
    fn second_allocation_for_same_attachment_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "10.1.0.0/29"}]]));
        allocate(&cfg, "c1", "eth0", &[]).unwrap();
        let err = allocate(&cfg, "c1", "eth0", &[]).unwrap_err();
        assert_eq!(err.code, code::ALREADY_EXISTS);
        assert!(
            err.msg.contains("10.1.0.2 has been allocated to c1"),
            "{err}"
        );
        // Another interface of the same container is a different attachment.
        assert_eq!(
            addresses(&allocate(&cfg, "c1", "eth1", &[]).unwrap()),
            ["10.1.0.3/29"]
        );
    }

    #[test]
    fn requested_ip_free_taken_out_of_range_and_gateway() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "10.1.0.0/29"}]]));
        let got = allocate(&cfg, "c1", "eth0", &[ip("10.1.0.5")]).unwrap();
        assert_eq!(addresses(&got), ["10.1.0.5/29"]);

        let taken = allocate(&cfg, "c2", "eth0", &[ip("10.1.0.5")]).unwrap_err();
        assert_eq!(taken.code, code::ALREADY_EXISTS);
        assert_eq!(
            taken.msg,
            "failed to allocate for range 0: requested IP address 10.1.0.5 is not available in range set 10.1.0.1-10.1.0.6"
        );

        let outside = allocate(&cfg, "c2", "eth0", &[ip("10.1.0.7")]).unwrap_err();
        assert_eq!(outside.code, code::INVALID_CONFIG);
        assert!(
            outside.msg.contains("10.1.0.7 is not in any range set"),
            "{outside}"
        );

        let gateway = allocate(&cfg, "c2", "eth0", &[ip("10.1.0.1")]).unwrap_err();
        assert_eq!(gateway.code, code::INVALID_CONFIG);

        let two = allocate(&cfg, "c2", "eth0", &[ip("10.1.0.2"), ip("10.1.0.3")]).unwrap_err();
        assert_eq!(two.code, code::INVALID_CONFIG);
        assert!(held_by(&cfg, "c2", "eth0").unwrap().is_empty());
    }

    #[test]
    fn failure_in_later_range_set_rolls_back_earlier_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(
            tmp.path(),
            json!([
                [{"subnet": "10.1.0.0/29"}],
                [{"subnet": "fd00::/120", "rangeStart": "fd00::2", "rangeEnd": "fd00::2"}],
            ]),
        );
        let both = allocate(&cfg, "c1", "eth0", &[]).unwrap();
        assert_eq!(addresses(&both), ["10.1.0.2/29", "fd00::2/120"]);
        assert_eq!(both[1].gateway, Some(ip("fd00::1")));

        let err = allocate(&cfg, "c2", "eth0", &[]).unwrap_err();
        assert_eq!(err.code, code::ADDRESS_EXHAUSTED);
        assert!(
            err.msg.starts_with("failed to allocate for range 1: "),
            "{err}"
        );
        assert!(held_by(&cfg, "c2", "eth0").unwrap().is_empty());
        let left: Vec<IpAddr> = reservations(&cfg).unwrap().iter().map(|r| r.ip).collect();
        assert_eq!(left, [ip("10.1.0.2"), ip("fd00::2")]);
    }

    #[test]
    fn ipv6_range() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "fd00:0:0:1::/64"}]]));
        let got = allocate(&cfg, "c1", "eth0", &[]).unwrap();
        assert_eq!(addresses(&got), ["fd00:0:0:1::2/64"]);
        assert_eq!(got[0].gateway, Some(ip("fd00:0:0:1::1")));
        assert!(tmp.path().join("net1/fd00:0:0:1::2").exists());
        let next = allocate(&cfg, "c2", "eth0", &[ip("fd00:0:0:1::ffff")]).unwrap();
        assert_eq!(addresses(&next), ["fd00:0:0:1::ffff/64"]);
        assert_eq!(
            release(&cfg, "c2", "eth0").unwrap(),
            [ip("fd00:0:0:1::ffff")]
        );
    }

    #[test]
    fn release_is_idempotent_and_handles_legacy_files() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}]]));
        allocate(&cfg, "c1", "eth0", &[]).unwrap();
        allocate(&cfg, "c1", "eth1", &[]).unwrap();
        assert_eq!(release(&cfg, "c1", "eth0").unwrap(), [ip("10.1.0.2")]);
        assert!(release(&cfg, "c1", "eth0").unwrap().is_empty());
        assert!(release(&cfg, "nobody", "eth0").unwrap().is_empty());
        assert_eq!(held_by(&cfg, "c1", "eth1").unwrap(), [ip("10.1.0.3")]);

        // Pre-0.7 host-local wrote only the container ID.
        let dir = tmp.path().join("net1");
        std::fs::write(dir.join("10.1.0.50"), "old").unwrap();
        std::fs::write(dir.join("10.1.0.51"), "old\n").unwrap();
        assert_eq!(
            held_by(&cfg, "old", "eth0").unwrap(),
            [ip("10.1.0.50"), ip("10.1.0.51")]
        );
        let err = allocate(&cfg, "old", "eth0", &[]).unwrap_err();
        assert_eq!(err.code, code::ALREADY_EXISTS);
        assert_eq!(
            release(&cfg, "old", "eth0").unwrap(),
            [ip("10.1.0.50"), ip("10.1.0.51")]
        );
        assert!(release(&cfg, "old", "eth0").unwrap().is_empty());
        assert_eq!(reservations(&cfg).unwrap().len(), 1);
    }

    #[test]
    fn release_prefers_exact_files_over_legacy_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}]]));
        allocate(&cfg, "c1", "eth0", &[]).unwrap();
        std::fs::write(tmp.path().join("net1/10.1.0.99"), "c1").unwrap();
        assert_eq!(release(&cfg, "c1", "eth0").unwrap(), [ip("10.1.0.2")]);
        assert_eq!(release(&cfg, "c1", "eth0").unwrap(), [ip("10.1.0.99")]);
    }

    #[test]
    fn reservations_lists_every_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}]]));
        allocate(&cfg, "c1", "eth0", &[]).unwrap();
        allocate(&cfg, "c2", "net1", &[]).unwrap();
        let all = reservations(&cfg).unwrap();
        let view: Vec<(String, &str, Option<&str>)> = all
            .iter()
            .map(|r| {
                (
                    r.ip.to_string(),
                    r.container_id.as_str(),
                    r.ifname.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("10.1.0.2".into(), "c1", Some("eth0")),
                ("10.1.0.3".into(), "c2", Some("net1")),
            ]
        );
    }

    /// The attachment index files of the network, with their contents.
    fn index_files(dir: &Path) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(dir.join("net1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with("attachment."))
            .map(|name| {
                let contents = std::fs::read_to_string(dir.join("net1").join(&name)).unwrap();
                (name, contents)
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn index_names_each_attachment_and_goes_with_it() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(
            tmp.path(),
            json!([[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}]]),
        );
        allocate(&cfg, "c1", "eth0", &[]).unwrap();
        allocate(&cfg, "c2", "eth0", &[]).unwrap();
        let files = index_files(tmp.path());
        let contents: Vec<&str> = files.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(contents.len(), 2);
        assert!(contents.contains(&"c1\r\neth0\r\n10.1.0.2\r\nfd00::2"));
        assert!(contents.contains(&"c2\r\neth0\r\n10.1.0.3\r\nfd00::3"));
        // The lock file vouches for the index (host-local never reads it).
        let seal = std::fs::read_to_string(tmp.path().join("net1/lock")).unwrap();
        assert!(seal.starts_with("attachments "), "{seal:?}");

        release(&cfg, "c1", "eth0").unwrap();
        assert_eq!(index_files(tmp.path()).len(), 1);
        release(&cfg, "c2", "eth0").unwrap();
        assert!(index_files(tmp.path()).is_empty());
    }

    #[test]
    fn a_deleted_index_file_is_noticed() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}]]));
        allocate(&cfg, "c1", "eth0", &[]).unwrap();
        for (name, _) in index_files(tmp.path()) {
            std::fs::remove_file(tmp.path().join("net1").join(name)).unwrap();
        }
        let err = allocate(&cfg, "c1", "eth0", &[]).unwrap_err();
        assert_eq!(err.code, code::ALREADY_EXISTS, "{err}");
        // Reading the directory whole wrote the index again.
        assert_eq!(index_files(tmp.path()).len(), 1);
        for (name, _) in index_files(tmp.path()) {
            std::fs::remove_file(tmp.path().join("net1").join(name)).unwrap();
        }
        assert_eq!(release(&cfg, "c1", "eth0").unwrap(), [ip("10.1.0.2")]);
        assert!(reservations(&cfg).unwrap().is_empty());
        assert!(index_files(tmp.path()).is_empty());
    }

    #[test]
    fn an_index_that_disagrees_with_the_reservations_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}]]));
        allocate(&cfg, "c1", "eth0", &[]).unwrap();
        allocate(&cfg, "c2", "eth0", &[]).unwrap();
        let files = index_files(tmp.path());
        let (c1_index, _) = files
            .iter()
            .find(|(_, contents)| contents.starts_with("c1\r\n"))
            .unwrap();
        let c1_index = tmp.path().join("net1").join(c1_index);
        // Rewritten in place, the directory's times do not change: the
        // seal still holds, only the reservation files can give it away.
        for lie in [
            "c1\r\neth0\r\n10.1.0.3",
            "c1\r\neth0\r\n10.1.0.9",
            "c9\r\neth0\r\n10.1.0.2",
            "garbage",
        ] {
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&c1_index)
                .unwrap()
                .write_all(lie.as_bytes())
                .unwrap();
            assert_eq!(
                held_by(&cfg, "c1", "eth0").unwrap(),
                [ip("10.1.0.2")],
                "index saying {lie:?}"
            );
            assert_eq!(
                std::fs::read_to_string(&c1_index).unwrap(),
                "c1\r\neth0\r\n10.1.0.2",
                "repaired after {lie:?}"
            );
        }
        assert_eq!(release(&cfg, "c1", "eth0").unwrap(), [ip("10.1.0.2")]);
        assert_eq!(held_by(&cfg, "c2", "eth0").unwrap(), [ip("10.1.0.3")]);
    }

    #[test]
    fn reservations_of_older_builds_are_found_and_indexed() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}]]));
        allocate(&cfg, "c1", "eth0", &[]).unwrap();
        // Written as host-local or a build without the index writes it.
        std::fs::write(tmp.path().join("net1/10.1.0.7"), "c9\r\neth0").unwrap();
        assert_eq!(held_by(&cfg, "c9", "eth0").unwrap(), [ip("10.1.0.7")]);
        assert!(
            index_files(tmp.path())
                .iter()
                .any(|(_, contents)| contents == "c9\r\neth0\r\n10.1.0.7")
        );
        let err = allocate(&cfg, "c9", "eth0", &[]).unwrap_err();
        assert_eq!(err.code, code::ALREADY_EXISTS, "{err}");

        std::fs::write(tmp.path().join("net1/10.1.0.8"), "c8\r\neth0").unwrap();
        assert_eq!(release(&cfg, "c8", "eth0").unwrap(), [ip("10.1.0.8")]);
        assert_eq!(release(&cfg, "c9", "eth0").unwrap(), [ip("10.1.0.7")]);
        assert_eq!(index_files(tmp.path()).len(), 1);
    }

    #[test]
    fn a_reservation_removed_behind_our_back_leaves_no_index() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}]]));
        allocate(&cfg, "c1", "eth0", &[]).unwrap();
        allocate(&cfg, "c2", "eth0", &[]).unwrap();
        // As the reference host-local's DEL does: the reservation only.
        std::fs::remove_file(tmp.path().join("net1/10.1.0.2")).unwrap();
        assert!(held_by(&cfg, "c1", "eth0").unwrap().is_empty());
        let left: Vec<IpAddr> = reservations(&cfg).unwrap().iter().map(|r| r.ip).collect();
        assert_eq!(left, [ip("10.1.0.3")]);
        let files = index_files(tmp.path());
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].1, "c2\r\neth0\r\n10.1.0.3");
    }

    #[test]
    fn add_and_del_are_cheap() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}]]));
        for i in 0..100 {
            allocate(&cfg, &format!("warm{i}"), "eth0", &[]).unwrap();
        }
        let rounds: u32 = 50;
        let (mut add, mut del) = (Duration::ZERO, Duration::ZERO);
        for i in 0..rounds {
            let id = format!("timed{i}");
            let start = Instant::now();
            allocate(&cfg, &id, "eth0", &[]).unwrap();
            add += start.elapsed();
            let start = Instant::now();
            release(&cfg, &id, "eth0").unwrap();
            del += start.elapsed();
        }
        let (add, del) = (add / rounds, del / rounds);
        eprintln!("with 100 reservations: ADD {add:?}, DEL {del:?}");
        // Generous bound for slow, shared CI machines.
        assert!(add < Duration::from_millis(10) && del < Duration::from_millis(10));
    }
}
