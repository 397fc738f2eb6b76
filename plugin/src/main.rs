//! The `cni-ebpf` CNI plugin binary: reads the environment and stdin,
//! dispatches to the verb, prints the result or the error on stdout. Logs go
//! to stderr only (`CNI_EBPF_LOG=debug`).

use std::io::{Read as _, Write as _};

use cni_ebpf_plugin::{
    cni::{self, CniEnv, Command, NetConf},
    commands,
    error::CniError,
    logging,
};
use serde_json::Value;

fn main() {
    logging::init();
    let (outcome, version) = run();
    let mut stdout = std::io::stdout().lock();
    let exit = match outcome {
        Ok(Some(result)) => {
            let _ = writeln!(stdout, "{result}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            log::debug!("failed: {e}");
            let _ = writeln!(stdout, "{}", e.to_json(&version));
            1
        }
    };
    let _ = stdout.flush();
    std::process::exit(exit);
}

/// The outcome, and the version to print an error in.
fn run() -> (Result<Option<Value>, CniError>, String) {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return (
            Err(CniError::io(
                "reading the network configuration from stdin",
                e,
            )),
            cni::version::CURRENT_VERSION.to_string(),
        );
    }
    let env = match CniEnv::from_env() {
        Ok(env) => env,
        Err(e) => return (Err(e), version_of(&stdin)),
    };
    if env.command == Command::Version {
        let config_version = serde_json::from_slice::<Value>(&stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_owned));
        return (
            Ok(Some(cni::version_output(config_version.as_deref()))),
            cni::version::CURRENT_VERSION.to_string(),
        );
    }
    let conf = match NetConf::parse(&stdin) {
        Ok(conf) => conf,
        Err(e) => return (Err(e), version_of(&stdin)),
    };
    let version = conf.cni_version.clone();
    (dispatch(&env, &conf), version)
}

fn dispatch(env: &CniEnv, conf: &NetConf) -> Result<Option<Value>, CniError> {
    env.command.ensure_allowed_in(&conf.cni_version)?;
    env.check_required()?;
    match env.command {
        Command::Add => {
            commands::add::run(env, conf).map(|out| Some(out.to_json(&conf.cni_version)))
        }
        Command::Del => commands::del::run(env, conf).map(|()| None),
        Command::Check => commands::check::run(env, conf).map(|()| None),
        Command::Status => commands::status::run(env, conf).map(|()| None),
        Command::Gc => commands::gc::run(env, conf).map(|()| None),
        Command::Version => unreachable!("handled before the config is parsed"),
    }
}

/// The `cniVersion` of a config that failed to parse, if it has a usable one.
fn version_of(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .filter(|v| cni::is_supported(v))
        .unwrap_or_else(|| cni::version::CURRENT_VERSION.to_string())
}
