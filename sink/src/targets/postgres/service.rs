//! Connections to PostgreSQL: a small pool that hands out a free connection, reconnects
//! on loss, caches prepared statements per connection, and bounds every call with a
//! client-side deadline; and the retriable decision.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard, Semaphore, SemaphorePermit};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use super::PostgresConfig;
use crate::config::TargetConfig;
use crate::targets::ErrorClass;

/// Server errors about the target, not the row: nothing but an operator (or a failover)
/// fixes them. Credentials (28000, 28P01), permissions (42501: also "must be owner" of a
/// refused `ALTER TABLE`), a missing database, schema, table or column (3D000, 3F000,
/// 42P01, 42703: dropped, or an `ADD COLUMN` that failed), a read-only node (25006: a
/// standby, or a demoted primary after a failover; the connection is dropped so the retry
/// looks for the primary again).
const TARGET: [SqlState; 8] = [
    SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    SqlState::INVALID_PASSWORD,
    SqlState::INSUFFICIENT_PRIVILEGE,
    SqlState::INVALID_CATALOG_NAME,
    SqlState::INVALID_SCHEMA_NAME,
    SqlState::UNDEFINED_TABLE,
    SqlState::UNDEFINED_COLUMN,
    SqlState::READ_ONLY_SQL_TRANSACTION,
];

/// Transient server errors: connection exceptions (08), transaction rollbacks (40:
/// serialization failure, deadlock), insufficient resources (53), operator intervention
/// (57: admin shutdown, "cannot connect now", statement timeout), lock not available
/// (55P03), I/O and system errors of the server (58030, 58000).
fn transient(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08")
        || c.starts_with("40")
        || c.starts_with("53")
        || c.starts_with("57")
        || [SqlState::LOCK_NOT_AVAILABLE, SqlState::IO_ERROR, SqlState::SYSTEM_ERROR].contains(code)
}

pub(crate) fn class_of_sqlstate(code: &SqlState) -> ErrorClass {
    if TARGET.contains(code) {
        ErrorClass::Target
    } else if transient(code) {
        ErrorClass::Transient
    } else {
        ErrorClass::Record
    }
}

/// A server error by its SQLSTATE; without one, a lost or never-made connection (closed,
/// an I/O source, a timeout) is transient and anything else (a value the client could not
/// encode) is the row's.
pub fn class_of(e: &tokio_postgres::Error) -> ErrorClass {
    if e.is_closed() {
        return ErrorClass::Transient;
    }
    if let Some(code) = e.code() {
        return class_of_sqlstate(code);
    }
    let text = e.to_string();
    if e.source().is_some_and(|s| s.is::<std::io::Error>()) || text.contains("timeout") || text.contains("connection") {
        ErrorClass::Transient
    } else {
        ErrorClass::Record
    }
}

pub struct Conn {
    pub client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    /// The prepared statement for `sql`, prepared once per connection.
    pub async fn statement(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

pub struct Pool {
    config: tokio_postgres::Config,
    /// Connects with the URL's sslmode (libpq's meaning) and certificates.
    tls: secure_conn::pg::Connector,
    slots: Vec<Mutex<Option<Conn>>>,
    /// One permit per slot: a caller waits here only while every connection is busy.
    free: Semaphore,
    /// Where the search for a free slot starts, so connections are used evenly.
    next: AtomicUsize,
    /// Client-side deadline of one call (connect, prepare, statement).
    pub call_timeout: Duration,
}

/// A connection checked out of the pool; put back (unlocked) on drop.
pub struct Lease<'a> {
    guard: MutexGuard<'a, Option<Conn>>,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    pub fn conn(&mut self) -> &mut Conn {
        self.guard.as_mut().expect("leases always hold a connection")
    }

    /// Drops the connection (its state is unknown after a missed deadline); the slot
    /// reconnects on its next lease.
    pub fn discard(&mut self) {
        *self.guard = None;
    }
}

impl Pool {
    /// The URL was validated at load (its TLS files too); they are read again here, once:
    /// a certificate replaced later takes effect at the next start.
    pub fn new(target: &TargetConfig, settings: &PostgresConfig) -> Result<Self, super::super::TargetError> {
        let dsn = secure_conn::pg::Dsn::parse(&target.url).map_err(|e| super::super::TargetError::Tls(e.to_string()))?;
        let tls = dsn.connector().map_err(|e| super::super::TargetError::Tls(e.to_string()))?;
        let mut config = dsn.config;
        if let Some(password) = &target.password {
            config.password(password.expose());
        }
        config.connect_timeout(settings.connect_timeout);
        config.application_name("cdc-sink");
        // Never write to a standby: with several hosts in the URL, libpq-style failover
        // picks the primary.
        config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        // A peer that vanished (a blackholed link, a host gone) is noticed by TCP instead of
        // a write waiting forever: unacknowledged data fails after tcp_user_timeout, an
        // idle connection is probed by keepalives.
        config.tcp_user_timeout(settings.tcp_user_timeout);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        // synchronous_commit=on whatever the server, database or role default: an offset is
        // stored once a write returns, so the write must be on disk (WAL flushed, and on a
        // synchronous standby where one is configured) when it does. `off` or `local` would
        // let a server crash lose writes whose offsets are already committed.
        config.options(format!("-c statement_timeout={} -c synchronous_commit=on", settings.statement_timeout.as_millis()));
        let size = settings.pool_size.max(1);
        let slots = (0..size).map(|_| Mutex::new(None)).collect();
        Ok(Self { config, tls, slots, free: Semaphore::new(size), next: AtomicUsize::new(0), call_timeout: settings.call_timeout })
    }

    /// A free live connection, reconnected if it was lost. Waits only while every
    /// connection is in use: one stuck connection never blocks a caller while another is free.
    pub async fn get(&self) -> Result<Lease<'_>, super::super::TargetError> {
        let permit = self.free.acquire().await.expect("the pool's semaphore is never closed");
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.slots.len();
        // A permit per slot means one is free. A baseline run still found none once (a
        // panic, `try_lock` on every slot failing, cause not found): then wait for the
        // slot this lease would have started at instead of failing the batch.
        let mut guard = match (0..n).find_map(|i| self.slots[(start + i) % n].try_lock().ok()) {
            Some(guard) => guard,
            None => {
                tracing::warn!(message = "no free pool slot despite a permit; waiting for one");
                self.slots[start % n].lock().await
            }
        };
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *guard = None;
            let (client, connection) = match tokio::time::timeout(self.call_timeout, self.tls.connect(&self.config)).await {
                Ok(connected) => connected?,
                Err(_) => return Err(super::super::TargetError::Timeout { operation: "connect", after: self.call_timeout }),
            };
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(message = "postgres connection closed", %error);
                }
            });
            *guard = Some(Conn { client, statements: HashMap::new() });
        }
        Ok(Lease { guard, _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every session the pool opens asks for synchronous_commit=on, so a write that returned
    /// (and whose offset is then stored) is durable.
    #[test]
    fn sessions_commit_synchronously() {
        let config: crate::config::SinkConfig = crate::config::SinkConfig::from_toml(
            "[kafka]\nbrokers=\"x:1\"\ngroup_id=\"g\"\ntopics=[\"cdc.public.orders\"]\ndlq_topic=\"cdc.dlq\"\n\
             [target]\nkind=\"postgres\"\nurl=\"host=127.0.0.1 user=u dbname=d\"\n[http]\nlisten=\"127.0.0.1:0\"\n",
            [("SINK__TARGET__PASSWORD".to_string(), "p".to_string())],
        )
        .unwrap();
        let pool = Pool::new(&config.target, &config.target.postgres).unwrap();
        let options = pool.config.get_options().unwrap_or_default();
        assert!(options.contains("-c synchronous_commit=on"), "{options}");
    }

    /// Credentials, permissions, missing objects and read-only nodes are the target's fault
    /// (stall, never dead-letter); connection, rollback and resource errors are transient;
    /// what is left is the row's.
    #[test]
    fn sqlstates_are_classified_by_whom_they_are_about() {
        for code in ["28P01", "28000", "42501", "42P01", "42703", "25006", "3D000", "3F000"] {
            assert_eq!(class_of_sqlstate(&SqlState::from_code(code)), ErrorClass::Target, "{code}");
        }
        for code in ["08006", "08001", "40001", "40P01", "53300", "57P01", "57P03", "57014", "55P03", "58030"] {
            assert_eq!(class_of_sqlstate(&SqlState::from_code(code)), ErrorClass::Transient, "{code}");
        }
        for code in ["22003", "23502", "23505", "22P02", "54000"] {
            assert_eq!(class_of_sqlstate(&SqlState::from_code(code)), ErrorClass::Record, "{code}");
        }
    }
}
