//! The CNI protocol: what the runtime passes in (environment and stdin
//! config), what the plugin prints back (results, VERSION), and the spec
//! versions it speaks (0.3.0 to 1.1.0).
//!
//! Nothing here touches the network or prints; callers decide what to do
//! with a [`CniEnv`] and [`NetConf`] and print [`CniOutput::to_json`].

pub mod config;
pub mod env;
pub mod keys;
pub mod result;
pub mod version;

pub use config::{IpamConf, NetConf, RuntimeConfig};
pub use env::{CniEnv, Command, K8sPod};
pub use result::{CniOutput, Dns, Interface, IpConfig, Route, format_mac, parse_mac};
pub use version::{SUPPORTED_VERSIONS, is_supported, version_output};
