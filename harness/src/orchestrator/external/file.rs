//! The endpoints file of an external stack (`--endpoints FILE`): strict TOML naming every
//! service of a pipeline the harness did not start. Credentials are never in it in clear:
//! each is a reference, `{ env = "VAR" }` or `{ file = "path" }`, resolved when the file is
//! read; a DSN or a client setting that carries one in clear is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::orchestrator::{ConnectEndpoint, Endpoints, PgEndpoint, PgServer, Secret};

#[derive(Debug, thiserror::Error)]
pub enum EndpointsFileError {
    #[error("endpoints file {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("endpoints file {}: {field}: {reason}", path.display())]
    Invalid { path: PathBuf, field: String, reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointsFile {
    pub source: SourceSection,
    pub kafka: KafkaSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectSection>,
    pub target: TargetSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkSection>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// `postgres://user@host:port/db` (or `host=... user=... dbname=...`), no password.
    pub dsn: String,
    pub password: SecretRef,
    /// The connector's publication: the workload tables must be in it.
    pub publication: String,
    /// The connector's replication slot, when its backlog should be sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Schema of the harness's workload tables (created there if absent, so that they
    /// never mix with a team's own tables); `cdc_harness` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

/// The workload's schema on an external stack whose file names none.
const DEFAULT_SCHEMA: &str = "cdc_harness";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    pub bootstrap_servers: String,
    /// Topics are `<topic_prefix>.<source.schema>.<table>`.
    pub topic_prefix: String,
    /// The sink's consumer group (its lag is measured at the broker).
    pub consumer_group: String,
    /// librdkafka settings, passed as they are (`security.protocol`, `sasl.mechanism`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub client: BTreeMap<String, String>,
    /// librdkafka settings whose values are credentials (`sasl.password`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub client_secrets: BTreeMap<String, SecretRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectSection {
    /// Kafka Connect's REST API, `http://host:8083`.
    pub url: String,
    pub connector: String,
    /// A PEM file of the CA(s) that signed Connect's certificate (an `https` URL), added
    /// to the platform's roots of the shared HTTP client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum TargetSection {
    Postgres {
        dsn: String,
        password: SecretRef,
    },
    Mongodb {
        /// The connection string carries credentials: always a reference.
        uri: SecretRef,
        database: String,
        /// A password kept apart from the URI: it logs in as the URI's user, or as `user`
        /// when the URI names none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<SecretRef>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    /// The sink's HTTP base URL (`/metrics` is read from it).
    pub metrics_url: String,
    /// As `[connect] ca`, for an `https` metrics URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// Where a credential is: an environment variable or a file (its first line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SecretRef {
    Env {
        env: String,
    },
    File {
        file: PathBuf,
    },
    /// Only to say why it is refused.
    Clear(String),
}

impl SecretRef {
    fn resolve(&self, path: &Path, field: &str) -> Result<Secret, EndpointsFileError> {
        let invalid = |reason: String| EndpointsFileError::Invalid { path: path.to_path_buf(), field: field.to_string(), reason };
        match self {
            Self::Env { env } => std::env::var(env).map(Secret::new).map_err(|_| invalid(format!("environment variable {env} is not set"))),
            Self::File { file } => {
                let file = if file.is_relative() { path.parent().unwrap_or(Path::new(".")).join(file) } else { file.clone() };
                let text = std::fs::read_to_string(&file).map_err(|e| invalid(format!("secret file {}: {e}", file.display())))?;
                Ok(Secret::new(text.lines().next().unwrap_or_default().to_string()))
            }
            Self::Clear(_) => Err(invalid("a credential in clear is refused: write `{ env = \"VAR\" }` or `{ file = \"path\" }`".into())),
        }
    }
}

/// A schema name that needs no quoting anywhere: in SQL, in `search_path`, in topic names.
fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// What the file resolves to: the endpoints, and the MongoDB target when there is one.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub endpoints: Endpoints,
    pub publication: String,
    pub mongo: Option<(Secret, String)>,
}

impl EndpointsFile {
    pub fn read(path: &Path) -> Result<Self, EndpointsFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| EndpointsFileError::Read { path: path.to_path_buf(), reason: e.to_string() })?;
        toml::from_str(&text).map_err(|e| EndpointsFileError::Read { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Validates the file and resolves every credential reference.
    pub fn resolve(&self, path: &Path) -> Result<Resolved, EndpointsFileError> {
        let invalid = |field: &str, reason: String| EndpointsFileError::Invalid { path: path.to_path_buf(), field: field.into(), reason };
        let source_password = self.source.password.resolve(path, "source.password")?;
        let source = parse_dsn(&self.source.dsn).map_err(|r| invalid("source.dsn", r))?;
        let schema = self.source.schema.clone().unwrap_or_else(|| DEFAULT_SCHEMA.to_string());
        if !is_plain_identifier(&schema) {
            return Err(invalid("source.schema", format!("{schema:?} is not a plain lower-case identifier ([a-z_][a-z0-9_]*, at most 63 bytes)")));
        }
        let mut kafka_client = BTreeMap::new();
        for (key, value) in &self.kafka.client {
            if secure_conn::kafka::is_credential_key(key) {
                return Err(invalid(
                    &format!("kafka.client.\"{key}\""),
                    "a credential in clear is refused: move it to [kafka.client_secrets] as { env = \"VAR\" } or { file = \"path\" }".into(),
                ));
            }
            if key == "bootstrap.servers" {
                return Err(invalid(&format!("kafka.client.\"{key}\""), "set kafka.bootstrap_servers instead".into()));
            }
            kafka_client.insert(key.clone(), Secret::new(value.clone()));
        }
        for (key, value) in &self.kafka.client_secrets {
            kafka_client.insert(key.clone(), value.resolve(path, &format!("kafka.client_secrets.\"{key}\""))?);
        }
        // Checked as a whole (a typo'd protocol is an error, not plaintext), with the safe
        // defaults added: host name verification on TLS.
        let mut settings: BTreeMap<String, String> = kafka_client.iter().map(|(k, v)| (k.clone(), v.expose().to_string())).collect();
        secure_conn::kafka::check(&mut settings).map_err(|e| invalid("kafka.client", e.to_string()))?;
        for (key, value) in settings {
            kafka_client.entry(key).or_insert_with(|| Secret::new(value));
        }
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(invalid("kafka.bootstrap_servers", "is empty".into()));
        }
        let (target_db, target_server, mongo) = match &self.target {
            TargetSection::Postgres { dsn, password } => {
                let target = parse_dsn(dsn).map_err(|r| invalid("target.dsn", r))?;
                let password = password.resolve(path, "target.password")?;
                let server = PgServer { host: target.host, port: target.port, user: target.user, password, params: target.params };
                (target.db, Some(server), None)
            }
            TargetSection::Mongodb { uri, database, password, user } => {
                let mut uri = uri.resolve(path, "target.uri")?;
                if let Some(password) = password {
                    let password = password.resolve(path, "target.password")?;
                    uri = Secret::new(with_mongo_password(uri.expose(), user.as_deref(), password.expose()).map_err(|r| invalid("target.password", r))?);
                }
                (String::new(), None, Some((uri, database.clone())))
            }
        };
        let postgres = PgEndpoint {
            host: source.host,
            port: source.port,
            user: source.user,
            password: source_password,
            source_db: source.db,
            target_db,
            target_server,
            source_schema: schema,
            params: source.params,
        };
        let http_hops =
            [("connect", self.connect.as_ref().map(|c| (&c.url, c.ca.as_ref()))), ("sink", self.sink.as_ref().map(|s| (&s.metrics_url, s.ca.as_ref())))];
        for (section, hop) in http_hops {
            let Some((url, ca)) = hop else { continue };
            let field = if section == "connect" { "connect.url" } else { "sink.metrics_url" };
            let parsed = reqwest::Url::parse(url).map_err(|e| invalid(field, format!("not a URL: {e}")))?;
            if parsed.password().is_some() {
                return Err(invalid(field, "carries a password in clear: the harness calls it without credentials".into()));
            }
            if let Some(ca) = ca {
                let ca_field = format!("{section}.ca");
                if parsed.scheme() != "https" {
                    return Err(invalid(&ca_field, format!("is set but {field} is not https://, so it would not be used")));
                }
                // The process's one HTTP client trusts it from here on.
                crate::http::trust(ca).map_err(|reason| invalid(&ca_field, reason))?;
            }
        }
        let connect = self.connect.as_ref().map(|c| ConnectEndpoint { url: c.url.trim_end_matches('/').to_string(), connector: c.connector.clone() });
        let endpoints = Endpoints {
            postgres,
            kafka: self.kafka.bootstrap_servers.clone(),
            kafka_client,
            topic_prefix: self.kafka.topic_prefix.clone(),
            consumer_group: self.kafka.consumer_group.clone(),
            slot: self.source.slot.clone(),
            debezium_status: connect.as_ref().map(|c| format!("{}/connectors/{}/status", c.url, c.connector)).unwrap_or_default(),
            sink_http: self.sink.as_ref().map(|s| s.metrics_url.trim_end_matches('/').to_string()).unwrap_or_default(),
            connect,
        };
        Ok(Resolved { endpoints, publication: self.source.publication.clone(), mongo })
    }

    /// The file for a stack this harness started: the PostgreSQL password goes to
    /// `password_file` (mode 0600), which the file names.
    pub fn for_started(endpoints: &Endpoints, publication: &str, password_file: &Path) -> Self {
        let pg = &endpoints.postgres;
        let password = SecretRef::File { file: password_file.to_path_buf() };
        Self {
            source: SourceSection {
                dsn: format!("postgres://{}@{}:{}/{}", pg.user, pg.host, pg.port, pg.source_db),
                password: password.clone(),
                publication: publication.to_string(),
                slot: endpoints.slot.clone(),
                schema: Some(pg.source_schema.clone()),
            },
            kafka: KafkaSection {
                bootstrap_servers: endpoints.kafka.clone(),
                topic_prefix: endpoints.topic_prefix.clone(),
                consumer_group: endpoints.consumer_group.clone(),
                client: BTreeMap::new(),
                client_secrets: BTreeMap::new(),
            },
            connect: endpoints.connect.as_ref().map(|c| ConnectSection { url: c.url.clone(), connector: c.connector.clone(), ca: None }),
            target: TargetSection::Postgres { dsn: format!("postgres://{}@{}:{}/{}", pg.user, pg.host, pg.port, pg.target_db), password },
            sink: (!endpoints.sink_http.is_empty()).then(|| SinkSection { metrics_url: endpoints.sink_http.clone(), ca: None }),
        }
    }

    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).expect("the endpoints file serializes");
        format!(
            "# Endpoints of a CDC stack for `harness ... --backend external --endpoints FILE`.\n# Credentials are references ({{ env = \"VAR\" }} or {{ file = \"path\" }}), never values.\n\n{body}"
        )
    }
}

/// The MongoDB URI with `password` in its user info (percent-encoded), for the URI's user
/// or, when it names none, `user`.
fn with_mongo_password(uri: &str, user: Option<&str>, password: &str) -> Result<String, String> {
    let (scheme, rest) = uri.split_once("://").ok_or("the URI has no scheme (mongodb:// or mongodb+srv://)")?;
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => return Err("the URI carries a password already: name it in one place only".into()),
        Some((userinfo, hosts)) => (userinfo.to_string(), hosts),
        None => (percent_encode(user.ok_or("the URI names no user: write mongodb://USER@host/... or set user = \"...\"")?), authority),
    };
    Ok(format!("{scheme}://{userinfo}:{}@{hosts}{tail}", percent_encode(password)))
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { char::from(b).to_string() } else { format!("%{b:02X}") }).collect()
}

struct Dsn {
    host: String,
    port: u16,
    user: String,
    db: String,
    /// Every other setting, as given (`sslmode`, `sslrootcert`, ..., and the host and port
    /// lists of a multi-host DSN).
    params: BTreeMap<String, String>,
}

/// A libpq DSN (URL or key=value) with every setting checked and kept; one with a password
/// is refused (it would be a credential in clear), and so are TLS files that cannot be read.
fn parse_dsn(dsn: &str) -> Result<Dsn, String> {
    let parsed = secure_conn::pg::Dsn::parse(dsn).map_err(|e| e.to_string())?;
    let config = &parsed.config;
    if config.get_password().is_some() {
        return Err("carries a password in clear: remove it and name it in `password = { env = \"VAR\" }` or `{ file = \"path\" }`".into());
    }
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => {
            return Err(format!("a unix socket ({}) cannot be reached from here: name a TCP host", path.display()));
        }
        None => return Err("names no host".into()),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().ok_or("names no user")?.to_string();
    let db = config.get_dbname().ok_or("names no database")?.to_string();
    parsed.connector().map_err(|e| e.to_string())?;
    let mut params: BTreeMap<String, String> =
        secure_conn::pg::pairs(dsn).map_err(|e| e.to_string())?.into_iter().filter(|(k, _)| !["user", "password", "dbname"].contains(&k.as_str())).collect();
    if config.get_hosts().len() <= 1 {
        params.remove("host");
        params.remove("port");
    }
    Ok(Dsn { host, port, user, db, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::write(dir.path().join("pg.secret"), "s3cr3t-pg\n").unwrap();
        (dir, path)
    }

    const GOOD: &str = r#"
[source]
dsn = "postgres://cdc@db.staging:6543/app"
password = { file = "pg.secret" }
publication = "cdc_publication"
slot = "cdc_slot"

[kafka]
bootstrap_servers = "k1:9093,k2:9093"
topic_prefix = "shop"
consumer_group = "shop-sink"
client = { "security.protocol" = "SASL_SSL", "sasl.mechanism" = "PLAIN", "sasl.username" = "shop" }
client_secrets = { "sasl.password" = { env = "EFILE_TEST_KAFKA_PW" } }

[connect]
url = "http://connect:8083/"
connector = "shop"

[target]
kind = "postgres"
dsn = "host=replica port=5433 user=sink dbname=shop"
password = { file = "pg.secret" }
"#;

    #[test]
    fn a_good_file_resolves_every_reference_and_keeps_secrets_out_of_debug() {
        let (_dir, path) = write(GOOD);
        // SAFETY: set once by this test only, for a name no other test reads.
        unsafe { std::env::set_var("EFILE_TEST_KAFKA_PW", "s3cr3t-kafka") };
        let resolved = EndpointsFile::read(&path).unwrap().resolve(&path).unwrap();
        let e = &resolved.endpoints;
        assert_eq!((e.postgres.host.as_str(), e.postgres.port, e.postgres.source_db.as_str()), ("db.staging", 6543, "app"));
        assert_eq!(e.postgres.password.expose(), "s3cr3t-pg");
        let target = e.postgres.target_server.as_ref().unwrap();
        assert_eq!((target.host.as_str(), target.port, e.postgres.target_db.as_str()), ("replica", 5433, "shop"));
        assert_eq!(e.kafka_client["sasl.password"].expose(), "s3cr3t-kafka");
        // TLS to the brokers checks their host name unless the file turns it off.
        assert_eq!(e.kafka_client["ssl.endpoint.identification.algorithm"].expose(), "https");
        // No schema named: the workload has one of its own, the only one on the search path.
        assert_eq!(e.topic("customer"), "shop.cdc_harness.customer");
        assert_eq!(e.postgres.source_dsn().unwrap().config.get_options(), Some("-c search_path=cdc_harness"));
        assert_eq!(e.connect.as_ref().unwrap().url, "http://connect:8083");
        assert_eq!(resolved.publication, "cdc_publication");
        let shown = format!("{resolved:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn credentials_in_clear_and_unknown_fields_are_refused_by_name() {
        let refused = |text: &str, want: &str| {
            let (_dir, path) = write(text);
            let err = EndpointsFile::read(&path).and_then(|f| f.resolve(&path)).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        };
        refused(&GOOD.replace("postgres://cdc@db.staging", "postgres://cdc:hunter2@db.staging"), "source.dsn: carries a password in clear");
        refused(
            &GOOD.replace(
                r#"password = { file = "pg.secret" }
publication"#,
                r#"password = "hunter2"
publication"#,
            ),
            "source.password: a credential in clear is refused",
        );
        refused(&GOOD.replace(r#""sasl.mechanism" = "PLAIN""#, r#""sasl.password" = "hunter2""#), "kafka.client.\"sasl.password\"");
        refused(&GOOD.replace("[connect]", "[connect]\ntimeout = 3"), "unknown field `timeout`");
        refused(&GOOD.replace("\"SASL_SSL\"", "\"TLS\""), "kafka.client: security.protocol \"TLS\" is not one of");
        refused(&GOOD.replace("\"PLAIN\"", "\"GSSAPI\""), "kafka.client: sasl.mechanism \"GSSAPI\"");
        refused(&GOOD.replace("http://connect:8083/", "http://admin:hunter2@connect:8083/"), "connect.url: carries a password in clear");
        refused(&GOOD.replace("EFILE_TEST_KAFKA_PW", "EFILE_TEST_UNSET_VAR"), "EFILE_TEST_UNSET_VAR is not set");
        refused(&GOOD.replace("slot = \"cdc_slot\"", "schema = \"Shop; DROP\""), "source.schema: \"Shop; DROP\" is not a plain lower-case identifier");
    }

    /// `[connect] ca` / `[sink] ca`: checked when the file is read, by name.
    #[test]
    fn an_http_hops_ca_must_be_a_pem_file_and_its_url_https() {
        let refused = |text: &str, want: &str| {
            let (_dir, path) = write(text);
            let err = EndpointsFile::read(&path).and_then(|f| f.resolve(&path)).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        };
        // SAFETY: set by this test only, for a name no other test reads.
        unsafe { std::env::set_var("EFILE_TEST_KAFKA_PW", "s3cr3t-kafka") };
        let https = GOOD.replace("http://connect:8083/", "https://connect:8443/");
        refused(&https.replace("connector = \"shop\"", "connector = \"shop\"\nca = \"/nonexistent/ca.pem\""), "connect.ca: /nonexistent/ca.pem: ");
        refused(
            &GOOD.replace("connector = \"shop\"", "connector = \"shop\"\nca = \"/nonexistent/ca.pem\""),
            "connect.ca: is set but connect.url is not https://",
        );
        let sink = format!("{https}\n[sink]\nmetrics_url = \"http://sink:8080\"\nca = \"/nonexistent/ca.pem\"\n");
        refused(&sink, "sink.ca: is set but sink.metrics_url is not https://");
        let (dir, path) = write("");
        std::fs::write(dir.path().join("not-a-cert.pem"), "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
        let bad = dir.path().join("not-a-cert.pem").display().to_string();
        std::fs::write(&path, https.replace("connector = \"shop\"", &format!("connector = \"shop\"\nca = {}", toml::Value::from(bad.clone())))).unwrap();
        let err = EndpointsFile::read(&path).and_then(|f| f.resolve(&path)).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains(&format!("connect.ca: {bad}")), "{err}");
    }

    #[test]
    fn a_named_schema_picks_the_topics_and_public_keeps_the_default_search_path() {
        let (_dir, path) = write(&GOOD.replace("slot = \"cdc_slot\"", "schema = \"public\""));
        unsafe { std::env::set_var("EFILE_TEST_KAFKA_PW", "s3cr3t-kafka") };
        let e = EndpointsFile::read(&path).unwrap().resolve(&path).unwrap().endpoints;
        assert_eq!(e.topic("orders"), "shop.public.orders");
        assert_eq!(e.postgres.source_dsn().unwrap().config.get_options(), None);
    }

    #[test]
    fn every_dsn_setting_is_kept_and_a_password_with_quotes_and_spaces_stays_whole() {
        let (dir, path) = write(
            &GOOD
                .replace("postgres://cdc@db.staging:6543/app", "postgres://cdc@db.staging:6543/app?sslmode=verify-full&sslrootcert=ca.pem&application_name=x")
                .replace("host=replica port=5433 user=sink dbname=shop", "host=r1,r2 port=5433,5434 user=sink dbname=shop sslmode=require"),
        );
        std::fs::write(dir.path().join("pg.secret"), "p w'\"\\=x\n").unwrap();
        unsafe { std::env::set_var("EFILE_TEST_KAFKA_PW", "s3cr3t-kafka") };
        // A CA file that cannot be read is named when the file is read, not at the first connection.
        let missing = EndpointsFile::read(&path).and_then(|f| f.resolve(&path));
        assert!(missing.is_err_and(|e| e.to_string().contains("ca.pem")), "a missing CA file is named");
        let text = std::fs::read_to_string(&path).unwrap().replace("sslrootcert=ca.pem", "sslrootcert=system");
        std::fs::write(&path, text).unwrap();
        let e = EndpointsFile::read(&path).unwrap().resolve(&path).unwrap().endpoints;
        let source = e.postgres.source_dsn().unwrap();
        assert_eq!(source.tls.mode, secure_conn::pg::SslMode::VerifyFull);
        assert_eq!(source.config.get_application_name(), Some("x"));
        assert_eq!(source.config.get_password(), Some("p w'\"\\=x".as_bytes()));
        let target = e.postgres.target_dsn().unwrap();
        assert_eq!((target.config.get_hosts().len(), target.config.get_ports()), (2, &[5433, 5434][..]));
        assert_eq!(target.tls.mode, secure_conn::pg::SslMode::Require);
        // The sink's url keeps every setting, quoted, and no password.
        let url = e.postgres.target_conninfo();
        assert!(url.contains("sslmode='require'") && !url.contains("p w"), "{url}");
    }

    #[tokio::test]
    async fn a_mongodb_password_reference_logs_in_as_the_uris_user_or_the_named_one() {
        let odd = r#"p w'"\=x@"#;
        assert_eq!(with_mongo_password("mongodb://app@h1,h2/db?tls=true", None, odd).unwrap(), "mongodb://app:p%20w%27%22%5C%3Dx%40@h1,h2/db?tls=true");
        assert_eq!(with_mongo_password("mongodb+srv://cluster.example", Some("sink"), "pw").unwrap(), "mongodb+srv://sink:pw@cluster.example");
        assert!(with_mongo_password("mongodb://h/db", None, "pw").unwrap_err().contains("names no user"));
        assert!(with_mongo_password("mongodb://u:old@h/db", None, "pw").unwrap_err().contains("password already"));
        let options = mongodb::options::ClientOptions::parse(with_mongo_password("mongodb://app@h/db", None, odd).unwrap()).await.unwrap();
        assert_eq!(options.credential.and_then(|c| c.password).as_deref(), Some(odd));
    }
}
