//! Real services for tests (this crate's and the sink's): a private PostgreSQL, or the
//! whole local pipeline, each stopped when the value is dropped (also when a test panics).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::StackConfig;
use crate::orchestrator::local::LocalStack;
use crate::orchestrator::local::postgres::{self, PostgresLayout};
use crate::orchestrator::local::process::{ProcessHandle, free_port};
use crate::orchestrator::stack::Stack;
use crate::orchestrator::{Endpoints, Orchestrator, PgEndpoint, Secret};

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
    _turn: tokio::sync::SemaphorePermit<'static>,
}

impl TestStack {
    /// Starts the stack in a fresh run folder; `configure` adjusts the defaults (small seed).
    pub async fn start(name: &str, configure: impl FnOnce(&mut StackConfig)) -> anyhow::Result<Self> {
        let turn = ONE_STACK_AT_A_TIME.acquire().await?;
        let mut config = StackConfig::new(run_dir(name));
        config.seed.customers = 200;
        configure(&mut config);
        let mut stack = LocalStack::new(config)?;
        let endpoints = stack.up().await?;
        Ok(Self { stack: Stack::Local(stack), endpoints, _turn: turn })
    }
}
