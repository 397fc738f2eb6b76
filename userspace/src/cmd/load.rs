use anyhow::Context as _;
use cni_ebpf_userspace::{BpffsLayout, Datapath, datapath::BUILD_ID};

pub fn run(layout: BpffsLayout) -> anyhow::Result<()> {
    let root = layout.root().display().to_string();
    Datapath::open_or_load(layout).with_context(|| format!("loading the datapath under {root}"))?;
    println!("datapath build {BUILD_ID} loaded and pinned under {root}");
    Ok(())
}
