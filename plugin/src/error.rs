//! CNI errors: a code from the spec's table, a message and details.

use std::fmt;

use serde_json::{Value, json};

/// Error codes of the CNI spec (1-99) and this plugin's own (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    pub const PLUGIN_LIMITED: u32 = 51;
    /// bpffs missing, programs failing to load or attach, maps not opening.
    pub const DATAPATH: u32 = 100;
    /// A netlink request (links, addresses, routes) failed.
    pub const NETLINK: u32 = 101;
    /// No free address left in the configured ranges.
    pub const ADDRESS_EXHAUSTED: u32 = 110;
    /// The interface or address the request names is already in use.
    pub const ALREADY_EXISTS: u32 = 111;
    /// CHECK found the attachment different from what ADD made.
    pub const CHECK_FAILED: u32 = 112;
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

pub type CniResult<T> = Result<T, CniError>;

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }

    pub fn io(msg: impl Into<String>, source: impl fmt::Display) -> Self {
        Self::new(code::IO_FAILURE, msg).with_details(source)
    }

    pub fn datapath(msg: impl Into<String>, source: impl fmt::Display) -> Self {
        Self::new(code::DATAPATH, msg).with_details(source)
    }

    /// A lock not taken: code 11 (try again later) when its holder kept it
    /// past the wait, an I/O failure otherwise.
    pub fn lock(e: cni_ebpf_userspace::lock::LockError) -> Self {
        use cni_ebpf_userspace::lock::LockError;
        match e {
            LockError::TimedOut { .. } => Self::new(code::TRY_AGAIN_LATER, e.to_string()),
            LockError::Failed { .. } => Self::new(code::IO_FAILURE, e.to_string()),
        }
    }

    pub fn netlink(msg: impl Into<String>, source: impl fmt::Display) -> Self {
        Self::new(code::NETLINK, msg).with_details(source)
    }

    /// The error object the spec prints on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{} (code {})", self.msg, self.code)
        } else {
            write!(f, "{}: {} (code {})", self.msg, self.details, self.code)
        }
    }
}

impl std::error::Error for CniError {}
