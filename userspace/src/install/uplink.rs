//! The pod MTU from the node's uplink: the device of the IPv4 default route
//! (in the caller's network namespace), less the VXLAN header when pods may
//! be reached through the tunnel.

use std::{ffi::CString, os::fd::AsRawFd as _};

use super::{InstallError, Result};
use crate::peers::TUNNEL_OVERHEAD;

/// How pods on different nodes reach each other (README "Native routing
/// and the VXLAN overlay"): only the pod MTU depends on it here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Native,
    Vxlan,
    /// Native or VXLAN per peer (cluster mode): sized for the tunnel.
    Auto,
}

/// The MTU pods get behind an uplink of `uplink_mtu`.
pub fn pod_mtu(uplink_mtu: u32, backend: Backend) -> u32 {
    match backend {
        Backend::Native => uplink_mtu,
        Backend::Vxlan | Backend::Auto => uplink_mtu.saturating_sub(TUNNEL_OVERHEAD),
    }
}

/// The device of the IPv4 default route with the lowest metric.
pub fn default_route_device() -> Result<String> {
    let table = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| InstallError::io("reading", "/proc/net/route".as_ref(), e))?;
    default_route_device_in(&table).ok_or_else(|| {
        InstallError::Uplink(
            "no IPv4 default route in this network namespace: pass --uplink or --mtu".into(),
        )
    })
}

/// `/proc/net/route`'s default route device (destination and mask 0).
pub fn default_route_device_in(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            let (iface, destination, metric, mask) = (
                fields.first()?,
                fields.get(1)?,
                fields.get(6)?,
                fields.get(7)?,
            );
            (*destination == "00000000" && *mask == "00000000")
                .then(|| (metric.parse::<u32>().unwrap_or(u32::MAX), iface.to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The MTU of `ifname` in the caller's network namespace (`SIOCGIFMTU`:
/// unlike `/sys/class/net`, it does not depend on which sysfs is mounted).
pub fn mtu_of(ifname: &str) -> Result<u32> {
    let name =
        CString::new(ifname).map_err(|_| InstallError::Uplink(format!("bad name {ifname:?}")))?;
    if name.as_bytes_with_nul().len() > libc::IFNAMSIZ {
        return Err(InstallError::Uplink(format!("{ifname}: name too long")));
    }
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")
        .map_err(|e| InstallError::Uplink(format!("opening a socket: {e}")))?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.as_bytes_with_nul()) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads ifr_name and writes ifr_ifru.ifru_mtu of the
    // ifreq we own.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut request) };
    if rc != 0 {
        return Err(InstallError::Uplink(format!(
            "{ifname}: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: the kernel filled the mtu member.
    Ok(unsafe { request.ifr_ifru.ifru_mtu } as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth0\t00000000\t010011AC\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
";

    #[test]
    fn the_default_route_with_the_lowest_metric_names_the_uplink() {
        assert_eq!(default_route_device_in(ROUTES).as_deref(), Some("eth0"));
        assert_eq!(
            default_route_device_in(ROUTES.lines().next().unwrap()),
            None
        );
    }

    #[test]
    fn vxlan_leaves_room_for_the_header() {
        assert_eq!(pod_mtu(1500, Backend::Native), 1500);
        assert_eq!(pod_mtu(1500, Backend::Vxlan), 1450);
        assert_eq!(pod_mtu(9001, Backend::Vxlan), 8951);
    }

    #[test]
    fn loopback_has_an_mtu() {
        assert!(mtu_of("lo").unwrap() >= 1500);
        assert!(mtu_of("no-such-device0").is_err());
    }
}
