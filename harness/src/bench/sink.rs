//! `harness bench sink --target postgres --events N`: N Debezium change events preloaded
//! into the broker, and from one run:
//! - `events_per_sec`: the real sink binary applying them from offset zero (and again in
//!   audit mode, for the apply log's cost);
//! - `consumer_read_per_sec`: a bare consumer reading the same topic from the same broker,
//!   the ceiling of any consumer of this broker;
//! - `apply_events_per_sec`: the sink's handler fed the same events from memory
//!   (`sink bench-apply`), no broker: the sink's own share;
//! - `baseline_events_per_sec`: the same rows upserted straight into PostgreSQL by one
//!   stream of batched `INSERT ... SELECT FROM unnest(...) ON CONFLICT` statements;
//! - `dlq_letters_per_sec`: the real sink dead-lettering a flood of `dlq_events` records that
//!   are no events (each a `decode` letter), acknowledged by the DLQ, from another topic;
//! - `dlq_raw_produce_per_sec`: the same number of records, with the letters' headers, key
//!   and value, produced straight to a topic by a producer set as the sink's DLQ producer
//!   (idempotent, `acks=all`): the ceiling of any dead-lettering on this broker, so
//!   `dlq_ratio_to_raw_produce` is the sink's own share;
//! - `dlq_raw_produce_no_headers_per_sec`: the same produce without the headers, which shows
//!   what the headers cost this broker (tansu stores each header as a row of its own).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use uuid::Uuid;

use crate::orchestrator::local::process::{self, free_port};
use crate::run::sink_metrics;
use crate::testing::{TestBroker, TestPostgres, run_dir};

/// Rows per statement in the baseline (the sink's default batch size).
const BASELINE_BATCH: usize = 4096;
const TOPIC: &str = "cdc.public.customer";
/// The topic of the bad records.
const BAD_TOPIC: &str = "cdc.public.address";
/// Where the raw baseline produces its letter-shaped records.
const RAW_LETTERS_TOPIC: &str = "cdc.bench.raw-letters";
/// Where the raw baseline produces the same records without headers.
const RAW_BARE_TOPIC: &str = "cdc.bench.raw-bare";

#[derive(Debug, Serialize)]
pub struct SinkBench {
    pub events: u64,
    /// Events applied per second by the sink (first applied -> last applied).
    pub events_per_sec: f64,
    pub sink_seconds: f64,
    /// Rows upserted per second straight into PostgreSQL.
    pub baseline_events_per_sec: f64,
    pub baseline_seconds: f64,
    pub ratio_to_baseline: f64,
    /// events_per_sec / consumer_read_per_sec: 1.0 means the sink keeps up with the broker.
    pub ratio_to_consumer_read: f64,
    /// The sink's handler fed from memory into the same target (no broker), the events
    /// spread by key over `partitions` concurrent partition tasks as the topic spreads them.
    pub apply_events_per_sec: f64,
    pub apply_seconds: f64,
    /// Of the apply path, decoding and validating only (no write, no target).
    pub decode_seconds: f64,
    /// The apply path from memory in audit mode (one apply log row per event, written in
    /// the same statement): where the apply log's cost shows, the broker being out of it.
    pub apply_audit_events_per_sec: f64,
    /// apply_audit_events_per_sec / apply_events_per_sec.
    pub apply_audit_ratio: f64,
    /// apply_events_per_sec / baseline_events_per_sec.
    pub apply_ratio_to_baseline: f64,
    /// The same events applied by the sink in audit mode (one apply log row per event).
    pub audit_events_per_sec: f64,
    pub audit_seconds: f64,
    /// audit_events_per_sec / events_per_sec: what the apply log costs.
    pub audit_ratio: f64,
    /// Messages per second a bare consumer reads from the broker: the ceiling any
    /// consumer of this broker has.
    pub consumer_read_per_sec: f64,
    /// Bad records (no Debezium event: each a `decode` letter) in the flood.
    pub dlq_events: u64,
    /// Letters per second the DLQ acknowledged while the sink dead-lettered the flood
    /// (first letter -> last).
    pub dlq_letters_per_sec: f64,
    pub dlq_seconds: f64,
    /// Letter-shaped records per second an idempotent `acks=all` producer writes straight
    /// to this broker (no sink): the DLQ's ceiling here.
    pub dlq_raw_produce_per_sec: f64,
    /// The same records produced the same way without the six headers: the broker's
    /// produce rate when headers cost nothing.
    pub dlq_raw_produce_no_headers_per_sec: f64,
    /// dlq_letters_per_sec / dlq_raw_produce_per_sec: 1.0 means the sink dead-letters as
    /// fast as the broker takes letters.
    pub dlq_ratio_to_raw_produce: f64,
    pub partitions: u32,
}

struct Change {
    id: Uuid,
    email: String,
    status: &'static str,
    lsn: i64,
    op: char,
}

/// Customer inserts and updates (80/20) over fresh keys, with increasing LSNs.
fn changes(n: u64, seed: u64) -> Vec<Change> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut keys: Vec<Uuid> = Vec::new();
    let statuses = ["active", "inactive", "blocked"];
    (0..n)
        .map(|i| {
            let update = !keys.is_empty() && rng.random_range(0..100) < 20;
            let id = if update { keys[rng.random_range(0..keys.len())] } else { Uuid::new_v4() };
            if !update {
                keys.push(id);
            }
            Change {
                id,
                email: format!("bench{i}@example.com"),
                status: statuses[rng.random_range(0..3)],
                lsn: 1_000_000 + i as i64 * 8,
                op: if update { 'u' } else { 'c' },
            }
        })
        .collect()
}

fn envelope(c: &Change, ts_ms: i64) -> String {
    serde_json::json!({
        "before": null,
        "after": { "id": c.id, "email": c.email, "status": c.status, "updated_at": "2026-01-01T00:00:00.000000Z" },
        "source": { "version": "3.6.3.Final", "connector": "postgresql", "name": "cdc", "ts_ms": ts_ms, "db": "app", "schema": "public", "table": "customer", "lsn": c.lsn, "txId": c.lsn / 8 },
        "op": c.op.to_string(),
        "ts_ms": ts_ms,
    })
    .to_string()
}

pub async fn run(events: u64, partitions: u32, dlq_events: u64) -> anyhow::Result<SinkBench> {
    let pg = TestPostgres::start("bench-sink").await?;
    let broker = TestBroker::start(
        "bench-sink",
        &[TOPIC.to_string(), BAD_TOPIC.to_string(), crate::config::DLQ_TOPIC.to_string(), RAW_LETTERS_TOPIC.to_string(), RAW_BARE_TOPIC.to_string()],
        partitions,
    )
    .await?;
    let changes = changes(events, 42);
    eprintln!("bench sink: producing {events} events");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let ts_ms = chrono::Utc::now().timestamp_millis();
    let events_file = run_dir("bench-sink-events").join("events.ndjson");
    write_events(&events_file, &changes, ts_ms)?;
    let producer = &producer;
    send_all(changes.iter().map(|c| async move {
        let (key, value) = (format!("{{\"id\":\"{}\"}}", c.id), envelope(c, ts_ms));
        producer.send(FutureRecord::to(TOPIC).key(&key).payload(&value), Duration::from_secs(60)).await.map(|_| ()).map_err(|(e, _)| e)
    }))
    .await?;
    // Records that are no Debezium event: each one a `decode` letter.
    let bad: Vec<(String, String)> =
        (0..dlq_events).map(|i| (format!("{{\"id\":\"{}\"}}", Uuid::from_u128(u128::from(i))), format!("{{\"not_an_event\":{i}}}"))).collect();
    send_all(bad.iter().map(|(key, value)| async move {
        producer.send(FutureRecord::to(BAD_TOPIC).key(key).payload(value), Duration::from_secs(60)).await.map(|_| ()).map_err(|(e, _)| e)
    }))
    .await?;

    let broker_read_seconds = read_all(&broker.bootstrap, TOPIC, events).await?;

    let bin = tokio::task::spawn_blocking(|| crate::provision::workspace_bin::SINK.ensure()).await??;
    let dlq_seconds = sink_pass(&bin, &pg, &broker, Pass { topic: BAD_TOPIC, metric: "sink_dlq_events_total", events: dlq_events, audit: false }).await?;
    // Every letter is in the DLQ topic.
    read_all(&broker.bootstrap, crate::config::DLQ_TOPIC, dlq_events).await?;
    let raw_letters_seconds = raw_letters(&broker.bootstrap, &bad, Headers::Letters).await?;
    let raw_bare_seconds = raw_letters(&broker.bootstrap, &bad, Headers::None).await?;
    let sink_seconds = sink_pass(&bin, &pg, &broker, Pass { topic: TOPIC, metric: "sink_events_processed_total", events, audit: false }).await?;
    // Audit mode on an emptied target (the same events would all be stale otherwise).
    let target = pg.endpoint.connect_target().await?;
    target.batch_execute("TRUNCATE customer_materialized; DROP TABLE IF EXISTS _cdc_apply_log").await?;
    let audit_seconds = sink_pass(&bin, &pg, &broker, Pass { topic: TOPIC, metric: "sink_events_processed_total", events, audit: true }).await?;
    let logged: i64 = target.query_one("SELECT count(*) FROM _cdc_apply_log", &[]).await?.get(0);
    anyhow::ensure!(logged as u64 == events, "audit mode logged {logged} of {events} events");

    target.batch_execute("TRUNCATE customer_materialized; DROP TABLE IF EXISTS _cdc_apply_log").await?;
    let (apply_seconds, decode_seconds) = apply_pass(&bin, &pg, &broker, &events_file, partitions, false).await?;
    let keys = changes.iter().map(|c| c.id).collect::<std::collections::HashSet<_>>().len() as i64;
    let rows: i64 = target.query_one("SELECT count(*) FROM customer_materialized", &[]).await?.get(0);
    anyhow::ensure!(rows == keys, "the apply pass left {rows} rows for {keys} keys");
    target.batch_execute("TRUNCATE customer_materialized").await?;
    let (apply_audit_seconds, _) = apply_pass(&bin, &pg, &broker, &events_file, partitions, true).await?;
    let logged: i64 = target.query_one("SELECT count(*) FROM _cdc_apply_log", &[]).await?.get(0);
    anyhow::ensure!(logged as u64 == events, "the audited apply pass logged {logged} of {events} events");

    let baseline_seconds = baseline(&pg, &changes).await?;
    let events_per_sec = events as f64 / sink_seconds;
    let audit_events_per_sec = events as f64 / audit_seconds;
    let baseline_events_per_sec = events as f64 / baseline_seconds;
    let consumer_read_per_sec = events as f64 / broker_read_seconds;
    let apply_events_per_sec = events as f64 / apply_seconds;
    Ok(SinkBench {
        events,
        events_per_sec,
        sink_seconds,
        baseline_events_per_sec,
        baseline_seconds,
        ratio_to_baseline: events_per_sec / baseline_events_per_sec,
        ratio_to_consumer_read: events_per_sec / consumer_read_per_sec,
        apply_events_per_sec,
        apply_seconds,
        decode_seconds,
        apply_audit_events_per_sec: events as f64 / apply_audit_seconds,
        apply_audit_ratio: apply_seconds / apply_audit_seconds,
        apply_ratio_to_baseline: apply_events_per_sec / baseline_events_per_sec,
        audit_events_per_sec,
        audit_seconds,
        audit_ratio: audit_events_per_sec / events_per_sec,
        consumer_read_per_sec,
        dlq_events,
        dlq_letters_per_sec: dlq_events as f64 / dlq_seconds,
        dlq_seconds,
        dlq_raw_produce_per_sec: dlq_events as f64 / raw_letters_seconds,
        dlq_raw_produce_no_headers_per_sec: dlq_events as f64 / raw_bare_seconds,
        dlq_ratio_to_raw_produce: raw_letters_seconds / dlq_seconds,
        partitions,
    })
}

#[derive(Clone, Copy)]
enum Headers {
    /// The six `dlq.*` headers a letter carries (a decode error's length of reason).
    Letters,
    None,
}

/// The DLQ's ceiling on this broker: the bad records, as letters (`Headers::Letters`) or
/// bare, produced by a producer set as the sink's DLQ producer; seconds from the first send
/// to the last acknowledgement.
async fn raw_letters(bootstrap: &str, bad: &[(String, String)], headers: Headers) -> anyhow::Result<f64> {
    use rdkafka::message::{Header, OwnedHeaders};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()?;
    let reason = "not a Debezium change event: expected an envelope with `op` or a flattened row";
    let started = Instant::now();
    let producer = &producer;
    send_all(bad.iter().enumerate().map(|(offset, (key, value))| async move {
        let record = match headers {
            Headers::Letters => {
                let offset = offset.to_string();
                let headers = OwnedHeaders::new_with_capacity(6)
                    .insert(Header { key: "dlq.rule", value: Some("decode") })
                    .insert(Header { key: "dlq.reason", value: Some(reason) })
                    .insert(Header { key: "dlq.entity", value: Some("address") })
                    .insert(Header { key: "dlq.original.topic", value: Some(BAD_TOPIC) })
                    .insert(Header { key: "dlq.original.partition", value: Some("0") })
                    .insert(Header { key: "dlq.original.offset", value: Some(offset.as_str()) });
                FutureRecord::to(RAW_LETTERS_TOPIC).key(key).payload(value).headers(headers)
            }
            Headers::None => FutureRecord::to(RAW_BARE_TOPIC).key(key).payload(value),
        };
        producer.send(record, Duration::from_secs(60)).await.map(|_| ()).map_err(|(e, _)| e)
    }))
    .await?;
    Ok(started.elapsed().as_secs_f64().max(1e-3))
}

/// Awaits every send, 5,000 in flight at a time (the producer's queue and the futures'
/// memory stay bounded); the first failed send fails all.
async fn send_all<F>(sends: impl Iterator<Item = F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<(), rdkafka::error::KafkaError>>,
{
    let mut pending = Vec::with_capacity(5000);
    for send in sends {
        pending.push(send);
        if pending.len() >= 5000 {
            for r in futures::future::join_all(pending.drain(..)).await {
                r?;
            }
        }
    }
    for r in futures::future::join_all(pending).await {
        r?;
    }
    Ok(())
}

/// One run of the sink binary: `events` counted by `metric` from the records of `topic`.
struct Pass {
    topic: &'static str,
    metric: &'static str,
    events: u64,
    audit: bool,
}

/// The real sink binary processing every record of the pass's topic from offset zero (a
/// fresh group); seconds from its first to its last counted event.
async fn sink_pass(bin: &std::path::Path, pg: &TestPostgres, broker: &TestBroker, pass: Pass) -> anyhow::Result<f64> {
    let Pass { topic, metric, events, audit } = pass;
    let dir = run_dir(if audit { "bench-sink-process-audit" } else { "bench-sink-process" });
    let http_port = free_port()?;
    let config = write_config(&dir, pg, broker, topic, http_port, audit)?;
    let e = &pg.endpoint;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--config").arg(&config).env("SINK__TARGET__PASSWORD", e.password.expose()).env("RUST_LOG", "warn");
    let handle = process::OwnedProcess(process::spawn(cmd, &dir.join("sink.log"))?);
    let http = format!("http://127.0.0.1:{http_port}");
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<Instant> = None;
    let last = loop {
        anyhow::ensure!(handle.is_alive(), "the sink exited: {}", handle.log_tail(10));
        anyhow::ensure!(Instant::now() < deadline, "the sink did not apply every event within 10 minutes");
        let processed = sink_metrics::scrape(&http).await.map(|s| sink_metrics::sum(&s, metric)).unwrap_or(0.0);
        if processed > 0.0 && first.is_none() {
            first = Some(Instant::now());
        }
        if processed >= events as f64 {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(handle);
    Ok(last.duration_since(first.unwrap_or(last)).as_secs_f64().max(1e-3))
}

fn write_config(dir: &std::path::Path, pg: &TestPostgres, broker: &TestBroker, topic: &str, http_port: u16, audit: bool) -> anyhow::Result<std::path::PathBuf> {
    let config = dir.join("sink.toml");
    let e = &pg.endpoint;
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"bench-{}\"\ntopics = [\"{topic}\"]\ndlq_topic = \"{}\"\nauto_offset_reset = \"earliest\"\n\n[target]\nkind = \"postgres\"\nurl = {}\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n[source]\ndecimal_handling = \"string\"\n\n[audit]\nenabled = {audit}\n",
            broker.bootstrap,
            Uuid::new_v4().simple(),
            crate::config::DLQ_TOPIC,
            toml::Value::from(e.target_conninfo())
        ),
    )?;
    Ok(config)
}

/// The events as `sink bench-apply` reads them: one `{"key", "value"}` object per line.
fn write_events(path: &std::path::Path, changes: &[Change], ts_ms: i64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for c in changes {
        writeln!(out, "{{\"key\":{{\"id\":\"{}\"}},\"value\":{}}}", c.id, envelope(c, ts_ms))?;
    }
    out.flush()?;
    Ok(())
}

/// `sink bench-apply`: the handler over the events file, timed by the sink itself
/// (target connection excluded).
async fn apply_pass(
    bin: &std::path::Path,
    pg: &TestPostgres,
    broker: &TestBroker,
    events: &std::path::Path,
    partitions: u32,
    audit: bool,
) -> anyhow::Result<(f64, f64)> {
    let dir = run_dir(if audit { "bench-sink-apply-audit" } else { "bench-sink-apply" });
    let config = write_config(&dir, pg, broker, TOPIC, free_port()?, audit)?;
    let output = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("bench-apply")
        .arg("--events")
        .arg(events)
        .arg("--partitions")
        .arg(partitions.to_string())
        .env("SINK__TARGET__PASSWORD", pg.endpoint.password.expose())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "sink bench-apply failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    #[derive(serde::Deserialize)]
    struct ApplyRun {
        events: u64,
        seconds: f64,
        decode_seconds: f64,
    }
    let run: ApplyRun = serde_json::from_slice(&output.stdout)
        .map_err(|e| anyhow::anyhow!("sink bench-apply printed no result ({e}): {}", String::from_utf8_lossy(&output.stdout)))?;
    anyhow::ensure!(run.events as usize == std::fs::read_to_string(events)?.lines().count(), "sink bench-apply read {} events", run.events);
    Ok((run.seconds.max(1e-3), run.decode_seconds))
}

/// Seconds a bare consumer (no processing) takes to read `events` messages of `topic`.
async fn read_all(bootstrap: &str, topic: &str, events: u64) -> anyhow::Result<f64> {
    use futures::StreamExt;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-read-{}", Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut stream = consumer.stream();
    let mut read = 0u64;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while read < events {
        anyhow::ensure!(Instant::now() < deadline, "read only {read} of {events} messages back");
        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
            message?;
            first.get_or_insert_with(Instant::now);
            read += 1;
        }
    }
    Ok(first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0).max(1e-3))
}

/// The same rows upserted by one connection, one statement per batch, with the same
/// version guard the sink uses.
async fn baseline(pg: &TestPostgres, changes: &[Change]) -> anyhow::Result<f64> {
    let client = pg.endpoint.connect_target().await?;
    client
        .batch_execute(
            "CREATE TABLE baseline_customer (id uuid PRIMARY KEY, email text, status text, updated_at timestamptz,
               _cdc_lsn bigint NOT NULL, _cdc_op char(1) NOT NULL, _cdc_applied_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .await?;
    let statement = client
        .prepare(
            "INSERT INTO baseline_customer AS t (id, email, status, updated_at, _cdc_lsn, _cdc_op)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[], $6::text[])
             ON CONFLICT (id) DO UPDATE SET email = excluded.email, status = excluded.status, updated_at = excluded.updated_at,
                 _cdc_lsn = excluded._cdc_lsn, _cdc_op = excluded._cdc_op, _cdc_applied_at = clock_timestamp()
             WHERE t._cdc_lsn < excluded._cdc_lsn",
        )
        .await?;
    let updated_at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")?.with_timezone(&chrono::Utc);
    let started = Instant::now();
    for batch in changes.chunks(BASELINE_BATCH) {
        // One row per key per statement (ON CONFLICT cannot touch a row twice): newest wins.
        let mut newest: std::collections::HashMap<Uuid, &Change> = std::collections::HashMap::new();
        for c in batch {
            newest.insert(c.id, c);
        }
        let rows: Vec<&Change> = newest.into_values().collect();
        let ids: Vec<Uuid> = rows.iter().map(|c| c.id).collect();
        let emails: Vec<&str> = rows.iter().map(|c| c.email.as_str()).collect();
        let statuses: Vec<&str> = rows.iter().map(|c| c.status).collect();
        let times = vec![updated_at; rows.len()];
        let lsns: Vec<i64> = rows.iter().map(|c| c.lsn).collect();
        let ops: Vec<String> = rows.iter().map(|c| c.op.to_string()).collect();
        client.execute(&statement, &[&ids, &emails, &statuses, &times, &lsns, &ops]).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}
