//! Source schema changes, detected from the events themselves (JSON without schemas):
//! a column the sink does not know appears (added), a known column stops appearing
//! (removed; the target keeps its last values, so history is kept), or a column's values
//! change kind (type change, classified compatible when the stored form still holds it).
//! Each change is logged once per process and counted.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::metrics::Metrics;
use crate::model::{Entity, JsonKind, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaChange {
    Added,
    Removed,
    TypeCompatible,
    TypeIncompatible,
}

impl SchemaChange {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Removed => "removed",
            Self::TypeCompatible => "type_compatible",
            Self::TypeIncompatible => "type_incompatible",
        }
    }
}

/// Added columns are stored as text, so widening to a string is compatible; narrowing
/// (string to number/bool) or switching between scalar and structured values is not.
pub fn classify(from: JsonKind, to: JsonKind) -> Option<SchemaChange> {
    use JsonKind::*;
    match (from, to) {
        (a, b) if a == b => None,
        (Null, _) | (_, Null) => None,
        (Bool | Number, String) => Some(SchemaChange::TypeCompatible),
        _ => Some(SchemaChange::TypeIncompatible),
    }
}

#[derive(Default)]
struct EntitySchema {
    /// Added columns and the last kind of non-null value seen.
    added: HashMap<String, JsonKind>,
    /// Known columns reported removed (a later reappearance re-arms the report).
    removed: Vec<bool>,
    /// Known columns already reported with an incompatible type.
    incompatible: Vec<String>,
}

pub struct SchemaTracker {
    entities: Mutex<HashMap<Entity, EntitySchema>>,
}

impl Default for SchemaTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl SchemaTracker {
    pub fn new() -> Self {
        Self { entities: Mutex::new(HashMap::new()) }
    }

    /// Looks at an `after` image; returns the added columns it carries (the target must
    /// have room for them before the apply).
    pub fn observe(&self, entity: Entity, row: &Row, metrics: &Metrics) -> Vec<String> {
        // The common case: every known column present, nothing added.
        if row.extra.is_empty() && row.known.iter().all(Option::is_some) {
            let guard = self.entities.lock().expect("schema lock");
            if guard.get(&entity).is_none_or(|s| !s.removed.iter().any(|r| *r)) {
                return Vec::new();
            }
        }
        let mut guard = self.entities.lock().expect("schema lock");
        let schema = guard.entry(entity).or_default();
        if schema.removed.is_empty() {
            schema.removed = vec![false; entity.columns().len()];
        }
        let report = |change: SchemaChange, column: &str, detail: String| {
            metrics.schema_change(entity, change.name());
            if change == SchemaChange::TypeIncompatible {
                tracing::error!(message = "incompatible schema change", entity = %entity, column, change = change.name(), detail);
            } else {
                tracing::warn!(message = "schema change", entity = %entity, column, change = change.name(), detail);
            }
        };
        for (i, (column, field)) in entity.columns().iter().zip(&row.known).enumerate() {
            // Absent, not TOAST-unavailable: Debezium sends every column it has.
            let absent = field.is_none();
            if absent && !schema.removed[i] && column.name != "id" {
                schema.removed[i] = true;
                report(SchemaChange::Removed, column.name, "column no longer sent; stored values are kept".into());
            } else if !absent && schema.removed[i] {
                schema.removed[i] = false;
                report(SchemaChange::Added, column.name, "column sent again".into());
            }
        }
        for (name, extra) in &row.extra {
            match schema.added.get(name).copied() {
                None => {
                    schema.added.insert(name.clone(), extra.kind);
                    report(SchemaChange::Added, name, format!("new column ({:?} values), stored as text", extra.kind));
                }
                Some(previous) => {
                    if let Some(change) = classify(previous, extra.kind) {
                        report(change, name, format!("values changed from {previous:?} to {:?}", extra.kind));
                    }
                    if extra.kind != JsonKind::Null {
                        schema.added.insert(name.clone(), extra.kind);
                    }
                }
            }
        }
        row.extra.keys().cloned().collect()
    }

    /// A known column whose value no longer decodes as its type: incompatible type change
    /// (the event itself goes to the DLQ). Reported once per column.
    pub fn incompatible_known(&self, entity: Entity, column: &str, metrics: &Metrics) {
        let mut guard = self.entities.lock().expect("schema lock");
        let schema = guard.entry(entity).or_default();
        if !schema.incompatible.iter().any(|c| c == column) {
            schema.incompatible.push(column.to_string());
            metrics.schema_change(entity, SchemaChange::TypeIncompatible.name());
            tracing::error!(message = "incompatible schema change", entity = %entity, column, change = "type_incompatible");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Extra, Field, Value};

    fn row_with(entity: Entity, extra: &[(&str, JsonKind)], drop: Option<usize>) -> Row {
        let mut row = Row::empty(entity);
        for f in row.known.iter_mut() {
            *f = Some(Field::Value(Value::Null));
        }
        if let Some(i) = drop {
            row.known[i] = None;
        }
        for (name, kind) in extra {
            row.extra.insert(name.to_string(), Extra { text: Some("x".into()), kind: *kind });
        }
        row
    }

    #[test]
    fn classification() {
        assert_eq!(classify(JsonKind::Number, JsonKind::String), Some(SchemaChange::TypeCompatible));
        assert_eq!(classify(JsonKind::String, JsonKind::Number), Some(SchemaChange::TypeIncompatible));
        assert_eq!(classify(JsonKind::Null, JsonKind::Number), None);
        assert_eq!(classify(JsonKind::Object, JsonKind::Bool), Some(SchemaChange::TypeIncompatible));
    }

    #[test]
    fn each_change_counted_once() {
        let metrics = Metrics::new();
        let tracker = SchemaTracker::new();
        let e = Entity::Customer;
        assert!(tracker.observe(e, &row_with(e, &[], None), &metrics).is_empty());
        assert_eq!(tracker.observe(e, &row_with(e, &[("tier", JsonKind::Number)], None), &metrics), vec!["tier"]);
        tracker.observe(e, &row_with(e, &[("tier", JsonKind::Number)], None), &metrics);
        tracker.observe(e, &row_with(e, &[("tier", JsonKind::String)], Some(3)), &metrics);
        tracker.observe(e, &row_with(e, &[("tier", JsonKind::String)], Some(3)), &metrics);
        tracker.incompatible_known(e, "status", &metrics);
        tracker.incompatible_known(e, "status", &metrics);
        let text = metrics.render();
        for (change, n) in [("added", 1), ("removed", 1), ("type_compatible", 1), ("type_incompatible", 1)] {
            let needle = format!("sink_schema_changes_total{{entity=\"customer\",change=\"{change}\"}} {n}");
            assert!(text.contains(&needle), "{needle} in {text}");
        }
    }
}
