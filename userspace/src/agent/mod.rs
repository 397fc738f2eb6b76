//! What only the node agent (`cni-ebpfd run`) needs: the log backend, the
//! programs' log ring read as records arrive, the Prometheus metrics and
//! their HTTP endpoint. Behind the `agent` feature, so the CNI plugin links
//! none of its runtime and HTTP stack.

pub mod datapath_log;
pub mod logging;
pub mod metrics;
pub mod metrics_server;
