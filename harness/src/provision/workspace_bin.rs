//! Binaries of this workspace the stack runs: the sink, and the pods' fault proxy on the
//! Docker backend. Built with cargo when not given (`SINK_BIN`, `FAULT_PROXY_BIN`), so
//! `cargo run -p harness` and `cargo test` need no extra step.
//!
//! Always the release profile, whatever the harness's own: the run measures the sink as it
//! ships, and the proxies must not slow the hops they sit on. A debug sink tripled the apply
//! hop here (baseline e2e p50 about 300 ms against 94 ms released).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{ProvisionError, run_installer};

/// One binary of a workspace package.
pub struct WorkspaceBin {
    package: &'static str,
    /// Overrides the build with a given path.
    env: &'static str,
    what: &'static str,
    /// The progress line's label.
    label: &'static str,
    built: OnceLock<Result<PathBuf, String>>,
}

pub static SINK: WorkspaceBin =
    WorkspaceBin { package: "sink", env: "SINK_BIN", what: "sink binary", label: "sink binary (cargo build --release -p sink)", built: OnceLock::new() };
pub static FAULT_PROXY: WorkspaceBin = WorkspaceBin {
    package: "fault-proxy",
    env: "FAULT_PROXY_BIN",
    what: "fault-proxy binary",
    label: "fault-proxy binary (cargo build --release -p fault-proxy)",
    built: OnceLock::new(),
};

impl WorkspaceBin {
    /// The given binary, else a release build of it (once per process).
    pub fn ensure(&self) -> Result<PathBuf, ProvisionError> {
        if let Some(bin) = std::env::var_os(self.env) {
            return Ok(PathBuf::from(bin));
        }
        self.built.get_or_init(|| self.build().map_err(|e| e.to_string())).clone().map_err(|reason| ProvisionError::InstallFailed {
            what: self.what,
            reason,
            log: self.log(),
        })
    }

    fn log(&self) -> PathBuf {
        target_dir().join(format!("{}-build.log", self.package))
    }

    fn build(&self) -> Result<PathBuf, ProvisionError> {
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(workspace_root()).args(["build", "--release", "-p", self.package, "--bin", self.package]);
        let target = target_dir();
        std::fs::create_dir_all(&target).map_err(ProvisionError::io(&target))?;
        run_installer(self.label, &mut cmd, &self.log())?;
        let bin = target.join("release").join(self.package);
        if bin.is_file() { Ok(bin) } else { Err(ProvisionError::NotFound { what: self.what, hint: format!("{} missing after build", bin.display()) }) }
    }
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("harness lives inside the workspace")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}
