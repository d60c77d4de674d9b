//! The table -> target mapping, declared in `harness/mapping.toml`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::canonical::ColumnType;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub entity: Vec<Entity>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    pub name: String,
    /// `schema.table`, or `table`: in a mapping file of one's own, in `public`; in the
    /// builtin mapping, in the stack's workload schema (the source connection's search path).
    pub source_table: String,
    /// The first column is the key.
    pub columns: Vec<Column>,
    pub postgres: PostgresTarget,
    pub mongo: MongoTarget,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Set when the verifier found the column in the source but not in the target (it is
    /// then compared against null there). Never read from a mapping file.
    #[serde(skip)]
    pub absent_in_target: bool,
    /// The target column it is stored under, when not its own name (an added column the
    /// sink renames: `verify::columns::stored_name`). Never read from a mapping file.
    #[serde(skip)]
    pub target_name: Option<String>,
}

impl Column {
    /// The column's name in a PostgreSQL target.
    pub fn target(&self) -> &str {
        self.target_name.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTarget {
    pub table: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoTarget {
    pub collection: String,
    /// Array field of the parent document holding these rows (embedded entities).
    pub embedded_in: Option<String>,
    /// Column holding the parent document's key (embedded entities).
    pub parent_key: Option<String>,
    /// Document field of each column whose field is not named like the column.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

impl MongoTarget {
    /// The document field holding `column`.
    pub fn field<'a>(&'a self, column: &'a str) -> &'a str {
        self.fields.get(column).map_or(column, String::as_str)
    }
}

impl Entity {
    pub fn key(&self) -> &Column {
        &self.columns[0]
    }
}

impl Mapping {
    pub fn builtin() -> Self {
        toml::from_str(include_str!("../../mapping.toml")).expect("harness/mapping.toml is valid (checked by a unit test)")
    }

    /// A mapping file of one's own (`verify --mapping FILE`), strict like the builtin one.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("mapping {}: {e}", path.display()))?;
        let mut mapping: Self = toml::from_str(&text).map_err(|e| format!("mapping {}: {e}", path.display()))?;
        if mapping.entity.is_empty() {
            return Err(format!("mapping {}: no [[entity]]", path.display()));
        }
        for e in &mapping.entity {
            if e.columns.is_empty() {
                return Err(format!("mapping {}: entity {} has no columns (the first is the key)", path.display(), e.name));
            }
        }
        // A team's own tables: unqualified means `public`, whatever schema the harness's use.
        for e in &mut mapping.entity {
            if !e.source_table.contains('.') {
                e.source_table = format!("{}.{}", crate::orchestrator::PUBLIC_SCHEMA, e.source_table);
            }
        }
        Ok(mapping)
    }

    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.entity.iter().find(|e| e.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_mapping_covers_the_four_tables_keyed_by_uuid() {
        let m = Mapping::builtin();
        let names: Vec<&str> = m.entity.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["customer", "address", "orders", "order_item"]);
        for e in &m.entity {
            assert_eq!(e.key().name, "id");
            assert_eq!(e.key().ty, ColumnType::Uuid);
        }
        let item = m.entity("order_item").unwrap();
        assert_eq!(item.mongo.embedded_in.as_deref(), Some("items"));
        assert_eq!(item.mongo.parent_key.as_deref(), Some("order_id"));
        assert_eq!(item.mongo.field("id"), "id", "embedded items keep their id in `id`");
        for name in ["customer", "address", "orders"] {
            let e = m.entity(name).unwrap();
            assert_eq!(e.mongo.field("id"), "_id", "{name} documents are keyed by `_id`");
            assert_eq!(e.mongo.field("status"), "status");
        }
        // Every parent key names a column of its entity.
        for e in m.entity.iter().filter(|e| e.mongo.embedded_in.is_some()) {
            let parent = e.mongo.parent_key.as_deref().unwrap();
            assert!(e.columns.iter().any(|c| c.name == parent), "{}", e.name);
        }
    }

    #[test]
    fn a_mapping_of_ones_own_puts_unqualified_tables_in_public() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        let builtin = include_str!("../../mapping.toml");
        std::fs::write(&path, builtin.replacen("source_table = \"address\"", "source_table = \"crm.address\"", 1)).unwrap();
        let m = Mapping::load(&path).unwrap();
        assert_eq!(m.entity("customer").unwrap().source_table, "public.customer");
        assert_eq!(m.entity("address").unwrap().source_table, "crm.address");
        assert_eq!(Mapping::builtin().entity("customer").unwrap().source_table, "customer", "the builtin one follows the stack's schema");
    }
}
