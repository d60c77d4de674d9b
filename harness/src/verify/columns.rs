//! The columns a verification compares: the source's as its catalog has them when the
//! verification runs, not the mapping's as it was written. A column added mid-stream is
//! compared (found in the target under its own name, as the sink names it, or reported
//! absent there and compared against null); a type change compares by the new type (a
//! column widened to numeric compares `4.00` with `4` by value); a column the mapping lists
//! but the source dropped is reported and not compared.

use serde::{Deserialize, Serialize};

use super::canonical::ColumnType;
use super::mapping::{Column, Entity};

/// What the source's catalog says of a column the mapping did not describe as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnFinding {
    pub entity: String,
    pub column: String,
    pub change: ColumnChange,
    /// In words: the types, what is compared.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnChange {
    /// In the source, not in the mapping: compared.
    Added,
    /// In the mapping, not in the source any more: not compared.
    Dropped,
    /// The source's type is not the mapping's: compared by the source's.
    Retyped,
    /// In the source, not in the target: compared against null (every value the source
    /// holds in it is a difference).
    AbsentInTarget,
}

/// The name the sink stores an added source column under (sink/README.md, "Schema
/// changes"): names the sink or MongoDB reserve (`_cdc*`, `_id`, `items`, dotted, `$...`,
/// and the prefix itself) become `_source_<name>` with `%`, `.` and `$` percent-encoded.
/// Written here from the documented rule, not taken from the sink's code: the verifier
/// checks the sink, it does not share it.
pub fn stored_name(source: &str) -> Option<String> {
    const PREFIX: &str = "_source_";
    let reserved =
        source.starts_with("_cdc") || source == "_id" || source == "items" || source.contains('.') || source.starts_with('$') || source.starts_with(PREFIX);
    reserved.then(|| format!("{PREFIX}{}", source.replace('%', "%25").replace('.', "%2E").replace('$', "%24")))
}

/// The comparison type of a PostgreSQL type (`pg_type.typname`).
pub(crate) fn column_type(typname: &str) -> ColumnType {
    match typname {
        "uuid" => ColumnType::Uuid,
        "int2" | "int4" | "int8" | "oid" => ColumnType::Int,
        "numeric" | "float4" | "float8" | "money" => ColumnType::Numeric,
        "bool" => ColumnType::Bool,
        "timestamptz" | "timestamp" => ColumnType::Timestamptz,
        "json" | "jsonb" => ColumnType::Json,
        _ => ColumnType::Text,
    }
}

/// A source column as its catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceColumn {
    pub name: String,
    pub typname: String,
    /// As written: `numeric(10,2)`.
    pub declared: String,
}

/// `entity` with the columns the source has now (the mapping's that remain, in its order,
/// key first; then the added ones in the table's order), and what changed. `target`: the
/// target's column names where the target has a catalog (PostgreSQL); `None` (MongoDB) when
/// a missing field is simply null.
pub(crate) fn resolve(entity: &Entity, source: &[SourceColumn], target: Option<&[String]>) -> Result<(Entity, Vec<ColumnFinding>), String> {
    let key = &entity.key().name;
    if !source.iter().any(|c| &c.name == key) {
        return Err(if source.is_empty() {
            format!("the source table {} does not exist (entity {})", entity.source_table, entity.name)
        } else {
            format!("the source table {} has no key column {key} (entity {})", entity.source_table, entity.name)
        });
    }
    let finding = |column: &str, change, detail: String| ColumnFinding { entity: entity.name.clone(), column: column.to_string(), change, detail };
    let mut findings = Vec::new();
    let mut columns = Vec::new();
    for mapped in &entity.columns {
        match source.iter().find(|c| c.name == mapped.name) {
            Some(s) => {
                let ty = column_type(&s.typname);
                // The key keeps the mapping's type: both sides' keys are spelled by it.
                if ty != mapped.ty && &mapped.name != key {
                    findings.push(finding(
                        &mapped.name,
                        ColumnChange::Retyped,
                        format!("mapped as {:?}, the source has {}: compared as {ty:?}", mapped.ty, s.declared),
                    ));
                    columns.push(Column { name: mapped.name.clone(), ty, absent_in_target: false, target_name: None });
                } else {
                    columns.push(Column { absent_in_target: false, ..mapped.clone() });
                }
            }
            None => findings.push(finding(&mapped.name, ColumnChange::Dropped, "in the mapping, no longer in the source: not compared".into())),
        }
    }
    let mut resolved = entity.clone();
    for s in source.iter().filter(|s| !entity.columns.iter().any(|m| m.name == s.name)) {
        let ty = column_type(&s.typname);
        let stored = stored_name(&s.name);
        let under = stored.as_ref().map(|n| format!(", stored as {n}")).unwrap_or_default();
        findings.push(finding(&s.name, ColumnChange::Added, format!("{} in the source, not in the mapping: compared as {ty:?}{under}", s.declared)));
        if let Some(n) = &stored {
            resolved.mongo.fields.insert(s.name.clone(), n.clone());
        }
        columns.push(Column { name: s.name.clone(), ty, absent_in_target: false, target_name: stored });
    }
    if let Some(target) = target.filter(|t| !t.is_empty()) {
        for c in columns.iter_mut().filter(|c| !target.iter().any(|t| t == c.target())) {
            c.absent_in_target = true;
            findings.push(finding(&c.name, ColumnChange::AbsentInTarget, format!("not in {}: compared against null", entity.postgres.table)));
        }
    }
    resolved.columns = columns;
    Ok((resolved, findings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::mapping::Mapping;

    fn col(name: &str, typname: &str, declared: &str) -> SourceColumn {
        SourceColumn { name: name.into(), typname: typname.into(), declared: declared.into() }
    }

    fn order_item_source() -> Vec<SourceColumn> {
        vec![
            col("id", "uuid", "uuid"),
            col("order_id", "uuid", "uuid"),
            col("product_sku", "text", "text"),
            col("product_name", "text", "text"),
            col("quantity", "int4", "integer"),
            col("unit_price", "numeric", "numeric(12,2)"),
            col("line_total", "numeric", "numeric(12,2)"),
        ]
    }

    #[test]
    fn an_unchanged_source_compares_as_mapped() {
        let m = Mapping::builtin();
        let entity = m.entity("order_item").unwrap();
        let (resolved, findings) = resolve(entity, &order_item_source(), None).unwrap();
        assert!(findings.is_empty(), "{findings:?}");
        let names: Vec<&str> = resolved.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "order_id", "product_sku", "product_name", "quantity", "unit_price", "line_total"]);
    }

    #[test]
    fn added_retyped_and_dropped_columns_follow_the_source() {
        let m = Mapping::builtin();
        let entity = m.entity("order_item").unwrap();
        let mut source = order_item_source();
        source.retain(|c| c.name != "product_name");
        source[3] = col("quantity", "numeric", "numeric(10,2)");
        source.push(col("notes", "text", "text"));
        let target: Vec<String> = ["id", "order_id", "product_sku", "product_name", "quantity", "unit_price", "line_total"].map(String::from).to_vec();
        let (resolved, findings) = resolve(entity, &source, Some(&target)).unwrap();
        let names: Vec<&str> = resolved.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "order_id", "product_sku", "quantity", "unit_price", "line_total", "notes"], "the dropped column is not compared");
        let quantity = resolved.columns.iter().find(|c| c.name == "quantity").unwrap();
        assert_eq!(quantity.ty, ColumnType::Numeric, "compared by the source's current type");
        let notes = resolved.columns.iter().find(|c| c.name == "notes").unwrap();
        assert!(notes.absent_in_target);
        let changes: Vec<(&str, ColumnChange)> = findings.iter().map(|f| (f.column.as_str(), f.change)).collect();
        assert_eq!(
            changes,
            [
                ("product_name", ColumnChange::Dropped),
                ("quantity", ColumnChange::Retyped),
                ("notes", ColumnChange::Added),
                ("notes", ColumnChange::AbsentInTarget)
            ]
        );
    }

    #[test]
    fn added_columns_with_reserved_names_are_found_under_the_sinks_documented_name() {
        assert_eq!(stored_name("notes"), None);
        assert_eq!(stored_name("_cdc_lsn").as_deref(), Some("_source__cdc_lsn"));
        assert_eq!(stored_name("a.b").as_deref(), Some("_source_a%2Eb"));
        let m = Mapping::builtin();
        let entity = m.entity("order_item").unwrap();
        let mut source = order_item_source();
        source.push(col("_cdc_lsn", "text", "text"));
        let mut target: Vec<String> = source.iter().map(|c| c.name.clone()).filter(|n| n != "_cdc_lsn").collect();
        target.push("_cdc_lsn".into()); // the sink's own metadata column, not the source's
        target.push("_source__cdc_lsn".into());
        let (resolved, findings) = resolve(entity, &source, Some(&target)).unwrap();
        let added = resolved.columns.iter().find(|c| c.name == "_cdc_lsn").unwrap();
        assert_eq!((added.target(), added.absent_in_target), ("_source__cdc_lsn", false));
        assert_eq!(resolved.mongo.field("_cdc_lsn"), "_source__cdc_lsn");
        assert!(findings.iter().all(|f| f.change != ColumnChange::AbsentInTarget), "{findings:?}");
    }

    #[test]
    fn a_missing_table_or_key_is_an_error_naming_it() {
        let m = Mapping::builtin();
        let entity = m.entity("customer").unwrap();
        assert!(resolve(entity, &[], None).unwrap_err().contains("does not exist"));
        assert!(resolve(entity, &[col("email", "text", "text")], None).unwrap_err().contains("no key column id"));
    }

    #[test]
    fn types_map_to_their_comparison() {
        assert_eq!(column_type("int8"), ColumnType::Int);
        assert_eq!(column_type("numeric"), ColumnType::Numeric);
        assert_eq!(column_type("jsonb"), ColumnType::Json);
        assert_eq!(column_type("timestamp"), ColumnType::Timestamptz);
        assert_eq!(column_type("varchar"), ColumnType::Text);
    }
}
