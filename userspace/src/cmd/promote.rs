use anyhow::Context as _;
use cni_ebpf_userspace::{BpffsLayout, Datapath, promote};

/// Moves every pod added with `attachMode: auto` onto tcx now, however
/// young (the agent does it a few pods per second, see `promote`).
pub fn run(layout: &BpffsLayout, as_json: bool) -> anyhow::Result<()> {
    let mut datapath = Datapath::open_or_load(layout.clone()).context("opening the datapath")?;
    let done = promote::promote_all(&mut datapath).context("moving pods onto tcx")?;
    if as_json {
        println!(
            "{}",
            serde_json::json!({"moved": done.moved, "failed": done.failed, "waiting": done.waiting})
        );
    } else {
        println!(
            "moved {} pod interface(s) onto tcx{}; {} still on clsact",
            done.moved.len(),
            if done.moved.is_empty() {
                String::new()
            } else {
                format!(" ({})", done.moved.join(", "))
            },
            done.waiting
        );
        for failure in &done.failed {
            eprintln!("not moved: {failure}");
        }
    }
    if done.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} pod interface(s) not moved", done.failed.len())
    }
}
