//! The rules real BigQuery applies to the requests ferry makes, each next to the page that
//! documents it, for the strict test server ([`crate::bqserver`]). A rule is a pure function:
//! given the request (and the catalogue of tables the server has created), it passes or it
//! returns the [`Refusal`] BigQuery answers with: HTTP status, reason and message.
//!
//! Google's pages are under cloud.google.com/bigquery/docs/ and named here by title; the request
//! fields come from the BigQuery v2 discovery document (PyPI google-api-python-client,
//! `googleapiclient/discovery_cache/documents/bigquery.v2.json`). Messages are BigQuery's where
//! its public issues quote them, otherwise written in its style and marked "(wording ours)".
//!
//! What cannot be modelled without BigQuery's engine is not pretended: snapshot isolation is
//! modelled as the overlap of mutating statements on one table (see [`DmlTracker`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parquet::basic::{ConvertedType, LogicalType, Type as Physical};
use parquet::file::reader::{FileReader, SerializedFileReader};

/// A refused request: what BigQuery answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// `errors[].reason`.
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

fn refuse(status: u16, reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason,
        message: message.into(),
    }
}

/// A column the server knows: name, type (upper case, as in DDL), REQUIRED or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// GoogleSQL type name.
    pub ty: String,
    /// NOT NULL.
    pub required: bool,
}

/// A table the server has created from DDL.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Columns in table order.
    pub columns: Vec<Column>,
    /// The `PARTITION BY` expression, if any.
    pub partition: Option<String>,
    /// The `CLUSTER BY` columns.
    pub cluster: Vec<String>,
    /// When its metadata was last updated (DDL), for the rate limit.
    pub updates: VecDeque<Instant>,
}

impl Table {
    /// The column named `name` (case-insensitive, as BigQuery matches column names).
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// `QueryRequest.requestId`: "at most 36 ASCII characters" (discovery document, QueryRequest);
/// the official clients send a UUID. Longer ids are refused (wording ours).
pub fn request_id(id: Option<&str>) -> Result<(), Refusal> {
    match id {
        Some(id) if id.len() > 36 || !id.is_ascii() => Err(refuse(
            400,
            "invalid",
            format!(
                "Invalid value for requestId: {id:?} must be at most 36 ASCII characters (wording ours)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Job labels ("Adding labels to resources", Requirements): at most 64; keys and values at most
/// 63 characters of lower-case letters, digits, underscores and dashes; keys start with a
/// lower-case letter and are not empty. Refused labels fail the request (wording ours).
pub fn labels(labels: Option<&serde_json::Value>) -> Result<(), Refusal> {
    let Some(map) = labels.and_then(serde_json::Value::as_object) else {
        return Ok(());
    };
    let bad = |what: String| {
        Err(refuse(
            400,
            "invalid",
            format!("Invalid label: {what} (wording ours)"),
        ))
    };
    if map.len() > 64 {
        return bad(format!("{} labels, more than 64", map.len()));
    }
    let allowed = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    for (k, v) in map {
        let v = v.as_str().unwrap_or("\u{0}not a string");
        if k.is_empty()
            || k.len() > 63
            || !allowed(k)
            || !k.starts_with(|c: char| c.is_ascii_lowercase())
        {
            return bad(format!("key {k:?}"));
        }
        if v.len() > 63 || !allowed(v) {
            return bad(format!("value {v:?} of {k}"));
        }
    }
    Ok(())
}

/// `jobs.get` / `getQueryResults`: "The geographic location of the job. Required except for US
/// and EU" (discovery document, `location` parameter). Without it a job elsewhere is not found.
pub fn job_location(
    job_location: Option<&str>,
    asked: Option<&str>,
    job: &str,
) -> Result<(), Refusal> {
    let multi = |l: &str| l.eq_ignore_ascii_case("US") || l.eq_ignore_ascii_case("EU");
    match (job_location, asked) {
        (Some(l), None) if !multi(l) => {
            Err(refuse(404, "notFound", format!("Not found: Job {job}")))
        }
        (Some(l), Some(a)) if !l.eq_ignore_ascii_case(a) => {
            Err(refuse(404, "notFound", format!("Not found: Job {job}")))
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// DDL ("Creating partitioned tables", "Creating clustered tables", DDL reference)
// ---------------------------------------------------------------------------------------------

/// Column name prefixes BigQuery reserves (page "Schemas", "Column names": "_TABLE_", "_FILE_",
/// "_PARTITION", "_ROW_TIMESTAMP", "__ROOT__", "_COLIDENTIFIER", and for CDC
/// "_CHANGE_SEQUENCE_NUMBER", "_CHANGE_TYPE", "_CHANGE_TIMESTAMP").
pub const RESERVED_PREFIXES: &[&str] = &[
    "_TABLE_",
    "_FILE_",
    "_PARTITION",
    "_ROW_TIMESTAMP",
    "__ROOT__",
    "_COLIDENTIFIER",
    "_CHANGE_SEQUENCE_NUMBER",
    "_CHANGE_TYPE",
    "_CHANGE_TIMESTAMP",
];

/// GoogleSQL's reserved keywords ("Lexical structure and syntax", Reserved keywords).
pub const RESERVED_KEYWORDS: &[&str] = &[
    "ALL",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "ASC",
    "ASSERT_ROWS_MODIFIED",
    "AT",
    "BETWEEN",
    "BY",
    "CASE",
    "CAST",
    "COLLATE",
    "CONTAINS",
    "CREATE",
    "CROSS",
    "CUBE",
    "CURRENT",
    "DEFAULT",
    "DEFINE",
    "DESC",
    "DISTINCT",
    "ELSE",
    "END",
    "ENUM",
    "ESCAPE",
    "EXCEPT",
    "EXCLUDE",
    "EXISTS",
    "EXTRACT",
    "FALSE",
    "FETCH",
    "FOLLOWING",
    "FOR",
    "FROM",
    "FULL",
    "GROUP",
    "GROUPING",
    "GROUPS",
    "HASH",
    "HAVING",
    "IF",
    "IGNORE",
    "IN",
    "INNER",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "JOIN",
    "LATERAL",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOOKUP",
    "MERGE",
    "NATURAL",
    "NEW",
    "NO",
    "NOT",
    "NULL",
    "NULLS",
    "OF",
    "ON",
    "OR",
    "ORDER",
    "OUTER",
    "OVER",
    "PARTITION",
    "PRECEDING",
    "PROTO",
    "QUALIFY",
    "RANGE",
    "RECURSIVE",
    "RESPECT",
    "RIGHT",
    "ROLLUP",
    "ROWS",
    "SELECT",
    "SET",
    "SOME",
    "STRUCT",
    "TABLESAMPLE",
    "THEN",
    "TO",
    "TREAT",
    "TRUE",
    "UNBOUNDED",
    "UNION",
    "UNNEST",
    "USING",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "WITHIN",
];

/// Column types ferry may write, as DDL names them.
const TYPES: &[&str] = &[
    "BOOL",
    "INT64",
    "FLOAT64",
    "NUMERIC",
    "BIGNUMERIC",
    "STRING",
    "BYTES",
    "DATE",
    "DATETIME",
    "TIME",
    "TIMESTAMP",
    "JSON",
];

/// Types BigQuery clusters by (page "Creating clustered tables": "top-level, non-repeated
/// columns" of DATE, BOOL, GEOGRAPHY, INT64, NUMERIC, BIGNUMERIC, STRING, TIMESTAMP, DATETIME).
const CLUSTERABLE: &[&str] = &[
    "DATE",
    "BOOL",
    "INT64",
    "NUMERIC",
    "BIGNUMERIC",
    "STRING",
    "TIMESTAMP",
    "DATETIME",
];

/// A statement split into tokens: identifiers (backticks removed), words, strings, symbols.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Word(String),
    Str,
    Sym(char),
}

fn tokens(sql: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '`' => {
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => s.extend(chars.next()),
                        '`' => break,
                        c => s.push(c),
                    }
                }
                out.push(Tok::Ident(s));
            }
            '\'' | '"' => {
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => {
                            chars.next();
                        }
                        d if d == c => break,
                        _ => {}
                    }
                }
                out.push(Tok::Str);
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut s = String::from(c);
                while let Some(&d) = chars.peek() {
                    if d.is_alphanumeric() || d == '_' {
                        s.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Word(s));
            }
            c => out.push(Tok::Sym(c)),
        }
    }
    out
}

fn word(t: Option<&Tok>, w: &str) -> bool {
    matches!(t, Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
}

fn name_of(t: Option<&Tok>) -> Option<String> {
    match t {
        Some(Tok::Ident(s) | Tok::Word(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Reads a dotted path of identifiers from `toks[*i]`: `a.b.c` or `` `a`.`b`.`c` ``.
fn path(toks: &[Tok], i: &mut usize) -> Option<String> {
    let mut parts = vec![name_of(toks.get(*i))?];
    *i += 1;
    while toks.get(*i) == Some(&Tok::Sym('.')) {
        parts.push(name_of(toks.get(*i + 1))?);
        *i += 2;
    }
    Some(parts.join("."))
}

/// The tokens up to the matching `)` of the `(` at `toks[*i]`, split at top-level commas.
fn parenthesised(toks: &[Tok], i: &mut usize) -> Option<Vec<Vec<Tok>>> {
    if toks.get(*i) != Some(&Tok::Sym('(')) {
        return None;
    }
    *i += 1;
    let (mut depth, mut items, mut cur) = (0, Vec::new(), Vec::new());
    while let Some(t) = toks.get(*i) {
        *i += 1;
        match t {
            Tok::Sym('(') => {
                depth += 1;
                cur.push(t.clone());
            }
            Tok::Sym(')') if depth == 0 => {
                if !cur.is_empty() {
                    items.push(cur);
                }
                return Some(items);
            }
            Tok::Sym(')') => {
                depth -= 1;
                cur.push(t.clone());
            }
            Tok::Sym(',') if depth == 0 => items.push(std::mem::take(&mut cur)),
            t => cur.push(t.clone()),
        }
    }
    None
}

fn syntax(message: impl Into<String>) -> Refusal {
    refuse(400, "invalidQuery", message)
}

/// A column definition: name, type, NOT NULL, OPTIONS(...). Reserved prefixes refused (page
/// "Schemas": "Invalid field name ... Field names starting with ... are reserved" (wording
/// ours past the first words)).
fn column_def(item: &[Tok]) -> Result<Column, Refusal> {
    // Reserved keywords are identifiers only when quoted ("Lexical structure and syntax",
    // Reserved keywords): `at TIMESTAMP` is a syntax error, `` `at` TIMESTAMP `` is not.
    if let Some(Tok::Word(w)) = item.first()
        && RESERVED_KEYWORDS.contains(&w.to_ascii_uppercase().as_str())
    {
        return Err(syntax(format!(
            "Syntax error: Unexpected keyword {}",
            w.to_ascii_uppercase()
        )));
    }
    let name =
        name_of(item.first()).ok_or_else(|| syntax("Syntax error: expected a column name"))?;
    let upper = name.to_ascii_uppercase();
    if let Some(p) = RESERVED_PREFIXES.iter().find(|p| upper.starts_with(*p)) {
        return Err(refuse(
            400,
            "invalid",
            format!("Invalid field name \"{name}\". Field names starting with {p} are reserved."),
        ));
    }
    let ty = match item.get(1) {
        Some(Tok::Word(t)) if TYPES.contains(&t.to_ascii_uppercase().as_str()) => {
            t.to_ascii_uppercase()
        }
        Some(Tok::Word(t)) => return Err(syntax(format!("Type not found: {t}"))),
        _ => {
            return Err(syntax(format!(
                "Syntax error: expected a type for column {name}"
            )));
        }
    };
    let required = word(item.get(2), "NOT") && word(item.get(3), "NULL");
    Ok(Column { name, ty, required })
}

/// `PARTITION BY` grammar and types (page "Creating partitioned tables"; DDL reference,
/// `partition_expression`): `_PARTITIONDATE`, `DATE(ts_or_dt)`, a DATE column,
/// `DATE_TRUNC(date, MONTH|YEAR)`, `TIMESTAMP_TRUNC(ts, DAY|HOUR|MONTH|YEAR)`,
/// `DATETIME_TRUNC(dt, DAY|HOUR|MONTH|YEAR)`, `RANGE_BUCKET(int, GENERATE_ARRAY(...))`.
fn partition(expr: &[Tok], columns: &[Column]) -> Result<String, Refusal> {
    let type_of = |t: Option<&Tok>| {
        let n = name_of(t)?;
        columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&n))
            .map(|c| (n, c.ty.clone()))
    };
    let bad = |what: String| {
        syntax(format!(
            "PARTITION BY expression must be _PARTITIONDATE, DATE(_PARTITIONTIME), DATE(<timestamp_column>), DATE(<datetime_column>), DATETIME_TRUNC(<datetime_column>, DAY/HOUR/MONTH/YEAR), a DATE column, TIMESTAMP_TRUNC(<timestamp_column>, DAY/HOUR/MONTH/YEAR), DATE_TRUNC(<date_column>, MONTH/YEAR), or RANGE_BUCKET(<int64_column>, GENERATE_ARRAY(<int64_value>, <int64_value>[, <int64_value>])); got {what}"
        ))
    };
    let text = render(expr);
    match expr {
        [t] if word(Some(t), "_PARTITIONDATE") => Ok(text),
        [t] => match type_of(Some(t)) {
            Some((_, ty)) if ty == "DATE" => Ok(text),
            _ => Err(bad(text)),
        },
        [Tok::Word(f), Tok::Sym('('), arg, Tok::Sym(')')] if f.eq_ignore_ascii_case("DATE") => {
            match type_of(Some(arg)) {
                Some((_, ty)) if ty == "TIMESTAMP" || ty == "DATETIME" => Ok(text),
                _ => Err(bad(text)),
            }
        }
        [
            Tok::Word(f),
            Tok::Sym('('),
            arg,
            Tok::Sym(','),
            Tok::Word(g),
            Tok::Sym(')'),
        ] => {
            let f = f.to_ascii_uppercase();
            let g = g.to_ascii_uppercase();
            let ty = type_of(Some(arg)).map(|(_, t)| t);
            let ok = match (f.as_str(), ty.as_deref()) {
                ("DATE_TRUNC", Some("DATE")) => matches!(g.as_str(), "MONTH" | "YEAR"),
                ("TIMESTAMP_TRUNC", Some("TIMESTAMP")) | ("DATETIME_TRUNC", Some("DATETIME")) => {
                    matches!(g.as_str(), "DAY" | "HOUR" | "MONTH" | "YEAR")
                }
                _ => false,
            };
            if ok { Ok(text) } else { Err(bad(text)) }
        }
        _ => Err(bad(text)),
    }
}

fn render(toks: &[Tok]) -> String {
    toks.iter()
        .map(|t| match t {
            Tok::Ident(s) | Tok::Word(s) => s.clone(),
            Tok::Str => "'…'".into(),
            Tok::Sym(c) => c.to_string(),
        })
        .collect::<Vec<_>>()
        .join("")
}

/// `CLUSTER BY`: at most 4 top-level columns of clusterable types (page "Creating clustered
/// tables": "You can specify up to four clustering columns"; "Clustering is not supported for
/// BYTES, FLOAT64, TIME, JSON" (wording ours)).
fn cluster(items: &[Vec<Tok>], columns: &[Column]) -> Result<Vec<String>, Refusal> {
    if items.len() > 4 {
        return Err(refuse(
            400,
            "invalidQuery",
            format!("Too many clustering columns: {}, limit is 4", items.len()),
        ));
    }
    let mut out = Vec::new();
    for item in items {
        let name = match item.as_slice() {
            [t] => name_of(Some(t)),
            _ => None,
        }
        .ok_or_else(|| syntax("CLUSTER BY takes column names"))?;
        let col = columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&name))
            .ok_or_else(|| syntax(format!("Unrecognized name: {name}")))?;
        if !CLUSTERABLE.contains(&col.ty.as_str()) {
            return Err(refuse(
                400,
                "invalidQuery",
                format!(
                    "Clustering is not supported on field {name} of type {}; clustering columns must be of type DATE, BOOL, GEOGRAPHY, INT64, NUMERIC, BIGNUMERIC, STRING, TIMESTAMP or DATETIME (wording ours)",
                    col.ty
                ),
            ));
        }
        out.push(name);
    }
    Ok(out)
}

/// `CREATE [OR REPLACE] VIEW [IF NOT EXISTS] path [OPTIONS(...)] AS query` (DDL reference,
/// "CREATE VIEW statement"): `OR REPLACE` and `IF NOT EXISTS` exclude each other ("Cannot
/// appear with IF NOT EXISTS"); the options are the `view_option_list` ones (description,
/// expiration_timestamp, friendly_name, labels, privacy_policy, tags); the body is a query.
/// `None`: not a CREATE VIEW. The query itself is left to the engine. Messages: wording ours.
pub fn view(sql: &str) -> Option<Result<String, Refusal>> {
    let toks = tokens(sql);
    if !word(toks.first(), "CREATE") {
        return None;
    }
    let mut i = 1;
    let replace = word(toks.get(1), "OR") && word(toks.get(2), "REPLACE");
    if replace {
        i = 3;
    }
    if !word(toks.get(i), "VIEW") {
        return None;
    }
    i += 1;
    Some((|| {
        if word(toks.get(i), "IF") {
            if replace {
                return Err(syntax(
                    "Syntax error: CREATE OR REPLACE VIEW cannot be combined with IF NOT EXISTS",
                ));
            }
            i += 3;
        }
        let name =
            path(&toks, &mut i).ok_or_else(|| syntax("Syntax error: expected a view name"))?;
        if word(toks.get(i), "OPTIONS") {
            i += 1;
            let items =
                parenthesised(&toks, &mut i).ok_or_else(|| syntax("Syntax error: OPTIONS"))?;
            const VIEW_OPTIONS: [&str; 6] = [
                "description",
                "expiration_timestamp",
                "friendly_name",
                "labels",
                "privacy_policy",
                "tags",
            ];
            for item in items {
                let option = name_of(item.first()).unwrap_or_default();
                if !VIEW_OPTIONS.iter().any(|o| o.eq_ignore_ascii_case(&option)) {
                    return Err(syntax(format!("Unknown option for CREATE VIEW: {option}")));
                }
            }
        }
        if !word(toks.get(i), "AS") {
            return Err(syntax(
                "Syntax error: expected AS followed by the view's query",
            ));
        }
        if !(word(toks.get(i + 1), "SELECT")
            || word(toks.get(i + 1), "WITH")
            || toks.get(i + 1) == Some(&Tok::Sym('(')))
        {
            return Err(syntax("Syntax error: a view's body is a query"));
        }
        Ok(name)
    })())
}

/// What a DDL statement does to the catalogue, once its rules passed.
#[derive(Debug, Clone)]
pub enum Ddl {
    /// `CREATE TABLE [IF NOT EXISTS] path (...)`.
    Create {
        /// `project.dataset.table`.
        table: String,
        /// The new table.
        definition: Table,
        /// IF NOT EXISTS.
        if_not_exists: bool,
    },
    /// `ALTER TABLE path ADD COLUMN [IF NOT EXISTS] c T, ...`.
    AddColumns {
        /// `project.dataset.table`.
        table: String,
        /// The columns, each with its IF NOT EXISTS.
        columns: Vec<(Column, bool)>,
    },
}

/// Parses and checks a DDL statement (`None`: not DDL ferry writes: left to the engine).
pub fn ddl(sql: &str) -> Option<Result<Ddl, Refusal>> {
    let toks = tokens(sql);
    if word(toks.first(), "CREATE") && word(toks.get(1), "TABLE") {
        // `IF NOT EXISTS` is three words.
        let if_not_exists = word(toks.get(2), "IF");
        let start = if if_not_exists { 5 } else { 2 };
        return Some(create(&toks, start, if_not_exists));
    }
    if word(toks.first(), "ALTER") && word(toks.get(1), "TABLE") {
        return Some(alter(&toks, &mut 2));
    }
    None
}

fn create(toks: &[Tok], mut i: usize, if_not_exists: bool) -> Result<Ddl, Refusal> {
    let table = path(toks, &mut i).ok_or_else(|| syntax("Syntax error: expected a table name"))?;
    let items = parenthesised(toks, &mut i)
        .ok_or_else(|| syntax("Syntax error: expected a column list"))?;
    let columns = items
        .iter()
        .map(|c| column_def(c))
        .collect::<Result<Vec<_>, _>>()?;
    for (n, c) in columns.iter().enumerate() {
        if columns[..n]
            .iter()
            .any(|d| d.name.eq_ignore_ascii_case(&c.name))
        {
            return Err(syntax(format!("Duplicate column name {}", c.name)));
        }
    }
    let mut definition = Table {
        columns,
        ..Table::default()
    };
    while i < toks.len() {
        if word(toks.get(i), "PARTITION") && word(toks.get(i + 1), "BY") {
            i += 2;
            let start = i;
            let mut depth = 0;
            while let Some(t) = toks.get(i) {
                match t {
                    Tok::Sym('(') => depth += 1,
                    Tok::Sym(')') => depth -= 1,
                    _ => {}
                }
                if depth == 0 && (word(Some(t), "CLUSTER") || word(Some(t), "OPTIONS")) {
                    break;
                }
                i += 1;
            }
            definition.partition = Some(partition(&toks[start..i], &definition.columns)?);
        } else if word(toks.get(i), "CLUSTER") && word(toks.get(i + 1), "BY") {
            i += 2;
            let start = i;
            while i < toks.len() && !word(toks.get(i), "OPTIONS") && !word(toks.get(i), "PARTITION")
            {
                i += 1;
            }
            let items: Vec<Vec<Tok>> = toks[start..i]
                .split(|t| *t == Tok::Sym(','))
                .map(<[Tok]>::to_vec)
                .collect();
            definition.cluster = cluster(&items, &definition.columns)?;
        } else if word(toks.get(i), "OPTIONS") {
            i += 1;
            parenthesised(toks, &mut i).ok_or_else(|| syntax("Syntax error: OPTIONS"))?;
        } else {
            return Err(syntax(format!("Syntax error: unexpected {:?}", toks[i])));
        }
    }
    Ok(Ddl::Create {
        table,
        definition,
        if_not_exists,
    })
}

fn alter(toks: &[Tok], i: &mut usize) -> Result<Ddl, Refusal> {
    let table = path(toks, i).ok_or_else(|| syntax("Syntax error: expected a table name"))?;
    let mut columns = Vec::new();
    for clause in toks[*i..].split(|t| *t == Tok::Sym(',')) {
        if !(word(clause.first(), "ADD") && word(clause.get(1), "COLUMN")) {
            return Err(syntax(
                "Syntax error: this server knows ALTER TABLE ... ADD COLUMN only",
            ));
        }
        let (rest, ine) = if word(clause.get(2), "IF") {
            (&clause[5..], true)
        } else {
            (&clause[2..], false)
        };
        columns.push((column_def(rest)?, ine));
    }
    Ok(Ddl::AddColumns { table, columns })
}

/// Table metadata updates: "Maximum rate of table metadata update operations per table: 5
/// operations per 10 seconds" (page "Quotas and limits", Tables); each DDL statement on a table
/// is one. Beyond: HTTP 403 `rateLimitExceeded` (message as quoted in BigQuery's troubleshooting
/// page "Troubleshoot quota and limit errors").
pub fn metadata_update(table: &mut Table, name: &str, now: Instant) -> Result<(), Refusal> {
    while table
        .updates
        .front()
        .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(10))
    {
        table.updates.pop_front();
    }
    if table.updates.len() >= 5 {
        return Err(refuse(
            403,
            "rateLimitExceeded",
            format!(
                "Exceeded rate limits: too many table update operations for this table. Table: {name}"
            ),
        ));
    }
    table.updates.push_back(now);
    Ok(())
}

/// Applies a checked DDL statement to the catalogue (the metadata-update limit included).
pub fn apply_ddl(
    tables: &mut HashMap<String, Table>,
    ddl: Ddl,
    now: Instant,
) -> Result<(), Refusal> {
    match ddl {
        Ddl::Create {
            table,
            definition,
            if_not_exists,
        } => match tables.get_mut(&table) {
            Some(_) if if_not_exists => Ok(()),
            Some(_) => Err(refuse(
                409,
                "duplicate",
                format!("Already Exists: Table {table}"),
            )),
            None => {
                let mut t = definition;
                metadata_update(&mut t, &table, now)?;
                tables.insert(table, t);
                Ok(())
            }
        },
        Ddl::AddColumns { table, columns } => {
            let t = tables
                .get_mut(&table)
                .ok_or_else(|| refuse(404, "notFound", format!("Not found: Table {table}")))?;
            metadata_update(t, &table, now)?;
            for (c, if_not_exists) in columns {
                match t.column(&c.name) {
                    Some(_) if if_not_exists => {}
                    Some(_) => return Err(syntax(format!("Column already exists: {}", c.name))),
                    None => t.columns.push(Column {
                        required: false,
                        ..c
                    }),
                }
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loads ("Loading Parquet data", "Parquet conversions"; "Work with JSON data")
// ---------------------------------------------------------------------------------------------

/// A parquet column as BigQuery reads it without a schema (page "Loading Parquet data",
/// section "Parquet conversions"): the GoogleSQL type, or `None` where BigQuery refuses it.
pub fn parquet_reads_as(
    physical: Physical,
    logical: Option<&LogicalType>,
    converted: ConvertedType,
    precision: i32,
    scale: i32,
    enum_as_string: bool,
) -> Option<&'static str> {
    use ConvertedType as C;
    Some(match (physical, logical, converted) {
        (Physical::BOOLEAN, _, _) => "BOOL",
        (_, Some(LogicalType::Decimal(d)), _) => decimal(d.precision, d.scale),
        (_, None, C::DECIMAL) => decimal(precision, scale),
        (Physical::INT32, Some(LogicalType::Date), _) | (Physical::INT32, None, C::DATE) => "DATE",
        (Physical::INT32 | Physical::INT64, Some(LogicalType::Integer(_)), _) => "INT64",
        (
            Physical::INT32 | Physical::INT64,
            None,
            C::NONE
            | C::INT_8
            | C::INT_16
            | C::INT_32
            | C::INT_64
            | C::UINT_8
            | C::UINT_16
            | C::UINT_32
            | C::UINT_64,
        ) => "INT64",
        // Every parquet TIMESTAMP, isAdjustedToUTC or not, reads as TIMESTAMP: "TIMESTAMP" is
        // the only conversion the table lists; DATETIME needs the type in the load's schema.
        (Physical::INT64, Some(LogicalType::Timestamp(_)), _)
        | (Physical::INT64, None, C::TIMESTAMP_MILLIS | C::TIMESTAMP_MICROS) => "TIMESTAMP",
        (Physical::INT96, _, _) => "TIMESTAMP",
        (Physical::INT32 | Physical::INT64, Some(LogicalType::Time(_)), _)
        | (Physical::INT32, None, C::TIME_MILLIS)
        | (Physical::INT64, None, C::TIME_MICROS) => "TIME",
        (Physical::FLOAT | Physical::DOUBLE, _, _) => "FLOAT64",
        (Physical::BYTE_ARRAY, Some(LogicalType::String), _)
        | (Physical::BYTE_ARRAY, None, C::UTF8) => "STRING",
        // "ENUM logical type -> BYTES (STRING with enumAsString)".
        (Physical::BYTE_ARRAY, Some(LogicalType::Enum), _)
        | (Physical::BYTE_ARRAY, None, C::ENUM) => {
            if enum_as_string {
                "STRING"
            } else {
                "BYTES"
            }
        }
        (Physical::BYTE_ARRAY, Some(LogicalType::Json), _)
        | (Physical::BYTE_ARRAY, None, C::JSON) => "STRING",
        (Physical::BYTE_ARRAY | Physical::FIXED_LEN_BYTE_ARRAY, None, C::NONE) => "BYTES",
        _ => return None,
    })
}

fn decimal(p: i32, s: i32) -> &'static str {
    // decimalTargetTypes ["NUMERIC", "BIGNUMERIC", "STRING"]: the first that holds (p, s).
    if p - s <= 29 && s <= 9 {
        "NUMERIC"
    } else if p - s <= 38 && s <= 38 {
        "BIGNUMERIC"
    } else {
        "STRING"
    }
}

/// The parquet file's top-level columns as BigQuery reads them: (name, type or None).
pub fn parquet_columns(
    data: &[u8],
    enum_as_string: bool,
) -> Result<Vec<(String, Option<&'static str>)>, String> {
    let reader = SerializedFileReader::new(bytes::Bytes::copy_from_slice(data))
        .map_err(|e| e.to_string())?;
    let schema = reader.metadata().file_metadata().schema_descr();
    Ok(schema
        .columns()
        .iter()
        .map(|c| {
            (
                c.name().to_owned(),
                parquet_reads_as(
                    c.physical_type(),
                    c.logical_type_ref(),
                    c.converted_type(),
                    c.type_precision(),
                    c.type_scale(),
                    enum_as_string,
                ),
            )
        })
        .collect())
}

/// Whether a parquet column read as `file` loads into a column of type `table`, given that the
/// load names the column's type in its schema (`with_schema`): a TIMESTAMP then also loads into
/// DATETIME, and INT64 into NUMERIC/BIGNUMERIC (python-bigquery #2214, #895, #985).
fn converts(file: &str, table: &str, with_schema: bool) -> bool {
    file == table
        || (with_schema && file == "TIMESTAMP" && table == "DATETIME")
        || (matches!(file, "NUMERIC") && table == "BIGNUMERIC")
}

/// A parquet load job into `table` (`name`: `project:dataset.table`), checked as BigQuery does.
/// The refusal is what the job ends with (a load job that fails still exists and counts).
///
/// - "If you use a batch load job to ingest JSON data into a table, the source data must be in
///   CSV, Avro, or JSON format. Other batch load formats are not supported" (page "Work with
///   JSON data"): a JSON column in the destination fails the load.
/// - Without `schema`, each column converts by "Parquet conversions" only; a wall-clock
///   timestamp bound for DATETIME fails "Field x has changed type from DATETIME to TIMESTAMP"
///   (python-bigquery #2214, #56).
/// - With `schema`, it must name every table column with its type ("Provided Schema does not
///   match Table ... Field x is missing in new schema").
/// - A file column the table lacks needs `schemaUpdateOptions: ALLOW_FIELD_ADDITION`.
pub fn load(
    table: &Table,
    name: &str,
    load: &serde_json::Value,
    data: &[u8],
) -> Result<Vec<Column>, Refusal> {
    let invalid = |m: String| refuse(400, "invalid", m);
    let enum_as_string = load
        .pointer("/parquetOptions/enumAsString")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let allow_addition = load
        .get("schemaUpdateOptions")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|o| o.iter().any(|v| v == "ALLOW_FIELD_ADDITION"));
    let schema: Option<Vec<Column>> = load
        .pointer("/schema/fields")
        .and_then(serde_json::Value::as_array)
        .map(|fields| {
            fields
                .iter()
                .map(|f| Column {
                    name: f["name"].as_str().unwrap_or("").to_owned(),
                    ty: normalise(f["type"].as_str().unwrap_or("")),
                    required: f["mode"].as_str() == Some("REQUIRED"),
                })
                .collect()
        });
    let target: Vec<Column> = match &schema {
        Some(s) => {
            for c in &table.columns {
                match s.iter().find(|f| f.name.eq_ignore_ascii_case(&c.name)) {
                    None => {
                        return Err(invalid(format!(
                            "Provided Schema does not match Table {name}. Field {} is missing in new schema",
                            c.name
                        )));
                    }
                    Some(f) if f.ty != c.ty => {
                        return Err(invalid(format!(
                            "Provided Schema does not match Table {name}. Field {} has changed type from {} to {}",
                            c.name, c.ty, f.ty
                        )));
                    }
                    Some(_) => {}
                }
            }
            s.clone()
        }
        None => table.columns.clone(),
    };
    if let Some(j) = target.iter().find(|c| c.ty == "JSON") {
        return Err(invalid(format!(
            "Unsupported field type: JSON (field {}); loading JSON columns needs CSV, Avro or JSON source data, not PARQUET",
            j.name
        )));
    }
    let columns = parquet_columns(data, enum_as_string)
        .map_err(|e| invalid(format!("Error while reading data, error message: {e}")))?;
    let mut added = Vec::new();
    for (col, reads_as) in &columns {
        let Some(reads_as) = reads_as else {
            return Err(invalid(format!("Unsupported parquet type for field {col}")));
        };
        match target.iter().find(|c| c.name.eq_ignore_ascii_case(col)) {
            Some(c) if !converts(reads_as, &c.ty, schema.is_some()) => {
                return Err(invalid(format!(
                    "Provided Schema does not match Table {name}. Field {col} has changed type from {} to {reads_as}",
                    c.ty
                )));
            }
            Some(c) if table.column(col).is_none() => added.push(c.clone()),
            Some(_) => {}
            None if allow_addition && schema.is_none() => added.push(Column {
                name: col.clone(),
                ty: (*reads_as).to_owned(),
                required: false,
            }),
            None => {
                return Err(invalid(format!(
                    "Provided Schema does not match Table {name}. Cannot add fields (field: {col})"
                )));
            }
        }
    }
    if !added.is_empty() && !allow_addition {
        return Err(invalid(format!(
            "Provided Schema does not match Table {name}. Cannot add fields (field: {})",
            added[0].name
        )));
    }
    for c in target.iter().filter(|c| c.required) {
        if !columns.iter().any(|(n, _)| n.eq_ignore_ascii_case(&c.name)) {
            return Err(invalid(format!("Required field {} cannot be null", c.name)));
        }
    }
    Ok(added)
}

fn normalise(ty: &str) -> String {
    match ty.to_ascii_uppercase().as_str() {
        "INTEGER" => "INT64".into(),
        "FLOAT" => "FLOAT64".into(),
        "BOOLEAN" => "BOOL".into(),
        "BIGDECIMAL" => "BIGNUMERIC".into(),
        "DECIMAL" => "NUMERIC".into(),
        t => t.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Quotas ("Quotas and limits")
// ---------------------------------------------------------------------------------------------

/// Load-job quotas: "Load jobs per table per day: 1,500 (including failures)" and "Load jobs per
/// project per day: 100,000 (including failures)" (page "Quotas and limits", Load jobs). Beyond,
/// the insert fails HTTP 403 `quotaExceeded` (message as quoted in "Troubleshoot quota and limit
/// errors"). The server's day is its lifetime.
#[derive(Debug, Clone)]
pub struct LoadQuota {
    /// Per table (1,500).
    pub per_table: usize,
    /// Per project (100,000).
    pub per_project: usize,
}

impl Default for LoadQuota {
    fn default() -> Self {
        LoadQuota {
            per_table: 1_500,
            per_project: 100_000,
        }
    }
}

impl LoadQuota {
    /// Checks one more load into `table`, given the loads so far (failed ones included).
    pub fn check(&self, table: &str, into_table: usize, in_project: usize) -> Result<(), Refusal> {
        if into_table >= self.per_table {
            return Err(refuse(
                403,
                "quotaExceeded",
                format!(
                    "Quota exceeded: Your table exceeded quota for imports or query appends per table. Table: {table}"
                ),
            ));
        }
        if in_project >= self.per_project {
            return Err(refuse(
                403,
                "quotaExceeded",
                "Quota exceeded: Your project exceeded quota for imports per project.",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// DML ("DML", "Quotas and limits")
// ---------------------------------------------------------------------------------------------

/// The target table of a mutating DML statement (`MERGE`, `UPDATE`, `DELETE`, `INSERT`).
pub fn dml_target(sql: &str) -> Option<String> {
    let toks = tokens(sql);
    let mut i = if word(toks.first(), "MERGE") {
        1 + usize::from(word(toks.get(1), "INTO"))
    } else if word(toks.first(), "UPDATE") {
        1
    } else if word(toks.first(), "DELETE") || word(toks.first(), "INSERT") {
        1 + usize::from(word(toks.get(1), "FROM") || word(toks.get(1), "INTO"))
    } else {
        return None;
    };
    path(&toks, &mut i)
}

/// Mutating DML per table: "up to 2 concurrent mutating DML statements ... per table; up to 20
/// queued" (page "DML", "Quotas and limits": "Concurrent mutating DML statements per table");
/// beyond, HTTP 400 `resourcesExceeded` "Too many DML statements outstanding against table ...,
/// limit is 20". Under snapshot isolation statements that overlap on one table either both
/// commit (insert-only MERGEs: both insert the same new key) or conflict ("Could not serialize
/// access to table ... due to concurrent update"): the tracker records every overlap, the one
/// thing that decides both outcomes and that a test can observe without BigQuery's engine.
#[derive(Debug, Default)]
pub struct DmlTracker {
    running: HashMap<String, usize>,
    /// Tables where two mutating statements ran at the same time.
    pub overlaps: Vec<String>,
}

/// Mutating statements running plus queued per table before `resourcesExceeded`.
pub const DML_OUTSTANDING: usize = 2 + 20;

impl DmlTracker {
    /// A statement on `table` starts; refused when the queue is full. `Ok(true)` when another
    /// one is running on the table.
    pub fn start(&mut self, table: &str) -> Result<bool, Refusal> {
        let n = self.running.entry(table.to_owned()).or_default();
        if *n >= DML_OUTSTANDING {
            return Err(refuse(
                400,
                "resourcesExceeded",
                format!("Too many DML statements outstanding against table {table}, limit is 20"),
            ));
        }
        let overlapped = *n > 0;
        if overlapped {
            self.overlaps.push(table.to_owned());
        }
        *n += 1;
        Ok(overlapped)
    }

    /// The statement on `table` ended.
    pub fn end(&mut self, table: &str) {
        if let Some(n) = self.running.get_mut(table) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The refusal for a mutating statement that lost a conflict (page "DML": "BigQuery retries ...
/// up to three times ... then fails"), HTTP 400 `invalidQuery` (python-bigquery issues quote it).
pub fn concurrent_update(table: &str) -> Refusal {
    refuse(
        400,
        "invalidQuery",
        format!("Could not serialize access to table {table} due to concurrent update"),
    )
}

/// Creating a dataset: "bigquery.datasets.create" on the project (page "Creating datasets",
/// "Required permissions"); without it HTTP 403 `accessDenied`.
pub fn dataset_create(project: &str, allowed: bool) -> Result<(), Refusal> {
    if allowed {
        Ok(())
    } else {
        Err(refuse(
            403,
            "accessDenied",
            format!(
                "Access Denied: Project {project}: User does not have bigquery.datasets.create permission in project {project}."
            ),
        ))
    }
}
