//! Container logs: followed into `<run dir>/logs/<role>.log` while this process runs
//! them, read whole at `down` otherwise, and tails for error messages.

use std::fs;
use std::path::PathBuf;

use bollard::query_parameters::LogsOptions;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::lifecycle::DockerStack;
use super::spec::Role;

impl DockerStack {
    pub(super) fn log_path(&self, role: Role) -> PathBuf {
        self.run_dir.join("logs").join(format!("{}.log", role.alias()))
    }

    /// Appends the container's output to `<run dir>/logs/<role>.log` until it stops.
    pub(super) fn follow_logs(&mut self, role: Role) {
        if self.followers.get(&role).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let docker = self.docker.clone();
        let name = self.names.container(role);
        let path = self.log_path(role);
        // A re-follow after a restart starts at now: earlier output is already in the file.
        let since = if self.followers.contains_key(&role) { chrono::Utc::now().timestamp() as i32 } else { 0 };
        let handle = tokio::spawn(async move {
            let Ok(mut file) = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await else {
                return;
            };
            let mut logs = docker.logs(&name, Some(LogsOptions { follow: true, stdout: true, stderr: true, since, ..Default::default() }));
            while let Some(Ok(chunk)) = logs.next().await {
                if file.write_all(&chunk.into_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = file.flush().await;
        });
        self.followers.insert(role, handle);
    }

    pub(super) async fn log_tail(&self, role: Role, lines: usize) -> String {
        let name = self.names.container(role);
        let mut logs = self.docker.logs(&name, Some(LogsOptions { stdout: true, stderr: true, tail: lines.to_string(), ..Default::default() }));
        let mut out = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        out
    }

    /// Writes each container's whole log to its file when this process did not follow it
    /// (the stack was started by an earlier `harness up`).
    pub(super) async fn collect_logs(&self) {
        for role in self.roles() {
            if self.followers.contains_key(&role) {
                continue;
            }
            let text = self.log_tail(role, usize::MAX).await;
            if !text.is_empty() {
                let _ = fs::write(self.log_path(role), text);
            }
        }
    }
}
