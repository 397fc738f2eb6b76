use anyhow::Context as _;
use cni_ebpf_userspace::{BpffsLayout, counters};
use serde_json::json;

pub fn run(layout: &BpffsLayout, as_json: bool) -> anyhow::Result<()> {
    let verdicts = counters::verdicts(layout).context("reading the counters")?;
    if as_json {
        let rows: Vec<_> = verdicts
            .iter()
            .map(|(v, c)| json!({"verdict": v.name(), "packets": c.packets, "bytes": c.bytes}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<16} {:>12} {:>14}", "VERDICT", "PACKETS", "BYTES");
    for (verdict, count) in &verdicts {
        println!(
            "{:<16} {:>12} {:>14}",
            verdict.name(),
            count.packets,
            count.bytes
        );
    }
    Ok(())
}
