//! STATUS (1.1.0): can this plugin serve ADD right now (code 50 if not), and
//! are existing pods intact (code 51 if their datapath state is gone)?

use cni_ebpf_common::map_names::ENDPOINTS;
use cni_ebpf_userspace::{BpffsLayout, EndpointMap};

use super::open_datapath;
use crate::{
    cni::{CniEnv, NetConf},
    error::{CniError, CniResult, code},
    ipam::Ipam,
    state::StateDir,
};

pub fn run(env: &CniEnv, conf: &NetConf) -> CniResult<()> {
    let layout = BpffsLayout::new(&conf.bpffs_root);
    let had_maps = layout.map(ENDPOINTS).exists();
    let not_available = |e: CniError| {
        CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            format!("cannot serve ADD: {}", e.msg),
        )
        .with_details(e.details)
    };
    Ipam::from_conf(conf, env)
        .and_then(|ipam| ipam.status(conf))
        .map_err(not_available)?;
    open_datapath(conf).map_err(not_available)?;

    let records = StateDir::new(&conf.state_dir, &conf.name).list()?;
    if records.is_empty() {
        return Ok(());
    }
    let limited = |msg: String| Err(CniError::new(code::PLUGIN_LIMITED, msg));
    if !had_maps {
        return limited(format!(
            "{} existing attachment(s) lost their datapath state: the maps under {} were gone",
            records.len(),
            layout.root().display()
        ));
    }
    let endpoints = EndpointMap::open(&layout).map_err(|e| {
        CniError::new(code::PLUGIN_LIMITED, "cannot read the endpoints map").with_details(e)
    })?;
    let missing = records
        .iter()
        .flat_map(|r| &r.ips)
        .filter(|ip| !matches!(endpoints.get(ip.addr()), Ok(Some(_))))
        .count();
    if missing > 0 {
        return limited(format!(
            "{missing} pod address(es) are missing from the endpoints map"
        ));
    }
    // Served, with less: not an error code, which would stop new pods.
    if let Some(why) = records.iter().find_map(|r| r.hooks_missing.as_deref()) {
        log::warn!("{}", crate::host_ports::missing_hooks_warning(why));
    }
    Ok(())
}
