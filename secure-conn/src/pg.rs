//! PostgreSQL connection strings as libpq reads them, TLS included.
//!
//! tokio-postgres knows `sslmode` disable/prefer/require only and no certificate options, so
//! a DSN is parsed here (both libpq forms: `key=value ...` and `postgres://` URLs), every
//! setting applied to a `tokio_postgres::Config` through its setters (never by formatting a
//! string: a value with a space or a quote stays one value), and the TLS options kept apart
//! to build an OpenSSL connector with libpq's meaning of each mode:
//!
//! | sslmode | encrypted | certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `allow` | only if plaintext is refused | no |
//! | `prefer` (default) | if the server offers it | no |
//! | `require` | always | no; against the CA if a root certificate is given (as libpq) |
//! | `verify-ca` | always | chain to the CA |
//! | `verify-full` | always | chain to the CA and the host name (or IP) |
//!
//! The root certificate is `sslrootcert`, else `~/.postgresql/root.crt` when it exists
//! (libpq's default); `sslrootcert=system` trusts the system's CA store.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::config::{ChannelBinding, LoadBalanceHosts, SslMode as PgSslMode, SslNegotiation, TargetSessionAttrs};

#[derive(Debug, thiserror::Error)]
pub enum DsnError {
    #[error("not a PostgreSQL connection string: {0}")]
    Syntax(String),
    #[error("invalid value for {key}: {reason}")]
    Value { key: String, reason: String },
    #[error("unknown connection option {0:?}")]
    Unknown(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("sslmode={mode} needs a root certificate: set sslrootcert (a CA file, or `system`) or create ~/.postgresql/root.crt")]
    NoRootCert { mode: SslMode },
    #[error("{what} {}: {reason}", path.display())]
    File { what: &'static str, path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the root certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the system's CA store.
    System,
}

/// The TLS half of a DSN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// What a connection made with these options guarantees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The peer's certificate is not checked.
    None,
    /// The chain is checked against the CA, not the host name.
    Ca,
    /// The chain and the host name.
    Full,
}

impl TlsOptions {
    /// The root certificate in force: the given one, else libpq's default file if present.
    fn effective_root(&self) -> Option<RootCert> {
        self.root_cert.clone().or_else(|| {
            let default = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
            default.exists().then_some(RootCert::File(default))
        })
    }

    /// How much of the server's certificate is checked (libpq: `require` with a root
    /// certificate behaves as `verify-ca`).
    pub fn verification(&self) -> Verification {
        match self.mode {
            SslMode::VerifyFull => Verification::Full,
            SslMode::VerifyCa => Verification::Ca,
            SslMode::Require if self.effective_root().is_some() => Verification::Ca,
            _ => Verification::None,
        }
    }

    /// Whether every connection is encrypted (otherwise it depends on the server).
    pub fn always_encrypted(&self) -> bool {
        matches!(self.mode, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// One line for a pre-flight: the mode and what it checks.
    pub fn describe(&self) -> String {
        let checks = match self.verification() {
            Verification::Full => "certificate and host name verified",
            Verification::Ca => "certificate verified against the CA, host name not",
            Verification::None => "certificate not verified",
        };
        match self.mode {
            SslMode::Disable => "sslmode=disable: plaintext".to_string(),
            mode => format!("sslmode={mode}: {checks}"),
        }
    }

    /// The OpenSSL connector for these options; certificate files are read here.
    pub fn connector(&self) -> Result<Connector, TlsSetupError> {
        let mut builder = SslConnector::builder(SslMethod::tls_client())?;
        let verification = self.verification();
        if verification == Verification::None {
            builder.set_verify(SslVerifyMode::NONE);
        } else {
            match self.effective_root() {
                Some(RootCert::File(path)) => {
                    readable("root certificate (sslrootcert)", &path)?;
                    builder.set_ca_file(&path).map_err(|e| file_err("root certificate (sslrootcert)", &path, e))?;
                }
                // SslConnector::builder already loads the system's default verify paths.
                Some(RootCert::System) => {}
                None => return Err(TlsSetupError::NoRootCert { mode: self.mode }),
            }
            builder.set_verify(SslVerifyMode::PEER);
        }
        if let Some(cert) = &self.cert {
            readable("client certificate (sslcert)", cert)?;
            builder.set_certificate_chain_file(cert).map_err(|e| file_err("client certificate (sslcert)", cert, e))?;
            let key = self.key.clone().unwrap_or_else(|| cert.with_extension("key"));
            readable("client key (sslkey)", &key)?;
            builder.set_private_key_file(&key, SslFiletype::PEM).map_err(|e| file_err("client key (sslkey)", &key, e))?;
            builder.check_private_key().map_err(|e| file_err("client key (sslkey) does not match the certificate:", &key, e))?;
        }
        let mut tls = MakeTlsConnector::new(builder.build());
        if verification != Verification::Full {
            tls.set_callback(|config, _| {
                config.set_verify_hostname(false);
                Ok(())
            });
        }
        Ok(Connector { tls, mode: self.mode })
    }
}

fn readable(what: &'static str, path: &Path) -> Result<(), TlsSetupError> {
    std::fs::File::open(path).map(drop).map_err(|e| TlsSetupError::File { what, path: path.to_path_buf(), reason: e.to_string() })
}

fn file_err(what: &'static str, path: &Path, e: openssl::error::ErrorStack) -> TlsSetupError {
    TlsSetupError::File { what, path: path.to_path_buf(), reason: e.to_string() }
}

pub type Connection = tokio_postgres::Connection<tokio_postgres::Socket, postgres_openssl::TlsStream<tokio_postgres::Socket>>;

/// Connects with the TLS options it was made from.
#[derive(Clone)]
pub struct Connector {
    tls: MakeTlsConnector,
    mode: SslMode,
}

impl Connector {
    /// Connects; `config`'s own `ssl_mode` is set from the TLS options (`allow`: plaintext
    /// first, TLS if the server refuses it).
    pub async fn connect(&self, config: &tokio_postgres::Config) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
        let mut config = config.clone();
        config.ssl_mode(match self.mode {
            SslMode::Disable | SslMode::Allow => PgSslMode::Disable,
            mode => wire_mode(mode),
        });
        match config.connect(self.tls.clone()).await {
            Err(_) if self.mode == SslMode::Allow => {
                config.ssl_mode(PgSslMode::Require);
                config.connect(self.tls.clone()).await
            }
            other => other,
        }
    }

    /// For a pool that connects by itself (deadpool): the settings with their ssl mode and
    /// the TLS connector. There `allow` is taken as `prefer` (TLS when the server offers it),
    /// never weaker than asked.
    pub fn for_pool(&self, config: &tokio_postgres::Config) -> (tokio_postgres::Config, MakeTlsConnector) {
        let mut config = config.clone();
        config.ssl_mode(wire_mode(self.mode));
        (config, self.tls.clone())
    }
}

/// tokio-postgres's mode for ours (certificate checks are the connector's).
fn wire_mode(mode: SslMode) -> PgSslMode {
    match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    }
}

/// A parsed DSN: the client settings and the TLS options.
#[derive(Debug, Clone, Default)]
pub struct Dsn {
    pub config: tokio_postgres::Config,
    pub tls: TlsOptions,
}

impl Dsn {
    /// Parses a libpq connection string, `key=value` pairs or a `postgres://` /
    /// `postgresql://` URL. Unknown options are refused, as libpq does.
    pub fn parse(text: &str) -> Result<Self, DsnError> {
        let mut dsn = Dsn { config: tokio_postgres::Config::new(), tls: TlsOptions::default() };
        for (key, value) in pairs(text)? {
            dsn.set(&key, &value)?;
        }
        Ok(dsn)
    }

    /// Applies one libpq setting.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), DsnError> {
        let bad = |reason: &str| DsnError::Value { key: key.to_string(), reason: reason.to_string() };
        let seconds = || value.parse::<u64>().map(Duration::from_secs).map_err(|_| bad("expected whole seconds"));
        let c = &mut self.config;
        match key {
            "host" => {
                for host in value.split(',') {
                    if host.starts_with('/') {
                        c.host_path(host);
                    } else {
                        c.host(host);
                    }
                }
            }
            "hostaddr" => {
                for addr in value.split(',') {
                    c.hostaddr(addr.parse::<IpAddr>().map_err(|_| bad("expected an IP address"))?);
                }
            }
            "port" => {
                for port in value.split(',') {
                    c.port(if port.is_empty() { 5432 } else { port.parse().map_err(|_| bad("expected a port number"))? });
                }
            }
            "user" => drop(c.user(value)),
            "password" => drop(c.password(value)),
            "dbname" => drop(c.dbname(value)),
            "options" => drop(c.options(value)),
            "application_name" => drop(c.application_name(value)),
            "connect_timeout" => {
                let timeout = seconds()?;
                // libpq: 0 waits forever.
                if !timeout.is_zero() {
                    c.connect_timeout(timeout.max(Duration::from_secs(2)));
                }
            }
            // libpq's unit is milliseconds.
            "tcp_user_timeout" => drop(c.tcp_user_timeout(Duration::from_millis(value.parse().map_err(|_| bad("expected milliseconds"))?))),
            "keepalives" => drop(c.keepalives(value != "0")),
            "keepalives_idle" => drop(c.keepalives_idle(seconds()?)),
            "keepalives_interval" => drop(c.keepalives_interval(seconds()?)),
            "keepalives_count" => drop(c.keepalives_retries(value.parse().map_err(|_| bad("expected a count"))?)),
            "target_session_attrs" => drop(c.target_session_attrs(match value {
                "any" => TargetSessionAttrs::Any,
                "read-write" => TargetSessionAttrs::ReadWrite,
                "read-only" => TargetSessionAttrs::ReadOnly,
                _ => return Err(bad("expected any, read-write or read-only")),
            })),
            "channel_binding" => drop(c.channel_binding(match value {
                "disable" => ChannelBinding::Disable,
                "prefer" => ChannelBinding::Prefer,
                "require" => ChannelBinding::Require,
                _ => return Err(bad("expected disable, prefer or require")),
            })),
            "load_balance_hosts" => drop(c.load_balance_hosts(match value {
                "disable" => LoadBalanceHosts::Disable,
                "random" => LoadBalanceHosts::Random,
                _ => return Err(bad("expected disable or random")),
            })),
            "sslnegotiation" => drop(c.ssl_negotiation(match value {
                "postgres" => SslNegotiation::Postgres,
                "direct" => SslNegotiation::Direct,
                _ => return Err(bad("expected postgres or direct")),
            })),
            "sslmode" => self.tls.mode = SslMode::parse(value).ok_or_else(|| bad("expected disable, allow, prefer, require, verify-ca or verify-full"))?,
            "sslrootcert" => self.tls.root_cert = Some(if value == "system" { RootCert::System } else { RootCert::File(PathBuf::from(value)) }),
            "sslcert" => self.tls.cert = Some(PathBuf::from(value)),
            "sslkey" => self.tls.key = Some(PathBuf::from(value)),
            // This client has no GSSAPI: `prefer` falls back to what follows, as libpq's does.
            "gssencmode" if value == "disable" || value == "prefer" => {}
            other => return Err(DsnError::Unknown(other.to_string())),
        }
        Ok(())
    }

    /// The first TCP host and port (what a report names).
    pub fn first_tcp_host(&self) -> Option<(String, u16)> {
        let host = self.config.get_hosts().iter().find_map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => Some(h.clone()),
            _ => None,
        })?;
        Some((host, self.config.get_ports().first().copied().unwrap_or(5432)))
    }

    /// The connector for this DSN's TLS options.
    pub fn connector(&self) -> Result<Connector, TlsSetupError> {
        self.tls.connector()
    }
}

/// The settings of a libpq connection string in either form, in order, values decoded
/// (not checked: `Dsn::parse` does that).
pub fn pairs(text: &str) -> Result<Vec<(String, String)>, DsnError> {
    if text.starts_with("postgres://") || text.starts_with("postgresql://") { url_pairs(text) } else { key_value_pairs(text) }
}

/// A `key=value` connection string for a program that takes one (the sink's `[target]
/// url`): every value quoted as libpq reads it, so none can carry another option.
pub fn conninfo(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (key, value) in pairs {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(key);
        out.push_str("='");
        for c in value.chars() {
            if c == '\\' || c == '\'' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('\'');
    }
    out
}

/// libpq's `key = value` form: values may be single-quoted, `\` escapes the next character.
fn key_value_pairs(text: &str) -> Result<Vec<(String, String)>, DsnError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // The name is not echoed: with an unquoted value holding a space, it is a piece of that value.
            return Err(DsnError::Syntax(format!("missing \"=\" after option {} (quote values that hold spaces: key='a b')", pairs.len() + 1)));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(|| DsnError::Syntax("unterminated quoted value".into()))?),
                    Some(c) => value.push(c),
                    None => return Err(DsnError::Syntax(format!("unterminated quoted value of {key}"))),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(|| DsnError::Syntax("trailing backslash".into()))?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// `postgres[ql]://[user[:password]@][host[:port][,...]][/dbname][?key=value&...]`,
/// percent-decoded; hosts may be `[v6]`.
fn url_pairs(text: &str) -> Result<Vec<(String, String)>, DsnError> {
    let rest = text.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    let mut pairs = Vec::new();
    let (credentials, hosts) = authority.rsplit_once('@').map_or((None, authority), |(c, h)| (Some(c), h));
    if let Some(credentials) = credentials {
        let (user, password) = credentials.split_once(':').map_or((credentials, None), |(u, p)| (u, Some(p)));
        if !user.is_empty() {
            pairs.push(("user".into(), decode(user)?));
        }
        if let Some(password) = password {
            pairs.push(("password".into(), decode(password)?));
        }
    }
    if !hosts.is_empty() {
        let (mut names, mut ports) = (Vec::new(), Vec::new());
        for part in hosts.split(',') {
            let (host, port) = if let Some(v6) = part.strip_prefix('[') {
                let (host, after) = v6.split_once(']').ok_or_else(|| DsnError::Syntax(format!("unclosed [ in host {part:?}")))?;
                (host, after.strip_prefix(':').unwrap_or(""))
            } else {
                part.split_once(':').unwrap_or((part, ""))
            };
            names.push(decode(host)?);
            ports.push(port.to_string());
        }
        pairs.push(("host".into(), names.join(",")));
        if ports.iter().any(|p| !p.is_empty()) {
            pairs.push(("port".into(), ports.join(",")));
        }
    }
    if !db.is_empty() {
        pairs.push(("dbname".into(), decode(db)?));
    }
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').ok_or_else(|| DsnError::Syntax("a query parameter has no \"=\"".into()))?;
        pairs.push((decode(key)?, decode(value)?));
    }
    Ok(pairs)
}

fn decode(text: &str) -> Result<String, DsnError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| DsnError::Syntax("a bad percent-escape (% and two hex digits)".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DsnError::Syntax("a part is not UTF-8 once percent-decoded".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_form_keeps_quoted_values_whole_and_tls_options() {
        let dsn = Dsn::parse(r"host=db.example port=6543 user=app password='p w\'q\\=x' dbname=shop sslmode=verify-full sslrootcert=/ca.pem connect_timeout=5")
            .unwrap();
        assert_eq!(dsn.config.get_password(), Some(&b"p w'q\\=x"[..]));
        assert_eq!(dsn.first_tcp_host(), Some(("db.example".into(), 6543)));
        assert_eq!(dsn.config.get_dbname(), Some("shop"));
        assert_eq!(dsn.tls.mode, SslMode::VerifyFull);
        assert_eq!(dsn.tls.root_cert, Some(RootCert::File("/ca.pem".into())));
        assert_eq!(dsn.tls.verification(), Verification::Full);
        // `x host=other` is one value, not an injected option.
        let dsn = Dsn::parse("host=a user='x host=other'").unwrap();
        assert_eq!(dsn.config.get_user(), Some("x host=other"));
        assert_eq!(dsn.config.get_hosts().len(), 1);
    }

    #[test]
    fn conninfo_quotes_so_that_every_value_parses_back_whole() {
        let text = conninfo(&[("host", "127.0.0.1"), ("user", "x host=evil"), ("dbname", r"a'b\c")]);
        let dsn = Dsn::parse(&text).unwrap();
        assert_eq!(dsn.config.get_user(), Some("x host=evil"));
        assert_eq!(dsn.config.get_dbname(), Some(r"a'b\c"));
        assert_eq!(dsn.config.get_hosts().len(), 1);
    }

    #[test]
    fn url_form_decodes_and_keeps_every_parameter() {
        let dsn = Dsn::parse("postgresql://app%40corp@h1:5433,[::1]:5434/my%20db?sslmode=require&sslcert=/c.pem&sslkey=/c.key&application_name=x").unwrap();
        assert_eq!(dsn.config.get_user(), Some("app@corp"));
        assert_eq!(dsn.config.get_hosts().len(), 2);
        assert_eq!(dsn.config.get_ports(), &[5433, 5434]);
        assert_eq!(dsn.config.get_dbname(), Some("my db"));
        assert_eq!(dsn.tls.mode, SslMode::Require);
        assert_eq!((dsn.tls.cert.as_deref(), dsn.tls.key.as_deref()), (Some(Path::new("/c.pem")), Some(Path::new("/c.key"))));
        assert_eq!(dsn.config.get_application_name(), Some("x"));
    }

    #[test]
    fn bad_input_is_refused_by_name() {
        assert!(matches!(Dsn::parse("host=a sslmode=verify"), Err(DsnError::Value { key, .. }) if key == "sslmode"));
        assert!(matches!(Dsn::parse("host=a sslcrl=/x"), Err(DsnError::Unknown(k)) if k == "sslcrl"));
        assert!(matches!(Dsn::parse("host=a user='x"), Err(DsnError::Syntax(_))));
        assert!(matches!(Dsn::parse("host"), Err(DsnError::Syntax(_))));
        // A password with an unquoted space is refused without echoing any of it.
        let err = Dsn::parse("host=a password=hunter xyz").unwrap_err().to_string();
        assert!(!err.contains("hunter") && !err.contains("xyz"), "{err}");
        let err = Dsn::parse("postgres://u:hunter%zz@h/db").unwrap_err().to_string();
        assert!(!err.contains("hunter"), "{err}");
    }

    #[test]
    fn verify_modes_need_a_root_certificate_and_name_a_missing_file() {
        let tls = TlsOptions { mode: SslMode::VerifyCa, root_cert: Some(RootCert::File("/nonexistent/ca.pem".into())), ..Default::default() };
        let err = tls.connector().err().expect("a missing CA file fails").to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        // require without a root certificate checks nothing; with one it checks the CA.
        let require = TlsOptions { mode: SslMode::Require, ..Default::default() };
        assert!(!require.describe().contains("verified against"));
        let require = TlsOptions { root_cert: Some(RootCert::System), ..require };
        assert_eq!(require.verification(), Verification::Ca);
    }
}
