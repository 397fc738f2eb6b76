//! `cni-ebpfd`: node agent and inspection CLI of cni-ebpf. Thin: every
//! subcommand is a file under `cmd/`, the logic is in the library.

mod cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cni-ebpfd",
    version,
    about = "cni-ebpf node agent and inspection CLI"
)]
struct Cli {
    /// bpffs directory of this node's datapath (the plugin's `bpffsRoot`).
    #[arg(long, global = true, default_value = "/sys/fs/bpf/cni-ebpf")]
    bpffs_root: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent in the foreground (load the datapath, adopt and
    /// repair attachments, expire idle NAT flows, stream the programs' logs,
    /// serve metrics) until SIGINT or SIGTERM.
    Run(Box<cmd::run::RunArgs>),
    /// Load and pin the programs and maps if they are not there yet; with
    /// --replace, upgrade the running programs in place.
    Load(cmd::load::LoadArgs),
    /// The datapath at a glance: builds, fill levels, uplink, masquerade.
    Status,
    /// The endpoints map: pod addresses, their interfaces and traffic.
    Endpoints,
    /// Published host ports.
    Portmaps,
    /// Dropped packets by reason and direction.
    Drops,
    /// Packets passed on, by verdict.
    Stats,
    /// Masqueraded flows and the table's fill level.
    Nat,
    /// Expire idle masqueraded flows once.
    Gc(cmd::gc::Timeouts),
    /// Move every pod added with `attachMode: auto` from clsact onto tcx
    /// now (the agent does it a few pods per second).
    Promote,
    /// Other nodes and how their pods are reached (natively or through the
    /// VXLAN tunnel).
    #[command(subcommand)]
    Peers(cmd::peers::PeersCommand),
    /// Install the plugin and its conflist on this node: the binary into
    /// the CNI bin dir, the conflist into the CNI conf dir once the
    /// datapath answers STATUS (the DaemonSet's init step).
    Install(Box<cmd::install::InstallArgs>),
    /// Remove what install put into the CNI dirs and restore the configs
    /// --exclusive moved aside (the datapath stays loaded).
    Uninstall(cmd::uninstall::UninstallArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The programs' records are read by `run` alone, at its --log-level.
    let datapath_level = match &cli.command {
        Command::Run(args) => args.log_level,
        _ => log::LevelFilter::Off,
    };
    cni_ebpf_userspace::agent::logging::init(datapath_level);
    let layout = cni_ebpf_userspace::BpffsLayout::new(cli.bpffs_root);
    match cli.command {
        Command::Run(args) => cmd::run::run(layout, &args),
        Command::Load(args) => cmd::load::run(layout, &args, cli.json),
        Command::Status => cmd::status::run(&layout, cli.json),
        Command::Endpoints => cmd::endpoints::run(&layout, cli.json),
        Command::Portmaps => cmd::portmaps::run(&layout, cli.json),
        Command::Drops => cmd::drops::run(&layout, cli.json),
        Command::Stats => cmd::stats::run(&layout, cli.json),
        Command::Nat => cmd::nat::run(&layout, cli.json),
        Command::Gc(timeouts) => cmd::gc::run(&layout, &timeouts, cli.json),
        Command::Promote => cmd::promote::run(&layout, cli.json),
        Command::Peers(command) => cmd::peers::run(&layout, &command, cli.json),
        Command::Install(args) => cmd::install::run(&layout, &args, cli.json),
        Command::Uninstall(args) => cmd::uninstall::run(&args, cli.json),
    }
}
