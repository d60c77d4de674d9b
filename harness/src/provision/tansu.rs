//! The Kafka-API broker used by the local backend: `tansu`, built from crates.io with
//! `cargo install` into the cache (takes several minutes once).

use std::path::PathBuf;
use std::process::Command;

use super::{Cache, ProvisionError, run_installer};

/// Pinned so every machine runs the broker the harness was tested with.
pub const TANSU_VERSION: &str = "0.6.0";

pub fn ensure(cache: &Cache) -> Result<PathBuf, ProvisionError> {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let root = cache.dir("tansu");
    let bin = root.join("bin").join("tansu");
    if bin.is_file() {
        return Ok(bin);
    }
    let _lock = cache.lock("tansu")?;
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("provision: building tansu {TANSU_VERSION} from crates.io into {} (first run only, about 10 minutes on 2 cores)", root.display());
    std::fs::create_dir_all(&root).map_err(ProvisionError::io(&root))?;
    let log = cache.dir("tansu-install.log");
    run_installer(
        "tansu",
        Command::new("cargo").args(["install", "tansu", "--version", TANSU_VERSION, "--locked", "--features", "libsql,dynostore", "--root"]).arg(&root),
        &log,
    )?;
    if !bin.is_file() {
        return Err(ProvisionError::InstallFailed { what: "tansu", reason: format!("cargo install finished but {} is missing", bin.display()), log });
    }
    eprintln!("provision: tansu ready");
    Ok(bin)
}
