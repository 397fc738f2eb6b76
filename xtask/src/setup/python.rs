//! PyPI's `kubernetes-validate`, which the test suite runs to validate
//! `deploy/` offline against the Kubernetes schemas. Installed into a venv
//! under the target directory (Debian's Python refuses system-wide pip
//! installs, PEP 668), pinned, so every machine validates with the same
//! schemas.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

use super::report;
use crate::exec::{self, Context};

/// The pinned release (its schemas go up to Kubernetes 1.37).
pub const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// `<target>/tools/venv`.
pub fn venv(ctx: &Context) -> PathBuf {
    ctx.target_dir().join("tools").join("venv")
}

/// The validator's executable in the venv.
pub fn kubernetes_validate(ctx: &Context) -> PathBuf {
    venv(ctx).join("bin").join("kubernetes-validate")
}

pub fn ensure(ctx: &Context) -> Result<()> {
    let venv = venv(ctx);
    let pip = venv.join("bin").join("pip");
    let wanted = KUBERNETES_VALIDATE.split_once("==").map(|(_, v)| v);
    let installed = Command::new(&pip)
        .args(["show", "kubernetes-validate"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("Version: ").map(str::to_string))
        });
    if installed.as_deref() == wanted {
        report(
            "python",
            &format!("ok ({KUBERNETES_VALIDATE} in {})", venv.display()),
        );
        return Ok(());
    }
    report(
        "python",
        &format!("installing {KUBERNETES_VALIDATE} into {}", venv.display()),
    );
    if !pip.exists() {
        // Debian: python3-venv (in the package list) provides ensurepip.
        ctx.run(
            "setup",
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
        )?;
    }
    ctx.run(
        "setup",
        Command::new(&pip).args(["install", "--quiet", KUBERNETES_VALIDATE]),
    )?;
    if !ctx.dry_run {
        exec::read(Command::new(kubernetes_validate(ctx)).arg("--version"))?;
    }
    Ok(())
}
