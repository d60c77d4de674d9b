//! Connections to PostgreSQL: a small pool that hands out a free connection, reconnects
//! on loss, caches prepared statements per connection, and bounds every call with a
//! client-side deadline; and the retriable decision.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard, Semaphore, SemaphorePermit};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

use super::PostgresConfig;
use crate::config::TargetConfig;

/// Transient: the connection is gone or never came (no SQLSTATE, I/O source, timeout),
/// or the server says retry (connection exceptions 08, transaction rollbacks 40 such as
/// serialization failure and deadlock, insufficient resources 53, operator intervention
/// 57 such as admin shutdown or "cannot connect now", lock not available 55P03).
/// SQLSTATEs that say something about the target, not the row: retried until an operator
/// (or a failover) fixes it, never dead-lettered. Lock not available; a read-only node
/// (25006: connected to a standby); authentication and permissions (28P01, 28000, 42501);
/// a table or column that is missing (42P01, 42703: dropped, or an `ADD COLUMN` that
/// failed); I/O errors on the server (58030).
const INFRASTRUCTURE: [SqlState; 8] = [
    SqlState::LOCK_NOT_AVAILABLE,
    SqlState::READ_ONLY_SQL_TRANSACTION,
    SqlState::INVALID_PASSWORD,
    SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    SqlState::INSUFFICIENT_PRIVILEGE,
    SqlState::UNDEFINED_TABLE,
    SqlState::UNDEFINED_COLUMN,
    SqlState::IO_ERROR,
];

pub fn is_retriable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        return c.starts_with("08") || c.starts_with("40") || c.starts_with("53") || c.starts_with("57") || INFRASTRUCTURE.contains(code);
    }
    let io = e.source().is_some_and(|s| s.is::<std::io::Error>());
    io || e.to_string().contains("timeout") || e.to_string().contains("connection")
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
    pub fn new(target: &TargetConfig, settings: &PostgresConfig) -> Result<Self, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = target.url.parse()?;
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
        Ok(Self { config, slots, free: Semaphore::new(size), next: AtomicUsize::new(0), call_timeout: settings.call_timeout })
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
            let (client, connection) = match tokio::time::timeout(self.call_timeout, self.config.connect(NoTls)).await {
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
}
