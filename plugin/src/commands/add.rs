//! ADD: address, veth pair, pod and host routes, attachment, endpoint entry,
//! state record, result. A failure part way undoes every step taken.

use std::net::IpAddr;

use cni_ebpf_common::{ENDPOINT_F_HOST_PORTS, ENDPOINT_F_RATE_LIMITED, Endpoint};
use cni_ebpf_userspace::{
    AttachMode, EndpointMap,
    attach::{attach_from_pod, attach_pacing, attach_socket_hooks, attach_to_pod},
    host_ports::PortMapping,
    rate, teardown,
};
use ipnet::IpNet;

use super::{datapath_error, open_datapath, runtime};
use crate::{
    bandwidth::{self, Bandwidth},
    cni::{CniEnv, CniOutput, Interface, IpConfig, NetConf, Route, format_mac},
    error::{CniError, CniResult},
    host_ports::{self, HostPortRequest, NodeHooks},
    ipam::{Allocation, Ipam},
    names,
    netlink::{Netlink, VethEnd},
    netns::NetNs,
    state::{AttachmentRecord, StateDir},
    uplink::{self, UplinkConf},
};

const DEFAULT_MTU: u32 = 1500;

/// What ADD has done so far, for undoing it.
#[derive(Default)]
struct Progress {
    allocated: bool,
    host_ifname: Option<String>,
    endpoint_ips: Vec<IpAddr>,
    published: Vec<PortMapping>,
    stats_ifindex: Option<u32>,
}

pub fn run(env: &CniEnv, conf: &NetConf) -> CniResult<CniOutput> {
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    let pod_ns = NetNs::open(env.require_netns()?)?;
    let ipam = Ipam::from_conf(conf, env)?;
    let attach_mode = attach_mode(conf)?;
    let uplink_conf = UplinkConf::parse(&conf.raw)?;
    let port_requests = host_ports::requests(&conf.runtime_config.raw)?;
    let bandwidth = bandwidth::parse(&conf.raw, &conf.runtime_config.raw)?;
    // Host ports hook the node's sockets; limits pace TCP senders.
    let (cgroup, hooks_missing) = if port_requests.is_empty() && !bandwidth.is_limited() {
        (None, None)
    } else {
        match host_ports::node_hooks(&conf.raw)? {
            NodeHooks::Cgroup(path) => (Some(path), None),
            NodeHooks::Unavailable(why) => {
                log::warn!("{}", host_ports::missing_hooks_warning(&why));
                (None, Some(why))
            }
        }
    };
    let _shared = StateDir::new(&conf.state_dir, &conf.name).lock_shared()?;
    let mut datapath = open_datapath(conf)?;
    let rt = runtime()?;
    rt.block_on(async {
        let node = Netlink::connect()?;
        let pod = Netlink::connect_in(&pod_ns)?;
        let mut progress = Progress::default();
        let request = Request {
            env,
            conf,
            container_id,
            ifname,
            pod_ns: &pod_ns,
            ipam: &ipam,
            attach_mode,
            uplink: &uplink_conf,
            port_requests: &port_requests,
            cgroup: cgroup.as_deref(),
            hooks_missing,
            bandwidth,
        };
        match add(&request, &node, &pod, &mut datapath, &mut progress).await {
            Ok(output) => Ok(output),
            Err(e) => {
                undo(&request, &node, &progress).await;
                Err(e)
            }
        }
    })
}

struct Request<'a> {
    env: &'a CniEnv,
    conf: &'a NetConf,
    container_id: &'a str,
    ifname: &'a str,
    pod_ns: &'a NetNs,
    ipam: &'a Ipam,
    attach_mode: AttachMode,
    uplink: &'a UplinkConf,
    port_requests: &'a [HostPortRequest],
    cgroup: Option<&'a std::path::Path>,
    /// Why the node's own sockets are not hooked although the pod needs it.
    hooks_missing: Option<String>,
    bandwidth: Bandwidth,
}

async fn add(
    req: &Request<'_>,
    node: &Netlink,
    pod: &Netlink,
    datapath: &mut cni_ebpf_userspace::Datapath,
    progress: &mut Progress,
) -> CniResult<CniOutput> {
    let owner = names::attachment_id(req.container_id, req.ifname);
    let requested = requested_ips(req);
    let lease = req
        .ipam
        .add(req.conf, req.container_id, req.ifname, &requested)?;
    progress.allocated = true;
    let allocations = lease.allocations;
    let own_subnets: Vec<IpNet> = allocations.iter().map(|a| a.address.trunc()).collect();
    uplink::ensure(
        req.uplink,
        &own_subnets,
        node,
        datapath,
        req.attach_mode,
        !req.port_requests.is_empty() || req.bandwidth.is_limited(),
    )
    .await?;

    let mtu = req.conf.mtu.or(req.ipam.pod_mtu()).unwrap_or(DEFAULT_MTU);
    let host = VethEnd {
        name: names::host_ifname(req.container_id, req.ifname),
        mac: names::random_mac(),
        mtu,
    };
    let pod_end = VethEnd {
        name: req.ifname.to_string(),
        mac: requested_mac(req)?.unwrap_or_else(names::random_mac),
        mtu,
    };
    if pod.link(req.ifname).await?.is_some() {
        return Err(CniError::new(
            crate::error::code::ALREADY_EXISTS,
            format!(
                "CNI_IFNAME {}: an interface of that name already exists in {}",
                req.ifname,
                req.pod_ns.path().display()
            ),
        ));
    }
    node.create_veth(&host, &pod_end, req.pod_ns).await?;
    progress.host_ifname = Some(host.name.clone());
    let host_index = existing_link(node, &host.name).await?;
    let pod_index = existing_link(pod, req.ifname).await?;
    pod.set_up(pod_index).await?;

    configure_pod(pod, pod_index, &allocations, &lease.routes).await?;
    for allocation in &allocations {
        node.add_route(host_route(allocation.address.addr()), None, host_index)
            .await?;
    }

    let attachment = attach_from_pod(datapath, &host.name, req.attach_mode)
        .map_err(|e| datapath_error(&format!("attaching to {}", host.name), e))?;

    cni_ebpf_userspace::stats::create(datapath.layout(), host_index)
        .map_err(|e| datapath_error("creating the endpoint's counters", e))?;
    progress.stats_ifindex = Some(host_index);
    let port_mappings = published_ports(req, &allocations)?;
    if req.bandwidth.is_limited() {
        rate::set(
            datapath.layout(),
            owner,
            req.bandwidth.egress,
            req.bandwidth.ingress,
        )
        .map_err(|e| datapath_error("setting the bandwidth limits", e))?;
        if let Some(cgroup) = req.cgroup {
            // Node-wide and idempotent; the lock keeps two ADDs from both
            // attaching it.
            let _lock = datapath
                .layout()
                .lock()
                .map_err(|e| datapath_error("locking the datapath", e))?;
            attach_pacing(datapath, cgroup).map_err(|e| {
                datapath_error(&format!("attaching TCP pacing to {}", cgroup.display()), e)
            })?;
        }
    }
    if req.uplink.services() {
        // Flows netfilter translates reach the pod through the stack, which
        // forwards what the pod sends to service addresses.
        uplink::enable_forwarding(&host.name)?;
    }
    if req.bandwidth.ingress.is_some() || req.uplink.services() {
        attach_to_pod(datapath, &host.name, req.attach_mode).map_err(|e| {
            datapath_error(&format!("attaching to_pod to egress of {}", host.name), e)
        })?;
    }
    let mut flags = 0;
    if !port_mappings.is_empty() {
        flags |= ENDPOINT_F_HOST_PORTS;
    }
    if req.bandwidth.is_limited() {
        flags |= ENDPOINT_F_RATE_LIMITED;
    }
    let endpoint = Endpoint {
        ifindex: host_index,
        flags,
        pod_mac: pod_end.mac,
        host_mac: host.mac,
        owner,
        netns_cookie: pod_netns_cookie(req.pod_ns)?,
        ..Default::default()
    };
    let mut endpoints = EndpointMap::open(datapath.layout())
        .map_err(|e| datapath_error("opening the endpoints map", e))?;
    for allocation in &allocations {
        let ip = allocation.address.addr();
        endpoints
            .insert(ip, &endpoint)
            .map_err(|e| datapath_error(&format!("adding endpoint {ip}"), e))?;
        progress.endpoint_ips.push(ip);
    }

    if !port_mappings.is_empty() {
        publish(datapath, req, &port_mappings, owner)?;
        progress.published = port_mappings.clone();
    }

    StateDir::new(&req.conf.state_dir, &req.conf.name).write(&AttachmentRecord {
        container_id: req.container_id.to_string(),
        ifname: req.ifname.to_string(),
        netns: req.pod_ns.path().to_path_buf(),
        host_ifname: host.name.clone(),
        host_ifindex: host_index,
        host_mac: format_mac(host.mac),
        pod_mac: format_mac(pod_end.mac),
        ips: allocations.iter().map(|a| a.address).collect(),
        owner,
        attachment,
        port_mappings,
        ingress_limit: req.bandwidth.ingress,
        egress_limit: req.bandwidth.egress,
        hooks_missing: req.hooks_missing.clone(),
    })?;

    Ok(CniOutput {
        interfaces: vec![
            Interface {
                name: host.name,
                mac: Some(format_mac(host.mac)),
                mtu: None,
                sandbox: None,
            },
            Interface {
                name: req.ifname.to_string(),
                mac: Some(format_mac(pod_end.mac)),
                mtu: None,
                sandbox: Some(req.pod_ns.path().display().to_string()),
            },
        ],
        ips: allocations
            .iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: a.gateway,
                interface: Some(1),
            })
            .collect(),
        routes: lease.routes,
        dns: lease.dns,
    })
}

/// The pod's host ports, on its IPv4 address.
fn published_ports(req: &Request<'_>, allocations: &[Allocation]) -> CniResult<Vec<PortMapping>> {
    if req.port_requests.is_empty() {
        return Ok(Vec::new());
    }
    let pod_addr = allocations
        .iter()
        .map(|a| a.address.addr())
        .find(IpAddr::is_ipv4)
        .ok_or_else(|| {
            CniError::invalid_config("runtimeConfig.portMappings: the pod has no IPv4 address")
        })?;
    Ok(req
        .port_requests
        .iter()
        .map(|r| r.for_pod(pod_addr))
        .collect())
}

/// Publishes the pod's host ports (refusing any another pod holds) and makes
/// sure the node's own sockets can reach them.
fn publish(
    datapath: &cni_ebpf_userspace::Datapath,
    req: &Request<'_>,
    mappings: &[PortMapping],
    owner: u64,
) -> CniResult<()> {
    let layout = datapath.layout();
    let _lock = layout
        .lock()
        .map_err(|e| datapath_error("locking the datapath", e))?;
    // Node-wide and idempotent: first, so that a failure leaves no mapping.
    if let Some(cgroup) = req.cgroup {
        attach_socket_hooks(datapath, cgroup).map_err(|e| {
            datapath_error(
                &format!("attaching the socket hooks to {}", cgroup.display()),
                e,
            )
        })?;
    }
    if let Err(conflict) = cni_ebpf_userspace::host_ports::publish(layout, mappings, owner)
        .map_err(|e| datapath_error("publishing host ports", e))?
    {
        let m = conflict.mapping;
        let proto = if m.proto == cni_ebpf_common::IPPROTO_UDP {
            "udp"
        } else {
            "tcp"
        };
        let on = m
            .host_ip
            .map_or("every node address".to_string(), |ip| ip.to_string());
        return Err(CniError::new(
            crate::error::code::ALREADY_EXISTS,
            format!(
                "runtimeConfig.portMappings: hostPort {}/{proto} on {on} is already published by another pod",
                m.host_port
            ),
        ));
    }
    Ok(())
}

async fn existing_link(netlink: &Netlink, name: &str) -> CniResult<u32> {
    netlink
        .link(name)
        .await?
        .map(|link| link.index)
        .ok_or_else(|| CniError::netlink(format!("link {name} vanished after creation"), "ENODEV"))
}

/// The pod's address(es) without prefix routes, an on-link route to each
/// gateway, and the routes of the result through the gateway.
async fn configure_pod(
    pod: &Netlink,
    index: u32,
    allocations: &[Allocation],
    routes: &[Route],
) -> CniResult<()> {
    for allocation in allocations {
        pod.add_address(index, allocation.address).await?;
        if let Some(gateway) = allocation.gateway {
            pod.add_route(host_route(gateway), None, index).await?;
        }
    }
    for route in routes {
        pod.add_route(route.dst, route.gw, index).await?;
    }
    Ok(())
}

fn host_route(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Addresses asked for by `CNI_ARGS` `IP=`, `runtimeConfig.ips` and
/// `args.cni.ips`, with or without a prefix length.
fn requested_ips(req: &Request<'_>) -> Vec<IpAddr> {
    let from_args = req
        .conf
        .args
        .as_ref()
        .and_then(|a| a.pointer("/cni/ips"))
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str);
    let mut ips = req.env.requested_ips();
    ips.extend(
        req.conf
            .runtime_config
            .ips
            .iter()
            .map(String::as_str)
            .chain(from_args)
            .filter_map(|ip| ip.split('/').next()?.parse::<IpAddr>().ok()),
    );
    ips.sort();
    ips.dedup();
    ips
}

fn requested_mac(req: &Request<'_>) -> CniResult<Option<[u8; 6]>> {
    if let Some(mac) = &req.conf.runtime_config.mac {
        return crate::cni::parse_mac(mac).map(Some).ok_or_else(|| {
            CniError::invalid_config(format!("runtimeConfig.mac {mac:?}: not a MAC address"))
        });
    }
    Ok(req.env.requested_mac())
}

/// `auto` is clsact: see `cni_ebpf_userspace::attach` for the measurement.
fn attach_mode(conf: &NetConf) -> CniResult<AttachMode> {
    match conf.raw.get("attachMode").and_then(|v| v.as_str()) {
        None | Some("auto" | "clsact") => Ok(AttachMode::Clsact),
        Some("tcx") => Ok(AttachMode::Tcx),
        Some(other) => Err(CniError::invalid_config(format!(
            "attachMode {other:?}: expected \"auto\", \"tcx\" or \"clsact\""
        ))),
    }
}

/// Undoes a failed ADD in reverse order; every step tolerates "not there".
async fn undo(req: &Request<'_>, node: &Netlink, progress: &Progress) {
    let layout = cni_ebpf_userspace::BpffsLayout::new(&req.conf.bpffs_root);
    let endpoint = teardown::Endpoint {
        owner: names::attachment_id(req.container_id, req.ifname),
        host_ifname: progress.host_ifname.clone(),
        host_ifindex: progress.stats_ifindex,
        ips: progress.endpoint_ips.clone(),
        port_mappings: progress.published.clone(),
    };
    if let Err(e) = teardown::remove(&layout, &endpoint) {
        log::warn!("undo: removing the endpoint from the datapath: {e}");
    }
    if let Some(host_ifname) = &progress.host_ifname
        && let Err(e) = node.delete_link(host_ifname).await
    {
        log::warn!("undo: deleting {host_ifname}: {e}");
    }
    if progress.allocated
        && let Err(e) = req.ipam.del(req.conf, req.container_id, req.ifname)
    {
        log::warn!("undo: releasing addresses: {e}");
    }
}

/// The cookie of the pod's network namespace (see `Endpoint::netns_cookie`).
fn pod_netns_cookie(pod_ns: &NetNs) -> CniResult<u64> {
    let _inside = pod_ns.enter()?;
    cni_ebpf_userspace::node::current_netns_cookie()
        .map_err(|e| CniError::io("reading the pod's network namespace cookie", e))
}
