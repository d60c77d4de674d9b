use std::time::Duration;

use serde::Deserialize;

/// `[target.postgres]`: settings only the PostgreSQL target reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connections; a partition takes whichever is free (each keeps its prepared statements).
    #[serde(default = "PostgresConfig::default_pool_size")]
    pub pool_size: usize,
    #[serde(default = "PostgresConfig::default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout`, so a stuck statement becomes a retriable error.
    #[serde(default = "PostgresConfig::default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Client-side deadline of every call (connect, prepare, statement): also when the
    /// server never answers (a blackholed link). A missed deadline is retried on a fresh
    /// connection. Must exceed `statement_timeout`.
    #[serde(default = "PostgresConfig::default_call_timeout", with = "humantime_serde")]
    pub call_timeout: Duration,
    /// `TCP_USER_TIMEOUT`: unacknowledged data fails the connection after this long.
    #[serde(default = "PostgresConfig::default_tcp_user_timeout", with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
}

impl PostgresConfig {
    const fn default_pool_size() -> usize {
        4
    }
    const fn default_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    const fn default_statement_timeout() -> Duration {
        Duration::from_secs(60)
    }
    const fn default_call_timeout() -> Duration {
        Duration::from_secs(75)
    }
    const fn default_tcp_user_timeout() -> Duration {
        Duration::from_secs(30)
    }

    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.pool_size == 0 || self.pool_size > 64 {
            problems.push("[target.postgres] pool_size must be between 1 and 64".into());
        }
        if self.connect_timeout.is_zero() || self.statement_timeout.is_zero() || self.tcp_user_timeout.is_zero() {
            problems.push("[target.postgres] connect_timeout, statement_timeout and tcp_user_timeout must be positive".into());
        }
        if self.call_timeout <= self.statement_timeout {
            problems.push(format!(
                "[target.postgres] call_timeout ({:?}) must exceed statement_timeout ({:?}): the server's own timeout should answer first",
                self.call_timeout, self.statement_timeout
            ));
        }
        problems
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            pool_size: Self::default_pool_size(),
            connect_timeout: Self::default_connect_timeout(),
            statement_timeout: Self::default_statement_timeout(),
            call_timeout: Self::default_call_timeout(),
            tcp_user_timeout: Self::default_tcp_user_timeout(),
        }
    }
}
