//! One module per CNI verb; each reads top to bottom as the steps it takes.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use cni_ebpf_userspace::{BpffsLayout, Datapath, DatapathError};

use crate::{
    cni::NetConf,
    error::{CniError, CniResult},
};

pub(crate) fn datapath_error(context: &str, e: DatapathError) -> CniError {
    match e {
        DatapathError::Locked(e) => CniError::lock(e),
        e => CniError::datapath(context.to_string(), e),
    }
}

pub(crate) fn open_datapath(conf: &NetConf) -> CniResult<Datapath> {
    Datapath::open_or_load(BpffsLayout::new(&conf.bpffs_root)).map_err(|e| {
        let context = match &e {
            DatapathError::MapLayout { name, .. } => format!(
                "loading the eBPF datapath: the pinned map {name} has another layout than this build's"
            ),
            _ => "loading the eBPF datapath".to_string(),
        };
        datapath_error(&context, e)
    })
}

/// A current-thread runtime: the plugin's netlink work is a handful of
/// sequential requests.
pub(crate) fn runtime() -> CniResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::io("starting the runtime", e))
}
