//! The one log backend of `cni-ebpfd`: its own records, the programs'
//! (target [`datapath_log::TARGET`]) and its libraries', one line each on
//! stderr. stdout stays for what a subcommand prints as its result.

use std::io::Write as _;

use log::{Level, LevelFilter};

use super::datapath_log;

/// Environment variable with `env_logger` filter directives for the
/// agent's own records and its libraries' (`debug`, `aya=debug`, ...).
pub const FILTER_ENV: &str = "RUST_LOG";

/// Installs the backend: the agent's records at `info` and above unless
/// [`FILTER_ENV`] says otherwise, the programs' at `datapath` whatever it
/// says (their level is a flag of `run`).
pub fn init(datapath: LevelFilter) {
    env_logger::Builder::new()
        .filter_level(LevelFilter::Info)
        .parse_env(env_logger::Env::new().filter(FILTER_ENV))
        .filter_module(datapath_log::TARGET, datapath)
        .target(env_logger::Target::Stderr)
        .format(|out, record| {
            let level = level_name(record.level());
            let target = record.target();
            if target.starts_with(env!("CARGO_CRATE_NAME")) || target.starts_with("cni_ebpfd") {
                writeln!(out, "cni-ebpfd: {level}: {}", record.args())
            } else {
                // The programs' records read `cni-ebpfd: datapath warn: ...`.
                writeln!(out, "cni-ebpfd: {target} {level}: {}", record.args())
            }
        })
        .init();
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}
