//! The masquerade table as `cni-ebpfd nat --json` shows it, and one
//! `cni-ebpfd gc --json` run.

use std::net::SocketAddr;

use serde_json::Value;

use crate::Node;

/// One row of `cni-ebpfd nat --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatFlow {
    pub proto: String,
    pub pod: SocketAddr,
    pub remote: SocketAddr,
    pub translated: SocketAddr,
    pub state: Option<String>,
    pub idle_ms: u64,
}

/// `cni-ebpfd nat --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatTable {
    pub flows: Vec<NatFlow>,
    pub count: u64,
    pub limit: u64,
    pub capacity: u64,
}

/// Reads `node`'s masquerade table with `cni-ebpfd nat --json`.
pub fn nat_table(node: &Node) -> NatTable {
    let stdout = node.agent("nat", &["--json"]);
    let raw: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("cni-ebpfd nat --json: {e}: {stdout}"));
    let addr = |row: &Value, key: &str| -> SocketAddr {
        row[key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("nat row without a valid {key:?}: {row}"))
    };
    let flows = raw["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("cni-ebpfd nat --json without flows: {raw}"))
        .iter()
        .map(|row| NatFlow {
            proto: row["proto"].as_str().unwrap_or_default().to_string(),
            pod: addr(row, "pod"),
            remote: addr(row, "remote"),
            translated: addr(row, "translated"),
            state: row["state"].as_str().map(str::to_string),
            idle_ms: row["idleMs"].as_u64().unwrap_or(u64::MAX),
        })
        .collect();
    let number = |key: &str| {
        raw[key]
            .as_u64()
            .unwrap_or_else(|| panic!("cni-ebpfd nat --json without {key:?}: {raw}"))
    };
    NatTable {
        flows,
        count: number("count"),
        limit: number("limit"),
        capacity: number("capacity"),
    }
}

/// `cni-ebpfd gc --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOutcome {
    pub scanned: u64,
    pub expired: u64,
    pub live: u64,
}

/// Runs one `cni-ebpfd gc --json` with `timeouts` (flags such as
/// `--udp-timeout 0`) on `node`.
pub fn nat_gc(node: &Node, timeouts: &[&str]) -> GcOutcome {
    let mut args = timeouts.to_vec();
    args.push("--json");
    let stdout = node.agent("gc", &args);
    let raw: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("cni-ebpfd gc --json: {e}: {stdout}"));
    let number = |key: &str| {
        raw[key]
            .as_u64()
            .unwrap_or_else(|| panic!("cni-ebpfd gc --json without {key:?}: {raw}"))
    };
    GcOutcome {
        scanned: number("scanned"),
        expired: number("expired"),
        live: number("live"),
    }
}
