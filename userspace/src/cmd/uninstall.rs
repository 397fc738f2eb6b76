//! `cni-ebpfd uninstall`: removes what install put into the CNI dirs and
//! moves back the configs `--exclusive` moved aside. The datapath stays:
//! running pods keep their traffic until they are deleted.

use cni_ebpf_userspace::install;

use crate::cmd::install::NodeDirArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub dirs: NodeDirArgs,
}

pub fn run(args: &UninstallArgs, as_json: bool) -> anyhow::Result<()> {
    let done = install::uninstall(&args.dirs.to_dirs())?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&done)?);
        return Ok(());
    }
    for path in &done.removed {
        println!("removed {}", path.display());
    }
    for path in &done.restored {
        println!("restored {}", path.display());
    }
    if done.removed.is_empty() && done.restored.is_empty() {
        println!("nothing to remove");
    }
    Ok(())
}
