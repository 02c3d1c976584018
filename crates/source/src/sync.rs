//! `ferry mappings sync` and `ferry mappings check --against`: the parts of a mapping the source
//! decides (primary keys, and hints for the types parquet blurs), read from `information_schema`
//! and compared with what the mapping says.
//!
//! The source decides two things and nothing else: a table's `primary_key` (replica mode) and
//! its `columns` hints. A hint is kept as the analyst spelled it when it means what the source
//! says (`"boolean"` for a `tinyint(1)` stays); descriptions, modes, targets, partitioning and
//! everything else in the file are left as they are. Writing keeps the file's member order.

use std::fmt::Write as _;

use ferry_core::mapping::{ColumnHint, Mode, Source};
use serde::Serialize;

use crate::catalog::SourceTable;

/// One disagreement between a mapping and its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `schema.table`.
    pub table: String,
    /// The column, for hints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// `missing_hint`, `wrong_hint`, `stale_hint` (the column does not exist or needs none),
    /// `primary_key`, `missing_table`, `lob` (informational: cut at the task's LobMaxSize).
    pub kind: &'static str,
    /// What the mapping says.
    pub mapping: Option<String>,
    /// What the source says.
    pub source: Option<String>,
}

impl Finding {
    /// Whether `mappings check --against` fails on it (LOB notes do not).
    pub fn is_problem(&self) -> bool {
        self.kind != "lob"
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let col = self.column.as_deref().unwrap_or_default();
        let m = self.mapping.as_deref().unwrap_or("nothing");
        let s = self.source.as_deref().unwrap_or("nothing");
        match self.kind {
            "missing_hint" => format!(
                "{}: column {col} is {s} in the source but has no hint: add \"{col}\": \"{s}\"",
                self.table
            ),
            "wrong_hint" => format!(
                "{}: column {col} is hinted {m} but the source says {s}",
                self.table
            ),
            "stale_hint" => format!(
                "{}: hint {m} on column {col}, which is {s} in the source: remove it",
                self.table
            ),
            "primary_key" => format!(
                "{}: primary key is {m} in the mapping, {s} in the source",
                self.table
            ),
            "missing_table" => format!("{}: the table does not exist in the source", self.table),
            _ => format!(
                "{}: column {col} ({s}) is a DMS LOB: values longer than the task's LobMaxSize are cut",
                self.table
            ),
        }
    }
}

/// What the source says about a mapping file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Disagreements, table by table.
    pub findings: Vec<Finding>,
    /// Tables of the mapped schemas that the mapping does not name.
    pub unmapped: Vec<String>,
}

/// The hint a source column needs, or `None`.
fn wanted(c: &crate::catalog::SourceColumn) -> Option<(ColumnHint, String)> {
    let text = c.kind.hint()?;
    Some((ColumnHint::parse(&text).ok()?, text))
}

/// Compares `source`'s mapping with the source's tables.
pub fn compare(source: &Source, tables: &[SourceTable]) -> Report {
    let mut report = Report::default();
    for t in &source.tables {
        let name = t.source_table();
        let Some(st) = tables
            .iter()
            .find(|s| s.schema == t.schema && s.name == t.table)
        else {
            report.findings.push(Finding {
                table: name,
                column: None,
                kind: "missing_table",
                mapping: None,
                source: None,
            });
            continue;
        };
        if t.mode == Mode::Replica && t.primary_key != st.primary_key && !st.primary_key.is_empty()
        {
            report.findings.push(Finding {
                table: name.clone(),
                column: None,
                kind: "primary_key",
                mapping: Some(format!("[{}]", t.primary_key.join(", "))),
                source: Some(format!("[{}]", st.primary_key.join(", "))),
            });
        }
        for c in &st.columns {
            let have = t.hint(&c.name);
            match (wanted(c), have) {
                (Some((_, text)), None) => report.findings.push(Finding {
                    table: name.clone(),
                    column: Some(c.name.clone()),
                    kind: "missing_hint",
                    mapping: None,
                    source: Some(text),
                }),
                (Some((w2, text)), Some(h)) if w2 != h => {
                    report.findings.push(Finding {
                        table: name.clone(),
                        column: Some(c.name.clone()),
                        kind: "wrong_hint",
                        mapping: Some(h.to_string()),
                        source: Some(text),
                    });
                }
                (None, Some(h)) => report.findings.push(Finding {
                    table: name.clone(),
                    column: Some(c.name.clone()),
                    kind: "stale_hint",
                    mapping: Some(h.to_string()),
                    source: Some(c.column_type.clone()),
                }),
                _ => {}
            }
            if c.kind.is_lob() {
                report.findings.push(Finding {
                    table: name.clone(),
                    column: Some(c.name.clone()),
                    kind: "lob",
                    mapping: None,
                    source: Some(c.column_type.clone()),
                });
            }
        }
        for (col, h) in &t.columns {
            if st.column(col).is_none() {
                report.findings.push(Finding {
                    table: name.clone(),
                    column: Some(col.clone()),
                    kind: "stale_hint",
                    mapping: Some(h.to_string()),
                    source: Some("absent".into()),
                });
            }
        }
    }
    for st in tables {
        if source.table(&st.schema, &st.name).is_none() {
            report.unmapped.push(st.source_table());
        }
    }
    report
}

/// An ordered JSON value: object members keep the file's order.
#[derive(Debug, Clone, PartialEq)]
enum J {
    Scalar(serde_json::Value),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl<'de> serde::Deserialize<'de> for J {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<J, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = J;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<J, E> {
                Ok(J::Scalar(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<J, E> {
                Ok(J::Scalar(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<J, E> {
                Ok(J::Scalar(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<J, E> {
                Ok(J::Scalar(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<J, E> {
                Ok(J::Scalar(v.into()))
            }
            fn visit_unit<E>(self) -> Result<J, E> {
                Ok(J::Scalar(serde_json::Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<J, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(J::Arr(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<J, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = a.next_entry()? {
                    v.push((k, x));
                }
                Ok(J::Obj(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl J {
    fn get_mut(&mut self, key: &str) -> Option<&mut J> {
        match self {
            J::Obj(m) => m.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key`, in place when present, else after `after` (or at the end).
    fn set(&mut self, key: &str, value: J, after: &[&str]) {
        let J::Obj(m) = self else { return };
        if let Some(slot) = m.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
            return;
        }
        let at = after
            .iter()
            .filter_map(|a| m.iter().position(|(k, _)| k == a))
            .max()
            .map_or(m.len(), |i| i + 1);
        m.insert(at, (key.to_owned(), value));
    }

    fn remove(&mut self, key: &str) {
        if let J::Obj(m) = self {
            m.retain(|(k, _)| k != key);
        }
    }

    fn inline(&self) -> Option<String> {
        match self {
            J::Scalar(v) => Some(v.to_string()),
            J::Arr(a) => {
                let parts: Option<Vec<String>> = a
                    .iter()
                    .map(|x| matches!(x, J::Scalar(_)).then(|| x.inline()).flatten())
                    .collect();
                Some(format!("[{}]", parts?.join(", ")))
            }
            J::Obj(m) if m.is_empty() => Some("{}".into()),
            J::Obj(m) => {
                let parts: Option<Vec<String>> = m
                    .iter()
                    .map(|(k, x)| match x {
                        J::Scalar(v) => {
                            Some(format!("{}: {v}", serde_json::Value::from(k.as_str())))
                        }
                        _ => None,
                    })
                    .collect();
                Some(format!("{{{}}}", parts?.join(", ")))
            }
        }
    }

    /// Two-space JSON; arrays and objects of scalars stay on one line when it is short.
    fn write(&self, out: &mut String, indent: usize, used: usize) {
        if let Some(line) = self.inline()
            && (matches!(self, J::Scalar(_)) || indent + used + line.len() <= 100)
        {
            out.push_str(&line);
            return;
        }
        let pad = "  ".repeat(indent + 1);
        match self {
            J::Arr(a) => {
                out.push_str("[\n");
                for (i, x) in a.iter().enumerate() {
                    out.push_str(&pad);
                    x.write(out, indent + 1, 0);
                    out.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
                }
                let _ = write!(out, "{}]", "  ".repeat(indent));
            }
            J::Obj(m) => {
                out.push_str("{\n");
                for (i, (k, x)) in m.iter().enumerate() {
                    let key = serde_json::Value::from(k.as_str()).to_string();
                    let _ = write!(out, "{pad}{key}: ");
                    x.write(out, indent + 1, key.len() + 2);
                    out.push_str(if i + 1 < m.len() { ",\n" } else { "\n" });
                }
                let _ = write!(out, "{}}}", "  ".repeat(indent));
            }
            J::Scalar(_) => {}
        }
    }
}

/// The mapping file's text with what the source decides written in: primary keys of replica
/// tables, and every hint (missing ones added, contradicting ones replaced, stale ones removed).
/// Tables the mapping does not name are not added (they are listed in the report instead).
pub fn rewrite(text: &str, source: &Source, tables: &[SourceTable]) -> Result<String, String> {
    let mut doc: J = serde_json::from_str(text).map_err(|e| format!("{}: {e}", source.file))?;
    let Some(entries) = doc.get_mut("tables") else {
        return Ok(text.to_owned());
    };
    for t in &source.tables {
        let Some(st) = tables
            .iter()
            .find(|s| s.schema == t.schema && s.name == t.table)
        else {
            continue;
        };
        let Some(entry) = entries.get_mut(&t.source_table()) else {
            continue;
        };
        if t.mode == Mode::Replica && !st.primary_key.is_empty() && t.primary_key != st.primary_key
        {
            let key = J::Arr(
                st.primary_key
                    .iter()
                    .map(|k| J::Scalar(k.as_str().into()))
                    .collect(),
            );
            entry.set("primary_key", key, &["target", "mode"]);
        }
        let old: Vec<(String, J)> = match entry.get_mut("columns") {
            Some(J::Obj(m)) => m.clone(),
            _ => Vec::new(),
        };
        let mut columns: Vec<(String, J)> = Vec::new();
        // Existing hints first, in the file's order, kept where the source agrees.
        for (name, value) in &old {
            let Some(c) = st.column(name) else { continue };
            let Some((want, text)) = wanted(c) else {
                continue;
            };
            let keep = match value {
                J::Scalar(serde_json::Value::String(s)) => {
                    ColumnHint::parse(s).is_ok_and(|h| h == want)
                }
                _ => false,
            };
            columns.push((
                name.clone(),
                if keep {
                    value.clone()
                } else {
                    J::Scalar(text.into())
                },
            ));
        }
        for c in &st.columns {
            if let Some((_, text)) = wanted(c)
                && !columns.iter().any(|(n, _)| *n == c.name)
            {
                columns.push((c.name.clone(), J::Scalar(text.into())));
            }
        }
        if columns.is_empty() {
            entry.remove("columns");
        } else {
            entry.set(
                "columns",
                J::Obj(columns),
                &[
                    "primary_key",
                    "partition_by",
                    "partition_granularity",
                    "cluster_by",
                    "soft_delete",
                    "enabled",
                ],
            );
        }
    }
    let mut out = String::new();
    doc.write(&mut out, 0, 0);
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_json_keeps_member_order() {
        let text = r#"{"b": 1, "a": {"z": [1, 2], "y": "x"}, "c": [{"k": null}]}"#;
        let j: J = serde_json::from_str(text).unwrap();
        let mut out = String::new();
        j.write(&mut out, 0, 0);
        assert_eq!(
            out,
            "{\n  \"b\": 1,\n  \"a\": {\n    \"z\": [1, 2],\n    \"y\": \"x\"\n  },\n  \"c\": [\n    {\"k\": null}\n  ]\n}"
        );
    }
}
