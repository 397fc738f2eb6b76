//! Files on the node, changed so that a reader never sees half of one: a
//! staging file in the same directory, written and fsynced, then renamed
//! over the target (rename is atomic within a filesystem), then the
//! directory fsynced so the rename survives a crash. A runtime that
//! executes the plugin or reads the conflist meanwhile gets the old file
//! or the new one, and a running plugin never meets ETXTBSY.

use std::{
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use super::{BACKUP_SUFFIX, InstallError, Result};

/// Staging files start with this; they end with no extension a runtime
/// loads, so a conflist being written is never read as a network.
pub const STAGING_PREFIX: &str = ".cni-ebpf-staging-";

/// Extensions container runtimes (libcni's `ConfFiles`) load from the conf dir.
const CONF_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// Copies the executable `source` to `target` (mode 0755) unless `target`
/// already has its bytes; returns whether it wrote.
pub fn install_executable(source: &Path, target: &Path) -> Result<bool> {
    let bytes = fs::read(source).map_err(|e| InstallError::io("reading", source, e))?;
    write_atomically(target, &bytes, 0o755)
}

/// Puts `bytes` at `path` through a staging file and a rename, unless the
/// file already holds them (same bytes and mode); returns whether it wrote.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    if unchanged(path, bytes, mode) {
        return Ok(false);
    }
    let dir = parent(path);
    fs::create_dir_all(dir).map_err(|e| InstallError::io("creating", dir, e))?;
    let staging = staging_path(path);
    let written = write_synced(&staging, bytes, mode).and_then(|()| {
        fs::rename(&staging, path).map_err(|e| InstallError::io("renaming onto", path, e))
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&staging);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(true)
}

/// `<dir>/.cni-ebpf-staging-<name>.<pid>`.
pub fn staging_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    parent(path).join(format!("{STAGING_PREFIX}{name}.{}", std::process::id()))
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn unchanged(path: &Path, bytes: &[u8], mode: u32) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    meta.is_file()
        && meta.permissions().mode() & 0o7777 == mode
        && meta.len() == bytes.len() as u64
        && fs::read(path).is_ok_and(|current| current == bytes)
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| InstallError::io("creating", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.set_permissions(fs::Permissions::from_mode(mode)))
        .and_then(|()| file.sync_all())
        .map_err(|e| InstallError::io("writing", path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| InstallError::io("syncing", dir, e))
}

/// Whether a runtime would load `name` from the conf dir.
pub fn is_network_config(name: &str) -> bool {
    !name.starts_with('.')
        && Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONF_EXTENSIONS.contains(&e))
}

/// Renames every network config in `dir` but `keep` to `<name>.cni-ebpf-bak`;
/// returns the new paths.
pub fn move_aside_others(dir: &Path, keep: &str) -> Result<Vec<PathBuf>> {
    let mut moved = Vec::new();
    for name in file_names(dir)? {
        if name == keep || !is_network_config(&name) {
            continue;
        }
        let from = dir.join(&name);
        let to = dir.join(format!("{name}{BACKUP_SUFFIX}"));
        fs::rename(&from, &to).map_err(|e| InstallError::io("moving aside", &from, e))?;
        moved.push(to);
    }
    if !moved.is_empty() {
        sync_dir(dir)?;
    }
    Ok(moved)
}

/// Renames every `<name>.cni-ebpf-bak` in `dir` back to `<name>`, unless a
/// file of that name appeared since (then the backup stays, and says so by
/// its name); returns the restored paths.
pub fn restore_moved_aside(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut restored = Vec::new();
    for name in file_names(dir)? {
        let Some(original) = name.strip_suffix(BACKUP_SUFFIX) else {
            continue;
        };
        let to = dir.join(original);
        if to.exists() {
            continue;
        }
        let from = dir.join(&name);
        fs::rename(&from, &to).map_err(|e| InstallError::io("restoring", &from, e))?;
        restored.push(to);
    }
    if !restored.is_empty() {
        sync_dir(dir)?;
    }
    Ok(restored)
}

/// Staging files an interrupted install left in `dir`; removes them.
pub fn remove_staging(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for name in file_names(dir)? {
        if name.starts_with(STAGING_PREFIX) {
            let path = dir.join(name);
            if remove_if_present(&path)? {
                removed.push(path);
            }
        }
    }
    Ok(removed)
}

/// Removes `path`; false when it was not there.
pub fn remove_if_present(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(InstallError::io("removing", path, e)),
    }
}

/// File names in `dir`, sorted; none when `dir` does not exist.
fn file_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(InstallError::io("listing", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| InstallError::io("listing", dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cni-ebpf-install-files-{tag}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn runtimes_load_only_conf_conflist_and_json() {
        assert!(is_network_config("10-bridge.conflist"));
        assert!(is_network_config("87-podman.conf"));
        assert!(is_network_config("x.json"));
        assert!(!is_network_config("10-bridge.conflist.cni-ebpf-bak"));
        assert!(!is_network_config(
            ".cni-ebpf-staging-05-cni-ebpf.conflist.7"
        ));
        assert!(!is_network_config("README"));
    }

    #[test]
    fn atomic_write_replaces_and_skips_identical_content() {
        let dir = temp_dir("write");
        let path = dir.join("f.conflist");
        assert!(write_atomically(&path, b"one", 0o644).unwrap());
        assert!(!write_atomically(&path, b"one", 0o644).unwrap());
        assert!(write_atomically(&path, b"two", 0o644).unwrap());
        assert!(write_atomically(&path, b"two", 0o755).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(file_names(&dir).unwrap(), ["f.conflist"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn moved_aside_configs_come_back_unless_replaced() {
        let dir = temp_dir("aside");
        for name in [
            "10-bridge.conflist",
            "20-x.conf",
            "05-cni-ebpf.conflist",
            "notes.txt",
        ] {
            fs::write(dir.join(name), name).unwrap();
        }
        let moved = move_aside_others(&dir, "05-cni-ebpf.conflist").unwrap();
        assert_eq!(
            moved,
            [
                dir.join("10-bridge.conflist.cni-ebpf-bak"),
                dir.join("20-x.conf.cni-ebpf-bak")
            ]
        );
        // Something wrote 20-x.conf again meanwhile: its backup stays.
        fs::write(dir.join("20-x.conf"), "new").unwrap();
        let restored = restore_moved_aside(&dir).unwrap();
        assert_eq!(restored, [dir.join("10-bridge.conflist")]);
        assert_eq!(
            fs::read_to_string(dir.join("10-bridge.conflist")).unwrap(),
            "10-bridge.conflist"
        );
        assert!(dir.join("20-x.conf.cni-ebpf-bak").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
