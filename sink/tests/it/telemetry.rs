//! Telemetry of the real binary against a real broker and PostgreSQL: spans exported over
//! OTLP/HTTP to a receiver in this test continue the producer's trace from the
//! `traceparent` header, the log line of the event carries the same trace and span id, and
//! `/metrics` moves as events are applied.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::orchestrator::local::process::free_port;
use harness::run::sink_metrics;
use harness::testing::{TestPostgres, run_dir};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use crate::common::TestBroker;

const TOPIC: &str = "cdc.public.customer";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP trace receiver: every exported span, as sent.
struct OtlpReceiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    async fn start() -> Self {
        use axum::routing::post;
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let store = Arc::clone(&spans);
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: axum::body::Bytes| {
                let store = Arc::clone(&store);
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("the exporter sends OTLP protobuf");
                    let mut spans = store.lock().unwrap();
                    for resource in request.resource_spans {
                        for scope in resource.scope_spans {
                            spans.extend(scope.spans);
                        }
                    }
                    ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { endpoint, spans, server }
    }

    fn spans_of_trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans.lock().unwrap().iter().filter(|s| hex(&s.trace_id) == trace_id).cloned().collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn customer_event(id: Uuid, lsn: i64) -> String {
    let now = chrono::Utc::now();
    serde_json::json!({
        "before": null,
        "after": { "id": id, "email": format!("{}@example.com", id.simple()), "status": "active", "updated_at": now.to_rfc3339() },
        "source": { "version": "3.6.3.Final", "connector": "postgresql", "name": "cdc", "ts_ms": now.timestamp_millis(), "db": "app",
                    "schema": "public", "table": "customer", "lsn": lsn, "txId": lsn / 8 },
        "op": "c",
        "ts_ms": now.timestamp_millis(),
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_event_continues_its_trace_in_spans_and_logs_and_moves_the_metrics() {
    let receiver = OtlpReceiver::start().await;
    let topics = [TOPIC.to_string(), "cdc.dlq".to_string()];
    let pg = TestPostgres::start("sink-telemetry-pg").await.unwrap();
    let kafka = TestBroker::start("sink-telemetry-broker", &topics).await.unwrap();
    let dir = run_dir("sink-telemetry");
    let port = free_port().unwrap();
    let e = &pg.endpoint;
    std::fs::write(
        dir.join("sink.toml"),
        format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"sink-telemetry\"\ntopics = [\"{TOPIC}\"]\ndlq_topic = \"cdc.dlq\"\nstatistics_interval = \"500ms\"\n\n[target]\nkind = \"postgres\"\n\
             url = \"host={} port={} user={} dbname={}\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n[telemetry]\nlog_level = \"info,sink=debug,rdkafka=warn\"\n",
            kafka.bootstrap, e.host, e.port, e.user, e.target_db
        ),
    )
    .unwrap();
    let log_path = dir.join("sink.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sink"))
        .arg("--config")
        .arg(dir.join("sink.toml"))
        .env("SINK__TARGET__PASSWORD", e.password.expose())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
        // Export promptly instead of every 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _stop = scopeguard(child.id());
    let http = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(reqwest::get(format!("{http}/readyz")).await.map(|r| r.status().as_u16()), Ok(200)) {
        assert!(child.try_wait().unwrap().is_none(), "the sink exited before becoming ready");
        assert!(Instant::now() < deadline, "the sink did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = sink_metrics::scrape(&http).await.unwrap();
    assert_eq!(sink_metrics::sum(&before, "sink_events_processed_total"), 0.0);

    // One event with a trace context, one without.
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &kafka.bootstrap).create().unwrap();
    let (traced, untraced) = (Uuid::new_v4(), Uuid::new_v4());
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    for (id, lsn, trace) in [(traced, 1_000_008, Some(traceparent.as_str())), (untraced, 1_000_016, None)] {
        let key = format!("{{\"id\":\"{id}\"}}");
        let value = customer_event(id, lsn);
        let mut record = FutureRecord::to(TOPIC).key(&key).payload(&value);
        if let Some(tp) = trace {
            record = record.headers(OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(tp) }));
        }
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }

    // The message span arrives as a child of the producer's span, in the producer's trace.
    let deadline = Instant::now() + Duration::from_secs(60);
    let message = loop {
        if let Some(span) = receiver.spans_of_trace(TRACE_ID).into_iter().find(|s| attributes(s).contains_key("cdc.outcome")) {
            break span;
        }
        assert!(Instant::now() < deadline, "no span of trace {TRACE_ID} exported; got {:?}", receiver.spans.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hex(&message.parent_span_id), PARENT_SPAN_ID, "the span continues the remote parent");
    assert_eq!(message.kind, SpanKind::Consumer as i32);
    assert_eq!(message.name, format!("{TOPIC} process"));
    let attrs = attributes(&message);
    for (key, expected) in [
        ("messaging.system", "kafka"),
        ("messaging.destination.name", TOPIC),
        ("messaging.kafka.consumer.group", "sink-telemetry"),
        ("messaging.kafka.partition", "0"),
        ("messaging.kafka.offset", "0"),
        ("messaging.operation", "process"),
        ("db.operation", "upsert"),
        ("cdc.entity.type", "customer"),
        ("cdc.outcome", "applied"),
    ] {
        assert_eq!(attrs.get(key).map(String::as_str), Some(expected), "attribute {key} of {attrs:?}");
    }

    // The batch span is linked to the producer's trace; the untraced event is only in it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let batch = loop {
        let linked = receiver.spans.lock().unwrap().iter().find(|s| s.links.iter().any(|l| hex(&l.trace_id) == TRACE_ID)).cloned();
        if let Some(span) = linked {
            break span;
        }
        assert!(Instant::now() < deadline, "no batch span linked to the producer's trace");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(hex(&batch.trace_id), TRACE_ID, "a batch is a trace of its own");
    assert_eq!(attributes(&batch).get("cdc.entity.type").map(String::as_str), Some("customer"));

    // Metrics moved: both events processed and written, e2e latency observed twice.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = sink_metrics::scrape(&http).await.unwrap();
        let processed = sink_metrics::sum(&now, "sink_events_processed_total");
        let written = sink_metrics::sum(&now, "sink_writes_total");
        let e2e = sink_metrics::sum(&now, "sink_e2e_latency_seconds_count");
        // Lag per partition, from the client's statistics: 0 once both are consumed.
        let lag = sink_metrics::by_label(&now, "sink_consumer_lag", "partition");
        if processed >= 2.0 && written >= 2.0 && e2e >= 2.0 && lag.get("0") == Some(&0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "metrics did not move: processed {processed}, written {written}, e2e {e2e}, lag {lag:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The untraced event got no span of its own (it is only counted in its batch).
    let untraced_spans: Vec<Span> = receiver
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| {
            // Message spans are the ones with an outcome; a batch may also start at offset 1.
            let attrs = attributes(s);
            attrs.contains_key("cdc.outcome") && attrs.get("messaging.kafka.offset").map(String::as_str) == Some("1")
        })
        .cloned()
        .collect();
    assert!(untraced_spans.is_empty(), "an event without trace context got a message span: {untraced_spans:?}");

    // Graceful stop, then the log line of the traced event names the same trace and span.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the sink did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = logs.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))).collect();
    let processed =
        lines.iter().find(|l| l["message"] == "event processed" && l["offset"] == 0).unwrap_or_else(|| panic!("no log line for the traced event:\n{logs}"));
    assert_eq!(processed["trace_id"], TRACE_ID);
    assert_eq!(processed["span_id"], hex(&message.span_id));
    assert_eq!(processed["topic"], TOPIC);
    assert_eq!(processed["partition"], 0);
    assert_eq!(processed["outcome"], "applied");
    assert!(processed["key"].as_str().is_some_and(|k| k.contains(&traced.to_string()[..8])), "{processed}");
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    assert!(!logs.contains(e.password.expose()), "the password leaked into the logs");
}

/// Kills the sink if the test fails before stopping it.
fn scopeguard(pid: u32) -> impl Drop {
    struct Guard(u32);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
    Guard(pid)
}
