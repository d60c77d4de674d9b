//! The idle phase of a scenario: after the load, the captured tables are left alone while
//! another table of the same database is written. Every write makes WAL the replication
//! slot must release; without a heartbeat a connector sees no newer position to confirm,
//! and the slot's backlog grows with the other table's writes (unbounded WAL, a full disk
//! in production).

use std::time::{Duration, Instant};

use crate::orchestrator::PgEndpoint;
use crate::scenario::IdlePhase;

/// Batches per second: the rate is kept in tenths of a second.
const TICKS_PER_SEC: u32 = 10;

/// What the idle phase wrote.
pub struct IdleWrites {
    pub rows: u64,
    /// WAL the database generated meanwhile: what a slot that confirms nothing would hold.
    pub wal_bytes: u64,
}

/// Writes `phase.writes_per_sec` rows a second to `harness.idle_writes` (outside the
/// publication) for `phase.duration`.
pub async fn run(source: &PgEndpoint, phase: &IdlePhase) -> Result<IdleWrites, crate::orchestrator::PgConnectError> {
    let client = source.connect("app").await?;
    client.batch_execute("CREATE TABLE IF NOT EXISTS harness.idle_writes (id bigserial PRIMARY KEY, payload text NOT NULL)").await?;
    let statement = client
        .prepare(
            "INSERT INTO harness.idle_writes (payload)
             SELECT (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, $2::int) i) FROM generate_series(1, $1::int) g",
        )
        .await?;
    let wal_start: String = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
    let chunks = (phase.row_bytes / 32).max(1) as i32;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / TICKS_PER_SEC);
    let (mut rows, mut ticks) = (0u64, 0u64);
    while started.elapsed() < phase.duration {
        tick.tick().await;
        ticks += 1;
        // Rows due by this tick, so a rate that is not a multiple of the ticks still holds.
        let due = ticks * u64::from(phase.writes_per_sec) / u64::from(TICKS_PER_SEC);
        let batch = due.saturating_sub(rows) as i32;
        if batch > 0 {
            client.execute(&statement, &[&batch, &chunks]).await?;
            rows += batch as u64;
        }
    }
    let wal: i64 = client.query_one("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::int8", &[&wal_start]).await?.get(0);
    // What it wrote is not the pipeline's: leave the database as it was.
    client.batch_execute("DROP TABLE IF EXISTS harness.idle_writes").await?;
    Ok(IdleWrites { rows, wal_bytes: wal.max(0) as u64 })
}
