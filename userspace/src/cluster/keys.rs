//! Every etcd key of a cluster. Nothing else builds key strings.
//!
//! ```text
//! <prefix>/config                  the cluster's network (JSON ClusterNetwork)
//! <prefix>/subnets/<a.b.c.d>-<len> one node's pod CIDR (JSON SubnetRecord), under its lease
//! <prefix>/subnets/<a:b::>-<len>   one node's IPv6 pod CIDR (dual stack), the same
//! ```
//!
//! The CIDR's `/` becomes `-` (as in flannel), so a subnet is one key
//! segment below `subnets/`. Agents that only knew IPv4 skip the IPv6 keys
//! (not an IPv4 CIDR), so both can share one watch.

use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` without a trailing `/` (one is stripped).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// What every subnet key starts with (for a prefix list or watch).
    pub fn subnets(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn subnet(&self, cidr: IpNet) -> String {
        format!("{}{}-{}", self.subnets(), cidr.network(), cidr.prefix_len())
    }

    /// The CIDR a subnet key names; `None` for any other key.
    pub fn cidr_of(&self, key: &[u8]) -> Option<IpNet> {
        let key = std::str::from_utf8(key).ok()?;
        let (addr, len) = key.strip_prefix(&self.subnets())?.split_once('-')?;
        let cidr = IpNet::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
        (cidr.network() == cidr.addr()).then_some(cidr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_keys_round_trip() {
        let keys = Keys::new("/cni-ebpf/prod/");
        let cidr: IpNet = "10.244.3.0/24".parse().unwrap();
        assert_eq!(keys.subnet(cidr), "/cni-ebpf/prod/subnets/10.244.3.0-24");
        assert_eq!(keys.cidr_of(keys.subnet(cidr).as_bytes()), Some(cidr));
        assert_eq!(keys.cidr_of(b"/cni-ebpf/prod/config"), None);
        assert_eq!(keys.cidr_of(b"/cni-ebpf/prod/subnets/10.244.3.1-24"), None);
        assert_eq!(keys.cidr_of(b"/cni-ebpf/other/subnets/10.244.3.0-24"), None);
        let v6: IpNet = "fd00:10:244:3::/64".parse().unwrap();
        assert_eq!(keys.subnet(v6), "/cni-ebpf/prod/subnets/fd00:10:244:3::-64");
        assert_eq!(keys.cidr_of(keys.subnet(v6).as_bytes()), Some(v6));
        assert_eq!(
            keys.cidr_of(b"/cni-ebpf/prod/subnets/fd00:10:244:3::1-64"),
            None
        );
    }
}
