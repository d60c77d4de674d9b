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
}

impl MongoConfig {
    fn default_database() -> String {
        "cdc".into()
    }
    const fn default_server_selection_timeout() -> Duration {
        Duration::from_secs(5)
    }

    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.database.is_empty() || self.database.contains(['/', '\\', '.', ' ', '"', '$']) {
            problems.push("[target.mongodb] database must be a plain MongoDB database name".into());
        }
        if self.server_selection_timeout.is_zero() {
            problems.push("[target.mongodb] server_selection_timeout must be positive".into());
        }
        problems
    }
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self { database: Self::default_database(), server_selection_timeout: Self::default_server_selection_timeout() }
    }
}
