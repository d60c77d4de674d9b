//! Typed configuration: a TOML file plus `SINK__<SECTION>__<KEY>` environment overrides,
//! strict (unknown keys are errors, so a typo never silently falls back to a default) and
//! validated once at start with messages that say what to change.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::targets::mongodb::MongoConfig;
use crate::targets::postgres::PostgresConfig;
use crate::validation::ValidationConfig;

/// Prefix of environment overrides: `SINK__TARGET__PASSWORD` sets `[target] password`.
pub const ENV_PREFIX: &str = "SINK__";

/// librdkafka's ceiling on the wait between reconnects to a broker (its default, 10 s, is
/// what a partition waited after its broker came back; 1 s is the Java client's default).
/// `[kafka.librdkafka] "reconnect.backoff.max.ms"` overrides it.
pub(crate) const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config is not valid: {0}")]
    Parse(String),
    #[error("environment override {var} is not usable: {reason}")]
    Env { var: String, reason: String },
    #[error("config is invalid, fix these and restart:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// A credential. Its `Debug` and `Display` never show the value, so it can sit in structs
/// that get logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Environment overrides are parsed as TOML values, so a numeric password arrives as
        // an integer: accept any scalar rather than make the user quote it.
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => Ok(Self(s)),
            toml::Value::Integer(i) => Ok(Self(i.to_string())),
            toml::Value::Float(f) => Ok(Self(f.to_string())),
            toml::Value::Boolean(b) => Ok(Self(b.to_string())),
            other => Err(serde::de::Error::custom(format!("expected a string secret, found {}", other.type_str()))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub kafka: KafkaConfig,
    pub target: TargetConfig,
    pub http: HttpConfig,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub apply: ApplyConfig,
    #[serde(default)]
    pub validation: ValidationConfig,
    #[serde(default)]
    pub tombstones: TombstoneConfig,
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    #[serde(default)]
    pub audit: AuditConfig,
}

/// Audit mode: every change the sink handles appends one row to the target's apply log
/// (`_cdc_apply_log` table / `cdc_apply_log` collection) with its outcome, Kafka
/// coordinates and timestamps, written with the change itself (same statement in
/// PostgreSQL). It is how a verifier proves duplicate or out-of-order applies and splits
/// latency per hop. Off by default: it adds one log row per event to every write.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group; offsets are committed under it.
    pub group_id: String,
    /// Debezium topics to consume, `cdc.public.<table>`; the table name picks the entity.
    pub topics: Vec<String>,
    /// Dead-letter topic for events that fail validation or cannot be decoded or applied.
    pub dlq_topic: String,
    /// Where a group without committed offsets starts: `earliest` (default, so the initial
    /// snapshot is materialized) or `latest`.
    #[serde(default = "KafkaConfig::default_offset_reset")]
    pub auto_offset_reset: OffsetReset,
    /// Consumer group session timeout.
    #[serde(default = "KafkaConfig::default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long SIGTERM/SIGINT or a partition revoke may take to drain in-flight batches
    /// before the final synchronous commit.
    #[serde(default = "KafkaConfig::default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Interval of librdkafka statistics, the source of the consumer lag gauge.
    #[serde(default = "KafkaConfig::default_statistics_interval", with = "humantime_serde")]
    pub statistics_interval: Duration,
    /// How long the consumer may hold no partition assignment (after a revoke, a lost
    /// assignment, or before the first join) before `/readyz` reports not ready.
    #[serde(default = "KafkaConfig::default_assignment_grace", with = "humantime_serde")]
    pub assignment_grace: Duration,
    /// Safety net: when the consumer has held no assignment this long while the broker
    /// answers metadata requests, it is recreated and subscribes again (counted in
    /// `sink_consumer_restarts_total`).
    #[serde(default = "KafkaConfig::default_rejoin_timeout", with = "humantime_serde")]
    pub rejoin_timeout: Duration,
    /// librdkafka `fetch.wait.max.ms`: how long the broker may hold a fetch when no new
    /// data is there. Bounds the latency the consumer adds at low rates.
    #[serde(default = "KafkaConfig::default_fetch_wait_max", with = "humantime_serde")]
    pub fetch_wait_max: Duration,
    /// TLS and SASL to the brokers (every client: consumer, DLQ producer, probe).
    #[serde(default)]
    pub security: KafkaSecurityConfig,
    /// Extra librdkafka properties passed through as-is. Credentials are refused here (this
    /// map is not secret): they go in `[kafka.security]`.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

/// `[kafka.security]`: librdkafka's `security.protocol` and what it needs. Hostname
/// verification is on unless `verify_hostname = false`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurityConfig {
    /// `PLAINTEXT` (default), `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// CA certificate(s) of the brokers, PEM; absent: the system's store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that require one (mTLS).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub key_password: Option<Secret>,
    #[serde(default = "KafkaSecurityConfig::default_verify_hostname")]
    pub verify_hostname: bool,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// Best given as `SINK__KAFKA__SECURITY__SASL_PASSWORD`; never logged.
    #[serde(default)]
    pub sasl_password: Option<Secret>,
}

impl KafkaSecurityConfig {
    const fn default_verify_hostname() -> bool {
        true
    }
}

impl Default for KafkaSecurityConfig {
    fn default() -> Self {
        Self {
            protocol: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_password: None,
            verify_hostname: true,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
        }
    }
}

/// librdkafka keys about the connection's security, passed through `[kafka.librdkafka]`
/// too (checked together with `[kafka.security]`).
fn is_security_key(key: &str) -> bool {
    key == "security.protocol" || key.starts_with("ssl.") || key.starts_with("sasl.") || key == "enable.ssl.certificate.verification"
}

impl KafkaConfig {
    /// The security settings of every Kafka client, as librdkafka keys: `[kafka.security]`
    /// mapped, security keys of `[kafka.librdkafka]` over it, and the safe defaults
    /// (`ssl.endpoint.identification.algorithm=https` on TLS). Values may be credentials:
    /// never log them.
    pub fn security_settings(&self) -> Result<BTreeMap<String, String>, secure_conn::kafka::KafkaSecurityError> {
        let s = &self.security;
        let mut settings = BTreeMap::new();
        let path = |p: &PathBuf| p.display().to_string();
        let typed = [
            ("security.protocol", s.protocol.clone()),
            ("ssl.ca.location", s.ca_file.as_ref().map(path)),
            ("ssl.certificate.location", s.cert_file.as_ref().map(path)),
            ("ssl.key.location", s.key_file.as_ref().map(path)),
            ("ssl.key.password", s.key_password.as_ref().map(|p| p.expose().to_string())),
            ("ssl.endpoint.identification.algorithm", (!s.verify_hostname).then(|| "none".to_string())),
            ("sasl.mechanism", s.sasl_mechanism.clone()),
            ("sasl.username", s.sasl_username.clone()),
            ("sasl.password", s.sasl_password.as_ref().map(|p| p.expose().to_string())),
        ];
        for (key, value) in typed {
            if let Some(value) = value {
                settings.insert(key.to_string(), value);
            }
        }
        for (key, value) in self.librdkafka.iter().filter(|(k, _)| is_security_key(k)) {
            settings.insert(key.clone(), value.clone());
        }
        secure_conn::kafka::check(&mut settings)?;
        Ok(settings)
    }

    /// A client configuration with the brokers and the security settings (validated at
    /// load), before any client-specific setting.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut client = rdkafka::ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        for (key, value) in self.security_settings().expect("validated at load") {
            client.set(key, value);
        }
        client
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

impl KafkaConfig {
    const fn default_offset_reset() -> OffsetReset {
        OffsetReset::Earliest
    }
    const fn default_session_timeout() -> Duration {
        Duration::from_secs(10)
    }
    const fn default_drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    const fn default_statistics_interval() -> Duration {
        Duration::from_secs(5)
    }
    const fn default_assignment_grace() -> Duration {
        Duration::from_secs(30)
    }
    const fn default_rejoin_timeout() -> Duration {
        Duration::from_secs(60)
    }
    const fn default_fetch_wait_max() -> Duration {
        Duration::from_millis(20)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Postgres,
    Mongodb,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `postgres` or `mongodb`.
    pub kind: TargetKind,
    /// PostgreSQL: libpq `key=value` string without the password
    /// (`host=127.0.0.1 port=5432 user=postgres dbname=sink`). MongoDB: `mongodb://` URI.
    pub url: String,
    /// Password, best given as `SINK__TARGET__PASSWORD`; never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// User name for MongoDB when the URI names none (the password above then logs in as it).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub mongodb: MongoConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`, e.g. `127.0.0.1:9095`.
    pub listen: String,
}

/// What the sink must know of the connector that produced the events: events without
/// schemas do not say how decimals and timestamps were encoded, so the connector's settings
/// are declared here (an event that carries a schema is decoded by its schema instead).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Raised by an operator after a restore or a move to a new source cluster (LSNs start
    /// again lower): every change under a higher epoch outranks every stored version of a
    /// lower one. See README "Versions".
    #[serde(default)]
    pub epoch: i32,
    /// Debezium's `decimal.handling.mode`.
    #[serde(default)]
    pub decimal_handling: DecimalHandling,
    /// Debezium's `time.precision.mode`: the unit of timestamps sent as epoch numbers.
    #[serde(default)]
    pub time_precision: TimePrecision,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecimalHandling {
    /// Base64 of the unscaled big-endian two's complement (Debezium's default).
    #[default]
    Precise,
    /// Decimal strings.
    String,
    /// JSON numbers.
    Double,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimePrecision {
    /// Debezium's default: `timestamp(p)` columns as milliseconds for p <= 3, microseconds
    /// otherwise (PostgreSQL's default precision is 6).
    #[default]
    Adaptive,
    AdaptiveTimeMicroseconds,
    /// Kafka Connect's logical types: milliseconds.
    Connect,
    /// ISO-8601 strings; an epoch number is refused.
    Isostring,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    /// Most events one partition batch holds (one UNNEST statement per batch).
    #[serde(default = "ApplyConfig::default_max_batch_size")]
    pub max_batch_size: usize,
    /// How long a partition waits to fill a batch once it has an event.
    #[serde(default = "ApplyConfig::default_max_batch_wait", with = "humantime_serde")]
    pub max_batch_wait: Duration,
    /// First backoff after a transient target or DLQ error; doubles up to `retry_max_backoff`,
    /// each wait drawn from `[d/2, d)` (`retry::Backoff`).
    #[serde(default = "ApplyConfig::default_retry_initial_backoff", with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    #[serde(default = "ApplyConfig::default_retry_max_backoff", with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// Values larger than this go to the DLQ instead of the target.
    #[serde(default = "ApplyConfig::default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Backpressure by size: a partition whose queued and in-process records (keys and
    /// values) exceed this stops fetching until it is down to half. With `max_batch_size`
    /// records per batch this bounds the sink's event memory at about
    /// `partitions x (max_buffered_bytes + max_event_bytes)` plus librdkafka's own fetch
    /// queue (`queued.max.messages.kbytes`, 64 MiB by default).
    #[serde(default = "ApplyConfig::default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// A batch stops growing at this many bytes (it always takes at least one record).
    #[serde(default = "ApplyConfig::default_max_batch_bytes")]
    pub max_batch_bytes: usize,
}

impl ApplyConfig {
    const fn default_max_batch_size() -> usize {
        4096
    }
    const fn default_max_batch_wait() -> Duration {
        Duration::from_millis(10)
    }
    const fn default_retry_initial_backoff() -> Duration {
        Duration::from_millis(100)
    }
    const fn default_retry_max_backoff() -> Duration {
        Duration::from_secs(10)
    }
    const fn default_max_event_bytes() -> usize {
        1024 * 1024
    }
    const fn default_max_buffered_bytes() -> usize {
        64 * 1024 * 1024
    }
    const fn default_max_batch_bytes() -> usize {
        16 * 1024 * 1024
    }
}

impl Default for ApplyConfig {
    fn default() -> Self {
        Self {
            max_batch_size: Self::default_max_batch_size(),
            max_batch_wait: Self::default_max_batch_wait(),
            retry_initial_backoff: Self::default_retry_initial_backoff(),
            retry_max_backoff: Self::default_retry_max_backoff(),
            max_event_bytes: Self::default_max_event_bytes(),
            max_buffered_bytes: Self::default_max_buffered_bytes(),
            max_batch_bytes: Self::default_max_batch_bytes(),
        }
    }
}

/// Delete tombstones (`_cdc_deleted = true` rows) are what stops a replayed older upsert
/// from resurrecting a deleted key, so they may only be purged once no replay can carry
/// an older event for that key: `retention` must exceed the broker's retention (the
/// longest replay window). Off by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TombstoneConfig {
    /// Purge tombstones applied longer ago than this; absent = never purge.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// How often the purge runs.
    #[serde(default = "TombstoneConfig::default_purge_interval", with = "humantime_serde")]
    pub purge_interval: Duration,
}

impl TombstoneConfig {
    const fn default_purge_interval() -> Duration {
        Duration::from_secs(3600)
    }
}

impl Default for TombstoneConfig {
    fn default() -> Self {
        Self { retention: None, purge_interval: Self::default_purge_interval() }
    }
}

impl SinkConfig {
    /// Reads the file, applies environment overrides from `env`, and validates.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::from_toml(&text, env)
    }

    pub fn from_toml(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        for (var, value) in env {
            if let Some(path) = var.strip_prefix(ENV_PREFIX) {
                apply_override(&mut table, &var, path, &value)?;
            }
        }
        let config: Self = table.try_into().map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            problems.push("[kafka] brokers is empty: set it to the bootstrap servers, e.g. \"127.0.0.1:9092\"".into());
        }
        if k.group_id.trim().is_empty() {
            problems.push("[kafka] group_id is empty: give the consumer group a name".into());
        }
        if k.topics.is_empty() {
            problems.push("[kafka] topics is empty: list the Debezium topics, e.g. [\"cdc.public.customer\"]".into());
        }
        for topic in &k.topics {
            if crate::model::Entity::from_topic(topic).is_none() {
                problems.push(format!("[kafka] topics: {topic:?} does not end in a known table (customer, address, orders, order_item)"));
            }
        }
        if k.dlq_topic.trim().is_empty() {
            problems.push("[kafka] dlq_topic is empty: name the dead-letter topic, e.g. \"cdc.dlq\"".into());
        } else if k.topics.contains(&k.dlq_topic) {
            problems.push("[kafka] dlq_topic must not be one of the consumed topics".into());
        }
        if k.drain_timeout.is_zero() {
            problems.push("[kafka] drain_timeout must be positive".into());
        }
        if k.assignment_grace.is_zero() {
            problems.push("[kafka] assignment_grace must be positive".into());
        }
        if k.rejoin_timeout < k.session_timeout {
            problems.push(format!(
                "[kafka] rejoin_timeout ({:?}) must be at least session_timeout ({:?}): a normal rejoin takes up to a session",
                k.rejoin_timeout, k.session_timeout
            ));
        }
        if self.apply.max_buffered_bytes < self.apply.max_event_bytes {
            problems.push(format!(
                "[apply] max_buffered_bytes ({}) must be at least max_event_bytes ({}): a partition must be able to hold one event",
                self.apply.max_buffered_bytes, self.apply.max_event_bytes
            ));
        }
        if k.fetch_wait_max.is_zero() || k.fetch_wait_max > Duration::from_secs(300) {
            problems.push("[kafka] fetch_wait_max must be between 1ms and 300s".into());
        }
        if let Some(key) = k.librdkafka.keys().find(|k| secure_conn::kafka::is_credential_key(k)) {
            problems.push(format!(
                "[kafka.librdkafka] {key:?} is a credential: set it in [kafka.security] (e.g. sasl_password, best as SINK__KAFKA__SECURITY__SASL_PASSWORD)"
            ));
        } else if let Err(e) = k.security_settings() {
            problems.push(format!("[kafka.security]: {e}"));
        }
        match self.target.kind {
            TargetKind::Postgres => {
                match secure_conn::pg::Dsn::parse(&self.target.url) {
                    Ok(dsn) if dsn.config.get_password().is_some() => {
                        problems.push("[target] url contains a password: remove it and set [target] password or SINK__TARGET__PASSWORD".into());
                    }
                    Ok(dsn) => {
                        if let Err(e) = dsn.connector() {
                            problems.push(format!("[target] url: {e}"));
                        }
                    }
                    // The error names the option, never its value.
                    Err(e) => problems.push(format!("[target] url: {e}")),
                }
                if self.target.user.is_some() {
                    problems.push("[target] user is for MongoDB: name the PostgreSQL user in the url (user=...)".into());
                }
                problems.extend(self.target.postgres.validate());
            }
            TargetKind::Mongodb => {
                if !(self.target.url.starts_with("mongodb://") || self.target.url.starts_with("mongodb+srv://")) {
                    problems.push("[target] url must be a mongodb:// or mongodb+srv:// URI for kind = \"mongodb\"".into());
                }
                let authority = self.target.url.split_once("://").map(|(_, r)| r.split('/').next().unwrap_or_default()).unwrap_or_default();
                if self.target.password.is_some() && self.target.user.is_none() && !authority.contains('@') {
                    problems.push("[target] password is set but neither the URI (mongodb://USER@host/...) nor [target] user names a user".into());
                }
                problems.extend(self.target.mongodb.validate());
            }
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!("[http] listen {:?} is not an address like \"127.0.0.1:9095\"", self.http.listen));
        }
        let a = &self.apply;
        if a.max_batch_size == 0 {
            problems.push("[apply] max_batch_size must be at least 1".into());
        }
        if a.retry_initial_backoff.is_zero() || a.retry_initial_backoff > a.retry_max_backoff {
            problems.push("[apply] retry_initial_backoff must be positive and at most retry_max_backoff".into());
        }
        if a.max_event_bytes < 1024 {
            problems.push("[apply] max_event_bytes below 1 KiB would reject ordinary events".into());
        }
        if let Some(retention) = self.tombstones.retention {
            if retention < Duration::from_secs(3600) {
                problems.push("[tombstones] retention must be at least 1h and should exceed the broker retention (replay window)".into());
            }
        }
        if self.tombstones.purge_interval.is_zero() {
            problems.push("[tombstones] purge_interval must be positive".into());
        }
        problems.extend(self.validation.validate());
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.http.listen.parse().expect("validated at load")
    }
}

/// Sets `path` (`SECTION__KEY[__KEY...]`, case-insensitive) in the TOML table. The value is
/// parsed as a TOML value when it is one (numbers, booleans, arrays, durations as strings
/// stay strings), otherwise taken as a plain string.
fn apply_override(table: &mut toml::Table, var: &str, path: &str, value: &str) -> Result<(), ConfigError> {
    let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
    if keys.iter().any(String::is_empty) {
        return Err(ConfigError::Env { var: var.into(), reason: "expected SINK__<SECTION>__<KEY>".into() });
    }
    let parsed =
        toml::from_str::<toml::Table>(&format!("v = {value}")).ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, parents) = keys.split_last().expect("split yields one key at least");
    let mut cursor = table;
    for key in parents {
        let entry = cursor.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry.as_table_mut().ok_or_else(|| ConfigError::Env { var: var.into(), reason: format!("{key} is not a section") })?;
    }
    cursor.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
group_id = "cdc-sink"
topics = ["cdc.public.customer", "cdc.public.orders"]
dlq_topic = "cdc.dlq"

[target]
kind = "postgres"
url = "host=127.0.0.1 port=5432 user=postgres dbname=sink"

[http]
listen = "127.0.0.1:9095"
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn minimal_file_loads_with_defaults() {
        let c = SinkConfig::from_toml(MINIMAL, []).unwrap();
        assert_eq!(c.kafka.topics.len(), 2);
        assert_eq!(c.target.kind, TargetKind::Postgres);
        assert!(c.target.password.is_none());
        assert_eq!(c.apply.max_batch_size, 4096);
        assert!(c.tombstones.retention.is_none());
    }

    #[test]
    fn env_overrides_password_and_nested_keys() {
        let c = SinkConfig::from_toml(
            MINIMAL,
            env(&[("SINK__TARGET__PASSWORD", "12345"), ("SINK__APPLY__MAX_BATCH_SIZE", "100"), ("SINK__TOMBSTONES__RETENTION", "8d"), ("OTHER", "x")]),
        )
        .unwrap();
        assert_eq!(c.target.password.as_ref().unwrap().expose(), "12345");
        assert_eq!(c.apply.max_batch_size, 100);
        assert_eq!(c.tombstones.retention, Some(Duration::from_secs(8 * 86400)));
    }

    #[test]
    fn secret_is_never_printed() {
        let c = SinkConfig::from_toml(MINIMAL, env(&[("SINK__TARGET__PASSWORD", "hunter2")])).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("***"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = SinkConfig::from_toml(&format!("{MINIMAL}\n[apply]\nmax_batch = 3\n"), []).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = SinkConfig::from_toml(MINIMAL, env(&[("SINK__KAFKA__BROKER", "x")])).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn invalid_values_are_all_reported_with_a_fix() {
        let text = MINIMAL
            .replace("user=postgres dbname=sink", "user=postgres password=x dbname=sink")
            .replace("\"127.0.0.1:9095\"", "\"nowhere\"")
            .replace("dlq_topic = \"cdc.dlq\"", "dlq_topic = \"cdc.public.customer\"");
        let Err(ConfigError::Invalid(problems)) = SinkConfig::from_toml(&text, []) else { panic!("expected invalid") };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("SINK__TARGET__PASSWORD")));
    }

    #[test]
    fn unknown_table_topic_and_bad_mongo_url_rejected() {
        let text = MINIMAL.replace("cdc.public.orders", "cdc.public.invoices").replace("\"postgres\"", "\"mongodb\"");
        let Err(ConfigError::Invalid(problems)) = SinkConfig::from_toml(&text, []) else { panic!("expected invalid") };
        assert!(problems.iter().any(|p| p.contains("invoices")));
        assert!(problems.iter().any(|p| p.contains("mongodb://")));
    }

    #[test]
    fn validation_rules_configurable() {
        let text = format!("{MINIMAL}\n[validation.rules.referential]\nseverity = \"reject\"\n[validation.rules.email]\nenabled = false\n");
        let c = SinkConfig::from_toml(&text, []).unwrap();
        use crate::validation::{Rule, Severity};
        assert_eq!(c.validation.rule(Rule::Referential).severity, Severity::Reject);
        assert!(!c.validation.rule(Rule::Email).enabled);
        assert_eq!(c.validation.rule(Rule::Temporal).severity, Severity::Warn);
    }

    #[test]
    fn kafka_security_maps_to_librdkafka_with_host_name_verification_and_hides_the_password() {
        let text = format!("{MINIMAL}\n[kafka.security]\nprotocol = \"SASL_SSL\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"sink\"\n")
            .replace("[target]", "[kafka.librdkafka]\n\"client.id\" = \"x\"\n\n[target]");
        let c = SinkConfig::from_toml(&text, env(&[("SINK__KAFKA__SECURITY__SASL_PASSWORD", "p w'\\=x")])).unwrap();
        let settings = c.kafka.security_settings().unwrap();
        assert_eq!(settings["security.protocol"], "SASL_SSL");
        assert_eq!(settings["sasl.password"], "p w'\\=x");
        assert_eq!(settings["ssl.endpoint.identification.algorithm"], "https");
        assert!(!format!("{c:?}").contains("p w'"));
        // Without the password, or with a mechanism librdkafka is not built with: an error naming it.
        let Err(ConfigError::Invalid(problems)) = SinkConfig::from_toml(&text, []) else { panic!("expected invalid") };
        assert!(problems.iter().any(|p| p.contains("sasl.password")), "{problems:?}");
        let Err(ConfigError::Invalid(problems)) =
            SinkConfig::from_toml(&text.replace("SCRAM-SHA-512", "GSSAPI"), env(&[("SINK__KAFKA__SECURITY__SASL_PASSWORD", "p")]))
        else {
            panic!("expected invalid")
        };
        assert!(problems.iter().any(|p| p.contains("GSSAPI")), "{problems:?}");
        // A credential in the pass-through map (not secret, so it would be logged) is refused.
        let text = MINIMAL.replace("[target]", "[kafka.librdkafka]\n\"sasl.password\" = \"hunter2\"\n\n[target]");
        let Err(ConfigError::Invalid(problems)) = SinkConfig::from_toml(&text, []) else { panic!("expected invalid") };
        assert!(problems.iter().any(|p| p.contains("[kafka.security]") && !p.contains("hunter2")), "{problems:?}");
    }

    #[test]
    fn postgres_url_takes_every_sslmode_and_names_a_missing_certificate() {
        for mode in ["disable", "allow", "prefer", "require"] {
            SinkConfig::from_toml(&MINIMAL.replace("dbname=sink", &format!("dbname=sink sslmode={mode}")), []).unwrap();
        }
        let text = MINIMAL.replace("dbname=sink", "dbname=sink sslmode=verify-full sslrootcert=/nonexistent/ca.pem");
        let Err(ConfigError::Invalid(problems)) = SinkConfig::from_toml(&text, []) else { panic!("expected invalid") };
        assert!(problems.iter().any(|p| p.contains("/nonexistent/ca.pem")), "{problems:?}");
        let text = MINIMAL.replace("dbname=sink", "dbname=sink password='a b'");
        let Err(ConfigError::Invalid(problems)) = SinkConfig::from_toml(&text, []) else { panic!("expected invalid") };
        assert!(problems.iter().any(|p| p.contains("SINK__TARGET__PASSWORD") && !p.contains("a b")), "{problems:?}");
    }

    #[test]
    fn a_mongodb_password_needs_a_user_from_the_uri_or_the_config() {
        let mongo =
            MINIMAL.replace("\"postgres\"", "\"mongodb\"").replace("host=127.0.0.1 port=5432 user=postgres dbname=sink", "mongodb://db.example/?tls=true");
        let password = env(&[("SINK__TARGET__PASSWORD", "p")]);
        let Err(ConfigError::Invalid(problems)) = SinkConfig::from_toml(&mongo, password.clone()) else { panic!("expected invalid") };
        assert!(problems.iter().any(|p| p.contains("[target] user")), "{problems:?}");
        let with_user = mongo.replace("kind = \"mongodb\"", "kind = \"mongodb\"\nuser = \"sink\"");
        SinkConfig::from_toml(&with_user, password.clone()).unwrap();
        SinkConfig::from_toml(&mongo.replace("mongodb://db", "mongodb://sink@db"), password).unwrap();
    }
}
