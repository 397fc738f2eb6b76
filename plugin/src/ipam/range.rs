//! Address ranges and range sets, and the order host-local tries them in.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// One `{subnet, rangeStart, rangeEnd, gateway}` entry, with host-local's
/// defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRange {
    pub subnet: IpNet,
    /// First allocatable address, inclusive.
    pub range_start: IpAddr,
    /// Last allocatable address, inclusive.
    pub range_end: IpAddr,
    /// Never handed out, even when it lies between start and end.
    pub gateway: IpAddr,
}

impl AddressRange {
    /// Whether `ip` is an allocatable address of this range (host-local's
    /// `Range.Contains`): same family, inside the subnet, within start..=end.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.is_ipv4()
            && self.subnet.contains(&ip)
            && (self.start_value()..=self.end_value()).contains(&ip_to_u128(ip))
    }

    pub fn is_ipv4(&self) -> bool {
        self.range_start.is_ipv4()
    }

    pub(crate) fn overlaps(&self, other: &AddressRange) -> bool {
        self.is_ipv4() == other.is_ipv4()
            && self.start_value() <= other.end_value()
            && other.start_value() <= self.end_value()
    }

    fn start_value(&self) -> u128 {
        ip_to_u128(self.range_start)
    }

    fn end_value(&self) -> u128 {
        ip_to_u128(self.range_end)
    }
}

/// host-local's `Range.String()`, used in its error messages.
impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.range_start, self.range_end)
    }
}

/// Ranges of one address family from which a container gets one address.
/// The ranges of a set never overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<AddressRange>,
}

impl RangeSet {
    /// The range holding `ip` as an allocatable address.
    pub fn range_for(&self, ip: IpAddr) -> Option<&AddressRange> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    pub fn is_ipv4(&self) -> bool {
        self.ranges.first().is_some_and(AddressRange::is_ipv4)
    }

    /// Every allocatable address once, in host-local's round-robin order:
    /// starting right after `last_reserved` (when it lies in the set) and
    /// wrapping through the following ranges back to it, else from the first
    /// range's start. Gateways are skipped.
    pub(crate) fn candidates(
        &self,
        last_reserved: Option<IpAddr>,
    ) -> impl Iterator<Item = (&AddressRange, IpAddr)> + '_ {
        let count = self.ranges.len();
        let full = |i: usize| {
            let r = &self.ranges[i];
            (i, r.start_value(), r.end_value())
        };
        let resume_at = last_reserved.and_then(|ip| {
            let k = self.ranges.iter().position(|r| r.contains(ip))?;
            Some((k, ip_to_u128(ip.to_canonical())))
        });

        let mut segments = Vec::with_capacity(count + 1);
        match resume_at {
            Some((k, last)) => {
                let (_, start, end) = full(k);
                if last < end {
                    segments.push((k, last + 1, end));
                }
                segments.extend((k + 1..count).chain(0..k).map(full));
                segments.push((k, start, last));
            }
            None => segments.extend((0..count).map(full)),
        }

        segments.into_iter().flat_map(move |(i, low, high)| {
            let range = &self.ranges[i];
            (low..=high)
                .map(move |value| (range, u128_to_ip(value, range.is_ipv4())))
                .filter(|(range, ip)| *ip != range.gateway)
        })
    }
}

/// host-local's `RangeSet.String()`: the ranges joined with commas.
impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

/// Addresses as integers, so ranges are plain intervals of one family.
pub(crate) fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub(crate) fn u128_to_ip(value: u128, ipv4: bool) -> IpAddr {
    if ipv4 {
        // Values of an IPv4 range never exceed u32::MAX.
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(subnet: &str, start: &str, end: &str, gateway: &str) -> AddressRange {
        AddressRange {
            subnet: subnet.parse().unwrap(),
            range_start: start.parse().unwrap(),
            range_end: end.parse().unwrap(),
            gateway: gateway.parse().unwrap(),
        }
    }

    fn order(set: &RangeSet, last: Option<&str>) -> Vec<String> {
        set.candidates(last.map(|s| s.parse().unwrap()))
            .map(|(_, ip)| ip.to_string())
            .collect()
    }

    #[test]
    fn candidates_start_at_range_start_and_skip_gateway() {
        let set = RangeSet {
            ranges: vec![range("10.0.0.0/29", "10.0.0.1", "10.0.0.6", "10.0.0.1")],
        };
        assert_eq!(
            order(&set, None),
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
    }

    #[test]
    fn candidates_resume_after_last_reserved_and_wrap_across_ranges() {
        let set = RangeSet {
            ranges: vec![
                range("10.0.0.0/29", "10.0.0.1", "10.0.0.6", "10.0.0.1"),
                range("10.0.1.0/30", "10.0.1.1", "10.0.1.2", "10.0.1.1"),
            ],
        };
        assert_eq!(
            order(&set, Some("10.0.0.5")),
            [
                "10.0.0.6", "10.0.1.2", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"
            ]
        );
        assert_eq!(
            order(&set, Some("10.0.1.2")),
            [
                "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.1.2"
            ]
        );
        // A last reserved address outside the set restarts from the beginning.
        assert_eq!(order(&set, Some("192.168.0.1"))[0], "10.0.0.2");
    }

    #[test]
    fn contains_checks_family_subnet_and_bounds() {
        let r = range("10.0.0.0/24", "10.0.0.10", "10.0.0.20", "10.0.0.1");
        assert!(r.contains("10.0.0.10".parse().unwrap()));
        assert!(r.contains("10.0.0.20".parse().unwrap()));
        assert!(r.contains("::ffff:10.0.0.15".parse().unwrap()));
        assert!(!r.contains("10.0.0.9".parse().unwrap()));
        assert!(!r.contains("10.0.0.21".parse().unwrap()));
        assert!(!r.contains("::a00:f".parse().unwrap()));
        assert_eq!(r.to_string(), "10.0.0.10-10.0.0.20");
    }
}
