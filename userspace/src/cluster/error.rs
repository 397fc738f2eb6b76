#[cfg(feature = "agent")]
use std::error::Error as _;
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
    /// The TLS files could not be read again at a reconnection (being
    /// rotated, say): tried again at the next one.
    #[error("{0} (read again at the next try)")]
    TlsFiles(String),
}

impl ClusterError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io(PathIoError::new(op, path, source))
    }

    /// Its message with every cause under it: what a failed TLS handshake
    /// was (an unknown CA, a refused certificate) is only said at the
    /// bottom of the etcd client's "transport error".
    pub fn detailed(&self) -> String {
        match self {
            #[cfg(feature = "agent")]
            Self::Etcd(etcd_client::Error::TransportError(e)) => {
                format!("etcd: transport error: {}", with_causes(e))
            }
            #[cfg(feature = "agent")]
            Self::Etcd(etcd_client::Error::GRpcStatus(status)) => match status.source() {
                Some(source) => {
                    let causes = with_causes(source);
                    if causes.starts_with(status.message()) {
                        format!("etcd: {causes}")
                    } else {
                        format!("etcd: {}: {causes}", status.message())
                    }
                }
                None => self.to_string(),
            },
            _ => self.to_string(),
        }
    }

    /// Whether reconnecting can cure it (etcd down or answering oddly), as
    /// opposed to a node configuration no retry changes.
    pub fn is_transient(&self) -> bool {
        match self {
            #[cfg(feature = "agent")]
            Self::Etcd(_) => true,
            Self::Protocol(_) | Self::Datapath(_) | Self::TlsFiles(_) => true,
            _ => false,
        }
    }
}

/// `e` and every error under it, `: `-separated (a cause its parent
/// already ends with is said once).
#[cfg(feature = "agent")]
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
