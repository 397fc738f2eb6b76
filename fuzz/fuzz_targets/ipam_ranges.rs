//! The host-local range arithmetic: `ipam.ranges` validation, then real
//! allocations (files in a private temporary data directory) until the
//! range sets run out, then release.
//!
//! Properties: no panic; every refusal of the config is code 7; an accepted
//! range lies inside its subnet with start <= end; each allocated address is
//! inside its range set, carries its subnet's prefix, is never its range's
//! gateway (nor, with the default bounds, the network or IPv4 broadcast
//! address), is never handed out twice; an allocation fails as exhausted
//! exactly when a set has no free address left; releasing every container
//! leaves no reservation.

#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use arbitrary::Arbitrary;
use cni_ebpf_plugin::{
    error::code,
    ipam::{self, AddressRange, HostLocalConfig},
};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Allocations per input, so an input costs a bounded number of files.
const MAX_ALLOCATIONS: usize = 8;

#[derive(Arbitrary, Debug)]
struct Range {
    v6: bool,
    /// Biased towards small subnets so that exhaustion is reachable.
    size_bits: u8,
    base: u128,
    keep_host_bits: bool,
    start: Option<u128>,
    end: Option<u128>,
    gateway: Option<u128>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    sets: Vec<Vec<Range>>,
    /// The legacy top-level `subnet` form, as range set 0.
    legacy: Option<Range>,
    /// Offsets into the first range, asked for by the first container.
    requested: Vec<u128>,
    /// Written as `last_reserved_ip.0` before the first allocation.
    last_reserved: Option<String>,
    allocations: u8,
}

struct Subnet {
    net: IpNet,
    text: String,
}

impl Range {
    fn subnet(&self) -> Subnet {
        let max = if self.v6 { 128 } else { 32 };
        // Mostly 0..=11 host bits, sometimes any prefix.
        let host_bits = if self.size_bits >= 240 {
            u32::from(self.size_bits) % (max + 1)
        } else {
            u32::from(self.size_bits) % 12
        };
        let prefix = (max - host_bits) as u8;
        let addr = ip(self.base, self.v6);
        let net = IpNet::new(addr, prefix).expect("prefix within the family");
        let shown = if self.keep_host_bits {
            net
        } else {
            net.trunc()
        };
        Subnet {
            net: net.trunc(),
            text: shown.to_string(),
        }
    }

    fn json(&self) -> Value {
        let subnet = self.subnet();
        let mut entry = json!({ "subnet": subnet.text });
        let at = |offset: u128| offset_ip(&subnet.net, offset).to_string();
        if let Some(start) = self.start {
            entry["rangeStart"] = json!(at(start));
        }
        if let Some(end) = self.end {
            entry["rangeEnd"] = json!(at(end));
        }
        if let Some(gateway) = self.gateway {
            entry["gateway"] = json!(at(gateway));
        }
        entry
    }

    fn default_bounds(&self) -> bool {
        self.start.is_none() && self.end.is_none()
    }
}

fn ip(value: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(value))
    } else {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    }
}

fn value(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// An address of `net` (offsets wrap around its size; a few land outside).
fn offset_ip(net: &IpNet, offset: u128) -> IpAddr {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let span = if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    // One offset in 64 points just outside the subnet.
    let inside = if offset % 64 == 63 {
        span
    } else {
        offset % span
    };
    ip(
        value(net.network()).wrapping_add(inside),
        matches!(net, IpNet::V6(_)),
    )
}

/// Addresses a range can hand out: start..=end without its gateway.
fn capacity(range: &AddressRange) -> u128 {
    let span = (value(range.range_end) - value(range.range_start)).saturating_add(1);
    span - u128::from(range.contains(range.gateway))
}

fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // tmpfs when there is one: every input writes and removes files.
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        // One directory for every run; networks are named per process.
        let dir = base.join("cni-ebpf-fuzz-ipam");
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

fuzz_target!(|input: Input| {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let network = format!(
        "n{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );

    let sets: Vec<&Vec<Range>> = input.sets.iter().take(3).collect();
    let mut ipam = json!({ "type": "host-local", "dataDir": scratch_dir() });
    ipam["ranges"] = sets
        .iter()
        .map(|set| set.iter().take(3).map(Range::json).collect::<Value>())
        .collect();
    // Which ranges of the parsed config kept host-local's default bounds.
    let mut defaults: Vec<Vec<bool>> = Vec::new();
    if let Some(legacy) = &input.legacy {
        for (key, value) in legacy.json().as_object().unwrap() {
            ipam[key] = value.clone();
        }
        defaults.push(vec![legacy.default_bounds()]);
    }
    defaults.extend(
        sets.iter()
            .map(|set| set.iter().take(3).map(Range::default_bounds).collect()),
    );

    let config = match HostLocalConfig::parse(&ipam, &network) {
        Ok(config) => config,
        Err(error) => {
            assert_eq!(error.code, code::INVALID_CONFIG, "{error}");
            return;
        }
    };
    for set in &config.range_sets {
        assert!(!set.ranges.is_empty());
        for range in &set.ranges {
            assert!(range.subnet.contains(&range.range_start), "{range:?}");
            assert!(range.subnet.contains(&range.range_end), "{range:?}");
            assert!(range.subnet.contains(&range.gateway), "{range:?}");
            assert!(value(range.range_start) <= value(range.range_end));
            assert_eq!(range.is_ipv4(), set.is_ipv4());
        }
    }

    let dir = config.network_dir();
    if let Some(last) = &input.last_reserved {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("last_reserved_ip.0"), last).unwrap();
    }

    let capacities: Vec<u128> = config
        .range_sets
        .iter()
        .map(|set| {
            set.ranges
                .iter()
                .map(capacity)
                .fold(0u128, u128::saturating_add)
        })
        .collect();
    let mut used = vec![0u128; config.range_sets.len()];
    let mut handed_out: Vec<IpAddr> = Vec::new();
    let mut containers = Vec::new();
    for call in 0..usize::from(input.allocations).min(MAX_ALLOCATIONS) {
        let container = format!("c{call}");
        let requested: Vec<IpAddr> = if call == 0 {
            let first = &config.range_sets[0].ranges[0].subnet;
            input
                .requested
                .iter()
                .take(3)
                .map(|offset| offset_ip(first, *offset))
                .collect()
        } else {
            Vec::new()
        };
        let room = used.iter().zip(&capacities).all(|(used, cap)| used < cap);
        match ipam::allocate(&config, &container, "eth0", &requested) {
            Ok(allocations) => {
                assert!(room, "allocated beyond capacity {capacities:?}");
                assert_eq!(allocations.len(), config.range_sets.len());
                for (index, allocation) in allocations.iter().enumerate() {
                    let set = &config.range_sets[index];
                    let address = allocation.address.addr();
                    let range = set
                        .range_for(address)
                        .unwrap_or_else(|| panic!("{address} outside set {set}"));
                    let position = set.ranges.iter().position(|r| r == range).unwrap();
                    assert_ne!(address, range.gateway, "handed out the gateway");
                    assert_eq!(allocation.gateway, Some(range.gateway));
                    assert_eq!(allocation.address.prefix_len(), range.subnet.prefix_len());
                    if defaults[index][position] {
                        assert_ne!(address, range.subnet.network(), "network address");
                        if let IpNet::V4(v4) = range.subnet {
                            assert_ne!(address, IpAddr::V4(v4.broadcast()), "broadcast");
                        }
                    }
                    assert!(!handed_out.contains(&address), "{address} handed out twice");
                    handed_out.push(address);
                    used[index] += 1;
                }
                containers.push(container);
            }
            Err(error) if error.code == code::ADDRESS_EXHAUSTED => {
                assert!(!room, "exhausted with room left: {error}");
            }
            Err(error) if requested.is_empty() => panic!("allocation failed: {error}"),
            // A requested address outside the sets, a gateway or two in one
            // set (7), or one already taken (111).
            Err(error) => assert!(
                [code::INVALID_CONFIG, code::ALREADY_EXISTS].contains(&error.code),
                "{error}"
            ),
        }
    }

    for container in &containers {
        ipam::release(&config, container, "eth0").unwrap();
    }
    if dir.exists() {
        assert!(ipam::reservations(&config).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
});
