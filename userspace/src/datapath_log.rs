//! The programs' aya-log records (drops worth a line, see the eBPF crate's
//! `log` module), read from the ring buffer every generation shares (pinned
//! by name like the other maps) and handed to a `log::Log`.

use aya::programs::ProgramInfo;
use aya_log::EbpfLogger;
use cni_ebpf_common::program_names::FROM_POD;

use crate::{
    datapath::BUILD_ID,
    error::{DatapathError, Result},
    paths::BpffsLayout,
};

/// The id of this build's pinned `from_pod`: the program a reader attaches
/// through, and whose change tells it to attach again.
pub fn current_program_id(layout: &BpffsLayout) -> Result<u32> {
    ProgramInfo::from_pin(layout.program(BUILD_ID, FROM_POD))
        .map(|info| info.id())
        .map_err(|source| DatapathError::Program {
            name: FROM_POD,
            source,
        })
}

/// A reader of the records of the programs pinned under `layout`; call
/// `flush` on it to pass what is there to `logger`.
pub fn reader<T: log::Log>(layout: &BpffsLayout, logger: T) -> Result<(u32, EbpfLogger<T>)> {
    let id = current_program_id(layout)?;
    let reader = EbpfLogger::init_from_id_with_logger(id, logger)
        .map_err(|e| DatapathError::io("open the log ring", FROM_POD, std::io::Error::other(e)))?;
    Ok((id, reader))
}
