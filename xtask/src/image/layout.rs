//! Checks an OCI image layout as a runtime would read it: `oci-layout`,
//! `index.json` naming the tag, every blob's sha256 and size as its
//! descriptor says, the config's entrypoint and one diff ID per layer, and
//! the files the image must hold inside its layers.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::exec;

pub const ENTRYPOINT: &str = "/usr/local/bin/cni-ebpfd";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub layers: usize,
    /// Bytes of every layer blob.
    pub bytes: u64,
}

pub fn validate(dir: &Path, tag: &str, expected_files: &[&str]) -> Result<Summary> {
    let marker = read_json(&dir.join("oci-layout"))?;
    ensure!(
        marker["imageLayoutVersion"] == "1.0.0",
        "oci-layout: {marker}"
    );
    let index = read_json(&dir.join("index.json"))?;
    let descriptor = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .with_context(|| format!("index.json names no manifest {tag}: {index}"))?;
    ensure!(
        descriptor["mediaType"] == MANIFEST,
        "not an OCI manifest: {descriptor}"
    );
    let manifest = blob_json(dir, descriptor)?;
    let config = blob_json(dir, &manifest["config"])?;
    ensure!(
        config["config"]["Entrypoint"] == serde_json::json!([ENTRYPOINT]),
        "entrypoint: {}",
        config["config"]["Entrypoint"]
    );
    ensure!(config["os"] == "linux", "os: {}", config["os"]);
    let layers = manifest["layers"]
        .as_array()
        .context("manifest without layers")?;
    let diff_ids = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
    ensure!(
        diff_ids == layers.len(),
        "{} layer(s) but {diff_ids} diff ID(s)",
        layers.len()
    );
    let mut files = BTreeSet::new();
    let mut bytes = 0;
    for layer in layers {
        let path = blob(dir, layer)?;
        bytes += fs::metadata(&path)?.len();
        let listing = exec::read(Command::new("tar").arg("-tf").arg(&path))?;
        files.extend(
            listing
                .lines()
                .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string()),
        );
    }
    for expected in expected_files {
        if !files.contains(*expected) {
            bail!("the image's layers hold no {expected}");
        }
    }
    Ok(Summary {
        layers: layers.len(),
        bytes,
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn blob_json(dir: &Path, descriptor: &Value) -> Result<Value> {
    read_json(&blob(dir, descriptor)?)
}

/// The blob a descriptor points at, once its size and sha256 match.
fn blob(dir: &Path, descriptor: &Value) -> Result<PathBuf> {
    let digest = descriptor["digest"]
        .as_str()
        .with_context(|| format!("descriptor without digest: {descriptor}"))?;
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("not a sha256 digest: {digest}"))?;
    let path = dir.join("blobs").join("sha256").join(hex);
    let size = fs::metadata(&path)
        .with_context(|| format!("blob {digest} missing"))?
        .len();
    ensure!(
        descriptor["size"].as_u64() == Some(size),
        "blob {digest}: {size} bytes, descriptor says {}",
        descriptor["size"]
    );
    let sum = exec::read(Command::new("sha256sum").arg(&path))?;
    ensure!(
        sum.split_whitespace().next() == Some(hex),
        "blob {digest} has sha256 {sum}"
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sha256(path: &Path) -> String {
        let sum = exec::read(Command::new("sha256sum").arg(path)).unwrap();
        sum.split_whitespace().next().unwrap().to_string()
    }

    /// Writes `bytes` as a blob; returns its descriptor.
    fn put_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Value {
        let staging = dir.join("staging");
        fs::write(&staging, bytes).unwrap();
        let hex = sha256(&staging);
        fs::rename(&staging, dir.join("blobs/sha256").join(&hex)).unwrap();
        json!({ "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len() })
    }

    /// A one-layer layout written by hand, as the OCI image spec lays it out.
    fn layout(dir: &Path, entrypoint: &str) {
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("usr/local/bin")).unwrap();
        fs::write(tree.join("usr/local/bin/cni-ebpfd"), "agent").unwrap();
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        let tar = dir.join("layer.tar");
        exec::read(
            Command::new("tar")
                .arg("-cf")
                .arg(&tar)
                .arg("-C")
                .arg(&tree)
                .arg("usr"),
        )
        .unwrap();
        let layer = put_blob(
            dir,
            "application/vnd.oci.image.layer.v1.tar",
            &fs::read(&tar).unwrap(),
        );
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Entrypoint": [entrypoint] },
            "rootfs": { "type": "layers", "diff_ids": [layer["digest"]] },
        });
        let config = put_blob(
            dir,
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let manifest = json!({ "schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer] });
        let mut manifest = put_blob(dir, MANIFEST, manifest.to_string().as_bytes());
        manifest["annotations"] = json!({ "org.opencontainers.image.ref.name": "dev" });
        fs::write(
            dir.join("index.json"),
            json!({ "schemaVersion": 2, "manifests": [manifest] }).to_string(),
        )
        .unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-oci-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_well_formed_layout_passes_and_names_its_files() {
        let dir = temp("ok");
        layout(&dir, ENTRYPOINT);
        let summary = validate(&dir, "dev", &["usr/local/bin/cni-ebpfd"]).unwrap();
        assert_eq!(summary.layers, 1);
        let missing = validate(&dir, "dev", &["usr/local/bin/cni-ebpf"]).unwrap_err();
        assert!(
            missing.to_string().contains("no usr/local/bin/cni-ebpf"),
            "{missing}"
        );
        assert!(validate(&dir, "v2", &[]).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_blob_or_another_entrypoint_fails() {
        let dir = temp("bad");
        layout(&dir, "/bin/sh");
        assert!(
            validate(&dir, "dev", &[])
                .unwrap_err()
                .to_string()
                .contains("entrypoint")
        );
        fs::remove_dir_all(&dir).unwrap();

        let dir = temp("corrupt");
        layout(&dir, ENTRYPOINT);
        let blobs: Vec<PathBuf> = fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        for blob in &blobs {
            let mut bytes = fs::read(blob).unwrap();
            if bytes.len() > 1000 {
                // The layer: same size, one byte changed.
                bytes[600] ^= 1;
                fs::write(blob, bytes).unwrap();
            }
        }
        let err = validate(&dir, "dev", &[]).unwrap_err().to_string();
        assert!(err.contains("has sha256"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
