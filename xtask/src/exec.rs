//! Running the commands a task is made of: printing them, honouring
//! `--dry-run`, and naming the step that failed.

use std::{
    env,
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::host;

/// What every task needs: where the workspace is and whether to act.
pub struct Context {
    pub workspace: PathBuf,
    pub dry_run: bool,
}

impl Context {
    pub fn new(dry_run: bool) -> Self {
        // xtask lives at `<workspace>/xtask`; no `cargo metadata` needed.
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask has a parent directory")
            .to_path_buf();
        Self { workspace, dry_run }
    }

    /// Cargo's target directory, honouring `CARGO_TARGET_DIR`.
    pub fn target_dir(&self) -> PathBuf {
        match env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => self.workspace.join(dir),
            None => self.workspace.join("target"),
        }
    }

    /// A `cargo` command run at the workspace root, with cargo's `bin`
    /// directory on `PATH` so that the eBPF build finds `bpf-linker`.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&self.workspace);
        if let Some(path) = path_with_cargo_bin() {
            cmd.env("PATH", path);
        }
        cmd
    }

    /// Runs one step of a task to completion (or only prints it in a dry
    /// run); the error names the step.
    pub fn run(&self, step: &str, cmd: &mut Command) -> Result<()> {
        eprintln!("[{step}] $ {}", render(cmd));
        if self.dry_run {
            return Ok(());
        }
        let status = cmd
            .status()
            .with_context(|| format!("step `{step}`: cannot start `{}`", render(cmd)))?;
        if !status.success() {
            bail!(
                "step `{step}` failed: `{}` exited with {status}",
                render(cmd)
            );
        }
        Ok(())
    }

    /// Replaces this process with `cmd`, so signals and the exit code are
    /// the program's own (or only prints it in a dry run).
    pub fn exec(&self, step: &str, cmd: &mut Command) -> Result<()> {
        eprintln!("[{step}] $ {}", render(cmd));
        if self.dry_run {
            return Ok(());
        }
        let error = cmd.exec();
        Err(error).with_context(|| format!("step `{step}`: cannot run `{}`", render(cmd)))
    }
}

/// Runs a command that only reads something and returns its stdout; it runs
/// in dry runs too. Fails when the command fails.
pub fn read(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", render(cmd)))?;
    if !output.status.success() {
        bail!(
            "`{}` exited with {}: {}",
            render(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{}` printed non-UTF-8", render(cmd)))
}

/// The command as a shell line: environment overrides, program, arguments.
pub fn render(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        // PATH is only extended with cargo's bin dir; printing it is noise.
        if key == "PATH" {
            continue;
        }
        if let Some(value) = value {
            words.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    words.push(quote(&cmd.get_program().to_string_lossy()));
    words.extend(cmd.get_args().map(|arg| quote(&arg.to_string_lossy())));
    words.join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `PATH` with `$CARGO_HOME/bin` in front, or `None` when it is already on it.
fn path_with_cargo_bin() -> Option<OsString> {
    let cargo_bin = host::cargo_home().ok()?.join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == cargo_bin) {
        return None;
    }
    env::join_paths(std::iter::once(cargo_bin).chain(env::split_paths(&path))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_quotes_only_what_the_shell_needs() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--workspace", "--", "name with space"])
            .env("CNI_EBPF_BIN_DIR", "/w/target/debug");
        assert_eq!(
            render(&cmd),
            "CNI_EBPF_BIN_DIR=/w/target/debug cargo test --workspace -- 'name with space'"
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
