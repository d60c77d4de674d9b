//! The `sink` binary as the harness runs it: `sink --config <file>`, exit codes, readiness
//! and a graceful SIGTERM.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::orchestrator::local::process::free_port;
use harness::testing::{TestPostgres, run_dir};

use crate::common::TestBroker;

fn sink() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sink"))
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

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response))
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
    let mut child =
        sink().arg("--config").arg(dir.join("sink.toml")).env("SINK__TARGET__PASSWORD", e.password.expose()).stdout(Stdio::piped()).spawn().unwrap();
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
    producer.send(FutureRecord::to("cdc.public.customer").partition(0).key(id).payload(&flat.to_string()), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();

    let mut child = sink()
        .arg("--config")
        .arg(dir.join("sink.toml"))
        .env("SINK__TARGET__PASSWORD", e.password.expose())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
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
