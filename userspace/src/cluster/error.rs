use std::{io, net::IpAddr, path::PathBuf};

use ipnet::IpNet;

use crate::error::PathIoError;

/// What can go wrong in cluster mode. `Etcd` errors are transient (the
/// agent reconnects); the others are the node's configuration and end it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[cfg(feature = "agent")]
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("{0}")]
    Config(String),
    #[error("pod CIDR {cidr} is held by node {holder}; this node ({node}) cannot take it")]
    Collision {
        cidr: IpNet,
        holder: String,
        node: String,
    },
    #[error("no free /{prefix_len} left in the cluster CIDR {cluster_cidr}")]
    Exhausted { cluster_cidr: IpNet, prefix_len: u8 },
    #[error("no interface of this node holds {0}")]
    NoSuchAddress(IpAddr),
    #[error("datapath: {0}")]
    Datapath(String),
}

impl ClusterError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io(PathIoError::new(op, path, source))
    }

    /// Whether reconnecting can cure it (etcd down or answering oddly), as
    /// opposed to a node configuration no retry changes.
    pub fn is_transient(&self) -> bool {
        match self {
            #[cfg(feature = "agent")]
            Self::Etcd(_) => true,
            Self::Protocol(_) | Self::Datapath(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
