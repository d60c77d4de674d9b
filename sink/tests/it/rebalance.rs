//! A second sink joining the group makes the first one revoke partitions mid-stream: it
//! must drain and commit before handing them over, so nothing is lost and the target ends
//! with the final state of every key. The test checks that the second sink really was
//! assigned partitions (its own metrics) and that every event of every round reached a sink
//! (the apply log holds each key's version of each round).

use std::time::{Duration, Instant};

use harness::testing::TestPostgres;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use crate::common::{TestBroker, sink_config};

const KEYS: u32 = 300;
const ROUNDS: u32 = 10;

fn id(k: u32) -> String {
    format!("{k:08x}-0000-4000-8000-000000000000")
}

async fn produce(producer: &FutureProducer, round: u32) {
    for k in 0..KEYS {
        let lsn = 1_000 + i64::from(round) * 10_000 + i64::from(k);
        let value = json!({
            "before": null,
            "after": {"id": id(k), "email": format!("r{round}@x.io"), "status": "active", "updated_at": "2024-05-01T10:00:00Z"},
            "source": {"lsn": lsn, "ts_ms": 1714557600000i64, "table": "customer"},
            "op": if round == 0 { "c" } else { "u" },
        })
        .to_string();
        let key = json!({"id": id(k)}).to_string();
        let record = FutureRecord::to("cdc.public.customer").key(&key).payload(&value);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_revoked_mid_stream_lose_nothing() {
    // `--nocapture` shows the revoke/drain/assign sequence.
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("sink=info").try_init();
    let topics: Vec<String> =
        ["cdc.public.customer", "cdc.public.address", "cdc.public.orders", "cdc.public.order_item", "cdc.dlq"].iter().map(ToString::to_string).collect();
    let pg = TestPostgres::start("sink-rebalance-pg").await.unwrap();
    let kafka = TestBroker::start_with_partitions("sink-rebalance-broker", &topics, 4).await.unwrap();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).set("acks", "all").create().unwrap();
    let config = sink_config(&pg, &kafka.bootstrap, "[apply]\nmax_batch_size = 64\n[audit]\nenabled = true\n");
    let listen = |config: &sink::config::SinkConfig| {
        let mut c = config.clone();
        c.http.listen = format!("127.0.0.1:{}", harness::orchestrator::local::process::free_port().unwrap());
        c
    };
    let (config_a, config_b) = (listen(&config), listen(&config));
    let assigned = |listen: &str| -> Option<i64> {
        let (_, response) = crate::common::http_get(listen, "/metrics")?;
        response.lines().find(|l| l.starts_with("sink_assigned_partitions ")).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    };

    let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
    let a = tokio::spawn(sink::app::run(config_a.clone(), async {
        let _ = stopped_a.await;
    }));
    for round in 0..ROUNDS / 2 {
        produce(&producer, round).await;
    }
    // B joins while A is busy: A's partitions are revoked, drained, committed.
    let (stop_b, stopped_b) = tokio::sync::oneshot::channel::<()>();
    let b = tokio::spawn(sink::app::run(config_b.clone(), async {
        let _ = stopped_b.await;
    }));
    for round in ROUNDS / 2..ROUNDS {
        produce(&producer, round).await;
    }

    let client = pg.endpoint.connect(&pg.endpoint.target_db).await.unwrap();
    let want = format!("r{}@x.io", ROUNDS - 1);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut b_held = 0;
    loop {
        b_held = b_held.max(tokio::task::block_in_place(|| assigned(&config_b.http.listen)).unwrap_or(0));
        let done: i64 =
            client.query_one("SELECT count(*) FROM customer_materialized WHERE email = $1 AND NOT _cdc_deleted", &[&want]).await.map(|r| r.get(0)).unwrap_or(0);
        if done == i64::from(KEYS) {
            break;
        }
        assert!(!a.is_finished() && !b.is_finished(), "a sink stopped");
        assert!(Instant::now() < deadline, "only {done} of {KEYS} keys reached the final state");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // B is given partitions once the group rebalances; wait for that if the data won the race.
    while b_held == 0 && Instant::now() < deadline {
        b_held = tokio::task::block_in_place(|| assigned(&config_b.http.listen)).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(b_held > 0, "the second sink was never assigned a partition: the rebalance did not happen");
    let events: i64 = client.query_one("SELECT count(DISTINCT (key, version)) FROM _cdc_apply_log", &[]).await.unwrap().get(0);
    assert_eq!(events, i64::from(KEYS * ROUNDS), "every event of every round reaches a sink");
    stop_b.send(()).ok();
    stop_a.send(()).ok();
    let b = tokio::time::timeout(Duration::from_secs(60), b).await.unwrap().unwrap();
    let a = tokio::time::timeout(Duration::from_secs(60), a).await.unwrap().unwrap();
    assert!(a.is_ok() && b.is_ok(), "unclean shutdown: {a:?} {b:?}");
}
