//! The Docker backend against a real daemon: up with declared readiness, status, faults,
//! teardown by label (also of a crashed run's leftovers). They need a daemon that has the
//! upstream images (Kafka, Debezium Connect, MongoDB) and the sink image, which machines
//! without an image registry cannot have: ignored, with the reason, unless run with
//! `--ignored` where they are available.

use std::time::Duration;

use harness::config::StackConfig;
use harness::orchestrator::docker::spec::Role;
use harness::orchestrator::docker::{self, DockerConfig, DockerStack, Fault, TargetKind};
use harness::orchestrator::{Orchestrator, ServiceKind, ServiceState};
use harness::testing::run_dir;

const NEEDS_DOCKER: &str = "needs a Docker daemon with the upstream images and the sink image";

async fn daemon() -> anyhow::Result<bollard::Docker> {
    docker::connect().await.map_err(|e| anyhow::anyhow!("{NEEDS_DOCKER}: {e}"))
}

async fn require_sink_image(docker: &bollard::Docker, config: &DockerConfig) -> anyhow::Result<()> {
    docker
        .inspect_image(&config.images.sink)
        .await
        .map(|_| ())
        .map_err(|_| anyhow::anyhow!("image {} missing; build it with `docker build -t {} .`", config.images.sink, config.images.sink))
}

fn stack_config(name: &str) -> StackConfig {
    let mut config = StackConfig::new(run_dir(name));
    config.seed.customers = 20;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker daemon with the upstream images and the sink image (none can be pulled here): run with --ignored"]
async fn docker_stack_comes_up_survives_faults_and_goes_down_by_label() -> anyhow::Result<()> {
    let client = daemon().await?;
    let config = DockerConfig { target: TargetKind::Mongodb, ..DockerConfig::default() };
    require_sink_image(&client, &config).await?;
    let mut stack = DockerStack::new(stack_config("docker-up"), config).await?;
    let run_id = stack.run_id().to_string();
    let outcome = async {
        let endpoints = stack.up().await?;
        let statuses = stack.status().await?;
        for s in &statuses {
            anyhow::ensure!(s.state == ServiceState::Healthy, "{} not healthy after up: {:?}", s.service, s.detail);
        }
        anyhow::ensure!(stack.run_dir().join("logs/connect.log").is_file(), "connect log not captured");
        anyhow::ensure!(stack.mongo_uri().is_some());

        // The seed reached the source and the snapshot went through Kafka.
        let source = endpoints.postgres.connect(&endpoints.postgres.source_db).await?;
        let customers: i64 = source.query_one("select count(*) from customer", &[]).await?.get(0);
        anyhow::ensure!(customers == 20, "seeded {customers} customers");

        stack.inject(Role::Sink, &Fault::Kill).await?;
        let sink = stack.status().await?.into_iter().find(|s| s.service == ServiceKind::Sink).expect("sink status");
        anyhow::ensure!(sink.state == ServiceState::Stopped, "killed sink reported {:?}", sink.state);
        stack.inject(Role::Sink, &Fault::Start).await?;

        stack.inject(Role::Kafka, &Fault::Pause).await?;
        stack.inject(Role::Kafka, &Fault::Unpause).await?;
        stack.inject(Role::Connect, &Fault::Restart { grace: Duration::from_secs(10) }).await?;
        stack.inject(Role::Sink, &Fault::Disconnect).await?;
        stack.inject(Role::Sink, &Fault::Reconnect).await?;
        // The stock images have no `tc`: the latency fault must say so, not fail obscurely.
        match stack.inject(Role::Postgres, &Fault::Latency { delay: Duration::from_millis(50), jitter: Duration::ZERO }).await {
            Ok(()) => stack.inject(Role::Postgres, &Fault::ClearLatency).await?,
            Err(e) => anyhow::ensure!(e.to_string().contains("toxiproxy") || e.to_string().contains("tc"), "unexpected latency error: {e}"),
        }
        let statuses = stack.status().await?;
        for s in &statuses {
            anyhow::ensure!(s.state == ServiceState::Healthy, "{} not healthy after the faults: {:?}", s.service, s.detail);
        }
        Ok(())
    }
    .await;
    stack.down().await?;
    let left = docker::run_containers(&client, &run_id).await?;
    anyhow::ensure!(left.is_empty(), "containers left after down: {left:?}");
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker daemon with the upstream PostgreSQL image (none can be pulled here): run with --ignored"]
async fn leftovers_of_a_crashed_run_are_removed_by_label() -> anyhow::Result<()> {
    let client = daemon().await?;
    let config = stack_config("docker-crash");
    let dir = config.run_dir.clone();
    let mut stack = DockerStack::new(config, DockerConfig { target: TargetKind::Postgres, ..DockerConfig::default() }).await?;
    let run_id = stack.run_id().to_string();
    let started = stack.start_service(ServiceKind::Postgres).await;
    // The harness "crashes": the value is gone, the labelled container and network stay.
    drop(stack);
    let left = docker::run_containers(&client, &run_id).await?;
    if started.is_ok() {
        anyhow::ensure!(left.contains_key(&Role::Postgres), "postgres container missing before the sweep: {left:?}");
    }
    // `harness down` in a later process: the state file names the run, the label finds the rest.
    let mut reopened = DockerStack::open(&dir).await?.expect("state file of the crashed run");
    reopened.down().await?;
    let left = docker::run_containers(&client, &run_id).await?;
    anyhow::ensure!(left.is_empty(), "containers left after down: {left:?}");
    started?;
    Ok(())
}
