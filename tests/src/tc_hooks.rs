//! What runs on a device's tc hooks, as the kernel lists it: the BPF
//! programs of its clsact filters (`tc -j filter show`) and of its tcx
//! links (`BPF_PROG_QUERY`, through aya: this bpftool predates tcx).

use aya::programs::{SchedClassifier, TcAttachType};
use serde_json::Value;

use crate::netns::Netns;

/// A clsact or tcx hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// The programs of the BPF filters on `hook` of `dev`: (id, name), in the
/// order the kernel runs them; none without a clsact qdisc.
pub fn filters(ns: &Netns, dev: &str, hook: Hook) -> Vec<(u64, String)> {
    let out = ns.exec_ok("tc", &["-j", "filter", "show", "dev", dev, hook.name()]);
    let filters: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    filters
        .iter()
        .filter_map(|f| {
            let prog = &f["options"]["prog"];
            Some((prog["id"].as_u64()?, prog["name"].as_str()?.to_string()))
        })
        .collect()
}

/// The program ids of the BPF filters on `hook` of `dev`.
pub fn filter_ids(ns: &Netns, dev: &str, hook: Hook) -> Vec<u64> {
    filters(ns, dev, hook)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// The names of the programs attached through tcx to `hook` of `dev`.
pub fn tcx_programs(ns: &Netns, dev: &str, hook: Hook) -> Vec<String> {
    let attach_type = match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    };
    ns.run(|| {
        // A device that never had a tcx link answers with an error.
        SchedClassifier::query_tcx(dev, attach_type)
            .map(|(_, programs)| {
                programs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    })
}
