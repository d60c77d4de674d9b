//! PostgreSQL server binaries are taken from the system (Debian's packages), never built.

use std::path::PathBuf;
use std::process::Command;

use super::ProvisionError;

/// Directory holding `initdb` and `postgres`.
pub fn bin_dir() -> Result<PathBuf, ProvisionError> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    for major in [17, 16, 15, 14] {
        let dir = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
        if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
            return Ok(dir);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    Err(ProvisionError::NotFound {
        what: "PostgreSQL server binaries (initdb, postgres)",
        hint: "install them with `apt-get install postgresql-15` (Debian) or point PG_BIN_DIR at their directory".into(),
    })
}
