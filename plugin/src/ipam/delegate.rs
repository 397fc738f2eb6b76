//! IPAM by another plugin, executed from `CNI_PATH` as the spec describes:
//! same environment (with our `CNI_COMMAND`), same network config on stdin,
//! its result or error JSON on stdout.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{
    cni::{CniOutput, Command as Verb},
    error::{CniError, CniResult, code},
};

#[derive(Debug, Clone)]
pub struct DelegatedIpam {
    pub plugin_type: String,
    pub path: PathBuf,
}

impl DelegatedIpam {
    /// Finds `plugin_type` in the `CNI_PATH` directories.
    pub fn find(plugin_type: &str, cni_path: &[PathBuf]) -> CniResult<Self> {
        if plugin_type.contains('/') || plugin_type.starts_with('.') {
            return Err(CniError::invalid_config(format!(
                "ipam.type {plugin_type:?}: not a plugin name"
            )));
        }
        cni_path
            .iter()
            .map(|dir| dir.join(plugin_type))
            .find(|p| is_executable(p))
            .map(|path| Self {
                plugin_type: plugin_type.to_string(),
                path,
            })
            .ok_or_else(|| {
                CniError::invalid_config(format!(
                    "ipam.type {plugin_type:?}: no such plugin in CNI_PATH ({})",
                    cni_path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ))
            })
    }

    /// Runs the delegate for `verb` with `config` on stdin; its parsed
    /// result for ADD, `None` for verbs that print nothing.
    pub fn exec(&self, verb: Verb, config: &Value) -> CniResult<Option<CniOutput>> {
        let stdin = serde_json::to_vec(config).map_err(|e| {
            CniError::new(code::INTERNAL, "encoding the IPAM config").with_details(e)
        })?;
        let mut child = Command::new(&self.path)
            .env("CNI_COMMAND", verb.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CniError::io(format!("executing {}", self.path.display()), e))?;
        if let Some(mut pipe) = child.stdin.take() {
            // A delegate that exits without reading its stdin is not an error.
            let _ = pipe.write_all(&stdin);
        }
        let output = child
            .wait_with_output()
            .map_err(|e| CniError::io(format!("waiting for {}", self.path.display()), e))?;
        if !output.status.success() {
            return Err(self.failure(&output.stdout, &output.stderr));
        }
        if verb != Verb::Add || output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let value: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("ipam plugin {}: result is not JSON", self.plugin_type),
            )
            .with_details(e)
        })?;
        CniOutput::from_json(&value).map(Some)
    }

    /// The delegate's own error, its code kept and its name put in front.
    fn failure(&self, stdout: &[u8], stderr: &[u8]) -> CniError {
        let parsed = serde_json::from_slice::<Value>(stdout).ok();
        match parsed
            .as_ref()
            .and_then(|v| Some((v.get("code")?.as_u64()?, v)))
        {
            Some((code, v)) => CniError::new(
                code as u32,
                format!(
                    "ipam plugin {}: {}",
                    self.plugin_type,
                    v.get("msg").and_then(Value::as_str).unwrap_or("failed")
                ),
            )
            .with_details(v.get("details").and_then(Value::as_str).unwrap_or_default()),
            None => CniError::new(
                code::INTERNAL,
                format!("ipam plugin {} failed", self.plugin_type),
            )
            .with_details(String::from_utf8_lossy(stderr).trim()),
        }
    }
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
