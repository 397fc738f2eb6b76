use anyhow::Context as _;
use cni_ebpf_userspace::{BpffsLayout, Datapath, datapath::BUILD_ID, upgrade};

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Load a new generation of the programs even if this build is loaded,
    /// and move every attachment onto it without losing traffic.
    #[arg(long)]
    pub replace: bool,
}

pub fn run(layout: BpffsLayout, args: &LoadArgs, as_json: bool) -> anyhow::Result<()> {
    let root = layout.root().display().to_string();
    if !args.replace {
        Datapath::open_or_load(layout)
            .with_context(|| format!("loading the datapath under {root}"))?;
        println!("datapath build {BUILD_ID} loaded and pinned under {root}");
        return Ok(());
    }
    let upgrade = upgrade::replace(&layout)
        .with_context(|| format!("replacing the programs under {root}"))?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&upgrade)?);
    } else {
        println!(
            "{:<44} {:<14} {:>8} {:>8}",
            "ATTACHMENT", "PROGRAM", "FROM", "TO"
        );
        for s in &upgrade.swapped {
            println!(
                "{:<44} {:<14} {:>8} {:>8}",
                s.point.to_string(),
                s.program,
                s.from_id,
                s.to_id
            );
        }
        println!(
            "build {BUILD_ID}: new programs pinned under {root}, {} attachment(s) moved onto them",
            upgrade.swapped.len()
        );
        for failure in &upgrade.failed {
            println!("not moved: {failure}");
        }
    }
    anyhow::ensure!(
        upgrade.failed.is_empty(),
        "{} attachment(s) still run the programs they had",
        upgrade.failed.len()
    );
    Ok(())
}
