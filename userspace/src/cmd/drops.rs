use anyhow::Context as _;
use cni_ebpf_userspace::{BpffsLayout, counters};
use serde_json::json;

pub fn run(layout: &BpffsLayout, as_json: bool) -> anyhow::Result<()> {
    let drops = counters::drops(layout).context("reading the drop counters")?;
    if as_json {
        let rows: Vec<_> = drops
            .iter()
            .map(|d| {
                json!({
                    "reason": d.reason.name(),
                    "direction": counters::direction_name(d.direction),
                    "packets": d.count.packets,
                    "bytes": d.count.bytes,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<18} {:<9} {:>12} {:>14}",
        "REASON", "DIRECTION", "PACKETS", "BYTES"
    );
    for d in drops.iter().filter(|d| d.count.packets > 0) {
        println!(
            "{:<18} {:<9} {:>12} {:>14}",
            d.reason.name(),
            counters::direction_name(d.direction),
            d.count.packets,
            d.count.bytes
        );
    }
    Ok(())
}
