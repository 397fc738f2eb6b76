//! Every map of the datapath, pinned by name under `<bpffs root>/maps`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use cni_ebpf_common::{COUNTER_SLOTS, DROP_SLOTS, Endpoint, IpKey, MAX_ENDPOINTS, PacketCount};

/// Pod addresses on this node -> their interface.
#[map]
pub static ENDPOINTS: HashMap<IpKey, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Dropped packets by reason and direction.
#[map]
pub static DROPS: PerCpuArray<PacketCount> = PerCpuArray::pinned(DROP_SLOTS, 0);

/// Packets the datapath passed on, by verdict.
#[map]
pub static COUNTERS: PerCpuArray<PacketCount> = PerCpuArray::pinned(COUNTER_SLOTS, 0);
