//! The JVM that runs the Debezium launcher (single-file source launch needs Java 11+).

use std::path::PathBuf;
use std::process::Command;

use super::ProvisionError;

pub fn ensure() -> Result<PathBuf, ProvisionError> {
    let java =
        std::env::var_os("JAVA_HOME").map(|home| PathBuf::from(home).join("bin").join("java")).filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from("java"));
    let output = Command::new(&java).arg("-version").output().map_err(|_| ProvisionError::NotFound {
        what: "java",
        hint: "install a JDK 17+ (`apt-get install openjdk-17-jdk-headless`) or set JAVA_HOME".into(),
    })?;
    let banner = String::from_utf8_lossy(&output.stderr);
    let major = banner.split('"').nth(1).and_then(|v| v.split('.').next()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    if major < 17 {
        return Err(ProvisionError::NotFound {
            what: "java 17+",
            hint: format!("found `{}`; install openjdk-17-jdk-headless or set JAVA_HOME", banner.lines().next().unwrap_or("")),
        });
    }
    Ok(java)
}
