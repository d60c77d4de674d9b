//! The sink over TLS for real, both ways: it consumes from tansu behind a TLS endpoint
//! (`security.protocol=SSL`, the test CA, host name verified) and writes into a PostgreSQL
//! that accepts TLS only (`sslmode=verify-full`); its dead letter is read back by the
//! harness's DLQ reader over SSL too. The same over `SASL_SSL` (SCRAM-SHA-512 to tansu
//! with `--authentication`) with a client certificate the TLS endpoint requires.

use std::time::{Duration, Instant};

use harness::orchestrator::Secret;
use harness::testing::{TestCerts, TestPostgres, TlsBroker, TlsBrokerAuth};
use rdkafka::producer::{FutureProducer, FutureRecord};

const ID: &str = "11111111-1111-4111-8111-111111111111";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_consumes_over_ssl_and_writes_with_verify_full_and_its_dlq_reads_back_over_ssl() -> anyhow::Result<()> {
    sink_over_tls("sink-tls", TlsBrokerAuth::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_consumes_over_sasl_ssl_with_a_client_certificate_and_its_dlq_reads_back_the_same_way() -> anyhow::Result<()> {
    // A password that quoting would break, through the sink's environment only.
    let auth = TlsBrokerAuth { scram: Some(("sink".into(), Secret::new(r#"p w'"\=x"#))), client_cert: true };
    sink_over_tls("sink-sasl-ssl", auth).await
}

/// One change event and one poison message through the sink from tansu behind TLS (with
/// `auth` on top), into PostgreSQL over `verify-full`; the dead letter read back.
async fn sink_over_tls(name: &str, auth: TlsBrokerAuth) -> anyhow::Result<()> {
    let pg = TestPostgres::start(&format!("{name}-pg")).await?;
    let certs = TestCerts::create(&pg.dir.join("certs"), "cert_user")?;
    pg.enable_tls(&certs, "cert_user").await?;
    let topics = vec!["cdc.public.customer".to_string(), "cdc.dlq".to_string()];
    let kafka = TlsBroker::start_with(&format!("{name}-broker"), &certs, &topics, 1, auth).await?;

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
    let mut security = format!("ca_file = {}\n", toml::Value::from(ca.clone()));
    let mut env = vec![("SINK__TARGET__PASSWORD".to_string(), e.password.expose().to_string())];
    if let Some((cert, key)) = &kafka.client_cert {
        security += &format!("cert_file = {}\nkey_file = {}\n", toml::Value::from(cert.display().to_string()), toml::Value::from(key.display().to_string()));
    }
    let protocol = match &kafka.scram {
        Some((user, password)) => {
            security += &format!("sasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = {}\n", toml::Value::from(user.clone()));
            env.push(("SINK__KAFKA__SECURITY__SASL_PASSWORD".to_string(), password.expose().to_string()));
            "SASL_SSL"
        }
        None => "SSL",
    };
    let toml = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"sink-tls\"\ntopics = [\"cdc.public.customer\"]\ndlq_topic = \"cdc.dlq\"\n\
         [kafka.security]\nprotocol = \"{protocol}\"\n{security}\n[target]\nkind = \"postgres\"\nurl = {}\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
        kafka.bootstrap,
        toml::Value::from(url),
    );
    assert!(!toml.contains("p w'"), "the SASL password is not in the file");
    let config = sink::config::SinkConfig::from_toml(&toml, env)?;
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
