//! Names derived from the attachment (container ID, interface name), stable
//! across plugin versions so that DEL finds what an older ADD made.

/// FNV-1a, 64 bit. Written out because its output must never change between
/// releases (std's hasher makes no such promise), and it is five lines.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Identity of one attachment: owner of its map entries.
pub fn attachment_id(container_id: &str, ifname: &str) -> u64 {
    fnv1a64(format!("{container_id}/{ifname}").as_bytes())
}

/// Host-side veth name: `ce` + 12 hex digits (14 bytes, under IFNAMSIZ).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    format!("ce{:012x}", attachment_id(container_id, ifname) >> 16)
}

/// Name of a link DEL took out of use and deletes in the background:
/// `cez` + its ifindex in 8 hex digits (unique in its namespace while it
/// exists; never a host veth name, which has only hex digits after `ce`).
pub fn tombstone(ifindex: u32) -> String {
    format!("cez{ifindex:08x}")
}

/// Whether `name` is a [`tombstone`].
pub fn is_tombstone(name: &str) -> bool {
    name.len() == 11
        && name.starts_with("cez")
        && name[3..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: writes at most 6 bytes into a 6-byte buffer.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != 6 {
        // getrandom(2) does not fail for 6 bytes once the pool is ready;
        // fall back on time and pid rather than abort an ADD.
        let seed =
            fnv1a64(format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes());
        mac.copy_from_slice(&seed.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_stable_and_short() {
        let name = host_ifname("abc123", "eth0");
        assert_eq!(name, host_ifname("abc123", "eth0"));
        assert_ne!(name, host_ifname("abc123", "eth1"));
        assert_eq!(name.len(), 14);
        assert!(name.starts_with("ce"));
    }

    #[test]
    fn tombstones_are_short_and_never_host_veth_names() {
        let name = tombstone(0x1234);
        assert_eq!(name, "cez00001234");
        assert!(is_tombstone(&name));
        assert!(name.len() < 16);
        assert!(!is_tombstone(&host_ifname("abc123", "eth0")));
        assert!(!is_tombstone("cez0000123"));
        assert!(!is_tombstone("eth0"));
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn random_mac_is_local_unicast() {
        let mac = random_mac();
        assert_eq!(mac[0] & 0x01, 0);
        assert_eq!(mac[0] & 0x02, 0x02);
    }
}
