use std::time::Duration;

use serde::Deserialize;

/// `[target.mongodb]`: settings only the MongoDB target reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// Database holding the collections.
    #[serde(default = "MongoConfig::default_database")]
    pub database: String,
    #[serde(default = "MongoConfig::default_server_selection_timeout", with = "humantime_serde")]
    pub server_selection_timeout: Duration,
    /// Deadline of every operation, client-side and as the server's `maxTimeMS`: a server
    /// or link that stops answering becomes a retriable timeout instead of a stuck partition.
    #[serde(default = "MongoConfig::default_operation_timeout", with = "humantime_serde")]
    pub operation_timeout: Duration,
    #[serde(default = "MongoConfig::default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl MongoConfig {
    fn default_database() -> String {
        "cdc".into()
    }
    const fn default_server_selection_timeout() -> Duration {
        Duration::from_secs(5)
    }
    const fn default_operation_timeout() -> Duration {
        Duration::from_secs(60)
    }
    const fn default_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }

    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.database.is_empty() || self.database.contains(['/', '\\', '.', ' ', '"', '$']) {
            problems.push("[target.mongodb] database must be a plain MongoDB database name".into());
        }
        if self.server_selection_timeout.is_zero() || self.operation_timeout.is_zero() || self.connect_timeout.is_zero() {
            problems.push("[target.mongodb] server_selection_timeout, operation_timeout and connect_timeout must be positive".into());
        }
        problems
    }
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            database: Self::default_database(),
            server_selection_timeout: Self::default_server_selection_timeout(),
            operation_timeout: Self::default_operation_timeout(),
            connect_timeout: Self::default_connect_timeout(),
        }
    }
}
