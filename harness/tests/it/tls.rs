//! PostgreSQL over TLS for real: a server with `ssl=on`, a throwaway CA and certificates
//! made by `openssl`, and only `hostssl` lines in pg_hba. Every libpq sslmode the harness
//! (and, through the same code, the sink and the workload) connects with, the failures a
//! wrong CA or host name must give, a client certificate, an odd password, and the
//! external pre-flight saying per hop what is encrypted and verified.

use std::collections::BTreeMap;
use std::process::Command;

use harness::orchestrator::{PgEndpoint, Secret};
use harness::testing::{TestCerts, TestPostgres};

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
        let out = Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["--run-dir"])
            .arg(dir.join("run"))
            .args(["status", "--backend", "external", "--json", "--endpoints"])
            .arg(file)
            .args(extra)
            .output()
            .expect("run the harness");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        let hop = |name: &str| json.as_array().unwrap().iter().find(|s| s["service"] == name).cloned().unwrap();
        (hop("postgres"), hop("broker"), String::from_utf8_lossy(&out.stderr).to_string())
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
