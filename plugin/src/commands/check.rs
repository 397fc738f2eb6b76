//! CHECK: the attachment is as ADD left it. Reports the first thing that
//! is missing or different, by name.

use std::net::IpAddr;

use cni_ebpf_common::program_names::FROM_POD;
use cni_ebpf_userspace::{AttachMode, EndpointMap, attach::is_attached_tcx};

use super::{datapath_error, open_datapath, runtime};
use crate::{
    cni::{CniEnv, CniOutput, NetConf, parse_mac},
    error::{CniError, CniResult, code},
    ipam::Ipam,
    netlink::Netlink,
    netns::NetNs,
    state::{AttachmentRecord, StateDir},
};

fn failed(msg: impl Into<String>) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}

pub fn run(env: &CniEnv, conf: &NetConf) -> CniResult<()> {
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    let pod_ns = NetNs::open(env.require_netns()?)?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::invalid_config("prevResult: required by CHECK"))
        .and_then(CniOutput::from_json)?;
    let ipam = Ipam::from_conf(conf, env)?;
    let record = StateDir::new(&conf.state_dir, &conf.name)
        .read(container_id, ifname)?
        .ok_or_else(|| {
            failed(format!(
                "no attachment recorded for container {container_id} interface {ifname}"
            ))
        })?;

    check_result_matches(&prev, &record)?;
    if let Some(held) = ipam.held_by(container_id, ifname)? {
        for net in &record.ips {
            if !held.contains(&net.addr()) {
                return Err(failed(format!(
                    "address {} is not reserved in IPAM",
                    net.addr()
                )));
            }
        }
    }
    ipam.check(conf)?;

    let datapath = open_datapath(conf)?;
    let endpoints = EndpointMap::open(datapath.layout())
        .map_err(|e| datapath_error("opening the endpoints map", e))?;
    for net in &record.ips {
        // Where the datapath reads it (a stale copy breaks the pod as
        // surely as a missing record).
        match endpoints.find(net.addr()) {
            Ok(Some(ep)) if ep.ifindex == record.host_ifindex && ep.owner == record.owner => {}
            Ok(_) => {
                return Err(failed(format!(
                    "endpoint map entry for {} is missing or stale",
                    net.addr()
                )));
            }
            Err(e) => return Err(datapath_error("reading the endpoints map", e)),
        }
    }

    if let Some(m) = cni_ebpf_userspace::host_ports::holds(
        datapath.layout(),
        &record.port_mappings,
        record.owner,
    )
    .map_err(|e| datapath_error("reading the host ports", e))?
    {
        return Err(failed(format!(
            "hostPort {} (to port {} of {}) is not published",
            m.host_port, m.pod_port, m.pod_addr
        )));
    }

    if (record.ingress_limit.is_some() || record.egress_limit.is_some())
        && !cni_ebpf_userspace::rate::holds(
            datapath.layout(),
            record.owner,
            record.egress_limit,
            record.ingress_limit,
        )
        .map_err(|e| datapath_error("reading the bandwidth limits", e))?
    {
        return Err(failed(format!(
            "the bandwidth limits of {} are missing or differ",
            record.host_ifname
        )));
    }
    if let Some(why) = &record.hooks_missing {
        log::warn!(
            "{}: {}",
            record.host_ifname,
            crate::host_ports::missing_hooks_warning(why)
        );
    } else if (record.ingress_limit.is_some() || record.egress_limit.is_some())
        && !cni_ebpf_userspace::attach::pacing_attached(datapath.layout())
    {
        return Err(failed(format!(
            "the bandwidth limits of {}: TCP pacing is not attached",
            record.host_ifname
        )));
    }

    runtime()?.block_on(async {
        let node = Netlink::connect()?;
        let pod = Netlink::connect_in(&pod_ns)?;
        let pod_index = check_links(&node, &pod, &record).await?;
        check_attached(&node, &record).await?;
        check_pod_config(&pod, pod_index, &record, &prev).await
    })?;

    Ok(())
}

async fn check_attached(node: &Netlink, record: &AttachmentRecord) -> CniResult<()> {
    let tcx =
        || is_attached_tcx(&record.host_ifname).map_err(|e| datapath_error("querying tcx", e));
    let attached = match record.attachment.mode {
        AttachMode::Tcx => tcx()?,
        // Added through clsact; with `attachMode: auto` the agent may have
        // moved it onto tcx since (`cni_ebpf_userspace::promote`).
        AttachMode::Clsact => {
            node.ingress_bpf_programs(record.host_ifindex)
                .await?
                .iter()
                .any(|name| name == FROM_POD)
                || tcx()?
        }
    };
    if attached {
        Ok(())
    } else {
        Err(failed(format!(
            "the from-pod program is not attached to {}",
            record.host_ifname
        )))
    }
}

fn check_result_matches(prev: &CniOutput, record: &AttachmentRecord) -> CniResult<()> {
    for ip in &prev.ips {
        if !record.ips.contains(&ip.address) {
            return Err(failed(format!(
                "prevResult address {} is not one this plugin assigned",
                ip.address
            )));
        }
    }
    Ok(())
}

/// Both ends of the veth as ADD left them; the pod interface's index.
async fn check_links(node: &Netlink, pod: &Netlink, record: &AttachmentRecord) -> CniResult<u32> {
    let host = node
        .link(&record.host_ifname)
        .await?
        .ok_or_else(|| failed(format!("host veth {} is missing", record.host_ifname)))?;
    if host.index != record.host_ifindex || !host.up {
        return Err(failed(format!(
            "host veth {} was replaced or is down",
            record.host_ifname
        )));
    }
    let pod_link = pod
        .link(&record.ifname)
        .await?
        .ok_or_else(|| failed(format!("interface {} is missing in the pod", record.ifname)))?;
    if pod_link.mac != parse_mac(&record.pod_mac) || !pod_link.up {
        return Err(failed(format!(
            "interface {} in the pod has another MAC or is down",
            record.ifname
        )));
    }
    Ok(pod_link.index)
}

/// `index` is the pod interface's, as `check_links` found it.
async fn check_pod_config(
    pod: &Netlink,
    index: u32,
    record: &AttachmentRecord,
    prev: &CniOutput,
) -> CniResult<()> {
    let addresses = pod.addresses(index).await?;
    for net in &record.ips {
        if !addresses.contains(net) {
            return Err(failed(format!(
                "address {net} is missing on {}",
                record.ifname
            )));
        }
    }
    let routes_v4 = pod.routes(true).await?;
    let routes_v6 = pod.routes(false).await?;
    for route in &prev.routes {
        let table = if route.dst.addr().is_ipv4() {
            &routes_v4
        } else {
            &routes_v6
        };
        let present = table.iter().any(|r| {
            r.dst == route.dst
                && r.oif == Some(index)
                && route.gw.is_none_or(|gw: IpAddr| r.gateway == Some(gw))
        });
        if !present {
            return Err(failed(format!("route {} is missing in the pod", route.dst)));
        }
    }
    Ok(())
}
