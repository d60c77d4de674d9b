//! PostgreSQL for the local backend: a private cluster in `<run dir>/postgres`, on a free
//! loopback port, `wal_level=logical`, run as a non-root user (initdb refuses root).

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::unistd::{Uid, User};

use super::process::{self, ProcessHandle};
use crate::config::{SOURCE_DB, TARGET_DB};
use crate::orchestrator::wait::{NotReady, WaitFor};
use crate::orchestrator::{PgEndpoint, Secret, ServiceError, ServiceKind};

/// Databases created in the cluster: the application's (captured by Debezium) and the
/// sink's PostgreSQL target.
const SUPERUSER: &str = "postgres";

pub struct PostgresLayout {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl PostgresLayout {
    pub fn new(run_dir: &Path) -> Self {
        let dir = run_dir.join("postgres");
        Self { data: dir.join("data"), log: run_dir.join("logs").join("postgres.log"), dir }
    }
}

/// The unprivileged account the server runs as when the harness runs as root.
/// The group that must traverse the run folder to reach the server's own folder: the
/// service user's when the server runs as one.
pub fn traverse_gid() -> Result<Option<u32>, ServiceError> {
    Ok(service_user()?.map(|u| u.gid.as_raw()))
}

fn service_user() -> Result<Option<User>, ServiceError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = User::from_name(name) {
            return Ok(Some(user));
        }
    }
    Err(ServiceError::Setup { service: ServiceKind::Postgres, reason: "running as root and no `postgres` or `nobody` user exists to run the server".into() })
}

fn as_service_user(command: &mut Command, user: &Option<User>) {
    if let Some(user) = user {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
}

fn setup_err(reason: impl Into<String>) -> ServiceError {
    ServiceError::Setup { service: ServiceKind::Postgres, reason: reason.into() }
}

/// Creates the cluster (initdb) unless it exists. Returns the endpoint (without starting).
pub fn init(bin_dir: &Path, layout: &PostgresLayout, port: u16, password: &Secret) -> Result<PgEndpoint, ServiceError> {
    let user = service_user()?;
    let endpoint = PgEndpoint {
        host: "127.0.0.1".into(),
        port,
        user: SUPERUSER.into(),
        password: password.clone(),
        source_db: SOURCE_DB.into(),
        target_db: TARGET_DB.into(),
        target_server: None,
        source_schema: crate::orchestrator::PUBLIC_SCHEMA.into(),
        params: Default::default(),
    };
    if layout.data.join("PG_VERSION").is_file() {
        return Ok(endpoint);
    }
    fs::create_dir_all(&layout.dir).map_err(|e| setup_err(format!("{}: {e}", layout.dir.display())))?;
    ensure_traversable(&layout.dir)?;
    let pwfile = layout.dir.join(".pwfile");
    crate::orchestrator::state::write_private(&pwfile, password.expose().as_bytes()).map_err(|e| setup_err(e.to_string()))?;
    if let Some(u) = &user {
        for path in [&layout.dir, &pwfile] {
            chown(path, Some(u.uid.as_raw()), Some(u.gid.as_raw())).map_err(|e| setup_err(format!("chown {}: {e}", path.display())))?;
        }
    }
    let mut initdb = Command::new(bin_dir.join("initdb"));
    initdb
        .arg("-D")
        .arg(&layout.data)
        .args(["-U", SUPERUSER, "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .current_dir(&layout.dir);
    as_service_user(&mut initdb, &user);
    let out = initdb.output().map_err(|e| setup_err(format!("cannot run initdb: {e}")))?;
    let _ = fs::remove_file(&pwfile);
    if !out.status.success() {
        return Err(setup_err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let conf = format!(
        // No Unix socket: every client uses TCP, and a socket path under a deep run folder
        // can exceed the 107-byte limit.
        "\n# cdc-harness\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n\
         wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\nmax_connections = 200\n\
         shared_buffers = 256MB\ntrack_commit_timestamp = on\nsynchronous_commit = on\nfsync = on\nlog_min_messages = warning\n\
         log_line_prefix = '%m [%p] %q%u@%d '\n"
    );
    let conf_path = layout.data.join("postgresql.conf");
    let mut text = fs::read_to_string(&conf_path).map_err(|e| setup_err(e.to_string()))?;
    text.push_str(&conf);
    fs::write(&conf_path, text).map_err(|e| setup_err(e.to_string()))?;
    // Debezium connects over TCP for replication.
    let hba = layout.data.join("pg_hba.conf");
    let mut hba_text = fs::read_to_string(&hba).map_err(|e| setup_err(e.to_string()))?;
    hba_text.push_str("host replication all 127.0.0.1/32 scram-sha-256\n");
    fs::write(&hba, hba_text).map_err(|e| setup_err(e.to_string()))?;
    Ok(endpoint)
}

/// The server's user must reach its directory: every ancestor needs the search bit.
fn ensure_traversable(dir: &Path) -> Result<(), ServiceError> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let gid = traverse_gid()?;
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(ancestor) else { continue };
        // The run folder itself is 0710 with the service user's group (`state::private_dir`).
        let by_group = gid == Some(std::os::unix::fs::MetadataExt::gid(&meta)) && meta.permissions().mode() & 0o010 != 0;
        if meta.permissions().mode() & 0o001 == 0 && !by_group {
            return Err(setup_err(format!(
                "{} is not searchable by the unprivileged postgres user (mode {:o}); use a --run-dir outside it (e.g. under /tmp or the workspace)",
                ancestor.display(),
                meta.permissions().mode() & 0o777
            )));
        }
    }
    Ok(())
}

pub fn start(bin_dir: &Path, layout: &PostgresLayout) -> Result<ProcessHandle, ServiceError> {
    let user = service_user()?;
    // A kill -9 leaves a stale pid file; postgres removes it itself when the pid is dead.
    let mut cmd = Command::new(bin_dir.join("postgres"));
    cmd.arg("-D").arg(&layout.data).current_dir(&layout.dir);
    as_service_user(&mut cmd, &user);
    process::spawn(cmd, &layout.log).map_err(|e| ServiceError::Start { service: ServiceKind::Postgres, reason: e.to_string() })
}

/// Waits until `select 1` succeeds on the source database's server.
pub async fn wait_ready(endpoint: &PgEndpoint, handle: &ProcessHandle, timeout: Duration) -> Result<(), ServiceError> {
    WaitFor::new(ServiceKind::Postgres, timeout, handle.log.clone())
        .poll(Duration::from_millis(100))
        .until(|| async {
            if !handle.is_alive() {
                return Err(NotReady::Never(ServiceError::Exited { service: ServiceKind::Postgres, log: handle.log.clone(), tail: handle.log_tail(15) }));
            }
            let client = endpoint.connect("postgres").await.map_err(|e| e.to_string())?;
            client.simple_query("select 1").await.map(|_| ()).map_err(|e| NotReady::Yet(e.to_string()))
        })
        .await
}

/// Creates the two databases, the source schema and the seed data (idempotent: skipped
/// when the source database already exists).
pub async fn bootstrap(endpoint: &PgEndpoint, seed: &crate::config::SeedConfig) -> Result<bool, ServiceError> {
    let admin = endpoint.connect("postgres").await.map_err(|e| setup_err(e.to_string()))?;
    let exists = admin.query_opt("select 1 from pg_database where datname = $1", &[&SOURCE_DB]).await.map_err(|e| setup_err(e.to_string()))?.is_some();
    if exists {
        return Ok(false);
    }
    for db in [SOURCE_DB, TARGET_DB] {
        admin.batch_execute(&format!("CREATE DATABASE {db}")).await.map_err(|e| setup_err(format!("create database {db}: {e}")))?;
    }
    let source = endpoint.connect(SOURCE_DB).await.map_err(|e| setup_err(e.to_string()))?;
    source.batch_execute(include_str!("../../../sql/source_schema.sql")).await.map_err(|e| setup_err(format!("source schema: {e}")))?;
    source.batch_execute(&seed_sql(seed)).await.map_err(|e| setup_err(format!("seed data: {e}")))?;
    Ok(true)
}

fn seed_sql(seed: &crate::config::SeedConfig) -> String {
    // setseed wants a value in [-1, 1].
    let fraction = (seed.seed % 1_000_000) as f64 / 1_000_000.0;
    include_str!("../../../sql/seed.sql")
        .replace(":seed_fraction", &format!("{fraction}"))
        .replace(":seed", &seed.seed.to_string())
        .replace(":customers", &seed.customers.to_string())
}
