//! The workload: a realistic multi-entity application writing to the source database,
//! exposed as an HTTP API (the "application" of real deployments) so that any load tool
//! drives the same operations.

pub mod api;
pub mod executor;
pub mod model;

use serde::{Deserialize, Serialize};

/// What a request asks for; the workload picks the entity and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, strum::IntoStaticStr, strum::EnumIter)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum OpKind {
    Insert,
    Update,
    Delete,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// Operation mix in percent (must add up to 100).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    pub insert: u32,
    pub update: u32,
    pub delete: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self { insert: 70, update: 20, delete: 10 }
    }
}

impl Mix {
    pub fn validate(&self) -> Result<(), String> {
        let total = self.insert + self.update + self.delete;
        if total != 100 {
            return Err(format!("the operation mix must add up to 100 (insert {} + update {} + delete {} = {total})", self.insert, self.update, self.delete));
        }
        Ok(())
    }

    /// Picks a kind for a uniform draw in 0..100.
    pub fn pick(&self, draw: u32) -> OpKind {
        if draw < self.insert {
            OpKind::Insert
        } else if draw < self.insert + self.update {
            OpKind::Update
        } else {
            OpKind::Delete
        }
    }
}
