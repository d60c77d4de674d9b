//! The `external` backend: a pipeline the harness did not start (a team's staging
//! cluster, or a stack `harness up --write-endpoints` described), named by an endpoints
//! file. The harness only does what a client can do from outside: it loads the source,
//! observes, verifies, and injects the faults Kafka Connect's REST API and a producer
//! allow (connector pause/resume/restart, task restart, poison events). It starts and
//! stops nothing; service kills and link faults are refused.

pub mod file;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use self::file::EndpointsFile;
use super::{
    Backend, BackendKind, Endpoints, HopSecurity, LeaderResolver, PgConnectError, Secret, ServiceControl, ServiceError, ServiceKind, ServiceState,
    ServiceStatus, pg_error_text as pg_error,
};
use crate::config::TABLES;
use crate::orchestrator::connect::ConnectClient;
use crate::orchestrator::wait::{self, NotReady, Waited};
use crate::verify::mapping::Mapping;

/// Refusals of this backend name what it can do instead.
fn refused(what: &str) -> String {
    format!(
        "the external backend does only what a client can do from outside: {what} is refused (its faults: pause / restart of target `connector`, restart of `connector-task`, poison)"
    )
}

/// Nothing is started, so nothing is stopped, controlled or sampled here: no
/// `ServiceControl`, and a run refuses what would change a team's source or needs the
/// apply log a MongoDB target does not keep.
#[async_trait::async_trait]
impl Backend for ExternalStack {
    fn kind(&self) -> BackendKind {
        BackendKind::External
    }

    fn endpoints(&self) -> Endpoints {
        self.endpoints.clone()
    }

    fn describe(&self) -> serde_json::Value {
        self.description()
    }

    /// The pre-flight.
    async fn up(&mut self) -> Result<Endpoints, ServiceError> {
        self.preflight().await
    }

    async fn status(&self) -> Result<Vec<ServiceStatus>, ServiceError> {
        Ok(self.hops().await)
    }

    /// Nothing was started.
    async fn down(&mut self) -> Result<(), ServiceError> {
        Ok(())
    }

    fn detach(&mut self) {}

    /// Its processes run elsewhere: no CPU or memory is sampled.
    fn leader_resolver(&self) -> LeaderResolver {
        Box::new(Vec::new)
    }

    fn owns_services(&self) -> bool {
        false
    }

    fn partitions(&self) -> Option<u32> {
        self.partitions
    }

    fn mongo_uri(&self) -> Option<String> {
        self.mongo().map(|(uri, _)| uri)
    }

    fn mongo_db(&self) -> Option<String> {
        self.mongo().map(|(_, db)| db)
    }

    fn control(&mut self) -> Option<&mut dyn ServiceControl> {
        None
    }

    fn control_ref(&self) -> Option<&dyn ServiceControl> {
        None
    }

    fn refuse(&self, what: &str) -> ServiceError {
        ServiceError::Unsupported { backend: BackendKind::External, reason: refused(what) }
    }

    fn check_scenario(&self, scenario: &crate::scenario::Scenario) -> Result<(), ServiceError> {
        let unsupported = |reason: String| ServiceError::Unsupported { backend: BackendKind::External, reason };
        if !scenario.schema_changes.is_empty() {
            return Err(unsupported(format!("scenario {} changes the source's schema: refused on an external stack", scenario.name)));
        }
        if self.mongo.is_some() {
            return Err(unsupported(
                "a run on an external stack needs a PostgreSQL target (it reads the sink's apply log there); a MongoDB target is verified with `harness verify --backend external`".into(),
            ));
        }
        Ok(())
    }
}

/// How long the canary write may take from the source to the target.
const CANARY_TIMEOUT: Duration = Duration::from_secs(90);

pub struct ExternalStack {
    file: PathBuf,
    endpoints: Endpoints,
    publication: String,
    mongo: Option<(Secret, String)>,
    /// Partitions of the CDC topics, learnt by the pre-flight.
    partitions: Option<u32>,
    /// `--require-tls`: a hop that is not encrypted fails the pre-flight.
    require_tls: bool,
}

fn preflight(hop: &'static str, reason: impl Into<String>) -> ServiceError {
    ServiceError::Preflight { hop, reason: reason.into() }
}

impl ExternalStack {
    /// Reads and resolves the endpoints file (every credential reference included).
    pub fn load(path: &Path, require_tls: bool) -> Result<Self, ServiceError> {
        let usage = |e: file::EndpointsFileError| ServiceError::Usage(e.to_string());
        let resolved = EndpointsFile::read(path).and_then(|f| f.resolve(path)).map_err(usage)?;
        Ok(Self {
            file: path.to_path_buf(),
            endpoints: resolved.endpoints,
            publication: resolved.publication,
            mongo: resolved.mongo,
            partitions: None,
            require_tls,
        })
    }

    /// Prints what the hop's connection guarantees; with `--require-tls`, plaintext fails.
    fn hop_security(&self, hop: &'static str, security: &HopSecurity) -> Result<(), ServiceError> {
        eprintln!("external: {hop}: {} ({})", security.summary(), security.detail);
        if self.require_tls && !security.encrypted {
            return Err(preflight(hop, format!("the connection is not encrypted, and --require-tls refuses plaintext: {}", security.detail)));
        }
        Ok(())
    }

    /// The source (or target) PostgreSQL hop: connected, and how (as negotiated).
    async fn pg_hop(&self, who: &str, dsn: Result<secure_conn::pg::Dsn, PgConnectError>) -> Result<(tokio_postgres::Client, HopSecurity), String> {
        let dsn = dsn.map_err(|e| e.to_string())?;
        let client = super::connect_with(&dsn).await.map_err(|e| e.to_string())?;
        let ssl: bool =
            client.query_one("SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)", &[]).await.map_err(|e| pg_error(&e))?.get(0);
        let verified = ssl && dsn.tls.verification() == secure_conn::pg::Verification::Full;
        let detail = format!("{who}: {} ({})", if ssl { "TLS" } else { "plaintext" }, dsn.tls.describe());
        Ok((client, HopSecurity { encrypted: ssl, verified, detail }))
    }

    /// MongoDB target: its URI and database.
    fn mongo(&self) -> Option<(String, String)> {
        self.mongo.as_ref().map(|(uri, db)| (uri.expose().to_string(), db.clone()))
    }

    /// What the report says about the stack: every endpoint, no credential.
    fn description(&self) -> serde_json::Value {
        let e = &self.endpoints;
        serde_json::json!({
            "endpoints_file": self.file.display().to_string(),
            "source": e.postgres.display(&e.postgres.source_db),
            "source_schema": e.postgres.source_schema,
            "publication": self.publication,
            "slot": e.slot,
            "kafka": e.kafka,
            "kafka_client_settings": e.kafka_client.keys().collect::<Vec<_>>(),
            "topic_prefix": e.topic_prefix,
            "consumer_group": e.consumer_group,
            "connect": e.connect.as_ref().map(|c| format!("{} (connector {})", c.url, c.connector)),
            "target": match &self.mongo {
                Some((_, db)) => format!("mongodb (database {db})"),
                None => e.postgres.display_target(),
            },
            "sink_metrics": (!e.sink_http.is_empty()).then(|| e.sink_http.clone()),
        })
    }

    /// The pre-flight: every endpoint answers, the workload tables are there and in the
    /// publication, and a canary write reaches the target. Any failure names its hop.
    async fn preflight(&mut self) -> Result<Endpoints, ServiceError> {
        let e = self.endpoints.clone();
        eprintln!("external: pre-flight of {} (nothing is started or stopped on this backend)", self.file.display());
        let (source, security) = self
            .pg_hop("source", e.postgres.source_dsn())
            .await
            .map_err(|err| preflight("source", format!("{}: {err}", e.postgres.display(&e.postgres.source_db))))?;
        self.hop_security("source", &security)?;
        // The source hop first: its tables are the first thing a team sets up.
        let schema = &e.postgres.source_schema;
        ensure_tables(&source, schema).await?;
        check_publication(&source, schema, &self.publication).await?;
        self.hop_security("broker", &kafka_security(&e)?)?;
        let partitions = topic_partitions(&e).await?;
        self.partitions = Some(partitions);
        let connect = e.connect.as_ref().map(ConnectClient::new);
        if let Some(client) = &connect {
            self.hop_security("Connect", &http_security(&e.connect.as_ref().expect("checked").url))?;
            let status = client.status().await.map_err(|err| preflight("Connect", err.to_string()))?;
            if !status.running() {
                return Err(preflight("Connect", format!("connector {} is not running: {}", e.connect.as_ref().unwrap().connector, status.describe())));
            }
        }
        self.hop_security("target", &self.check_target().await?)?;
        if !e.sink_http.is_empty() {
            self.hop_security("sink", &http_security(&e.sink_http))?;
            crate::run::sink_metrics::scrape(&e.sink_http).await.map_err(|err| preflight("sink", format!("metrics {}/metrics: {err}", e.sink_http)))?;
        }
        self.canary(&source).await?;
        eprintln!("external: pre-flight passed ({partitions} partitions per topic)");
        Ok(e)
    }

    async fn check_target(&self) -> Result<HopSecurity, ServiceError> {
        match &self.mongo {
            Some((uri, db)) => {
                let client = mongodb::Client::with_uri_str(uri.expose())
                    .await
                    .map_err(|err| preflight("target", format!("MongoDB: {}", redact(&err.to_string(), uri))))?;
                client
                    .database(db)
                    .run_command(mongodb::bson::doc! { "ping": 1 })
                    .await
                    .map_err(|err| preflight("target", format!("MongoDB database {db}: {}", redact(&err.to_string(), uri))))?;
                Ok(mongo_security(uri.expose()))
            }
            None => {
                let pg = &self.endpoints.postgres;
                let (_, security) =
                    self.pg_hop("target", pg.target_dsn()).await.map_err(|err| preflight("target", format!("{}: {err}", pg.display_target())))?;
                Ok(security)
            }
        }
    }

    /// One row written to the source, followed to its topic and into the target.
    async fn canary(&self, source: &tokio_postgres::Client) -> Result<(), ServiceError> {
        let e = &self.endpoints;
        let topic = e.topic("customer");
        let consumer = canary_consumer(e, &topic).await?;
        let id = uuid::Uuid::new_v4();
        let email = format!("canary-{}@canary.invalid", id.simple());
        source
            .execute("INSERT INTO customer (id, email, status) VALUES ($1, $2, 'active')", &[&id, &email])
            .await
            .map_err(|err| preflight("source", format!("the canary write into {}.customer failed: {}", e.postgres.source_schema, pg_error(&err))))?;
        let started = Instant::now();
        let needle = id.to_string();
        let found = tokio::task::spawn_blocking(move || {
            while started.elapsed() < CANARY_TIMEOUT {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
                    let hit = |b: Option<&[u8]>| b.is_some_and(|b| String::from_utf8_lossy(b).contains(&needle));
                    if hit(m.key()) || hit(m.payload()) {
                        return true;
                    }
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !found {
            let connector = match e.connect.as_ref().map(ConnectClient::new) {
                Some(client) => match client.status().await {
                    Ok(s) => format!(" (connector: {})", s.describe()),
                    Err(err) => format!(" ({err})"),
                },
                None => String::new(),
            };
            return Err(preflight(
                "Connect",
                format!("the canary row {id} committed in the source but did not reach topic {topic} within {}s{connector}", CANARY_TIMEOUT.as_secs()),
            ));
        }
        eprintln!("external: canary on {topic} after {:.1}s", started.elapsed().as_secs_f64());
        let mapping = Mapping::builtin();
        let entity = mapping.entity("customer").expect("the builtin mapping has customer");
        // One connection for the whole wait, not one per look.
        enum Reader {
            Mongo(mongodb::Collection<mongodb::bson::Document>, Secret),
            Postgres(tokio_postgres::Client, String),
        }
        let (reader, where_) = match &self.mongo {
            Some((uri, db)) => {
                let client = mongodb::Client::with_uri_str(uri.expose()).await.map_err(|err| preflight("target", redact(&err.to_string(), uri)))?;
                (Reader::Mongo(client.database(db).collection(&entity.mongo.collection), uri.clone()), format!("collection {}", entity.mongo.collection))
            }
            None => {
                let target = e.postgres.connect_target().await.map_err(|err| preflight("target", format!("{}: {err}", e.postgres.display_target())))?;
                let sql = format!("SELECT 1 FROM \"{}\" WHERE id = $1", entity.postgres.table.replace('"', ""));
                (Reader::Postgres(target, sql), format!("table {}", entity.postgres.table))
            }
        };
        let arrived = || async {
            let found = match &reader {
                Reader::Mongo(docs, uri) => docs
                    .find_one(mongodb::bson::doc! { "_id": id.to_string() })
                    .await
                    .map_err(|err| NotReady::Never(preflight("target", redact(&err.to_string(), uri))))?
                    .is_some(),
                Reader::Postgres(target, sql) => target
                    .query_opt(sql.as_str(), &[&id])
                    .await
                    .map_err(|err| NotReady::Never(preflight("target", format!("reading {where_}: {}", pg_error(&err)))))?
                    .is_some(),
            };
            if found { Ok(()) } else { Err(NotReady::Yet(())) }
        };
        match wait::poll(CANARY_TIMEOUT.saturating_sub(started.elapsed()), Duration::from_millis(250), arrived).await {
            Ok(()) => {
                eprintln!("external: canary in the target after {:.1}s", started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(Waited::Failed(error)) => Err(error),
            Err(Waited::TimedOut(())) => {
                Err(preflight("sink", format!("the canary row {id} reached topic {topic} but not the target {where_} within {}s", CANARY_TIMEOUT.as_secs())))
            }
        }
    }

    /// Each hop as a service: source (and target), broker, connector, sink, each with
    /// whether its connection is encrypted and verified (`--require-tls`: plaintext is a failure).
    async fn hops(&self) -> Vec<ServiceStatus> {
        let e = &self.endpoints;
        let line = |service, ok: Result<Option<HopSecurity>, String>, endpoint: String| {
            let (ok, security) = match ok {
                Ok(Some(security)) if self.require_tls && !security.encrypted => (Err("plaintext, refused by --require-tls".to_string()), Some(security)),
                Ok(security) => (Ok(()), security),
                Err(reason) => (Err(reason), None),
            };
            ServiceStatus {
                service,
                state: if ok.is_ok() { ServiceState::Healthy } else { ServiceState::Unhealthy },
                pid: None,
                container: None,
                endpoint,
                log: PathBuf::new(),
                detail: ok.err(),
                security,
            }
        };
        let source = self.pg_hop("source", e.postgres.source_dsn()).await.map(|(_, s)| s).map_err(|s| format!("source: {s}"));
        let target = self.check_target().await.map_err(|err| err.to_string());
        let postgres = source.and_then(|s| target.map(|t| Some(s.and(t))));
        let broker = match kafka_security(e) {
            // Refused as it stands (by `line`): not contacted.
            Ok(security) if self.require_tls && !security.encrypted => Ok(Some(security)),
            Ok(security) => topic_partitions(e).await.map(|_| Some(security)).map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        let connector = match e.connect.as_ref() {
            Some(c) => ConnectClient::new(c)
                .status()
                .await
                .map_err(|err| err.to_string())
                .and_then(|s| if s.running() { Ok(Some(http_security(&c.url))) } else { Err(s.describe()) }),
            None => Err("no [connect] in the endpoints file: not observed".into()),
        };
        let sink = if e.sink_http.is_empty() {
            Err("no [sink] in the endpoints file: not observed".into())
        } else {
            crate::run::sink_metrics::scrape(&e.sink_http)
                .await
                .map(|_| Some(http_security(&e.sink_http)))
                .map_err(|err| format!("metrics {}/metrics: {err}", e.sink_http))
        };
        vec![
            line(ServiceKind::Postgres, postgres, e.postgres.display(&e.postgres.source_db)),
            line(ServiceKind::Broker, broker, e.kafka.clone()),
            line(ServiceKind::Debezium, connector, e.connect.as_ref().map(|c| format!("{}/connectors/{}", c.url, c.connector)).unwrap_or_default()),
            line(ServiceKind::Sink, sink, e.sink_http.clone()),
        ]
    }
}

/// The Kafka clients' security, as configured (librdkafka negotiates what it is told).
fn kafka_security(e: &Endpoints) -> Result<HopSecurity, ServiceError> {
    let mut settings = e.kafka_client.iter().map(|(k, v)| (k.clone(), v.expose().to_string())).collect();
    let security = secure_conn::kafka::check(&mut settings).map_err(|err| preflight("broker", err.to_string()))?;
    Ok(HopSecurity { encrypted: security.protocol.encrypted(), verified: security.verified(), detail: format!("broker: {}", security.describe()) })
}

/// An HTTP hop: https is verified by the shared client (platform roots, host name).
fn http_security(url: &str) -> HopSecurity {
    let https = url.starts_with("https://");
    HopSecurity {
        encrypted: https,
        verified: https,
        detail: if https { format!("{url}: https, certificate and host name verified") } else { format!("{url}: plain http") },
    }
}

/// A MongoDB URI's TLS options (passed to the driver as they are): on with `tls=true` or
/// `ssl=true`, and by default for `mongodb+srv://`; unverified with any of the insecure options.
fn mongo_security(uri: &str) -> HopSecurity {
    let query = uri.split_once('?').map(|(_, q)| q.to_ascii_lowercase()).unwrap_or_default();
    let option = |name: &str| query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v == "true"));
    let encrypted = option("tls").or(option("ssl")).unwrap_or(uri.starts_with("mongodb+srv://"));
    let insecure = ["tlsinsecure", "tlsallowinvalidcertificates", "tlsallowinvalidhostnames"].iter().any(|o| option(o) == Some(true));
    let verified = encrypted && !insecure;
    let detail = match (encrypted, verified) {
        (false, _) => "target: MongoDB, plaintext (no tls=true in the URI)",
        (true, false) => "target: MongoDB, TLS, certificate or host name NOT verified (tlsInsecure / tlsAllowInvalid* in the URI)",
        (true, true) => "target: MongoDB, TLS, certificate and host name verified",
    };
    HopSecurity { encrypted, verified, detail: detail.into() }
}

/// A MongoDB error may quote its connection string.
fn redact(text: &str, uri: &Secret) -> String {
    text.replace(uri.expose(), "<mongodb uri>")
}

/// Keeps librdkafka's last connection error: a failed metadata request says only "timed
/// out" or "transport failure"; the reason (a SASL authentication error, a refused TLS
/// handshake) comes as a log line or error event.
#[derive(Default)]
struct LastError(std::sync::Mutex<Option<String>>);

impl LastError {
    fn last(&self) -> Option<String> {
        self.0.lock().ok()?.clone()
    }
}

impl rdkafka::ClientContext for LastError {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel::{Alert, Critical, Emerg, Error};
        if matches!(level, Emerg | Alert | Critical | Error)
            && let Ok(mut last) = self.0.lock()
        {
            *last = Some(message.to_string());
        }
        tracing::debug!(target: "librdkafka", fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(if reason.is_empty() { error.to_string() } else { reason.to_string() });
        }
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}

/// The partition count of the CDC topics (every one must exist).
async fn topic_partitions(e: &Endpoints) -> Result<u32, ServiceError> {
    let config = e.kafka_config();
    let kafka = e.kafka.clone();
    let topics: Vec<String> = TABLES.iter().map(|t| e.topic(t)).collect();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<LastError> = config
            .clone()
            .set("socket.timeout.ms", "5000")
            .create_with_context(LastError::default())
            .map_err(|err| preflight("broker", format!("Kafka client for {kafka}: {err}")))?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).map_err(|err| {
            // The client's log and error events reach its context when it is polled.
            for _ in 0..8 {
                if consumer.context().last().is_some() {
                    break;
                }
                let _ = consumer.poll(Duration::from_millis(250));
            }
            let why = consumer.context().last().map(|reason| format!(" ({reason})")).unwrap_or_default();
            preflight("broker", format!("Kafka bootstrap servers {kafka} do not answer: {err}{why}"))
        })?;
        let mut partitions = None;
        for topic in &topics {
            match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if !t.partitions().is_empty() => partitions = partitions.or(Some(t.partitions().len() as u32)),
                _ => return Err(preflight("topic", format!("topic {topic} does not exist on {kafka} (topics are <topic_prefix>.<source schema>.<table>)"))),
            }
        }
        Ok(partitions.unwrap_or(1))
    })
    .await
    .map_err(|err| preflight("broker", err.to_string()))?
}

/// A consumer of `topic` positioned at its end, to see the canary arrive.
async fn canary_consumer(e: &Endpoints, topic: &str) -> Result<BaseConsumer, ServiceError> {
    let mut config = e.kafka_config();
    config.set("group.id", format!("cdc-harness-preflight-{}", uuid::Uuid::new_v4().simple())).set("enable.auto.commit", "false");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().map_err(|err| preflight("broker", err.to_string()))?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).map_err(|err| preflight("broker", err.to_string()))?;
        let mut assignment = TopicPartitionList::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(10)).map_err(|err| preflight("broker", err.to_string()))?;
            assignment.add_partition_offset(&topic, p.id(), Offset::Offset(high)).map_err(|err| preflight("broker", err.to_string()))?;
        }
        consumer.assign(&assignment).map_err(|err| preflight("broker", err.to_string()))?;
        Ok(consumer)
    })
    .await
    .map_err(|err| preflight("broker", err.to_string()))?
}

/// The workload's tables in `schema`: all there, or none (then created there, the DDL printed).
async fn ensure_tables(source: &tokio_postgres::Client, schema: &str) -> Result<(), ServiceError> {
    let rows = source
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_name = ANY($2)", &[&schema, &TABLES.to_vec()])
        .await
        .map_err(|err| preflight("source", pg_error(&err)))?;
    let present: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<&str> = TABLES.iter().copied().filter(|t| !present.iter().any(|p| p == t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if missing.len() < TABLES.len() {
        let missing: Vec<String> = missing.iter().map(|t| format!("{schema}.{t}")).collect();
        return Err(preflight(
            "source",
            format!("the workload tables are partly there: missing {} (the harness needs all of {})", missing.join(", "), TABLES.join(", ")),
        ));
    }
    // `schema` is a plain identifier (checked when the file was read): no quoting needed.
    let ddl = format!("CREATE SCHEMA IF NOT EXISTS {schema};\nSET search_path TO {schema};\n{}", include_str!("../../../sql/source_schema.sql"));
    eprintln!("external: the workload tables are not in the source; creating them in schema {schema}:\n{ddl}");
    source.batch_execute(&ddl).await.map_err(|err| preflight("source", format!("creating the workload tables: {}", pg_error(&err))))
}

/// Every workload table must be in the connector's publication.
async fn check_publication(source: &tokio_postgres::Client, schema: &str, publication: &str) -> Result<(), ServiceError> {
    let exists = source
        .query_opt("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(|err| preflight("source", pg_error(&err)))?;
    if exists.is_none() {
        return Err(preflight("source", format!("publication {publication} does not exist in the source")));
    }
    let rows = source
        .query("SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2", &[&publication, &schema])
        .await
        .map_err(|err| preflight("source", pg_error(&err)))?;
    let published: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<String> = TABLES.iter().filter(|t| !published.iter().any(|p| p == *t)).map(|t| format!("{schema}.{t}")).collect();
    if let Some(first) = missing.first() {
        return Err(preflight(
            "source",
            format!(
                "table {first} is not in publication {publication}{} (ALTER PUBLICATION {publication} ADD TABLE {})",
                if missing.len() > 1 { format!(" (nor {})", missing[1..].join(", ")) } else { String::new() },
                missing.join(", ")
            ),
        ));
    }
    Ok(())
}
