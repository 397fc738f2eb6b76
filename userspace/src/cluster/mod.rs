//! Cluster mode: the node agent joins a cluster kept in etcd (v3), modelled
//! on flannel's etcd subnet manager. It leases the node a pod CIDR, writes
//! it where the plugin's IPAM reads it, keeps the lease alive, and programs
//! every other node as a datapath peer as nodes come and go.
//!
//! Failure behaviour: while etcd is unreachable nothing is taken out of the
//! datapath (existing pods and routes keep working; new pods start, since
//! the plugin never talks to etcd); the agent reconnects with a bounded
//! backoff, resumes its watch from the last revision it saw, and lists
//! everything again if that revision was compacted away.
//!
//! [`spawn`] is the entry point: a thread with its own tokio runtime, so the
//! agent's main loop only starts and stops it. Without the `agent` feature
//! (the plugin) only the node state file and the records are here.

pub mod error;
pub mod keys;
#[cfg(feature = "agent")]
pub mod lease;
#[cfg(feature = "agent")]
mod member;
pub mod node_state;
#[cfg(feature = "agent")]
pub mod program;
pub mod records;
#[cfg(feature = "agent")]
pub mod tls;
pub mod underlay;
#[cfg(feature = "agent")]
pub mod watch;

pub use error::{ClusterError, Result};
#[cfg(feature = "agent")]
pub use member::{ClusterSettings, Handle, spawn};
pub use records::{Backend, ClusterNetwork, SubnetRecord, Vtep};
#[cfg(feature = "agent")]
pub use tls::EtcdTls;
