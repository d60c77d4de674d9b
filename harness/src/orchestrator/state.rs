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

/// Distinct free loopback ports for one stack, below the kernel's ephemeral range: a port
/// from `bind(:0)` is in that range, so between choosing it and the service (or Docker's
/// port publishing) binding it, any outgoing connection may take it as its local port.
#[derive(Debug, Default)]
pub struct PortPicker {
    taken: std::collections::BTreeSet<u16>,
}

impl PortPicker {
    pub fn free_port(&mut self) -> Result<u16, ServiceError> {
        use rand::Rng as _;
        let (low, high) = ephemeral_range().map(|(start, _)| (start.saturating_sub(12_000).max(10_000), start)).unwrap_or((20_000, 32_768));
        let mut rng = rand::rng();
        for _ in 0..200 {
            let port = rng.random_range(low..high);
            if !self.taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                self.taken.insert(port);
                return Ok(port);
            }
        }
        // Nothing free below the range (unlikely): the kernel's choice, still distinct.
        for _ in 0..20 {
            let port = super::local::process::free_port().map_err(|e| state_err(Path::new("127.0.0.1"), format!("no free port: {e}")))?;
            if self.taken.insert(port) {
                return Ok(port);
            }
        }
        Err(state_err(Path::new("127.0.0.1"), "no free port"))
    }
}

/// `net.ipv4.ip_local_port_range`: where the kernel picks the local ports of connections.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().filter_map(|p| p.parse().ok());
    Some((parts.next()?, parts.next()?))
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
    let text = serde_json::to_string_pretty(state).map_err(|e| state_err(&path, e))?;
    write_private(&path, text.as_bytes()).map_err(|e| state_err(&path, e))
}

/// Writes a file that may hold a secret: a temporary file created with mode 0600 (never
/// readable by others, not even briefly), written, synced, then renamed over `path`, so
/// that an older file with a looser mode is replaced, not reused.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// Creates a run folder that only its owner can list: mode 0700, or 0710 with the group of
/// `traverse_gid` when a service running as another user (PostgreSQL, started as root) must
/// reach its own folder inside it.
pub fn private_dir(dir: &Path, traverse_gid: Option<u32>) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    match traverse_gid {
        Some(gid) => {
            std::os::unix::fs::chown(dir, None, Some(gid))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o710))
        }
        None => fs::set_permissions(dir, fs::Permissions::from_mode(0o700)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_replaces_a_looser_one_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        let run = dir.path().join("run");
        private_dir(&run, None).unwrap();
        assert_eq!(fs::metadata(&run).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn picked_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let mut picker = PortPicker::default();
        let ports: Vec<u16> = (0..30).map(|_| picker.free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        if let Some((start, _)) = ephemeral_range() {
            assert!(ports.iter().all(|p| *p < start), "{ports:?} vs ephemeral start {start}");
        }
        for port in ports {
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free");
        }
    }
}
