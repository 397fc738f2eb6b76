//! ADD: allocate, create the veth pair, address and routes, attach, limits,
//! publish host ports, record. Each step notes what it did in [`Progress`];
//! a failure part way hands that to the endpoint teardown.

use std::net::IpAddr;

use cni_ebpf_common::{ENDPOINT_F_HOST_PORTS, ENDPOINT_F_RATE_LIMITED, Endpoint};
use cni_ebpf_userspace::{
    AttachMode, Attachment, Datapath, EndpointMap,
    attach::{attach_from_pod, attach_pacing, attach_socket_hooks, attach_to_pod},
    host_ports::PortMapping,
    rate, teardown,
};
use ipnet::IpNet;

use super::{datapath_error, open_datapath, runtime};
use crate::{
    bandwidth::Bandwidth,
    cni::{CniEnv, CniOutput, Interface, IpConfig, NetConf, Route, format_mac, parse_mac},
    error::{CniError, CniResult},
    host_ports::{self, HostPortRequest, NodeHooks},
    ipam::{Allocation, Ipam, IpamResult},
    ipv6, names,
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
    /// The endpoint's slot of `ENDPOINT_COUNTERS` (0: none).
    stats_slot: u32,
}

pub fn run(env: &CniEnv, conf: &NetConf) -> CniResult<CniOutput> {
    let mut steps = Steps::start();
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    let pod_ns = NetNs::open(env.require_netns()?)?;
    let ipam = Ipam::from_conf(conf, env)?;
    let add_conf = conf.add_conf()?;
    let needs = Needs::of(
        &add_conf.port_requests,
        &add_conf.bandwidth,
        &add_conf.uplink,
    );
    let (cgroup, hooks_missing) = if needs.node_sockets {
        match host_ports::node_hooks(add_conf.cgroup_root.as_deref())? {
            NodeHooks::Cgroup(path) => (Some(path), None),
            NodeHooks::Unavailable(why) => {
                log::warn!("{}", host_ports::missing_hooks_warning(&why));
                (None, Some(why))
            }
        }
    } else {
        (None, None)
    };
    steps.done("config");
    let _shared = StateDir::new(&conf.state_dir, &conf.name).lock_shared()?;
    steps.done("lock");
    let mut datapath = open_datapath(conf)?;
    steps.done("datapath");
    let output = runtime()?.block_on(async {
        let node = Netlink::connect()?;
        let pod = PodSide::enter(&pod_ns, add_conf.uplink.xdp)?;
        steps.done("netlink");
        let request = Request {
            env,
            conf,
            container_id,
            ifname,
            owner: names::attachment_id(container_id, ifname),
            pod_ns: &pod_ns,
            ipam: &ipam,
            attach_mode: add_conf.attach_mode,
            tcx_later: add_conf.tcx_later,
            uplink: &add_conf.uplink,
            port_requests: &add_conf.port_requests,
            cgroup: cgroup.as_deref(),
            hooks_missing,
            bandwidth: add_conf.bandwidth,
            big_tcp: add_conf.big_tcp,
            needs,
        };
        let mut progress = Progress::default();
        match add(
            &request,
            &node,
            &pod,
            &mut datapath,
            &mut progress,
            &mut steps,
        )
        .await
        {
            Ok(output) => Ok(output),
            Err(e) => {
                undo(&request, &node, &progress).await;
                Err(e)
            }
        }
    })?;
    log::debug!("ADD {container_id} {ifname}: µs per step: {steps}");
    Ok(output)
}

/// Where an ADD's time went, step by step: logged at debug level
/// (`CNI_EBPF_LOG=debug`), and read by the `scale` bench.
struct Steps {
    last: std::time::Instant,
    spent: Vec<(&'static str, std::time::Duration)>,
}

impl Steps {
    fn start() -> Self {
        Self {
            last: std::time::Instant::now(),
            spent: Vec::new(),
        }
    }

    /// `step` ended now: it took the time since the last one ended.
    fn done(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.spent.push((step, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Steps {
    /// `step=µs` pairs, in order.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs: Vec<String> = self
            .spent
            .iter()
            .map(|(step, took)| format!("{step}={}", took.as_micros()))
            .collect();
        f.write_str(&pairs.join(" "))
    }
}

struct Request<'a> {
    env: &'a CniEnv,
    conf: &'a NetConf,
    container_id: &'a str,
    ifname: &'a str,
    /// The attachment's id in the maps (see `names::attachment_id`).
    owner: u64,
    pod_ns: &'a NetNs,
    ipam: &'a Ipam,
    attach_mode: AttachMode,
    /// Flag the endpoint for the agent to move onto tcx (`attachMode: auto`).
    tcx_later: bool,
    uplink: &'a UplinkConf,
    port_requests: &'a [HostPortRequest],
    cgroup: Option<&'a std::path::Path>,
    /// Why the node's own sockets are not hooked although the pod needs it.
    hooks_missing: Option<String>,
    bandwidth: Bandwidth,
    /// `bigTcp`: the veth's GSO/GRO maximum size.
    big_tcp: Option<u32>,
    needs: Needs,
}

/// What ADD needs from inside the pod's namespace, read in one entry.
struct PodSide {
    netlink: Netlink,
    /// A socket in the pod's namespace for `SIOCETHTOOL`, when the uplink
    /// runs XDP (see `enable_gro`).
    ethtool: Option<std::os::fd::OwnedFd>,
    /// See `Endpoint::netns_cookie`.
    netns_cookie: u64,
}

impl PodSide {
    /// Must run inside the tokio runtime (the socket's connection is
    /// spawned on it).
    fn enter(pod_ns: &NetNs, xdp: bool) -> CniResult<Self> {
        let _inside = pod_ns.enter()?;
        let ethtool = xdp
            .then(|| {
                nix::sys::socket::socket(
                    nix::sys::socket::AddressFamily::Inet,
                    nix::sys::socket::SockType::Datagram,
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(|e| CniError::io("opening a socket in the pod", e))
            })
            .transpose()?;
        Ok(Self {
            netlink: Netlink::connect()?,
            ethtool,
            netns_cookie: cni_ebpf_userspace::node::current_netns_cookie()
                .map_err(|e| CniError::io("reading the pod's network namespace cookie", e))?,
        })
    }
}

/// Which programs and hooks a pod needs beyond `from_pod` on its host veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Needs {
    /// Hooks on the node's own sockets: host ports reached from the node,
    /// TCP pacing of limited pods.
    node_sockets: bool,
    /// `to_pod` on the host veth's egress: the ingress policer, and flows
    /// netfilter translated entering the pod.
    to_pod: bool,
    /// IPv4 forwarding on the host veth: the stack forwards what the pod
    /// sends to service addresses.
    forwarding: bool,
}

impl Needs {
    fn of(port_requests: &[HostPortRequest], bandwidth: &Bandwidth, uplink: &UplinkConf) -> Self {
        Self {
            node_sockets: !port_requests.is_empty() || bandwidth.is_limited(),
            to_pod: bandwidth.ingress.is_some() || uplink.services(),
            forwarding: uplink.services(),
        }
    }
}

/// The two ends of the pod's veth pair, once both exist.
struct VethPair {
    host: VethEnd,
    host_index: u32,
    pod: VethEnd,
    pod_index: u32,
}

async fn add(
    req: &Request<'_>,
    node: &Netlink,
    pod: &PodSide,
    datapath: &mut Datapath,
    progress: &mut Progress,
    steps: &mut Steps,
) -> CniResult<CniOutput> {
    let lease = allocate(req, progress)?;
    let port_mappings = published_ports(req.port_requests, &lease.allocations)?;
    steps.done("ipam");
    prepare_node(req, node, datapath, &lease.allocations).await?;
    steps.done("node");
    let ipv6 = ipv6::wanted(lease.allocations.iter().map(|a| a.address.addr()));
    let veth = create_veth_pair(req, node, &pod.netlink, ipv6, progress).await?;
    if let Some(socket) = &pod.ethtool {
        enable_gro(socket, req.ifname)?;
    }
    steps.done("veth");
    address_and_routes(node, &pod.netlink, &veth, &lease).await?;
    steps.done("addresses");
    let attachment = attach(req, datapath, &veth, progress)?;
    set_limits(req, datapath)?;
    attach_towards_pod(req, datapath, &veth)?;
    steps.done("attach");
    add_endpoint(
        req,
        datapath,
        &veth,
        pod.netns_cookie,
        &port_mappings,
        &lease,
        progress,
    )?;
    steps.done("endpoint");
    publish_host_ports(req, datapath, &port_mappings, progress)?;
    record(req, &veth, &lease, attachment, port_mappings)?;
    steps.done("record");
    Ok(result(req, veth, lease))
}

/// Addresses from IPAM, as asked for where the runtime asked.
fn allocate(req: &Request<'_>, progress: &mut Progress) -> CniResult<IpamResult> {
    let requested = requested_ips(
        req.env.requested_ips(),
        &req.conf.runtime_config.ips,
        &req.conf.args_ips,
    );
    let lease = req
        .ipam
        .add(req.conf, req.container_id, req.ifname, &requested)?;
    progress.allocated = true;
    Ok(lease)
}

/// The node's side of the network (uplink, masquerade, node routes), ready
/// for this pod's subnets.
async fn prepare_node(
    req: &Request<'_>,
    node: &Netlink,
    datapath: &mut Datapath,
    allocations: &[Allocation],
) -> CniResult<()> {
    let own_subnets: Vec<IpNet> = allocations.iter().map(|a| a.address.trunc()).collect();
    uplink::ensure(
        req.uplink,
        &own_subnets,
        node,
        datapath,
        req.attach_mode,
        req.needs.node_sockets,
    )
    .await
}

/// The veth pair, its pod end created inside the pod and up; with `ipv6`,
/// both ends set up for it before the pod end comes up.
async fn create_veth_pair(
    req: &Request<'_>,
    node: &Netlink,
    pod: &Netlink,
    ipv6: bool,
    progress: &mut Progress,
) -> CniResult<VethPair> {
    let mtu = req.conf.mtu.or(req.ipam.pod_mtu()).unwrap_or(DEFAULT_MTU);
    let big_tcp = req.big_tcp;
    let host = VethEnd {
        name: names::host_ifname(req.container_id, req.ifname),
        mac: names::random_mac(),
        mtu,
        big_tcp,
    };
    let pod_end = VethEnd {
        name: req.ifname.to_string(),
        mac: requested_mac(
            req.conf.runtime_config.mac.as_deref(),
            req.env.requested_mac(),
        )?
        .unwrap_or_else(names::random_mac),
        mtu,
        big_tcp,
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
    if ipv6 {
        ipv6::prepare_host(&host.name)?;
        let _inside = req.pod_ns.enter()?;
        ipv6::prepare_pod(req.ifname)?;
    }
    pod.set_up(pod_index).await?;
    Ok(VethPair {
        host,
        host_index,
        pod: pod_end,
        pod_index,
    })
}

/// GRO on the pod end of the veth: it gives the device NAPI, without which
/// the kernel drops the frames XDP on the uplink redirects into the host
/// veth (`veth_xdp_xmit` needs the peer's NAPI). The legacy `ETHTOOL_SGRO`
/// request, on a socket in the pod's namespace.
fn enable_gro(socket: &std::os::fd::OwnedFd, ifname: &str) -> CniResult<()> {
    use std::os::fd::AsRawFd;
    /// `ETHTOOL_SGRO` from `linux/ethtool.h`.
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: 1,
    };
    // SAFETY: a zeroed ifreq is valid; the name fits (checked by ADD).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(ifname.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: `request` points at `value`, both live across the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL as _, &raw mut request) };
    if rc != 0 {
        return Err(CniError::io(
            format!("turning GRO on for {ifname} (uplinkXdp)"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The pod's addresses and routes, and a host route to each address.
async fn address_and_routes(
    node: &Netlink,
    pod: &Netlink,
    veth: &VethPair,
    lease: &IpamResult,
) -> CniResult<()> {
    configure_pod(pod, veth.pod_index, &lease.allocations, &lease.routes).await?;
    for allocation in &lease.allocations {
        node.add_route(host_route(allocation.address.addr()), None, veth.host_index)
            .await?;
    }
    Ok(())
}

/// `from_pod` on the host veth, and the endpoint's counters.
fn attach(
    req: &Request<'_>,
    datapath: &mut Datapath,
    veth: &VethPair,
    progress: &mut Progress,
) -> CniResult<Attachment> {
    let host = &veth.host.name;
    let attachment = attach_from_pod(datapath, host, req.attach_mode)
        .map_err(|e| datapath_error(&format!("attaching to {host}"), e))?;
    progress.stats_ifindex = Some(veth.host_index);
    progress.stats_slot = cni_ebpf_userspace::stats::create(datapath.layout(), veth.host_index)
        .map_err(|e| datapath_error("creating the endpoint's counters", e))?;
    Ok(attachment)
}

/// The pod's bandwidth limits, and TCP pacing of the node's senders.
fn set_limits(req: &Request<'_>, datapath: &mut Datapath) -> CniResult<()> {
    if !req.bandwidth.is_limited() {
        return Ok(());
    }
    rate::set(
        datapath.layout(),
        req.owner,
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
    Ok(())
}

/// `to_pod` and forwarding on the host veth, where the pod needs them.
fn attach_towards_pod(
    req: &Request<'_>,
    datapath: &mut Datapath,
    veth: &VethPair,
) -> CniResult<()> {
    let host = &veth.host.name;
    if req.needs.forwarding {
        // Flows netfilter translates reach the pod through the stack, which
        // forwards what the pod sends to service addresses.
        uplink::enable_forwarding(host)?;
    }
    if req.needs.to_pod {
        attach_to_pod(datapath, host, req.attach_mode)
            .map_err(|e| datapath_error(&format!("attaching to_pod to egress of {host}"), e))?;
    }
    Ok(())
}

/// The pod's addresses in the endpoints map: from here the datapath
/// delivers to it.
fn add_endpoint(
    req: &Request<'_>,
    datapath: &Datapath,
    veth: &VethPair,
    netns_cookie: u64,
    port_mappings: &[PortMapping],
    lease: &IpamResult,
    progress: &mut Progress,
) -> CniResult<()> {
    let endpoint = Endpoint {
        ifindex: veth.host_index,
        flags: endpoint_flags(!port_mappings.is_empty(), req.bandwidth.is_limited())
            | if req.uplink.xdp {
                cni_ebpf_common::ENDPOINT_F_XDP_TARGET
            } else {
                0
            }
            | if req.tcx_later {
                cni_ebpf_common::ENDPOINT_F_TCX_LATER
            } else {
                0
            },
        pod_mac: veth.pod.mac,
        host_mac: veth.host.mac,
        stats_slot: progress.stats_slot,
        owner: req.owner,
        netns_cookie,
    };
    let mut endpoints = EndpointMap::open(datapath.layout())
        .map_err(|e| datapath_error("opening the endpoints map", e))?;
    let addresses: Vec<IpAddr> = lease.allocations.iter().map(|a| a.address.addr()).collect();
    for ip in ipv6::endpoint_keys(&addresses, veth.pod.mac) {
        endpoints
            .insert(ip, &endpoint)
            .map_err(|e| datapath_error(&format!("adding endpoint {ip}"), e))?;
        progress.endpoint_ips.push(ip);
    }
    Ok(())
}

fn endpoint_flags(host_ports: bool, rate_limited: bool) -> u32 {
    let mut flags = 0;
    if host_ports {
        flags |= ENDPOINT_F_HOST_PORTS;
    }
    if rate_limited {
        flags |= ENDPOINT_F_RATE_LIMITED;
    }
    flags
}

fn publish_host_ports(
    req: &Request<'_>,
    datapath: &Datapath,
    port_mappings: &[PortMapping],
    progress: &mut Progress,
) -> CniResult<()> {
    if port_mappings.is_empty() {
        return Ok(());
    }
    publish(datapath, req, port_mappings, req.owner)?;
    progress.published = port_mappings.to_vec();
    Ok(())
}

/// The attachment record DEL and CHECK read.
fn record(
    req: &Request<'_>,
    veth: &VethPair,
    lease: &IpamResult,
    attachment: Attachment,
    port_mappings: Vec<PortMapping>,
) -> CniResult<()> {
    StateDir::new(&req.conf.state_dir, &req.conf.name).write(&AttachmentRecord {
        container_id: req.container_id.to_string(),
        ifname: req.ifname.to_string(),
        netns: req.pod_ns.path().to_path_buf(),
        host_ifname: veth.host.name.clone(),
        host_ifindex: veth.host_index,
        host_mac: format_mac(veth.host.mac),
        pod_mac: format_mac(veth.pod.mac),
        ips: lease.allocations.iter().map(|a| a.address).collect(),
        owner: req.owner,
        attachment,
        port_mappings,
        ingress_limit: req.bandwidth.ingress,
        egress_limit: req.bandwidth.egress,
        hooks_missing: req.hooks_missing.clone(),
    })
}

fn result(req: &Request<'_>, veth: VethPair, lease: IpamResult) -> CniOutput {
    CniOutput {
        interfaces: vec![
            Interface {
                name: veth.host.name,
                mac: Some(format_mac(veth.host.mac)),
                mtu: None,
                sandbox: None,
            },
            Interface {
                name: req.ifname.to_string(),
                mac: Some(format_mac(veth.pod.mac)),
                mtu: None,
                sandbox: Some(req.pod_ns.path().display().to_string()),
            },
        ],
        ips: lease
            .allocations
            .iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: a.gateway,
                interface: Some(1),
            })
            .collect(),
        routes: lease.routes,
        dns: lease.dns,
    }
}

/// The pod's host ports: each on the pod's address of its `hostIP`'s
/// family, or of both families without one.
fn published_ports(
    requests: &[HostPortRequest],
    allocations: &[Allocation],
) -> CniResult<Vec<PortMapping>> {
    let mut pod_addrs: Vec<IpAddr> = Vec::new();
    for addr in allocations.iter().map(|a| a.address.addr()) {
        if !pod_addrs.iter().any(|a| a.is_ipv6() == addr.is_ipv6()) {
            pod_addrs.push(addr);
        }
    }
    let mut mappings = Vec::new();
    for request in requests {
        mappings.extend(request.for_pod(&pod_addrs)?);
    }
    Ok(mappings)
}

/// Addresses asked for by `CNI_ARGS` `IP=`, `runtimeConfig.ips` and
/// `args.cni.ips`, with or without a prefix length; sorted, each once.
fn requested_ips(
    from_env: Vec<IpAddr>,
    runtime_ips: &[String],
    args_ips: &[String],
) -> Vec<IpAddr> {
    let mut ips = from_env;
    ips.extend(
        runtime_ips
            .iter()
            .chain(args_ips)
            .filter_map(|ip| ip.split('/').next()?.parse::<IpAddr>().ok()),
    );
    ips.sort();
    ips.dedup();
    ips
}

/// `runtimeConfig.mac`, else `CNI_ARGS` `MAC=`.
fn requested_mac(
    runtime_mac: Option<&str>,
    env_mac: Option<[u8; 6]>,
) -> CniResult<Option<[u8; 6]>> {
    match runtime_mac {
        Some(mac) => parse_mac(mac).map(Some).ok_or_else(|| {
            CniError::invalid_config(format!("runtimeConfig.mac {mac:?}: not a MAC address"))
        }),
        None => Ok(env_mac),
    }
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

/// Undoes a failed ADD in reverse order; every step tolerates "not there".
async fn undo(req: &Request<'_>, node: &Netlink, progress: &Progress) {
    let layout = cni_ebpf_userspace::BpffsLayout::new(&req.conf.bpffs_root);
    let endpoint = teardown::Endpoint {
        owner: req.owner,
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

#[cfg(test)]
mod tests {
    use cni_ebpf_common::IPPROTO_TCP;
    use cni_ebpf_userspace::rate::Limit;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// The debug line's `step=µs` pairs, which the `scale` bench parses.
    #[test]
    fn steps_print_as_step_equals_microseconds_in_order() {
        let mut steps = Steps::start();
        steps.done("config");
        steps.done("ipam");
        steps.spent[0].1 = std::time::Duration::from_micros(17);
        steps.spent[1].1 = std::time::Duration::from_nanos(1_500_900);
        assert_eq!(steps.to_string(), "config=17 ipam=1500");
    }

    #[test]
    fn requested_ips_come_from_every_source_once() {
        let got = requested_ips(
            vec![ip("10.1.0.9"), ip("10.1.0.5")],
            &strings(&["10.1.0.5/24", "fd00::5", "not-an-ip"]),
            &strings(&["10.1.0.7", "10.1.0.9/24"]),
        );
        assert_eq!(
            got,
            vec![
                ip("10.1.0.5"),
                ip("10.1.0.7"),
                ip("10.1.0.9"),
                ip("fd00::5")
            ]
        );
        assert!(requested_ips(vec![], &[], &[]).is_empty());
    }

    #[test]
    fn runtime_config_mac_wins_over_cni_args() {
        let env = Some([2, 0, 0, 0, 0, 1]);
        assert_eq!(
            requested_mac(Some("0a:58:0a:01:00:05"), env).unwrap(),
            Some([0x0a, 0x58, 0x0a, 0x01, 0x00, 0x05])
        );
        assert_eq!(requested_mac(None, env).unwrap(), env);
        assert_eq!(requested_mac(None, None).unwrap(), None);
        let err = requested_mac(Some("0a:58"), env).unwrap_err();
        assert_eq!(err.code, crate::error::code::INVALID_CONFIG);
        assert!(err.msg.contains("runtimeConfig.mac"), "{err}");
    }

    #[test]
    fn endpoint_flags_say_what_the_datapath_looks_up() {
        assert_eq!(endpoint_flags(false, false), 0);
        assert_eq!(endpoint_flags(true, false), ENDPOINT_F_HOST_PORTS);
        assert_eq!(endpoint_flags(false, true), ENDPOINT_F_RATE_LIMITED);
        assert_eq!(
            endpoint_flags(true, true),
            ENDPOINT_F_HOST_PORTS | ENDPOINT_F_RATE_LIMITED
        );
    }

    #[test]
    fn a_pod_gets_the_programs_and_hooks_it_needs() {
        let port = HostPortRequest {
            proto: IPPROTO_TCP,
            host_port: 8080,
            container_port: 80,
            host_ip: None,
        };
        let limit = Some(Limit {
            rate_bits: 1_000_000,
            burst_bits: 100_000,
        });
        let services = UplinkConf {
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            ..UplinkConf::default()
        };
        let plain = UplinkConf::default();
        let none = Bandwidth::default();
        let egress = Bandwidth {
            egress: limit,
            ingress: None,
        };
        let ingress = Bandwidth {
            ingress: limit,
            egress: None,
        };
        let needs = |ports: &[HostPortRequest], bw: &Bandwidth, up: &UplinkConf| {
            let n = Needs::of(ports, bw, up);
            (n.node_sockets, n.to_pod, n.forwarding)
        };
        assert_eq!(needs(&[], &none, &plain), (false, false, false));
        assert_eq!(needs(&[port], &none, &plain), (true, false, false));
        assert_eq!(needs(&[], &egress, &plain), (true, false, false));
        assert_eq!(needs(&[], &ingress, &plain), (true, true, false));
        assert_eq!(needs(&[], &none, &services), (false, true, true));
    }

    #[test]
    fn host_ports_go_to_the_pods_address_of_their_family() {
        let port = |host_ip: Option<&str>| HostPortRequest {
            proto: IPPROTO_TCP,
            host_port: 8080,
            container_port: 80,
            host_ip: host_ip.map(ip),
        };
        let mapping = |host_ip: Option<&str>, pod: &str| PortMapping {
            proto: IPPROTO_TCP,
            host_port: 8080,
            host_ip: host_ip.map(ip),
            pod_addr: ip(pod),
            pod_port: 80,
        };
        let allocation = |cidr: &str| Allocation {
            address: cidr.parse().unwrap(),
            gateway: None,
        };
        let dual = [allocation("fd00::5/64"), allocation("10.1.0.5/24")];
        let v4_only = [allocation("10.1.0.5/24")];
        let v6_only = [allocation("fd00::5/64")];
        /// The mappings, or words of the error.
        type Want = Result<Vec<PortMapping>, &'static str>;
        // (hostIP, the pod's addresses, what ADD publishes)
        let cases: [(Option<&str>, &[Allocation], Want); 8] = [
            (
                None,
                &dual,
                Ok(vec![mapping(None, "fd00::5"), mapping(None, "10.1.0.5")]),
            ),
            (None, &v4_only, Ok(vec![mapping(None, "10.1.0.5")])),
            (None, &v6_only, Ok(vec![mapping(None, "fd00::5")])),
            (Some("0.0.0.0"), &dual, Ok(vec![mapping(None, "10.1.0.5")])),
            (Some("::"), &dual, Ok(vec![mapping(None, "fd00::5")])),
            (
                Some("fd00:99::1"),
                &dual,
                Ok(vec![mapping(Some("fd00:99::1"), "fd00::5")]),
            ),
            (Some("fd00:99::1"), &v4_only, Err("no IPv6 address")),
            (Some("10.99.0.1"), &v6_only, Err("no IPv4 address")),
        ];
        for (host_ip, allocations, want) in cases {
            let got = published_ports(&[port(host_ip)], allocations);
            match want {
                Ok(want) => assert_eq!(got.unwrap(), want, "hostIP {host_ip:?}"),
                Err(words) => {
                    let err = got.unwrap_err();
                    assert!(err.msg.contains("runtimeConfig.portMappings"), "{err}");
                    assert!(err.msg.contains(words), "{err}");
                }
            }
        }
        assert!(published_ports(&[], &v6_only).unwrap().is_empty());
    }
}
