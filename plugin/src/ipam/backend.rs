//! The IPAM a network uses: the built-in host-local allocator, or a plugin
//! executed from `CNI_PATH` (any other `ipam.type`, or host-local itself when
//! the config sets `"delegateHostLocal": true`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{Allocation, HostLocalConfig, delegate::DelegatedIpam, host_local, pod_cidr};
use crate::{
    cni::{CniEnv, Command as Verb, Dns, NetConf, Route},
    error::{CniError, CniResult},
};

/// The gateway a pod gets when its IPAM names none. Any address works: the
/// datapath answers the pod's ARP for every address with the host veth's
/// MAC, so a link-local one never collides with a pod or node address.
pub const VIRTUAL_GATEWAY_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1));
/// The same for IPv6: a link-local address, answered by the datapath's
/// neighbor advertisements.
pub const VIRTUAL_GATEWAY_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));

pub enum Ipam {
    BuiltIn(HostLocalConfig),
    Delegated(DelegatedIpam),
}

/// What IPAM hands ADD.
#[derive(Debug, Clone, Default)]
pub struct IpamResult {
    pub allocations: Vec<Allocation>,
    /// Routes for the pod, gateway filled in where the config left it out.
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl Ipam {
    pub fn from_conf(conf: &NetConf, env: &CniEnv) -> CniResult<Self> {
        if conf.ipam.ipam_type == "host-local" && !conf.ipam.delegate_host_local {
            let (ipam, node) = pod_cidr::resolve(&conf.ipam.raw, &conf.state_dir, env.command)?;
            let mut cfg = HostLocalConfig::parse(&ipam, &conf.name)?;
            cfg.pod_mtu = node.map(|n| n.mtu);
            return Ok(Ipam::BuiltIn(cfg));
        }
        DelegatedIpam::find(&conf.ipam.ipam_type, &env.path).map(Ipam::Delegated)
    }

    pub fn add(
        &self,
        conf: &NetConf,
        container_id: &str,
        ifname: &str,
        requested: &[IpAddr],
    ) -> CniResult<IpamResult> {
        let (allocations, configured_routes, dns) = match self {
            Ipam::BuiltIn(cfg) => {
                // Read before reserving: ADD only releases what `add` returned.
                let dns = cfg.dns()?.unwrap_or_default();
                let allocations = host_local::allocate(cfg, container_id, ifname, requested)?;
                let routes: Vec<Route> =
                    cfg.routes.iter().map(|r| Route::new(r.dst, r.gw)).collect();
                // `"routes": []` asks for none (a second network in the pod).
                let explicit = conf.ipam.routes_given;
                (
                    allocations,
                    Some(routes).filter(|r| explicit || !r.is_empty()),
                    dns,
                )
            }
            Ipam::Delegated(delegate) => {
                let out = delegate.exec(Verb::Add, &conf.raw)?.unwrap_or_default();
                if out.ips.is_empty() {
                    // Give the address back: nothing can use a result without one.
                    let _ = delegate.exec(Verb::Del, &conf.raw);
                    return Err(CniError::invalid_config(format!(
                        "ipam plugin {} returned no addresses",
                        delegate.plugin_type
                    )));
                }
                let allocations = out
                    .ips
                    .iter()
                    .map(|ip| Allocation {
                        address: ip.address,
                        gateway: ip.gateway.or(match ip.address {
                            IpNet::V4(_) => Some(VIRTUAL_GATEWAY_V4),
                            IpNet::V6(_) => Some(VIRTUAL_GATEWAY_V6),
                        }),
                    })
                    .collect();
                (
                    allocations,
                    Some(out.routes).filter(|r| !r.is_empty()),
                    out.dns,
                )
            }
        };
        let routes = with_gateways(configured_routes, &allocations);
        Ok(IpamResult {
            allocations,
            routes,
            dns,
        })
    }

    /// The MTU the node's cluster agent wants pods to have (with
    /// `usePodCidr`), for a config that sets none.
    pub fn pod_mtu(&self) -> Option<u32> {
        match self {
            Ipam::BuiltIn(cfg) => cfg.pod_mtu,
            Ipam::Delegated(_) => None,
        }
    }

    /// Releases what `add` handed out; idempotent.
    pub fn del(&self, conf: &NetConf, container_id: &str, ifname: &str) -> CniResult<()> {
        match self {
            Ipam::BuiltIn(cfg) => host_local::release(cfg, container_id, ifname).map(drop),
            Ipam::Delegated(delegate) => delegate.exec(Verb::Del, &conf.raw).map(drop),
        }
    }

    /// Addresses IPAM holds for the attachment, where IPAM can tell.
    pub fn held_by(&self, container_id: &str, ifname: &str) -> CniResult<Option<Vec<IpAddr>>> {
        match self {
            Ipam::BuiltIn(cfg) => host_local::held_by(cfg, container_id, ifname).map(Some),
            Ipam::Delegated(_) => Ok(None),
        }
    }

    /// The delegate's own CHECK; the built-in allocator is checked by the
    /// caller against `held_by`.
    pub fn check(&self, conf: &NetConf) -> CniResult<()> {
        match self {
            Ipam::BuiltIn(_) => Ok(()),
            Ipam::Delegated(delegate) => delegate.exec(Verb::Check, &conf.raw).map(drop),
        }
    }

    /// Releases every reservation not held by a valid attachment.
    pub fn gc(&self, conf: &NetConf, valid: &[(String, String)]) -> CniResult<Vec<IpAddr>> {
        match self {
            Ipam::BuiltIn(cfg) => {
                let mut released = Vec::new();
                for r in host_local::reservations(cfg)? {
                    let kept = valid.iter().any(|(id, ifname)| {
                        *id == r.container_id && r.ifname.as_deref().is_none_or(|n| n == ifname)
                    });
                    if !kept {
                        let ifname = r.ifname.clone().unwrap_or_default();
                        released.extend(host_local::release(cfg, &r.container_id, &ifname)?);
                    }
                }
                Ok(released)
            }
            Ipam::Delegated(delegate) => delegate.exec(Verb::Gc, &conf.raw).map(|_| Vec::new()),
        }
    }

    pub fn status(&self, conf: &NetConf) -> CniResult<()> {
        match self {
            Ipam::BuiltIn(cfg) => super::Store::open(cfg).map(drop),
            Ipam::Delegated(delegate) => delegate.exec(Verb::Status, &conf.raw).map(drop),
        }
    }
}

/// Each route through its family's gateway unless it names one. With no
/// routes configured at all (`None`), a default route per family through its
/// gateway; configured routes are taken as they are.
fn with_gateways(configured: Option<Vec<Route>>, allocations: &[Allocation]) -> Vec<Route> {
    let add_defaults = configured.is_none();
    let configured = configured.unwrap_or_default();
    let gateway_for = |v4: bool| {
        allocations
            .iter()
            .filter(|a| a.address.addr().is_ipv4() == v4)
            .find_map(|a| a.gateway)
    };
    let mut routes: Vec<Route> = configured
        .into_iter()
        .map(|mut r| {
            r.gw = r.gw.or_else(|| gateway_for(r.dst.addr().is_ipv4()));
            r
        })
        .collect();
    for v4 in [true, false] {
        let Some(gateway) = gateway_for(v4).filter(|_| add_defaults) else {
            continue;
        };
        let default = if v4 {
            IpNet::V4(Default::default())
        } else {
            IpNet::V6(Default::default())
        };
        if !routes.iter().any(|r| r.dst == default) {
            routes.push(Route::new(default, Some(gateway)));
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(address: &str, gateway: Option<&str>) -> Allocation {
        Allocation {
            address: address.parse().unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
        }
    }

    #[test]
    fn configured_routes_get_the_gateway_and_no_extra_default() {
        let routes = with_gateways(
            Some(vec![Route::new("10.9.0.0/16".parse().unwrap(), None)]),
            &[alloc("10.1.0.5/24", Some("10.1.0.1"))],
        );
        assert_eq!(
            routes,
            vec![Route::new(
                "10.9.0.0/16".parse().unwrap(),
                Some("10.1.0.1".parse().unwrap())
            )]
        );
    }

    #[test]
    fn no_routes_configured_means_a_default_route() {
        let routes = with_gateways(None, &[alloc("10.1.0.5/24", Some("10.1.0.1"))]);
        assert_eq!(
            routes,
            vec![Route::new(
                "0.0.0.0/0".parse().unwrap(),
                Some("10.1.0.1".parse().unwrap())
            )]
        );
    }

    #[test]
    fn explicitly_empty_routes_are_honoured() {
        assert!(with_gateways(Some(vec![]), &[alloc("10.1.0.5/24", Some("10.1.0.1"))]).is_empty());
    }
}
