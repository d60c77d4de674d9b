use std::time::Duration;

use serde::Deserialize;

/// `[target.postgres]`: settings only the PostgreSQL target reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connections; partitions share them round-robin (each keeps its prepared statements).
    #[serde(default = "PostgresConfig::default_pool_size")]
    pub pool_size: usize,
    #[serde(default = "PostgresConfig::default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout`, so a stuck statement becomes a retriable error.
    #[serde(default = "PostgresConfig::default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
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

    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.pool_size == 0 || self.pool_size > 64 {
            problems.push("[target.postgres] pool_size must be between 1 and 64".into());
        }
        if self.connect_timeout.is_zero() || self.statement_timeout.is_zero() {
            problems.push("[target.postgres] connect_timeout and statement_timeout must be positive".into());
        }
        problems
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self { pool_size: Self::default_pool_size(), connect_timeout: Self::default_connect_timeout(), statement_timeout: Self::default_statement_timeout() }
    }
}
