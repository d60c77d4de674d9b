//! The sink over TLS for real, both ways: it consumes from tansu behind a TLS endpoint
//! (`security.protocol=SSL`, the test CA, host name verified) and writes into a PostgreSQL
//! that accepts TLS only (`sslmode=verify-full`); its dead letter is read back by the
//! harness's DLQ reader over SSL too.

use std::time::{Duration, Instant};

use harness::testing::{TestCerts, TestPostgres, TlsBroker};
use rdkafka::producer::{FutureProducer, FutureRecord};

const ID: &str = "11111111-1111-4111-8111-111111111111";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_consumes_over_ssl_and_writes_with_verify_full_and_its_dlq_reads_back_over_ssl() -> anyhow::Result<()> {
    let pg = TestPostgres::start("sink-tls-pg").await?;
    let certs = TestCerts::create(&pg.dir.join("certs"), "cert_user")?;
    pg.enable_tls(&certs, "cert_user").await?;
    let topics = vec!["cdc.public.customer".to_string(), "cdc.dlq".to_string()];
    let kafka = TlsBroker::start("sink-tls-broker", &certs, &topics, 1).await?;

    let producer: FutureProducer = kafka.client_config().set("acks", "all").create()?;
    let event = serde_json::json!({
        "before": null,
        "after": { "id": ID, "email": "tls@example.com", "status": "active", "updated_at": "2024-05-01T10:00:00Z" },
        "source": { "connector": "postgresql", "lsn": 100, "ts_ms": 1714557600000_i64, "table": "customer", "schema": "public" },
        "op": "r",
        "ts_ms": 1714557600050_i64
    })
    .to_string();
    let key = serde_json::json!({ "id": ID }).to_string();
    for value in [event.as_str(), "{ not json"] {
        producer.send(FutureRecord::to("cdc.public.customer").partition(0).key(&key).payload(value), Duration::from_secs(30)).await.map_err(|(e, _)| e)?;
    }

    let e = &pg.endpoint;
    let port = e.port.to_string();
    let ca = certs.ca.display().to_string();
    let url = secure_conn::pg::conninfo(&[
        ("host", "127.0.0.1"),
        ("port", &port),
        ("user", &e.user),
        ("dbname", &e.target_db),
        ("sslmode", "verify-full"),
        ("sslrootcert", &ca),
    ]);
    let toml = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"sink-tls\"\ntopics = [\"cdc.public.customer\"]\ndlq_topic = \"cdc.dlq\"\n\
         [kafka.security]\nprotocol = \"SSL\"\nca_file = {}\n\n[target]\nkind = \"postgres\"\nurl = {}\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
        kafka.bootstrap,
        toml::Value::from(ca.clone()),
        toml::Value::from(url),
    );
    let config = sink::config::SinkConfig::from_toml(&toml, [("SINK__TARGET__PASSWORD".to_string(), e.password.expose().to_string())])?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sink = tokio::spawn(sink::app::run(config, async {
        let _ = stopped.await;
    }));

    let mut target_dsn = e.clone();
    target_dsn.params = [("sslmode", "verify-full"), ("sslrootcert", ca.as_str())].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let target = target_dsn.connect(&e.target_db).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = target.query_opt("SELECT email FROM customer_materialized WHERE id = $1::text::uuid", &[&ID]).await;
        if let Ok(Some(row)) = row {
            assert_eq!(row.get::<_, String>(0), "tls@example.com");
            break;
        }
        assert!(!sink.is_finished(), "the sink stopped: {:?}", sink.await);
        assert!(Instant::now() < deadline, "the event did not reach the target over TLS");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reader = kafka.client_config();
    let letters = loop {
        let letters = tokio::task::spawn_blocking({
            let reader = reader.clone();
            move || harness::verify::dlq::read_letters(&reader, "cdc.dlq", None, Duration::from_secs(10))
        })
        .await??;
        if !letters.is_empty() || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].original_topic.as_str(), letters[0].original_offset), ("cdc.public.customer", 1));
    let _ = stop.send(());
    sink.await??;
    Ok(())
}
