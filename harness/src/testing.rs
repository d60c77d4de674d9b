//! Real services for tests (this crate's and the sink's): a private PostgreSQL, or the
//! whole local pipeline, each stopped when the value is dropped (also when a test panics).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::StackConfig;
use crate::orchestrator::local::LocalStack;
use crate::orchestrator::local::postgres::{self, PostgresLayout};
use crate::orchestrator::local::process::{ProcessHandle, free_port};
use crate::orchestrator::stack::Stack;
use crate::orchestrator::{Backend, Endpoints, PgEndpoint, Secret, ServiceKind};

/// A fresh folder under `<workspace>/target/test-runs/` (searchable by the unprivileged
/// postgres user, unlike a 0700 temp dir).
pub fn run_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"))
        .join("test-runs");
    let dir = root.join(format!("{name}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test run dir");
    dir
}

/// A private PostgreSQL cluster with the `app` (source schema, no seed) and `sink`
/// databases.
pub struct TestPostgres {
    pub endpoint: PgEndpoint,
    pub dir: PathBuf,
    handle: ProcessHandle,
}

impl TestPostgres {
    /// The postmaster's pid (its backends are its children): tests freeze the server with it.
    pub fn pid(&self) -> i32 {
        self.handle.pid
    }

    pub async fn start(name: &str) -> anyhow::Result<Self> {
        let dir = run_dir(name);
        std::fs::create_dir_all(dir.join("logs"))?;
        let bin = crate::provision::postgres::bin_dir()?;
        let layout = PostgresLayout::new(&dir);
        let endpoint = postgres::init(&bin, &layout, free_port()?, &Secret::generate())?;
        let handle = postgres::start(&bin, &layout)?;
        let pg = Self { endpoint, dir, handle };
        postgres::wait_ready(&pg.endpoint, &pg.handle, std::time::Duration::from_secs(60)).await?;
        postgres::bootstrap(&pg.endpoint, &crate::config::SeedConfig { customers: 0, seed: 1 }).await?;
        Ok(pg)
    }

    pub fn handle(&self) -> &ProcessHandle {
        &self.handle
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.handle.stop(nix::sys::signal::Signal::SIGINT, std::time::Duration::from_secs(10));
    }
}

/// The tansu broker alone, with `topics` created, stopped on drop.
pub struct TestBroker {
    pub bootstrap: String,
    handle: ProcessHandle,
}

impl TestBroker {
    pub async fn start(name: &str, topics: &[String], partitions: u32) -> anyhow::Result<Self> {
        use crate::orchestrator::local::broker::{self, BrokerLayout};
        let dir = run_dir(name);
        std::fs::create_dir_all(dir.join("logs"))?;
        let tansu = crate::provision::tansu::ensure(&crate::provision::Cache::locate()?)?;
        let port = free_port()?;
        let layout = BrokerLayout::new(&dir);
        let handle = broker::start(&tansu, &layout, port, port)?;
        let bootstrap = format!("127.0.0.1:{port}");
        broker::wait_ready(&bootstrap, &handle, &layout, std::time::Duration::from_secs(60)).await?;
        broker::create_topics(&bootstrap, topics, partitions).await?;
        Ok(Self { bootstrap, handle })
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.handle.stop(nix::sys::signal::Signal::SIGTERM, std::time::Duration::from_secs(10));
    }
}

/// Full stacks in one test process run one at a time: two JVMs, brokers and sinks on a
/// 2-core machine would turn latency-sensitive assertions into coin flips.
static ONE_STACK_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Waits for this process's turn to run a full stack (see `TestStack`); for tests that
/// start one another way (e.g. through `harness::run::run`).
pub async fn stack_turn() -> tokio::sync::SemaphorePermit<'static> {
    ONE_STACK_AT_A_TIME.acquire().await.expect("the semaphore is never closed")
}

/// The whole local pipeline, torn down on drop.
pub struct TestStack {
    pub stack: Stack,
    pub endpoints: Endpoints,
    /// Its run folder: what a run given `reuse` opens.
    pub run_dir: PathBuf,
    /// The processes `start` started (for tests that check none outlives its teardown).
    pub processes: Vec<ProcessHandle>,
    _turn: tokio::sync::SemaphorePermit<'static>,
}

impl TestStack {
    /// Starts the stack in a fresh run folder; `configure` adjusts the defaults (small seed).
    pub async fn start(name: &str, configure: impl FnOnce(&mut StackConfig)) -> anyhow::Result<Self> {
        let turn = ONE_STACK_AT_A_TIME.acquire().await?;
        let dir = run_dir(name);
        let mut config = StackConfig::new(dir.clone());
        config.seed.customers = 200;
        configure(&mut config);
        let mut stack = LocalStack::new(config)?;
        let endpoints = stack.up().await?;
        let processes = ServiceKind::ALL.iter().filter_map(|s| stack.handle(*s).cloned()).collect();
        Ok(Self { stack: Stack::from(stack), endpoints, run_dir: dir, processes, _turn: turn })
    }
}

/// Throwaway certificates made with the `openssl` command: a CA, a server certificate for
/// `localhost` and 127.0.0.1 signed by it, a client certificate for `client_user`, and a
/// second CA that signed none of them (the "wrong CA").
pub struct TestCerts {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub wrong_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCerts {
    pub fn create(dir: &std::path::Path, client_user: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            let out = std::process::Command::new("openssl").args(args).current_dir(dir).output()?;
            anyhow::ensure!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            Ok(())
        };
        for ca in ["ca", "wrong-ca"] {
            let (key, crt, subject) = (format!("{ca}.key"), format!("{ca}.crt"), format!("/CN=cdc-harness test {ca}"));
            openssl(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subject])?;
        }
        std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n")?;
        for (name, subject, ext) in [("server", "/CN=localhost".to_string(), Some("server.ext")), ("client", format!("/CN={client_user}"), None)] {
            let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
            openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subject])?;
            let mut sign = vec!["x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", &crt, "-days", "2"];
            if let Some(ext) = ext {
                sign.extend(["-extfile", ext]);
            }
            openssl(&sign)?;
        }
        let path = |f: &str| dir.join(f);
        Ok(Self {
            dir: dir.to_path_buf(),
            ca: path("ca.crt"),
            wrong_ca: path("wrong-ca.crt"),
            server_cert: path("server.crt"),
            server_key: path("server.key"),
            client_cert: path("client.crt"),
            client_key: path("client.key"),
        })
    }

    /// `server.pem`: the server's certificate and key in one file (what `socat` reads).
    pub fn server_pem(&self) -> anyhow::Result<PathBuf> {
        let pem = self.dir.join("server.pem");
        let text = std::fs::read_to_string(&self.server_cert)? + &std::fs::read_to_string(&self.server_key)?;
        crate::orchestrator::state::write_private(&pem, text.as_bytes())?;
        Ok(pem)
    }
}

impl TestPostgres {
    /// Turns TLS on with `certs` and accepts TCP connections only over TLS (`hostssl`):
    /// `client_user` logs in with its client certificate, everyone else with a password.
    pub async fn enable_tls(&self, certs: &TestCerts, client_user: &str) -> anyhow::Result<()> {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let layout = PostgresLayout::new(&self.dir);
        let owner = std::fs::metadata(&layout.data)?;
        let server_dir = layout.dir.join("tls");
        std::fs::create_dir_all(&server_dir)?;
        for (from, name) in [(&certs.server_cert, "server.crt"), (&certs.server_key, "server.key"), (&certs.ca, "ca.crt")] {
            let to = server_dir.join(name);
            std::fs::copy(from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))?;
            std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid()))?;
        }
        std::os::unix::fs::chown(&server_dir, Some(owner.uid()), Some(owner.gid()))?;
        let admin = self.endpoint.connect("postgres").await?;
        for (setting, file) in [("ssl_cert_file", "server.crt"), ("ssl_key_file", "server.key"), ("ssl_ca_file", "ca.crt")] {
            let path = server_dir.join(file).display().to_string().replace('\'', "''");
            admin.batch_execute(&format!("ALTER SYSTEM SET {setting} = '{path}'")).await?;
        }
        admin.batch_execute("ALTER SYSTEM SET ssl = on").await?;
        admin.batch_execute(&format!("CREATE ROLE \"{client_user}\" LOGIN SUPERUSER")).await?;
        std::fs::write(
            layout.data.join("pg_hba.conf"),
            format!(
                "local all all trust\nhostssl all {client_user} 127.0.0.1/32 cert\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostssl replication all 127.0.0.1/32 scram-sha-256\n"
            ),
        )?;
        admin.batch_execute("SELECT pg_reload_conf()").await?;
        // The reload is asynchronous: wait until a TLS-only connection is accepted.
        let mut tls = self.endpoint.clone();
        tls.params.insert("sslmode".into(), "require".into());
        for _ in 0..100 {
            if tls.connect("postgres").await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        anyhow::bail!("PostgreSQL did not accept TLS connections after the reload")
    }
}

/// What `TlsBroker` asks of a client beyond TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsBrokerAuth {
    /// tansu's `--authentication` with this SCRAM-SHA-512 user (name, password): clients
    /// speak `SASL_SSL`.
    pub scram: Option<(String, Secret)>,
    /// The terminator requires a client certificate signed by the test CA (`socat
    /// verify=1,cafile=`); `client_config` presents the test client certificate.
    pub client_cert: bool,
}

/// Stops a process when dropped (also when a test panics half-way through a start).
struct StopOnDrop(ProcessHandle, nix::sys::signal::Signal);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop(self.1, std::time::Duration::from_secs(10));
    }
}

/// A real TLS endpoint in front of a plain TCP server: `socat openssl-listen` with the
/// test server certificate (for `localhost` and 127.0.0.1), forwarding to `upstream`;
/// with `client_cert` it requires a client certificate signed by the test CA. Stopped on drop.
pub struct TlsTerminator {
    /// The TLS port on 127.0.0.1.
    pub port: u16,
    _socat: StopOnDrop,
}

impl TlsTerminator {
    pub fn start(log: &std::path::Path, certs: &TestCerts, upstream: u16, client_cert: bool) -> anyhow::Result<Self> {
        Self::start_on(free_port()?, log, certs, upstream, client_cert)
    }

    fn start_on(port: u16, log: &std::path::Path, certs: &TestCerts, upstream: u16, client_cert: bool) -> anyhow::Result<Self> {
        let verify = if client_cert { format!("verify=1,cafile={}", certs.ca.display()) } else { "verify=0".to_string() };
        let mut socat = std::process::Command::new("socat");
        socat
            .arg(format!("openssl-listen:{port},bind=127.0.0.1,reuseaddr,fork,cert={},{verify}", certs.server_pem()?.display()))
            .arg(format!("tcp:127.0.0.1:{upstream}"));
        let socat = StopOnDrop(crate::orchestrator::local::process::spawn(socat, log)?, nix::sys::signal::Signal::SIGTERM);
        // Listening once a TCP connection is accepted.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Self { port, _socat: socat });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        anyhow::bail!("socat did not listen on {port}: see {}", log.display())
    }
}

/// tansu behind a real TLS endpoint: `socat openssl-listen` terminates TLS with the test
/// server certificate and forwards to tansu, which advertises the TLS address, so every
/// client (after bootstrap too) speaks SSL. tansu 0.6 takes `--cert/--key` but does not use
/// them (its listener accepts plain TCP only), hence the terminator. With `TlsBrokerAuth`
/// tansu also requires SCRAM (`SASL_SSL`) and socat a client certificate.
pub struct TlsBroker {
    /// `127.0.0.1:<tls port>`.
    pub bootstrap: String,
    /// The CA that signed the terminator's certificate.
    pub ca: PathBuf,
    /// The client certificate and key `client_config` presents, when one is required.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The SCRAM-SHA-512 user `client_config` logs in as, when tansu authenticates.
    pub scram: Option<(String, Secret)>,
    // Declared in stop order: the broker, then its terminator.
    _broker: StopOnDrop,
    _terminator: TlsTerminator,
}

impl TlsBroker {
    pub async fn start(name: &str, certs: &TestCerts, topics: &[String], partitions: u32) -> anyhow::Result<Self> {
        Self::start_with(name, certs, topics, partitions, TlsBrokerAuth::default()).await
    }

    pub async fn start_with(name: &str, certs: &TestCerts, topics: &[String], partitions: u32, auth: TlsBrokerAuth) -> anyhow::Result<Self> {
        use crate::orchestrator::local::broker::{self, BrokerLayout};
        use nix::sys::signal::Signal;
        let dir = run_dir(name);
        std::fs::create_dir_all(dir.join("logs"))?;
        let tansu = crate::provision::tansu::ensure(&crate::provision::Cache::locate()?)?;
        let (plain, tls) = (free_port()?, free_port()?);
        let terminator = TlsTerminator::start_on(tls, &dir.join("logs").join("socat.log"), certs, plain, auth.client_cert)?;
        let layout = BrokerLayout::new(&dir);
        let mut this = Self {
            bootstrap: format!("127.0.0.1:{tls}"),
            ca: certs.ca.clone(),
            client_cert: auth.client_cert.then(|| (certs.client_cert.clone(), certs.client_key.clone())),
            scram: None,
            _broker: StopOnDrop(broker::start(&tansu, &layout, plain, tls)?, Signal::SIGTERM),
            _terminator: terminator,
        };
        // Metadata over the plain port answers (bootstrap only); everything after goes to
        // the advertised TLS address.
        broker::wait_ready(&format!("127.0.0.1:{plain}"), &this._broker.0, &layout, std::time::Duration::from_secs(60)).await?;
        broker::create_topics_with(&this.client_config(), topics, partitions).await?;
        let Some((user, password)) = auth.scram else { return Ok(this) };
        // tansu stores SCRAM users only while authentication is off, and takes the password
        // only as an argument (a throwaway test password of a throwaway broker).
        let created = std::process::Command::new(&tansu)
            .args(["user", "create", "--broker", &format!("tcp://127.0.0.1:{plain}"), &user, password.expose(), "--mechanism", "scram512"])
            .output()?;
        anyhow::ensure!(created.status.success(), "tansu user create: {}", String::from_utf8_lossy(&created.stderr));
        // Restarted on the same port (and storage) with authentication on.
        this._broker.0.stop(Signal::SIGTERM, std::time::Duration::from_secs(10));
        this._broker = StopOnDrop(broker::start_with(&tansu, &layout, plain, tls, true)?, Signal::SIGTERM);
        this.scram = Some((user, password));
        // Ready once the user logs in over SASL_SSL.
        let config = this.client_config();
        let mut last = String::new();
        for _ in 0..60 {
            let logged_in = tokio::task::block_in_place(|| {
                let consumer: rdkafka::consumer::BaseConsumer = config.create()?;
                rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, std::time::Duration::from_secs(2))
            });
            match logged_in {
                Ok(_) => return Ok(this),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        anyhow::bail!("tansu with --authentication did not accept the SCRAM user over SASL_SSL: {last}")
    }

    /// A client configuration for the TLS address: `security.protocol=SSL` (`SASL_SSL` with
    /// the SCRAM user), the CA, the host name checked (librdkafka's default, set
    /// explicitly) and the client certificate when the terminator requires one.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("security.protocol", "SSL")
            .set("ssl.ca.location", self.ca.display().to_string())
            .set("ssl.endpoint.identification.algorithm", "https");
        if let Some((cert, key)) = &self.client_cert {
            config.set("ssl.certificate.location", cert.display().to_string()).set("ssl.key.location", key.display().to_string());
        }
        if let Some((user, password)) = &self.scram {
            config
                .set("security.protocol", "SASL_SSL")
                .set("sasl.mechanism", "SCRAM-SHA-512")
                .set("sasl.username", user)
                .set("sasl.password", password.expose());
        }
        config
    }
}
