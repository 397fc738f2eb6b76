//! The cni-ebpf datapath from userspace: the embedded eBPF object, its
//! pinned programs and maps under a bpffs root, typed map handles, and the
//! attachment of programs to pod interfaces. Used by the CNI plugin (which
//! is short-lived and opens the pins itself) and by the node agent, whose
//! own parts (`agent`) are behind the `agent` feature.

#[cfg(feature = "agent")]
pub mod agent;
pub mod attach;
pub mod attachments;
pub mod cluster;
pub mod counters;
pub mod datapath;
pub mod device_xdp;
pub mod endpoints;
pub mod error;
pub mod host_ports;
pub mod install;
pub mod link_update;
pub mod lock;
pub mod nat;
pub mod node;
pub mod paths;
pub mod peers;
pub mod promote;
pub mod rate;
pub mod reconcile;
pub mod stats;
pub mod tc_filters;
pub mod teardown;
pub mod upgrade;

pub use attach::{AttachMode, Attachment};
pub use datapath::Datapath;
pub use endpoints::EndpointMap;
pub use error::{DatapathError, PathIoError};
pub use paths::BpffsLayout;
