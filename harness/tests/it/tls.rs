//! PostgreSQL over TLS for real: a server with `ssl=on`, a throwaway CA and certificates
//! made by `openssl`, and only `hostssl` lines in pg_hba. Every libpq sslmode the harness
//! (and, through the same code, the sink and the workload) connects with, the failures a
//! wrong CA or host name must give, a client certificate, an odd password, and the
//! external pre-flight saying per hop what is encrypted and verified.

use std::collections::BTreeMap;
use std::process::Command;

use harness::orchestrator::{PgEndpoint, Secret};
use harness::testing::{TestCerts, TestPostgres, TlsBroker, TlsBrokerAuth};

const CERT_USER: &str = "cert_user";

fn with(pg: &PgEndpoint, params: &[(&str, &str)]) -> PgEndpoint {
    let mut e = pg.clone();
    e.params = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    e
}

/// Connects to `postgres` and says whether the session is encrypted.
async fn encrypted(e: &PgEndpoint) -> Result<bool, String> {
    let client = e.connect("postgres").await.map_err(|err| err.to_string())?;
    let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.map_err(|err| err.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_has_libpq_meaning_against_a_tls_only_server() -> anyhow::Result<()> {
    let pg = TestPostgres::start("tls-modes").await?;
    let certs = TestCerts::create(&pg.dir.join("certs"), CERT_USER)?;
    pg.enable_tls(&certs, CERT_USER).await?;
    let (ca, wrong_ca) = (certs.ca.display().to_string(), certs.wrong_ca.display().to_string());
    let e = &pg.endpoint;

    // hostssl only: plaintext is refused by the server, whatever the password.
    let err = encrypted(&with(e, &[("sslmode", "disable")])).await.unwrap_err();
    assert!(err.contains("no pg_hba.conf entry") && err.contains("no encryption"), "{err}");
    // allow (plaintext first, then TLS), prefer and require end up encrypted.
    for mode in ["allow", "prefer", "require"] {
        assert_eq!(encrypted(&with(e, &[("sslmode", mode)])).await, Ok(true), "sslmode={mode}");
    }
    // require with a root certificate checks the chain, as libpq does.
    let err = encrypted(&with(e, &[("sslmode", "require"), ("sslrootcert", &wrong_ca)])).await.unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
    // verify-ca: the right CA passes, the wrong one fails; the host name is not checked.
    assert_eq!(encrypted(&with(e, &[("sslmode", "verify-ca"), ("sslrootcert", &ca)])).await, Ok(true));
    let err = encrypted(&with(e, &[("sslmode", "verify-ca"), ("sslrootcert", &wrong_ca)])).await.unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
    // verify-full: the certificate names localhost and 127.0.0.1; any other name fails,
    // even with the right CA (hostaddr connects to the same server under that name).
    // (`localhost` may resolve to ::1 first, where this server does not listen.)
    for host in ["127.0.0.1", "localhost"] {
        let full = with(e, &[("sslmode", "verify-full"), ("sslrootcert", &ca), ("host", host), ("hostaddr", "127.0.0.1")]);
        assert_eq!(encrypted(&full).await, Ok(true), "verify-full to {host}");
    }
    let wrong_name = [("sslmode", "verify-full"), ("sslrootcert", ca.as_str()), ("host", "db.wrong.invalid"), ("hostaddr", "127.0.0.1")];
    let err = encrypted(&with(e, &wrong_name)).await.unwrap_err();
    assert!(err.contains("certificate verify failed") || err.contains("hostname mismatch"), "{err}");
    let ca_only = [("sslmode", "verify-ca"), ("sslrootcert", ca.as_str()), ("host", "db.wrong.invalid"), ("hostaddr", "127.0.0.1")];
    assert_eq!(encrypted(&with(e, &ca_only)).await, Ok(true), "verify-ca does not check the name");
    let err = encrypted(&with(e, &[("sslmode", "verify-full"), ("sslrootcert", &wrong_ca)])).await.unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");

    // A client certificate logs in without a password (pg_hba `cert` for that user).
    let mut by_cert = with(e, &[("sslmode", "verify-full"), ("sslrootcert", &ca)]);
    by_cert.params.insert("sslcert".into(), certs.client_cert.display().to_string());
    by_cert.params.insert("sslkey".into(), certs.client_key.display().to_string());
    by_cert.user = CERT_USER.into();
    by_cert.password = Secret::new("not used");
    assert_eq!(encrypted(&by_cert).await, Ok(true));

    // A password with a space, both quotes, a backslash and `=` works as it is.
    let odd = r#"p w'"\=x host=evil"#;
    let admin = with(e, &[("sslmode", "require")]).connect("postgres").await?;
    admin.execute(&format!("CREATE ROLE odd LOGIN PASSWORD '{}'", odd.replace('\'', "''")), &[]).await?;
    let mut odd_user = with(e, &[("sslmode", "verify-full"), ("sslrootcert", &ca)]);
    odd_user.user = "odd".into();
    odd_user.password = Secret::new(odd);
    assert_eq!(encrypted(&odd_user).await, Ok(true));
    Ok(())
}

/// `harness status --backend external` over a TLS source and target: each hop says
/// whether it is encrypted and verified; a wrong CA fails the source hop by name, and
/// `--require-tls` turns the plaintext broker hop into a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_status_reports_tls_per_hop_and_require_tls_refuses_plaintext() -> anyhow::Result<()> {
    let pg = TestPostgres::start("tls-status").await?;
    let certs = TestCerts::create(&pg.dir.join("certs"), CERT_USER)?;
    pg.enable_tls(&certs, CERT_USER).await?;
    let e = &pg.endpoint;
    let dir = &pg.dir;
    let password_file = dir.join("pg.password");
    harness::orchestrator::state::write_private(&password_file, format!("{}\n", e.password.expose()).as_bytes())?;
    let endpoints = |ca: &std::path::Path| {
        let dsn = |db: &str| format!("postgres://{}@localhost:{}/{db}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}", e.user, e.port, ca.display());
        format!(
            "[source]\ndsn = \"{}\"\npassword = {{ file = \"{}\" }}\npublication = \"cdc_publication\"\nschema = \"public\"\n\n\
             [kafka]\nbootstrap_servers = \"127.0.0.1:1\"\ntopic_prefix = \"cdc\"\nconsumer_group = \"g\"\n\n\
             [target]\nkind = \"postgres\"\ndsn = \"{}\"\npassword = {{ file = \"{}\" }}\n",
            dsn("app"),
            password_file.display(),
            dsn("sink"),
            password_file.display()
        )
    };
    let status = |file: &std::path::Path, extra: &[&str]| {
        let (hops, stderr) = external_status(dir, file, extra);
        (hop(&hops, "postgres").clone(), hop(&hops, "broker").clone(), stderr)
    };

    let good = dir.join("good.toml");
    std::fs::write(&good, endpoints(&certs.ca))?;
    let (postgres, broker, stderr) = status(&good, &[]);
    assert_eq!(postgres["state"], "healthy", "{postgres} {stderr}");
    assert_eq!((postgres["security"]["encrypted"].as_bool(), postgres["security"]["verified"].as_bool()), (Some(true), Some(true)), "{postgres}");
    assert!(postgres["security"]["detail"].as_str().unwrap().contains("sslmode=verify-full"), "{postgres}");
    assert!(!stderr.contains(e.password.expose()));
    // The broker does not answer here; with --require-tls its plaintext is a failure first.
    let (_, broker_tls, _) = status(&good, &["--require-tls"]);
    assert_eq!(broker["state"], "unhealthy");
    assert!(broker_tls["detail"].as_str().unwrap_or_default().contains("--require-tls"), "{broker_tls}");
    assert_eq!(broker_tls["security"]["encrypted"].as_bool(), Some(false), "{broker_tls}");

    let wrong = dir.join("wrong.toml");
    std::fs::write(&wrong, endpoints(&certs.wrong_ca))?;
    let (postgres, _, _) = status(&wrong, &[]);
    assert_eq!(postgres["state"], "unhealthy");
    let detail = postgres["detail"].as_str().unwrap();
    assert!(detail.starts_with("source:") && detail.contains("certificate verify failed"), "{detail}");
    Ok(())
}

/// SASL/SCRAM-SHA-512 for real: tansu with `--authentication` and a user it stores (made
/// with `tansu user create` while authentication is off). The harness's client settings,
/// checked as the endpoints file's are, log in; a wrong password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_logs_in_to_tansu_with_authentication_and_a_wrong_password_is_refused() -> anyhow::Result<()> {
    use harness::orchestrator::local::process::{self, free_port};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let dir = harness::testing::run_dir("tls-sasl");
    std::fs::create_dir_all(dir.join("logs"))?;
    std::fs::create_dir_all(dir.join("broker"))?;
    let tansu = harness::provision::tansu::ensure(&harness::provision::Cache::locate()?)?;
    let port = free_port()?;
    let start = |authentication: bool| {
        let mut cmd = Command::new(&tansu);
        cmd.current_dir(dir.join("broker"))
            .args(["broker", "--cluster-id", "cdc-harness", "--storage-engine=sqlite://tansu.db", "--silent"])
            .arg(format!("--listener-url=tcp://127.0.0.1:{port}"))
            .arg(format!("--advertised-listener-url=tcp://127.0.0.1:{port}"));
        if authentication {
            cmd.arg("--authentication");
        }
        process::spawn(cmd, &dir.join("logs").join("broker.log"))
    };
    /// Stops the broker whatever the test's outcome.
    struct Running(process::ProcessHandle);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.stop(nix::sys::signal::Signal::SIGTERM, std::time::Duration::from_secs(10));
        }
    }
    let password = r#"p w'"\=x"#;
    let broker = Running(start(false)?);
    let create =
        || Command::new(&tansu).args(["user", "create", "--broker", &format!("tcp://127.0.0.1:{port}"), "cdc", password, "--mechanism", "scram512"]).output();
    let mut created = create()?;
    for _ in 0..50 {
        if created.status.success() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        created = create()?;
    }
    assert!(created.status.success(), "tansu user create: {}", String::from_utf8_lossy(&created.stderr));
    drop(broker);
    let _broker = Running(start(true)?);
    let metadata = |password: &str| {
        let mut settings: BTreeMap<String, String> =
            [("security.protocol", "SASL_PLAINTEXT"), ("sasl.mechanism", "SCRAM-SHA-512"), ("sasl.username", "cdc"), ("sasl.password", password)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        secure_conn::kafka::check(&mut settings).expect("valid SASL settings");
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", format!("127.0.0.1:{port}"));
        for (k, v) in settings {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config.create().expect("a SASL client");
        consumer.fetch_metadata(None, std::time::Duration::from_secs(5)).map(|m| m.brokers().len())
    };
    let mut logged_in = tokio::task::block_in_place(|| metadata(password));
    for _ in 0..10 {
        if logged_in.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        logged_in = tokio::task::block_in_place(|| metadata(password));
    }
    assert_eq!(logged_in.map_err(|e| e.to_string()), Ok(1));
    assert!(tokio::task::block_in_place(|| metadata("not the password")).is_err(), "a wrong password is refused");
    Ok(())
}

/// `harness status --backend external --json` on `file`: every hop's line, and stderr.
fn external_status(dir: &std::path::Path, file: &std::path::Path, extra: &[&str]) -> (Vec<serde_json::Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["--run-dir"])
        .arg(dir.join("run"))
        .args(["status", "--backend", "external", "--json", "--endpoints"])
        .arg(file)
        .args(extra)
        .output()
        .expect("run the harness");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{stderr}"));
    (json.as_array().unwrap().clone(), stderr)
}

fn hop<'a>(hops: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    hops.iter().find(|s| s["service"] == name).unwrap_or_else(|| panic!("no {name} in {hops:?}"))
}

/// An endpoints file whose broker hop is `broker` with `[kafka] client` = `client` and
/// `client_secrets` = `secrets` (as TOML lines); the source is unreachable (only the
/// broker hop is looked at).
fn broker_endpoints(dir: &std::path::Path, name: &str, bootstrap: &str, client: &[(&str, String)], secrets: &[(&str, String)]) -> std::path::PathBuf {
    let table = |pairs: &[(&str, String)]| pairs.iter().map(|(k, v)| format!("\"{k}\" = {}\n", toml::Value::from(v.clone()))).collect::<String>();
    let text = format!(
        "[source]\ndsn = \"postgres://cdc@127.0.0.1:1/app\"\npassword = {{ env = \"PATH\" }}\npublication = \"cdc_publication\"\nschema = \"public\"\n\n\
         [kafka]\nbootstrap_servers = \"{bootstrap}\"\ntopic_prefix = \"cdc\"\nconsumer_group = \"g\"\n\n[kafka.client]\n{}\n[kafka.client_secrets]\n{}\n\
         [target]\nkind = \"postgres\"\ndsn = \"postgres://cdc@127.0.0.1:1/sink\"\npassword = {{ env = \"PATH\" }}\n",
        table(client),
        table(secrets),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Produces one record to `topic` partition 0 with `config` and reads it back from the start.
async fn round_trip(config: &rdkafka::ClientConfig, topic: &str, payload: &str) -> anyhow::Result<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let producer: FutureProducer = config.clone().set("acks", "all").create()?;
    producer.send(FutureRecord::<(), _>::to(topic).partition(0).payload(payload), std::time::Duration::from_secs(30)).await.map_err(|(e, _)| e)?;
    let consumer: BaseConsumer = config.clone().set("group.id", "tls-round-trip").set("enable.auto.commit", "false").create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(message) = consumer.poll(std::time::Duration::from_millis(500)) {
                return Ok(String::from_utf8_lossy(message?.payload().unwrap_or_default()).to_string());
            }
        }
        anyhow::bail!("nothing read back from {topic}")
    })
}

/// SASL_SSL for real: SCRAM-SHA-512 to tansu with `--authentication` behind the TLS
/// terminator. A record goes there and back with the harness-style client settings; the
/// external pre-flight over SASL_SSL reports the broker hop healthy and verified, and with
/// a wrong password fails it with an authentication error. PLAIN is refused by this
/// broker (tansu 0.6 builds its SASL library without the PLAIN mechanism).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_scram_round_trips_through_the_tls_terminator_and_a_wrong_password_fails_by_name() -> anyhow::Result<()> {
    let dir = harness::testing::run_dir("tls-sasl-ssl");
    let certs = TestCerts::create(&dir.join("certs"), CERT_USER)?;
    let password = r#"p w'"\=x"#;
    let auth = TlsBrokerAuth { scram: Some(("cdc".into(), Secret::new(password))), client_cert: false };
    let kafka = TlsBroker::start_with("tls-sasl-ssl-broker", &certs, &harness::config::pipeline_topics(), 1, auth).await?;
    let topic = "cdc.public.customer";
    assert_eq!(round_trip(&kafka.client_config(), topic, "over SASL_SSL").await?, "over SASL_SSL");

    let ca = certs.ca.display().to_string();
    let client =
        [("security.protocol", "SASL_SSL".to_string()), ("sasl.mechanism", "SCRAM-SHA-512".into()), ("sasl.username", "cdc".into()), ("ssl.ca.location", ca)];
    let password_file = dir.join("kafka.password");
    harness::orchestrator::state::write_private(&password_file, password.as_bytes())?;
    let secret = |file: &std::path::Path| format!("{{ file = {} }}", toml::Value::from(file.display().to_string()));
    let good = broker_endpoints(&dir, "good.toml", &kafka.bootstrap, &client, &[]);
    // client_secrets hold a reference table, not a string: append it by hand.
    let with_secret = |path: &std::path::Path, file: &std::path::Path| {
        let text = std::fs::read_to_string(path)
            .unwrap()
            .replace("[kafka.client_secrets]\n", &format!("[kafka.client_secrets]\n\"sasl.password\" = {}\n", secret(file)));
        std::fs::write(path, text).unwrap();
    };
    with_secret(&good, &password_file);
    let (hops, stderr) = external_status(&dir, &good, &["--require-tls"]);
    let broker = hop(&hops, "broker");
    assert_eq!(broker["state"], "healthy", "{broker} {stderr}");
    assert_eq!((broker["security"]["encrypted"].as_bool(), broker["security"]["verified"].as_bool()), (Some(true), Some(true)), "{broker}");
    assert!(broker["security"]["detail"].as_str().unwrap().contains("SASL_SSL: TLS, certificate and host name verified, SASL SCRAM-SHA-512"), "{broker}");
    assert!(!stderr.contains(password) && !hops.iter().any(|h| h.to_string().contains("p w'")), "the password is never printed");

    let wrong_file = dir.join("wrong.password");
    harness::orchestrator::state::write_private(&wrong_file, b"not the password")?;
    let wrong = broker_endpoints(&dir, "wrong.toml", &kafka.bootstrap, &client, &[]);
    with_secret(&wrong, &wrong_file);
    let (hops, _) = external_status(&dir, &wrong, &[]);
    let broker = hop(&hops, "broker");
    assert_eq!(broker["state"], "unhealthy", "{broker}");
    let detail = broker["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("Kafka bootstrap servers {} do not answer", kafka.bootstrap)), "{detail}");
    assert!(detail.contains("SASL authentication error"), "{detail}");
    assert!(!detail.contains(password), "{detail}");

    // PLAIN: tansu offers SCRAM only, so the same user and password are refused.
    let mut plain = kafka.client_config();
    plain.set("sasl.mechanism", "PLAIN");
    let refused = tokio::task::block_in_place(|| {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = plain.create().unwrap();
        consumer.fetch_metadata(None, std::time::Duration::from_secs(5)).map(|_| ())
    });
    assert!(refused.is_err(), "tansu 0.6 accepted SASL PLAIN: test PLAIN for real now");
    Ok(())
}

/// Client certificates to Kafka for real: the TLS terminator requires one signed by the
/// test CA. The configured certificate and key get a record there and back and the
/// pre-flight healthy; without them the TLS handshake is refused and the pre-flight says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_client_certificate_is_presented_when_configured_and_a_client_without_one_is_refused() -> anyhow::Result<()> {
    let dir = harness::testing::run_dir("tls-mtls");
    let certs = TestCerts::create(&dir.join("certs"), CERT_USER)?;
    let auth = TlsBrokerAuth { scram: None, client_cert: true };
    let kafka = TlsBroker::start_with("tls-mtls-broker", &certs, &harness::config::pipeline_topics(), 1, auth).await?;
    assert_eq!(round_trip(&kafka.client_config(), "cdc.public.customer", "with a client certificate").await?, "with a client certificate");

    let ca = ("ssl.ca.location", certs.ca.display().to_string());
    let with_cert = [
        ("security.protocol", "SSL".to_string()),
        ca.clone(),
        ("ssl.certificate.location", certs.client_cert.display().to_string()),
        ("ssl.key.location", certs.client_key.display().to_string()),
    ];
    let (hops, stderr) = external_status(&dir, &broker_endpoints(&dir, "cert.toml", &kafka.bootstrap, &with_cert, &[]), &[]);
    assert_eq!(hop(&hops, "broker")["state"], "healthy", "{} {stderr}", hop(&hops, "broker"));

    let no_cert = broker_endpoints(&dir, "no-cert.toml", &kafka.bootstrap, &[("security.protocol", "SSL".to_string()), ca], &[]);
    let (hops, _) = external_status(&dir, &no_cert, &[]);
    let broker = hop(&hops, "broker");
    assert_eq!(broker["state"], "unhealthy", "{broker}");
    let detail = broker["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("Kafka bootstrap servers {} do not answer", kafka.bootstrap)), "{detail}");
    assert!(detail.contains("SSL") || detail.contains("certificate"), "{detail}");

    let mut without = kafka.client_config();
    without.remove("ssl.certificate.location").remove("ssl.key.location");
    let refused = tokio::task::block_in_place(|| {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = without.create().unwrap();
        consumer.fetch_metadata(None, std::time::Duration::from_secs(5)).map(|_| ())
    });
    assert!(refused.is_err(), "a client without a certificate got metadata");
    Ok(())
}

/// A small HTTP server for the Connect hop: `GET .../status` answers a running connector,
/// `GET /metrics` one sample; every response closes its connection.
async fn connect_like_server() -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request).lines().next().unwrap_or_default().to_string();
                let body = if line.contains("/status") {
                    r#"{"name":"cdc","connector":{"state":"RUNNING"},"tasks":[{"id":0,"state":"RUNNING"}]}"#
                } else {
                    "sink_up 1\n"
                };
                let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok((port, server))
}

/// `https` to a Kafka Connect (and a sink metrics URL) whose certificate a private CA
/// signed: with `[connect] ca` / `[sink] ca` the pre-flight reaches both through a real
/// TLS endpoint, verified; without them each hop fails by name with the certificate error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_connect_and_sink_metrics_with_a_private_ca_works_with_ca_and_fails_by_name_without() -> anyhow::Result<()> {
    let dir = harness::testing::run_dir("tls-https-ca");
    let certs = TestCerts::create(&dir.join("certs"), CERT_USER)?;
    let (upstream, server) = connect_like_server().await?;
    let tls = harness::testing::TlsTerminator::start(&dir.join("socat.log"), &certs, upstream, false)?;
    let endpoints = |name: &str, ca: Option<&std::path::Path>| {
        let ca = ca.map(|p| format!("ca = {}\n", toml::Value::from(p.display().to_string()))).unwrap_or_default();
        let text = format!(
            "[source]\ndsn = \"postgres://cdc@127.0.0.1:1/app\"\npassword = {{ env = \"PATH\" }}\npublication = \"cdc_publication\"\n\n\
             [kafka]\nbootstrap_servers = \"127.0.0.1:1\"\ntopic_prefix = \"cdc\"\nconsumer_group = \"g\"\n\n\
             [connect]\nurl = \"https://localhost:{port}\"\nconnector = \"cdc\"\n{ca}\n\
             [target]\nkind = \"postgres\"\ndsn = \"postgres://cdc@127.0.0.1:1/sink\"\npassword = {{ env = \"PATH\" }}\n\n\
             [sink]\nmetrics_url = \"https://127.0.0.1:{port}\"\n{ca}",
            port = tls.port
        );
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let with_ca = endpoints("with-ca.toml", Some(&certs.ca));
    let (hops, stderr) = tokio::task::block_in_place(|| external_status(&dir, &with_ca, &[]));
    for service in ["debezium", "sink"] {
        let h = hop(&hops, service);
        assert_eq!(h["state"], "healthy", "{h} {stderr}");
        assert_eq!((h["security"]["encrypted"].as_bool(), h["security"]["verified"].as_bool()), (Some(true), Some(true)), "{h}");
    }

    let without = endpoints("without-ca.toml", None);
    let (hops, _) = tokio::task::block_in_place(|| external_status(&dir, &without, &[]));
    let connect = hop(&hops, "debezium");
    assert_eq!(connect["state"], "unhealthy", "{connect}");
    let detail = connect["detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("Kafka Connect https://localhost:{}/connectors/cdc/status", tls.port)), "{detail}");
    assert!(detail.contains("UnknownIssuer") && detail.contains("[connect] ca"), "{detail}");
    let sink = hop(&hops, "sink");
    let detail = sink["detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("metrics https://127.0.0.1:{}/metrics", tls.port)) && detail.contains("UnknownIssuer"), "{detail}");

    // The wrong CA is no better than none.
    let wrong = endpoints("wrong-ca.toml", Some(&certs.wrong_ca));
    let (hops, _) = tokio::task::block_in_place(|| external_status(&dir, &wrong, &[]));
    assert_eq!(hop(&hops, "debezium")["state"], "unhealthy", "{}", hop(&hops, "debezium"));
    server.abort();
    Ok(())
}

/// The Debezium launcher's producer over SASL_SSL with a client certificate, for real: the
/// launcher alone (the local stack has no Kafka security settings to give it), configured
/// by the harness's `debezium::configure` with librdkafka-style settings it translates
/// (SCRAM as a quoted `sasl.jaas.config`, PEM trust and key stores), the password only in
/// its environment. A row inserted at the source arrives on its topic, read over SASL_SSL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debezium_launcher_produces_over_sasl_ssl_with_a_client_certificate() -> anyhow::Result<()> {
    use harness::orchestrator::local::debezium::{self, DebeziumLayout, DebeziumSettings};
    use harness::orchestrator::local::process::free_port;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let pg = TestPostgres::start("tls-launcher-pg").await?;
    let certs = TestCerts::create(&pg.dir.join("certs"), CERT_USER)?;
    let password = r#"p w'"\=x;"#;
    let auth = TlsBrokerAuth { scram: Some(("debezium".into(), Secret::new(password))), client_cert: true };
    let kafka = TlsBroker::start_with("tls-launcher-broker", &certs, &harness::config::pipeline_topics(), 1, auth).await?;
    let java = harness::provision::java::ensure()?;
    let libs = harness::provision::debezium::ensure(&harness::provision::Cache::locate()?)?;

    let client: BTreeMap<String, Secret> = [
        ("security.protocol", "SASL_SSL".to_string()),
        ("sasl.mechanism", "SCRAM-SHA-512".into()),
        ("sasl.username", "debezium".into()),
        ("sasl.password", password.into()),
        ("ssl.ca.location", certs.ca.display().to_string()),
        ("ssl.certificate.location", certs.client_cert.display().to_string()),
        ("ssl.key.location", certs.client_key.display().to_string()),
        ("ssl.endpoint.identification.algorithm", "https".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Secret::new(v)))
    .collect();
    let layout = DebeziumLayout::new(&pg.dir);
    std::fs::create_dir_all(pg.dir.join("logs"))?;
    let status_port = free_port()?;
    let settings = DebeziumSettings { poll_interval_ms: 100, status_port, status_address: "127.0.0.1", defaults: false };
    debezium::configure(&layout, &pg.endpoint, &kafka.bootstrap, &client, &settings)?;
    assert!(!std::fs::read_to_string(&layout.properties)?.contains(password), "the password is not in the properties file");
    /// Stops the launcher whatever the test's outcome.
    struct Running(harness::orchestrator::local::process::ProcessHandle);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.stop(nix::sys::signal::Signal::SIGTERM, std::time::Duration::from_secs(15));
        }
    }
    let launcher = Running(debezium::start(&java, &libs, &layout, &pg.endpoint, &client)?);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", launcher.0.pid))?;
    assert!(!String::from_utf8_lossy(&cmdline).contains(password), "the password is not in the launcher's arguments");
    let status_url = format!("http://127.0.0.1:{status_port}/status");
    let ready = debezium::wait_ready(&status_url, &launcher.0, true, std::time::Duration::from_secs(180)).await;
    assert!(ready.is_ok(), "{ready:?}\n{}", launcher.0.log_tail(40));

    let source = pg.endpoint.connect(&pg.endpoint.source_db).await?;
    source
        .execute(
            "INSERT INTO customer (id, email, status, updated_at) VALUES ('22222222-2222-4222-8222-222222222222', 'launcher@tls.example', 'active', now())",
            &[],
        )
        .await?;
    let consumer: BaseConsumer = kafka.client_config().set("group.id", "tls-launcher").set("enable.auto.commit", "false").create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset("cdc.public.customer", 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let arrived = tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(std::time::Duration::from_millis(500))
                && String::from_utf8_lossy(message.payload().unwrap_or_default()).contains("launcher@tls.example")
            {
                return true;
            }
        }
        false
    });
    assert!(arrived, "the change event did not reach the topic over SASL_SSL:\n{}", launcher.0.log_tail(40));
    Ok(())
}
