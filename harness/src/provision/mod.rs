//! Installs what the local backend needs into a cache directory on first use and finds it
//! again on later runs. Nothing here is installed system-wide.
//!
//! Cache location: `$CDC_HARNESS_CACHE`, else `$XDG_CACHE_HOME/cdc-harness`, else
//! `$HOME/.cache/cdc-harness`. Concurrent runs (parallel tests) serialize on a lock file
//! per artifact, so an artifact is installed once.

pub mod debezium;
pub mod java;
pub(crate) mod k6;
pub(crate) mod postgres;
pub mod tansu;
pub mod workspace_bin;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{what} not found: {hint}")]
    NotFound { what: &'static str, hint: String },
    #[error("installing {what} failed: {reason}. Log: {log}")]
    InstallFailed { what: &'static str, reason: String, log: PathBuf },
    #[error("cache directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl ProvisionError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// Paths of everything the local backend runs, found or installed.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub pg_bin: PathBuf,
    pub tansu: PathBuf,
    pub java: PathBuf,
    pub debezium_libs: PathBuf,
    pub sink: Option<PathBuf>,
    pub k6: PathBuf,
}

impl Provisioned {
    /// Finds or installs each tool; the slow ones (tansu, Debezium) once per cache.
    pub fn provision(with_sink: bool) -> Result<Self, ProvisionError> {
        let cache = Cache::locate()?;
        Ok(Self {
            pg_bin: postgres::bin_dir()?,
            java: java::ensure()?,
            tansu: tansu::ensure(&cache)?,
            debezium_libs: debezium::ensure(&cache)?,
            sink: if with_sink { Some(workspace_bin::SINK.ensure()?) } else { None },
            k6: k6::ensure(&cache)?,
        })
    }
}

/// Root of the provisioning cache.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn locate() -> Result<Self, ProvisionError> {
        let root = if let Some(dir) = std::env::var_os("CDC_HARNESS_CACHE") {
            PathBuf::from(dir)
        } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            PathBuf::from(dir).join("cdc-harness")
        } else if let Some(home) = std::env::var_os("HOME") {
            PathBuf::from(home).join(".cache").join("cdc-harness")
        } else {
            return Err(ProvisionError::NotFound { what: "cache directory", hint: "set CDC_HARNESS_CACHE or HOME".into() });
        };
        fs::create_dir_all(&root).map_err(ProvisionError::io(&root))?;
        Ok(Self { root })
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Holds an exclusive lock on `<cache>/<name>.lock` for the lifetime of the guard.
    pub fn lock(&self, name: &str) -> Result<Flock<File>, ProvisionError> {
        let path = self.root.join(format!("{name}.lock"));
        let file = File::create(&path).map_err(ProvisionError::io(&path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| ProvisionError::Io { path, source: errno.into() })
    }
}

/// Runs an installer command with its output going to `log`, printing progress lines so
/// that a long first-time install is visibly alive.
pub(crate) fn run_installer(what: &'static str, command: &mut Command, log: &Path) -> Result<(), ProvisionError> {
    let log_file = File::create(log).map_err(ProvisionError::io(log))?;
    let err_file = log_file.try_clone().map_err(ProvisionError::io(log))?;
    let mut child = command.stdin(Stdio::null()).stdout(log_file).stderr(err_file).spawn().map_err(|e| ProvisionError::InstallFailed {
        what,
        reason: format!("cannot start {:?}: {e}", command.get_program()),
        log: log.to_path_buf(),
    })?;
    let started = std::time::Instant::now();
    let mut last_report = started;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(ProvisionError::InstallFailed {
                    what,
                    reason: format!("installer exited with {status}; last lines: {}", tail(log, 5)),
                    log: log.to_path_buf(),
                });
            }
            Ok(None) => {}
            Err(e) => {
                return Err(ProvisionError::InstallFailed { what, reason: e.to_string(), log: log.to_path_buf() });
            }
        }
        if last_report.elapsed().as_secs() >= 15 {
            last_report = std::time::Instant::now();
            eprintln!("provision: {what}: still installing ({}s) — {}", started.elapsed().as_secs(), tail(log, 1));
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}
