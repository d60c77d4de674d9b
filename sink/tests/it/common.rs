//! Shared helpers: targets on a test PostgreSQL, change builders.

use std::time::Duration;

use chrono::{DateTime, Utc};
use harness::orchestrator::local::broker::{self, BrokerLayout};
use harness::orchestrator::local::process::{ProcessHandle, free_port};
use harness::testing::TestPostgres;
use harness::testing::run_dir;
use sink::config::{SinkConfig, TargetConfig};
use sink::model::{Change, Coords, Entity, Field, Op, Row, Value, Version};
use sink::targets::Target;
use uuid::Uuid;

/// A sink config (postgres target on `pg`) with extra TOML appended.
pub fn sink_config(pg: &TestPostgres, brokers: &str, extra: &str) -> SinkConfig {
    let e = &pg.endpoint;
    let toml = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "sink-test"
topics = ["cdc.public.customer", "cdc.public.address", "cdc.public.orders", "cdc.public.order_item"]
dlq_topic = "cdc.dlq"

[target]
kind = "postgres"
url = "host={} port={} user={} dbname={}"

[http]
listen = "127.0.0.1:0"
{extra}
"#,
        e.host, e.port, e.user, e.target_db
    );
    SinkConfig::from_toml(&toml, [("SINK__TARGET__PASSWORD".to_string(), e.password.expose().to_string())]).expect("valid test config")
}

pub fn target_config(pg: &TestPostgres) -> TargetConfig {
    sink_config(pg, "127.0.0.1:1", "").target
}

pub async fn postgres_target(pg: &TestPostgres) -> Target {
    Target::connect(&target_config(pg), false).await.expect("connect the postgres target")
}

pub fn key(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

pub fn ts(s: &str) -> DateTime<Utc> {
    s.parse().expect("timestamp")
}

/// A customer change; `after` None for deletes.
pub fn customer(id: Uuid, op: Op, lsn: i64, email: &str, status: &str, offset: i64) -> Change {
    let entity = Entity::Customer;
    let mut row = Row::empty(entity);
    row.known[0] = Some(Field::Value(Value::Uuid(id)));
    row.known[1] = Some(Field::Value(Value::Text(email.into())));
    row.known[2] = Some(Field::Value(Value::Text(status.into())));
    row.known[3] = Some(Field::Value(Value::Timestamp(ts("2024-05-01T10:00:00Z") + chrono::Duration::seconds(lsn))));
    let (before, after) = if op.is_delete() { (Some(row), None) } else { (None, Some(row)) };
    Change {
        entity,
        key: id,
        op,
        version: Version::streamed(None, lsn),
        source_ts: Some(ts("2024-05-01T10:00:00Z")),
        emitted_ts: None,
        tx_id: None,
        before,
        after,
        coords: Coords { topic: "cdc.public.customer".into(), partition: 0, offset, timestamp: None },
    }
}

/// The row of a customer in the target: (email, status, lsn, deleted).
pub async fn customer_row(client: &tokio_postgres::Client, id: Uuid) -> Option<(Option<String>, Option<String>, i64, bool)> {
    client
        .query_opt("SELECT email, status, _cdc_lsn, _cdc_deleted FROM customer_materialized WHERE id = $1", &[&id])
        .await
        .expect("query customer")
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

/// The tansu broker as a child process, stopped on drop.
pub struct TestBroker {
    pub bootstrap: String,
    handle: ProcessHandle,
    dir: std::path::PathBuf,
    port: u16,
}

impl TestBroker {
    pub async fn start(name: &str, topics: &[String]) -> anyhow::Result<Self> {
        Self::start_with_partitions(name, topics, 1).await
    }

    pub async fn start_with_partitions(name: &str, topics: &[String], partitions: u32) -> anyhow::Result<Self> {
        let dir = run_dir(name);
        std::fs::create_dir_all(dir.join("logs"))?;
        let tansu = harness::provision::tansu::ensure(&harness::provision::Cache::locate()?)?;
        let port = free_port()?;
        let layout = BrokerLayout::new(&dir);
        let handle = broker::start(&tansu, &layout, port, port)?;
        let bootstrap = format!("127.0.0.1:{port}");
        broker::wait_ready(&bootstrap, &handle, &layout, Duration::from_secs(60)).await?;
        broker::create_topics(&bootstrap, topics, partitions).await?;
        Ok(Self { bootstrap, handle, dir, port })
    }

    /// Graceful stop (SIGTERM), as the harness stops the broker.
    pub fn stop(&self) {
        self.handle.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&self) {
        let _ = self.handle.signal(nix::sys::signal::Signal::SIGKILL);
        self.handle.wait_exit(Duration::from_secs(10));
    }

    /// Starts the broker again on the same storage and port, and waits until it answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let tansu = harness::provision::tansu::ensure(&harness::provision::Cache::locate()?)?;
        self.handle = broker::start(&tansu, &BrokerLayout::new(&self.dir), self.port, self.port)?;
        broker::wait_ready(&self.bootstrap, &self.handle, &BrokerLayout::new(&self.dir), Duration::from_secs(60)).await?;
        Ok(())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.handle.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    }
}

/// `GET path` against a sink's HTTP endpoint: the status code and the whole response.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response))
}
