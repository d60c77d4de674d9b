//! The sink binary the local backend runs. Built from this workspace with cargo when it is
//! not given (`SINK_BIN`), so `cargo run -p harness` and `cargo test` need no extra step.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{ProvisionError, run_installer};

pub fn ensure() -> Result<PathBuf, ProvisionError> {
    if let Some(bin) = std::env::var_os("SINK_BIN") {
        return Ok(PathBuf::from(bin));
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| build().map_err(|e| e.to_string())).clone().map_err(|reason| ProvisionError::InstallFailed {
        what: "sink binary",
        reason,
        log: target_dir().join("sink-build.log"),
    })
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("harness lives inside the workspace")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

fn build() -> Result<PathBuf, ProvisionError> {
    // Same profile as the running harness so one `cargo build` serves both.
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root()).args(["build", "-p", "sink", "--bin", "sink"]);
    if release {
        cmd.arg("--release");
    }
    let target = target_dir();
    std::fs::create_dir_all(&target).map_err(super::ProvisionError::io(&target))?;
    run_installer("sink binary (cargo build -p sink)", &mut cmd, &target.join("sink-build.log"))?;
    let bin = target.join(if release { "release" } else { "debug" }).join("sink");
    if bin.is_file() { Ok(bin) } else { Err(ProvisionError::NotFound { what: "sink binary", hint: format!("{} missing after build", bin.display()) }) }
}
