//! A backend's state file in its run folder (pids or container ids, ports, the generated
//! password): written atomically with mode 0600 so a crash never leaves half a file and
//! the credential stays private.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ServiceError;

pub fn state_err(path: &Path, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::State { path: path.to_path_buf(), reason: e.to_string() }
}

/// `path` made absolute against the current directory.
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(path) }
}

/// A free loopback port.
pub fn free_port() -> Result<u16, ServiceError> {
    super::local::process::free_port().map_err(|e| state_err(Path::new("127.0.0.1"), format!("no free port: {e}")))
}

/// Reads `<run_dir>/<file>`; None when there is none.
pub fn read<T: DeserializeOwned>(run_dir: &Path, file: &str) -> Result<Option<T>, ServiceError> {
    let path = run_dir.join(file);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| state_err(&path, format!("unreadable ({e}); remove it to start afresh"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(state_err(&path, e)),
    }
}

/// Writes `<run_dir>/<file>` atomically, readable by the owner only.
pub fn write<T: Serialize>(run_dir: &Path, file: &str, state: &T) -> Result<(), ServiceError> {
    let path = run_dir.join(file);
    fs::create_dir_all(run_dir).map_err(|e| state_err(run_dir, e))?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(state).map_err(|e| state_err(&path, e))?;
    fs::write(&tmp, text).map_err(|e| state_err(&tmp, e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(|e| state_err(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| state_err(&path, e))
}
