//! Child processes of the local backend: each in its own process group (so a kill reaches
//! whatever it forks), output appended to `<run dir>/logs/<service>.log`, identified by
//! pid plus start time so that a later `harness down` never signals a recycled pid.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::orchestrator::wait::NotReady;

/// What identifies a started process across harness invocations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessHandle {
    pub pid: i32,
    /// Clock ticks since boot at which the process started (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
    pub log: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot open log {path}: {source}")]
    Log { path: PathBuf, source: std::io::Error },
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
}

/// Spawns `command` in a new process group with stdout and stderr appended to `log`.
pub fn spawn(mut command: Command, log: &Path) -> Result<ProcessHandle, ProcessError> {
    use std::os::unix::process::CommandExt;
    let open = || OpenOptions::new().create(true).append(true).open(log).map_err(|source| ProcessError::Log { path: log.to_path_buf(), source });
    let child = command
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessError::Spawn { program: format!("{:?}", command.get_program()), source })?;
    let pid = child.id() as i32;
    // The harness may exit while the service keeps running (`harness up`); a reaper thread
    // collects the exit status if the harness is still alive then, so no zombie is left.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(ProcessHandle { pid, start_ticks: start_ticks(pid).unwrap_or(0), log: log.to_path_buf() })
}

fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after the closing paren are plain.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

impl ProcessHandle {
    /// True while the very process that was started is running (not a recycled pid).
    pub fn is_alive(&self) -> bool {
        match start_ticks(self.pid) {
            Some(ticks) => (self.start_ticks == 0 || ticks == self.start_ticks) && !is_zombie(self.pid),
            None => false,
        }
    }

    /// Sends `signal` to the whole process group.
    pub fn signal(&self, signal: Signal) -> nix::Result<()> {
        if !self.is_alive() {
            return Ok(());
        }
        killpg(Pid::from_raw(self.pid), signal)
    }

    /// Asks the group to stop with `signal`, waits up to `grace`, then SIGKILLs the group.
    /// Returns whether the process stopped on its own within the grace period.
    pub fn stop(&self, signal: Signal, grace: Duration) -> bool {
        if !self.is_alive() {
            self.kill_group();
            return true;
        }
        let _ = self.signal(signal);
        if self.wait_exit(grace) {
            self.kill_group(); // stragglers it forked
            return true;
        }
        self.kill_group();
        self.wait_exit(Duration::from_secs(5));
        false
    }

    fn kill_group(&self) {
        // The group may outlive its leader (forked helpers); killpg on an empty group is harmless.
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
    }

    /// Waits until the process has exited.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let exited = || if self.is_alive() { Err(NotReady::<(), ()>::Yet(())) } else { Ok(()) };
        crate::orchestrator::wait::poll_blocking(timeout, Duration::from_millis(20), exited).is_ok() || !self.is_alive()
    }

    /// Last lines of the service's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A child owned by one function: stopped (SIGTERM, then SIGKILL after the grace) when this
/// value is dropped, so an early return or a panic cannot leave it running.
pub struct OwnedProcess(pub ProcessHandle);

impl std::ops::Deref for OwnedProcess {
    type Target = ProcessHandle;
    fn deref(&self) -> &ProcessHandle {
        &self.0
    }
}

impl Drop for OwnedProcess {
    fn drop(&mut self) {
        self.0.stop(Signal::SIGTERM, Duration::from_secs(30));
    }
}
