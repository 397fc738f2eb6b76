//! STATUS (1.1.0): can this plugin serve ADD right now?

use super::open_datapath;
use crate::{
    cni::NetConf,
    error::{CniError, CniResult, code},
};

pub fn run(conf: &NetConf) -> CniResult<()> {
    open_datapath(conf).map_err(|e| {
        CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            format!("the eBPF datapath is not usable: {}", e.msg),
        )
        .with_details(e.details)
    })?;
    Ok(())
}
