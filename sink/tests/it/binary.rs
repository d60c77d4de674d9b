//! The `sink` binary as the harness runs it: `sink --config <file>`, exit codes, readiness
//! and a graceful SIGTERM.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::orchestrator::local::process::free_port;
use harness::testing::{TestPostgres, run_dir};

use crate::common::{TestBroker, http_get};

fn sink() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sink"))
}

/// A started sink that is killed when the test ends, however it ends (a failed assert too).
struct Running(std::process::Child);

impl Running {
    fn start(command: &mut Command) -> Self {
        Self(command.spawn().expect("start the sink binary"))
    }
}

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn bench_apply_refuses_a_bad_events_file_with_2_naming_the_line() {
    let dir = run_dir("sink-bin-bench-apply");
    let config = dir.join("sink.toml");
    std::fs::write(
        &config,
        "[kafka]\nbrokers = \"127.0.0.1:1\"\ngroup_id = \"g\"\ntopics = [\"cdc.public.customer\"]\ndlq_topic = \"cdc.dlq\"\n[target]\nkind = \"postgres\"\nurl = \"host=127.0.0.1 port=1 user=u dbname=d\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let events = dir.join("events.ndjson");
    std::fs::write(&events, "{\"key\": {\"id\": \"a\"}, \"value\": null}\n{\"value\": {}}\n").unwrap();
    let out = sink().arg("--config").arg(&config).arg("bench-apply").arg("--events").arg(&events).env("SINK__TARGET__PASSWORD", "p").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2") && stderr.contains("no \"key\" field"), "{stderr}");
    let missing =
        sink().arg("--config").arg(&config).arg("bench-apply").arg("--events").arg(dir.join("absent")).env("SINK__TARGET__PASSWORD", "p").output().unwrap();
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
}

#[test]
fn config_errors_exit_with_2() {
    let dir = run_dir("sink-bin-config");
    let missing = sink().arg("--config").arg(dir.join("absent.toml")).stderr(Stdio::piped()).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[kafka]\nbrokers = \"\"\ngroup_id = \"g\"\ntopics = []\ndlq_topic = \"cdc.dlq\"\n[target]\nkind = \"postgres\"\nurl = \"host=x password=y\"\n[http]\nlisten = \"nowhere\"\n").unwrap();
    let bad = sink().arg("--config").arg(&path).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("SINK__TARGET__PASSWORD") && stderr.contains("[http] listen"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_becomes_ready_serves_metrics_and_stops_cleanly_on_sigterm() {
    let topics: Vec<String> = ["customer", "address", "orders", "order_item", "dlq"]
        .iter()
        .map(|t| if *t == "dlq" { "cdc.dlq".to_string() } else { format!("cdc.public.{t}") })
        .collect();
    let pg = TestPostgres::start("sink-bin-pg").await.unwrap();
    let kafka = TestBroker::start("sink-bin-broker", &topics).await.unwrap();
    let dir = run_dir("sink-bin");
    let port = free_port().unwrap();
    let e = &pg.endpoint;
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"sink-bin\"\ntopics = [{}]\ndlq_topic = \"cdc.dlq\"\n\n[target]\nkind = \"postgres\"\n\
         url = \"host={} port={} user={} dbname={}\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
        kafka.bootstrap,
        topics[..4].iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", "),
        e.host,
        e.port,
        e.user,
        e.target_db
    );
    std::fs::write(dir.join("sink.toml"), config).unwrap();
    let mut child = Running::start(sink().arg("--config").arg(dir.join("sink.toml")).env("SINK__TARGET__PASSWORD", e.password.expose()).stdout(Stdio::piped()));
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = http_get(&addr, "/readyz") {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "sink exited before becoming ready");
        assert!(Instant::now() < deadline, "sink not ready in time: {:?}", http_get(&addr, "/readyz"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(http_get(&addr, "/healthz").map(|r| r.0), Some(200));
    let (code, metrics) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("sink_up{dependency=\"target\"} 1"), "{metrics}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "sink did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut logs = String::new();
    child.stdout.take().unwrap().read_to_string(&mut logs).unwrap();
    assert_eq!(status.code(), Some(0), "logs:\n{logs}");
    assert!(logs.contains("clean shutdown"), "{logs}");
    assert!(!logs.contains(e.password.expose()), "the password leaked into the logs");
}

/// A flattened topic whose events carry no `__deleted` (ExtractNewRecordState without delete
/// rewriting: deletes would be silently lost) stops its partition with the reason: readiness
/// red naming the fix, the stall metric raised, the offset not committed (nothing skipped).
/// On SIGTERM the stuck task is aborted after the drain timeout and the sink exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flattened_topic_without_deletes_stops_its_partition_and_says_why() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let topics: Vec<String> = ["cdc.public.customer", "cdc.dlq"].iter().map(ToString::to_string).collect();
    let pg = TestPostgres::start("sink-bin-flat-pg").await.unwrap();
    let kafka = TestBroker::start("sink-bin-flat-broker", &topics).await.unwrap();
    let dir = run_dir("sink-bin-flat");
    let port = free_port().unwrap();
    let e = &pg.endpoint;
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"sink-flat\"\ntopics = [\"cdc.public.customer\"]\ndlq_topic = \"cdc.dlq\"\nauto_offset_reset = \"earliest\"\n\
         drain_timeout = \"2s\"\n\n[target]\nkind = \"postgres\"\nurl = \"host={} port={} user={} dbname={}\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
        kafka.bootstrap, e.host, e.port, e.user, e.target_db
    );
    std::fs::write(dir.join("sink.toml"), config).unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).create().unwrap();
    let id = "12121212-1212-4212-8212-121212121212";
    let flat = serde_json::json!({"id": id, "email": "a@x.io", "status": "active", "updated_at": "2024-05-01T10:00:00Z", "__op": "u", "__lsn": 7});
    let key = serde_json::json!({ "id": id }).to_string();
    producer
        .send(FutureRecord::to("cdc.public.customer").partition(0).key(&key).payload(&flat.to_string()), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let mut child = Running::start(sink().arg("--config").arg(dir.join("sink.toml")).env("SINK__TARGET__PASSWORD", e.password.expose()).stdout(Stdio::piped()));
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        if let Some((503, body)) = http_get(&addr, "/readyz").filter(|(_, b)| b.contains("__deleted")) {
            break body;
        }
        assert!(child.try_wait().unwrap().is_none(), "sink exited");
        assert!(Instant::now() < deadline, "readiness never named the missing deletes: {:?}", http_get(&addr, "/readyz"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(body.contains("delete.handling.mode=rewrite"), "{body}");
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    assert!(metrics.contains("sink_partition_stalled{topic=\"cdc.public.customer\",partition=\"0\"} 1"), "{metrics}");
    let client = e.connect(&e.target_db).await.unwrap();
    let applied: i64 = client.query_one("SELECT count(*) FROM customer_materialized", &[]).await.unwrap().get(0);
    assert_eq!(applied, 0, "nothing applied from a topic that cannot carry deletes");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "sink did not stop after SIGTERM with a stuck partition");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut logs = String::new();
    child.stdout.take().unwrap().read_to_string(&mut logs).unwrap();
    assert_eq!(status.code(), Some(1), "a drain that had to give up is a failure: {logs}");
    assert!(logs.contains("aborted the partition tasks still running"), "{logs}");

    // The offset was never committed: a fixed connector's sink would see the event again.
    let observer: rdkafka::consumer::BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).set("group.id", "sink-flat").create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition("cdc.public.customer", 0);
    let committed = tokio::task::block_in_place(|| rdkafka::consumer::Consumer::committed_offsets(&observer, tpl, Duration::from_secs(10))).unwrap();
    assert!(!matches!(committed.elements()[0].offset(), rdkafka::Offset::Offset(o) if o > 0), "{committed:?}");
}

/// Backpressure by size: with the target blocked (its table locked), a backlog of large
/// events does not pile up in the sink: what a partition holds stays within
/// `max_buffered_bytes` (plus the event that crossed it), and once the target answers again
/// every event is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_are_held_within_max_buffered_bytes() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    const EVENTS: usize = 40;
    const PADDING: usize = 400 * 1024;
    const LIMIT: usize = 2 * 1024 * 1024;
    let topics: Vec<String> = ["cdc.public.customer", "cdc.dlq"].iter().map(ToString::to_string).collect();
    let pg = TestPostgres::start("sink-bin-bytes-pg").await.unwrap();
    let kafka = TestBroker::start("sink-bin-bytes-broker", &topics).await.unwrap();
    let dir = run_dir("sink-bin-bytes");
    let port = free_port().unwrap();
    let e = &pg.endpoint;
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"sink-bytes\"\ntopics = [\"cdc.public.customer\"]\ndlq_topic = \"cdc.dlq\"\nauto_offset_reset = \"earliest\"\n\n\
         [target]\nkind = \"postgres\"\nurl = \"host={} port={} user={} dbname={}\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [apply]\nmax_buffered_bytes = {LIMIT}\nmax_batch_size = 4\n",
        kafka.bootstrap, e.host, e.port, e.user, e.target_db
    );
    std::fs::write(dir.join("sink.toml"), config).unwrap();
    let mut child = Running::start(
        sink()
            .arg("--config")
            .arg(dir.join("sink.toml"))
            .env("SINK__TARGET__PASSWORD", e.password.expose())
            .stdout(std::fs::File::create(dir.join("sink.log")).unwrap()),
    );
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http_get(&addr, "/readyz"), Some((200, _))) {
        assert!(child.try_wait().unwrap().is_none() && Instant::now() < deadline, "sink not ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut blocker = e.connect(&e.target_db).await.unwrap();
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE customer_materialized IN ACCESS EXCLUSIVE MODE").await.unwrap();

    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).create().unwrap();
    for i in 0..EVENTS {
        let id = uuid::Uuid::from_u128(0x1000 + i as u128).to_string();
        let value = serde_json::json!({"before": null, "after": {"id": id, "email": format!("big{i}@x.io"), "status": "active",
            "updated_at": "2024-05-01T10:00:00Z", "bio": "x".repeat(PADDING)}, "source": {"lsn": 100 + i, "ts_ms": 1714557600000i64}, "op": "c"});
        let key = serde_json::json!({ "id": id }).to_string();
        producer
            .send(FutureRecord::to("cdc.public.customer").partition(0).key(&key).payload(&value.to_string()), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // While the target is blocked, what the partition holds is sampled for a while.
    let gauge = |metrics: &str| -> Option<usize> {
        metrics.lines().find(|l| l.starts_with("sink_partition_buffered_bytes{")).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    };
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        if let Some(bytes) = http_get(&addr, "/metrics").and_then(|(_, m)| gauge(&m)) {
            peak = peak.max(bytes);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = EVENTS * PADDING;
    assert!(peak > PADDING, "the gauge never showed the held events ({peak} bytes)");
    assert!(peak <= LIMIT + PADDING + 4096, "held {peak} bytes, over max_buffered_bytes {LIMIT} plus one event (of {total} produced)");

    lock.commit().await.unwrap();
    let client = e.connect(&e.target_db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let applied: i64 = client.query_one("SELECT count(*) FROM customer_materialized", &[]).await.unwrap().get(0);
        if applied == EVENTS as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "only {applied} of {EVENTS} applied after the target came back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("peak held: {peak} bytes of {total} produced (limit {LIMIT})");
}

/// A wrong password is not a target that is down: the sink exits 1 at once with the server's
/// reason instead of retrying forever, and the password is not in its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_at_start_up_exits_1_with_the_reason() {
    let pg = TestPostgres::start("sink-bin-badpw-pg").await.unwrap();
    let dir = run_dir("sink-bin-badpw");
    let e = &pg.endpoint;
    let config = format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\ngroup_id = \"g\"\ntopics = [\"cdc.public.customer\"]\ndlq_topic = \"cdc.dlq\"\n\n[target]\nkind = \"postgres\"\n\
         url = \"host={} port={} user={} dbname={}\"\n[target.postgres]\nconnect_timeout = \"2s\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
        e.host, e.port, e.user, e.target_db
    );
    std::fs::write(dir.join("sink.toml"), config).unwrap();
    let mut child = Running::start(
        sink().arg("--config").arg(dir.join("sink.toml")).env("SINK__TARGET__PASSWORD", "not-the-password").stdout(Stdio::piped()).stderr(Stdio::piped()),
    );
    // A hang guard only: the exit comes with the server's first answer.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the sink kept retrying a wrong password");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("28P01") && stderr.contains("password authentication failed") && stderr.contains("refused the sink at start-up"), "{stderr}");
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}
