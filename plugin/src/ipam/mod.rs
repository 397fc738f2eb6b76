//! IPAM: served in-process for host-local, or delegated to a plugin.
//!
//! `"ipam": {"type": "host-local", ...}` is handled here rather than by
//! executing the reference binary: same config, same files under
//! `<dataDir>/<network>/`, same flock, so the reference `host-local` and this
//! code can share one data directory without double allocation.

mod attachments;
pub mod backend;
pub mod config;
pub mod delegate;
pub mod dns;
pub mod host_local;
pub mod pod_cidr;
pub mod range;
pub mod store;

#[cfg(test)]
mod interop_tests;

pub use backend::{Ipam, IpamResult, VIRTUAL_GATEWAY_V4, VIRTUAL_GATEWAY_V6};
pub use config::{DEFAULT_DATA_DIR, HostLocalConfig, RouteConf};
pub use host_local::{Allocation, allocate, held_by, release, reservations};
pub use range::{AddressRange, RangeSet};
pub use store::{Reservation, Store};
