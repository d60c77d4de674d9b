//! The corpus of bad and unusual inputs (tests/fixtures/*.json) through the real broker
//! and the sink running in process against a real PostgreSQL: each event has the outcome
//! it expects (applied, stale, ignored, or dead-lettered by the named rule), read from the
//! sink's apply log and the DLQ; the sink keeps running, and every offset ends up committed
//! (none skipped, none left behind). One event per batch, so outcomes are those of an
//! event arriving after the ones before it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::testing::TestPostgres;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::common::{TestBroker, sink_config};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    description: String,
    topic: String,
    #[serde(default)]
    key: Option<Json>,
    #[serde(default)]
    key_raw: Option<String>,
    #[serde(default)]
    value: Option<Json>,
    #[serde(default)]
    value_raw: Option<String>,
    /// Sends the value as `{schema, payload}` (`schemas.enable=true`) with this schema.
    #[serde(default)]
    value_schema: Option<Json>,
    /// Pads the value with a filler field to this many bytes.
    #[serde(default)]
    pad_value_to: Option<usize>,
    /// `applied`, `stale`, `ignored` or `dlq:<rule>`.
    expect: String,
    /// For dead-lettered events: what the `dlq.reason` header must say.
    #[serde(default)]
    reason_contains: Option<String>,
    #[serde(default)]
    checks: Vec<Check>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Check {
    sql: String,
    equals: String,
}

impl Fixture {
    fn key_bytes(&self) -> Option<Vec<u8>> {
        self.key_raw.clone().map(String::into_bytes).or_else(|| self.key.as_ref().map(|k| k.to_string().into_bytes()))
    }

    fn value_bytes(&self) -> Option<Vec<u8>> {
        if let Some(raw) = &self.value_raw {
            return Some(raw.clone().into_bytes());
        }
        let mut value = self.value.clone()?;
        if let (Some(size), Some(obj)) = (self.pad_value_to, value.as_object_mut()) {
            obj.insert("padding".into(), Json::String("x".repeat(size)));
        }
        if let Some(schema) = &self.value_schema {
            value = serde_json::json!({ "schema": schema, "payload": value });
        }
        Some(value.to_string().into_bytes())
    }
}

fn load_fixtures() -> Vec<(String, Fixture)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("fixture {name}: {e}"));
            (name, fixture)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_corpus_through_broker_and_sink() -> anyhow::Result<()> {
    let fixtures = load_fixtures();
    assert!(fixtures.len() >= 20, "fixture corpus missing");
    let topics: Vec<String> = ["customer", "address", "orders", "order_item"].iter().map(|t| format!("cdc.public.{t}")).chain(["cdc.dlq".into()]).collect();
    let pg = TestPostgres::start("sink-fixtures-pg").await?;
    let kafka = TestBroker::start("sink-fixtures-broker", &topics).await?;

    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).set("acks", "all").create()?;
    let mut produced: HashMap<(String, i64), &str> = HashMap::new();
    let mut ends: HashMap<String, i64> = HashMap::new();
    for (name, f) in &fixtures {
        let key = f.key_bytes();
        let value = f.value_bytes();
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&f.topic).partition(0);
        if let Some(k) = key.as_deref() {
            record = record.key(k);
        }
        if let Some(v) = value.as_deref() {
            record = record.payload(v);
        }
        let delivery = producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
        produced.insert((f.topic.clone(), delivery.offset), name.as_str());
        ends.insert(f.topic.clone(), delivery.offset + 1);
    }

    // Small max_event_bytes so the "huge value" fixture needs no broker tuning; decimals as
    // strings unless a fixture's schema declares otherwise; the referential rule rejects.
    let config = sink_config(
        &pg,
        &kafka.bootstrap,
        "[source]\ndecimal_handling = \"string\"\n[apply]\nmax_event_bytes = 65536\nmax_batch_size = 1\nmax_batch_wait = \"5ms\"\n\
         [audit]\nenabled = true\n[validation]\nreferential_grace = \"1s\"\n[validation.rules.referential]\nseverity = \"reject\"\n",
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sink = tokio::spawn(sink::app::run(config, async {
        let _ = stopped.await;
    }));

    // Wait until the group has committed the end offset of every topic.
    let observer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).set("group.id", "sink-test").create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in ends.keys() {
        tpl.add_partition(topic, 0);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let committed = tokio::task::block_in_place(|| observer.committed_offsets(tpl.clone(), Duration::from_secs(5)))?;
        let done = committed.elements().iter().all(|e| matches!(e.offset(), Offset::Offset(o) if o == ends[e.topic()]));
        if done {
            break;
        }
        assert!(!sink.is_finished(), "the sink stopped while processing fixtures");
        assert!(Instant::now() < deadline, "offsets not committed in time: {committed:?}, want {ends:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // What reached the DLQ, by original coordinates.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", format!("dlq-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut dlq_tpl = TopicPartitionList::new();
    dlq_tpl.add_partition_offset("cdc.dlq", 0, Offset::Beginning)?;
    reader.assign(&dlq_tpl)?;
    let expected_dlq = fixtures.iter().filter(|(_, f)| f.expect.starts_with("dlq:")).count();
    let mut dead: HashMap<(String, i64), (String, String)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead.len() < expected_dlq && Instant::now() < deadline {
        let Some(message) = tokio::task::block_in_place(|| reader.poll(Duration::from_millis(500))) else {
            continue;
        };
        let message = message?;
        let headers = message.headers().expect("dlq records carry headers");
        let header =
            |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        let coords = (header("dlq.original.topic"), header("dlq.original.offset").parse::<i64>()?);
        dead.insert(coords, (header("dlq.rule"), header("dlq.reason")));
    }

    let client = pg.endpoint.connect(&pg.endpoint.target_db).await?;
    // The apply log's outcome of each event, by (entity, offset): everything is on partition 0.
    let mut logged: HashMap<(String, i64), Vec<String>> = HashMap::new();
    for row in client.query("SELECT entity, kafka_offset, outcome, coalesce(rule, '') FROM _cdc_apply_log ORDER BY id", &[]).await? {
        let (entity, offset, outcome, rule): (String, i64, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
        logged.entry((entity, offset)).or_default().push(if rule.is_empty() { outcome } else { format!("{outcome}:{rule}") });
    }
    let mut failures = Vec::new();
    for ((topic, offset), name) in &produced {
        let f = &fixtures.iter().find(|(n, _)| n == name).unwrap().1;
        let got = dead.get(&(topic.clone(), *offset));
        match (f.expect.strip_prefix("dlq:"), got) {
            (Some(rule), Some((actual, reason))) if actual == rule => {
                if let Some(want) = f.reason_contains.as_deref().filter(|w| !reason.contains(w)) {
                    failures.push(format!("{name}: DLQ reason {reason:?} does not say {want:?}"));
                }
            }
            (None, None) => {}
            (want, got) => failures.push(format!("{name} ({}): expected {want:?}, DLQ has {got:?}", f.description)),
        }
        let entity = topic.rsplit('.').next().unwrap_or_default().to_string();
        let outcomes = logged.get(&(entity, *offset)).cloned().unwrap_or_default();
        if outcomes != [f.expect.clone()] {
            failures.push(format!("{name} ({}): expected outcome {:?}, the apply log has {outcomes:?}", f.description, f.expect));
        }
        for check in &f.checks {
            let row = client.query_opt(&check.sql, &[]).await?;
            let value: Option<String> = row.and_then(|r| r.get(0));
            if value.as_deref() != Some(check.equals.as_str()) {
                failures.push(format!("{name}: {} returned {value:?}, want {:?}", check.sql, check.equals));
            }
        }
    }

    // A clean shutdown after all that (before asserting, so a failure does not leave the
    // sink running while the runtime is torn down).
    stop.send(()).ok();
    let result = tokio::time::timeout(Duration::from_secs(30), sink).await??;
    assert!(failures.is_empty(), "fixture expectations failed:\n{}", failures.join("\n"));
    assert!(result.is_ok(), "sink did not shut down cleanly: {result:?}");
    Ok(())
}
