//! Errors about the target, not the row: a refused `ALTER TABLE` (the sink's role no longer
//! owns the table) stalls the partition visibly, with the reason, instead of looping
//! unseen or dead-lettering rows; once an operator fixes the grant the partition resumes by
//! itself and nothing was skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::testing::TestPostgres;
use sink::config::SinkConfig;
use sink::pipeline::{Handler, PartitionState, Record};
use sink::model::{Coords, Entity};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_alter_stalls_the_partition_with_the_reason_until_fixed() {
    let pg = TestPostgres::start("sink-target-refusal").await.unwrap();
    let e = &pg.endpoint;
    let admin = e.connect(&e.target_db).await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE sink_rt LOGIN PASSWORD 'sink-rt-pw'; GRANT CREATE ON SCHEMA public TO sink_rt; GRANT CREATE ON DATABASE \"{}\" TO sink_rt;",
            e.target_db
        ))
        .await
        .unwrap();
    let toml = format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\ngroup_id = \"g\"\ntopics = [\"cdc.public.customer\"]\ndlq_topic = \"cdc.dlq\"\n\
         [target]\nkind = \"postgres\"\nurl = \"host={} port={} user=sink_rt dbname={}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [apply]\nretry_initial_backoff = \"50ms\"\nretry_max_backoff = \"200ms\"\n",
        e.host, e.port, e.target_db
    );
    let config = Arc::new(SinkConfig::from_toml(&toml, [("SINK__TARGET__PASSWORD".to_string(), "sink-rt-pw".to_string())]).unwrap());
    let target = Arc::new(sink::targets::Target::connect(&config.target, false).await.unwrap());
    // The table now belongs to another role: the sink may write rows, not alter it.
    admin
        .batch_execute(
            "CREATE ROLE owner_rt; ALTER TABLE customer_materialized OWNER TO owner_rt; \
             GRANT SELECT, INSERT, UPDATE ON customer_materialized TO sink_rt;",
        )
        .await
        .unwrap();
    let metrics = Arc::new(sink::metrics::Metrics::new());
    let stalls = Arc::new(sink::http::Stalls::default());
    let handler = Arc::new(Handler {
        entity: Entity::Customer,
        target,
        dlq: Arc::new(sink::dlq::DlqProducer::new(&config.kafka).unwrap()),
        metrics: Arc::clone(&metrics),
        schema: Arc::new(sink::schema::SchemaTracker::new()),
        config: Arc::clone(&config),
        stalls: Arc::clone(&stalls),
    });
    let id = "15151515-1515-4515-8515-151515151515";
    let value = serde_json::json!({"before": null, "after": {"id": id, "email": "a@x.io", "status": "active", "updated_at": "2024-05-01T10:00:00Z",
        "loyalty_tier": "gold"}, "source": {"lsn": 10, "ts_ms": 1714557600000i64}, "op": "c"});
    let record = Record {
        coords: Coords { topic: "cdc.public.customer".into(), partition: 2, offset: 41, timestamp: None },
        key: Some(serde_json::json!({ "id": id }).to_string().into_bytes()),
        value: Some(value.to_string().into_bytes()),
        trace: None,
    };
    let task = tokio::spawn({
        let handler = Arc::clone(&handler);
        async move { handler.process(&[record], &mut PartitionState::default()).await }
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let why = loop {
        if let Some(why) = stalls.describe() {
            break why;
        }
        assert!(!task.is_finished(), "the batch ended although the target refused it");
        assert!(Instant::now() < deadline, "the refusal never showed on readiness");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(why.contains("cdc.public.customer/2") && why.contains("42501") && why.contains("ensure_columns"), "{why}");
    assert!(metrics.render().contains("sink_partition_stalled{topic=\"cdc.public.customer\",partition=\"2\"} 1"), "{}", metrics.render());
    assert!(metrics.render().contains("sink_errors_total{kind=\"target_refused\"}"), "{}", metrics.render());
    assert!(!task.is_finished(), "still waiting for the operator");

    admin.batch_execute("ALTER TABLE customer_materialized OWNER TO sink_rt").await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), task).await.expect("the partition resumes once fixed").unwrap();
    assert_eq!(stalls.describe(), None, "readiness is green again");
    assert!(metrics.render().contains("sink_partition_stalled{topic=\"cdc.public.customer\",partition=\"2\"} 0"));
    let tier: Option<String> =
        admin.query_one("SELECT loyalty_tier FROM customer_materialized WHERE id = $1", &[&uuid::Uuid::parse_str(id).unwrap()]).await.unwrap().get(0);
    assert_eq!(tier.as_deref(), Some("gold"), "the row was applied, not skipped or dead-lettered");
}
