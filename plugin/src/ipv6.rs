//! The per-interface IPv6 settings a pod with an IPv6 address needs, written
//! through `/proc/sys/net/ipv6/conf/<ifname>` of the namespace the calling
//! thread is in (the sysctl tree follows the thread's network namespace).
//!
//! Duplicate address detection is off (`accept_dad=0`) on both ends of the
//! veth before the pair comes up: IPAM already made the pod's address
//! unique, the pair has no third party to collide with, and DAD would keep
//! every address tentative (unusable) for about a second after ADD. The
//! pod's own address is added with `IFA_F_NODAD` as well (see
//! `Netlink::add_address`), so a runtime that changes `accept_dad` later
//! does not bring the delay back. The link-local address is the kernel's
//! EUI-64 one (`addr_gen_mode=0`): the datapath finds the pod's endpoint by
//! it (`IpKey::link_local`).

use std::net::IpAddr;

use cni_ebpf_common::IpKey;

use crate::error::{CniError, CniResult};

/// Whether any of `addresses` is IPv6.
pub fn wanted(addresses: impl IntoIterator<Item = IpAddr>) -> bool {
    addresses.into_iter().any(|ip| ip.is_ipv6())
}

/// The pod's side, run inside its namespace with `ifname` still down: IPv6
/// on (as the reference plugins do, for `lo` too), no DAD, EUI-64
/// link-local address.
pub fn prepare_pod(ifname: &str) -> CniResult<()> {
    write("lo", "disable_ipv6", "0")?;
    write(ifname, "disable_ipv6", "0")?;
    write(ifname, "accept_dad", "0")?;
    write(ifname, "addr_gen_mode", "0")
}

/// The host veth, before the pod end comes up (which brings the carrier
/// and with it the link-local address).
pub fn prepare_host(ifname: &str) -> CniResult<()> {
    write(ifname, "disable_ipv6", "0")?;
    write(ifname, "accept_dad", "0")
}

/// The key of the pod's link-local address in the endpoints map, derived
/// from its MAC as the kernel derives the address.
pub fn link_local_key(pod_mac: [u8; 6]) -> IpAddr {
    IpKey::link_local(pod_mac).to_ip()
}

/// The endpoints map keys of a pod: its addresses and, when it has IPv6,
/// its link-local address (its neighbor discovery comes from there).
pub fn endpoint_keys(addresses: &[IpAddr], pod_mac: [u8; 6]) -> Vec<IpAddr> {
    let mut keys = addresses.to_vec();
    if wanted(addresses.iter().copied()) {
        keys.push(link_local_key(pod_mac));
    }
    keys
}

fn write(ifname: &str, key: &str, value: &str) -> CniResult<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/{key}");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|e| {
        CniError::io(
            format!("writing {path} (is IPv6 available in this namespace?)"),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_key_is_the_kernels_eui64_address() {
        // `ip -6 addr` on a veth with this MAC shows fe80::858:aff:fe01:5.
        let key = link_local_key([0x0a, 0x58, 0x0a, 0x01, 0x00, 0x05]);
        assert_eq!(key, "fe80::858:aff:fe01:5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn only_ipv6_addresses_want_ipv6() {
        let v4: IpAddr = "10.1.0.5".parse().unwrap();
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert!(!wanted([v4]));
        assert!(wanted([v4, v6]));
    }
}
