//! The broker goes away mid-stream (graceful stop, or kill -9) and comes back at once on the
//! same storage and port: the sink must get its partitions back, resume from the committed
//! offsets and deliver every change; `/readyz` must not claim readiness while it holds no
//! assignment.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use harness::orchestrator::local::process::free_port;
use harness::testing::TestPostgres;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use crate::common::{TestBroker, sink_config};

const TOTAL: u32 = 1_500;

fn id(k: u32) -> String {
    format!("{k:08x}-0000-4000-8000-00000000b0b0")
}

fn topics() -> Vec<String> {
    ["cdc.public.customer", "cdc.public.address", "cdc.public.orders", "cdc.public.order_item", "cdc.dlq"].iter().map(ToString::to_string).collect()
}

/// Produces `TOTAL` customer creations at a steady pace, retrying through the outage.
async fn produce_all(bootstrap: String, produced: Arc<AtomicU32>) {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("acks", "all").set("message.timeout.ms", "120000").create().unwrap();
    for k in 0..TOTAL {
        let value = json!({
            "before": null,
            "after": {"id": id(k), "email": format!("k{k}@x.io"), "status": "active", "updated_at": "2024-05-01T10:00:00Z"},
            "source": {"lsn": 1_000 + i64::from(k), "ts_ms": 1714557600000i64, "table": "customer"},
            "op": "c",
        })
        .to_string();
        let key = json!({"id": id(k)}).to_string();
        loop {
            let record = FutureRecord::to("cdc.public.customer").key(&key).payload(&value);
            match producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => break,
                Err((error, _)) => {
                    eprintln!("produce {k} failed, retrying: {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        produced.store(k + 1, Ordering::Relaxed);
        if k % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn readyz(addr: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

async fn wait_ready(addr: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let a = addr.to_string();
        if tokio::task::spawn_blocking(move || readyz(&a)).await.unwrap() == Some(200) {
            return;
        }
        assert!(Instant::now() < deadline, "sink never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Outage {
    Graceful,
    Kill,
}

async fn broker_restart_mid_stream(name: &str, outage: Outage) {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("sink=info,rdkafka=warn").try_init();
    let pg = TestPostgres::start(&format!("{name}-pg")).await.unwrap();
    let mut kafka = TestBroker::start_with_partitions(&format!("{name}-broker"), &topics(), 3).await.unwrap();
    let http = format!("127.0.0.1:{}", free_port().unwrap());
    let mut config = sink_config(&pg, &kafka.bootstrap, "[apply]\nmax_batch_size = 64\n");
    config.http.listen = http.clone();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sink = tokio::spawn(sink::app::run(config, async {
        let _ = stopped.await;
    }));
    wait_ready(&http, Duration::from_secs(60)).await;

    let produced = Arc::new(AtomicU32::new(0));
    let producer = tokio::spawn(produce_all(kafka.bootstrap.clone(), Arc::clone(&produced)));
    let client = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    let applied = || async { client.query_one("SELECT count(*) FROM customer_materialized", &[]).await.map(|r| r.get::<_, i64>(0)).unwrap_or(0) };
    // Mid-stream: some changes applied, more on the way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied().await < i64::from(TOTAL / 3) {
        assert!(Instant::now() < deadline, "the sink never got going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("restarting the broker ({outage:?}) after {} produced", produced.load(Ordering::Relaxed));
    match outage {
        Outage::Graceful => kafka.stop(),
        Outage::Kill => kafka.kill(),
    }
    kafka.start_again().await.unwrap();
    eprintln!("broker back");

    tokio::time::timeout(Duration::from_secs(180), producer).await.expect("producer finished").unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = applied().await;
        if n == i64::from(TOTAL) {
            break;
        }
        assert!(!sink.is_finished(), "the sink stopped");
        assert!(Instant::now() < deadline, "only {n} of {TOTAL} changes reached the target after the broker restart");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_ready(&http, Duration::from_secs(30)).await;
    stop.send(()).ok();
    let result = tokio::time::timeout(Duration::from_secs(60), sink).await.unwrap().unwrap();
    assert!(result.is_ok(), "unclean shutdown: {result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_graceful_restart_mid_stream_loses_nothing() {
    broker_restart_mid_stream("sink-broker-stop", Outage::Graceful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_kill_restart_mid_stream_loses_nothing() {
    broker_restart_mid_stream("sink-broker-kill", Outage::Kill).await;
}
