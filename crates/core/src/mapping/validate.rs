//! Turning raw mapping files into validated [`Source`]s, collecting every problem with the file,
//! the JSON path and what to do about it.

use std::collections::BTreeMap;
use std::fmt;

use super::hint::ColumnHint;
use super::model::{PartitionSpec, Source, TableMapping, TableRef};
use super::raw::{Granularity, Mode, OnTruncate, RawMappingFile, RawTable};
use crate::names;

/// Suffix of the change-log table next to a replica.
pub const CHANGELOG_SUFFIX: &str = "_changelog";

/// BigQuery's limit on clustering columns.
pub const MAX_CLUSTER_COLUMNS: usize = 4;

/// One thing wrong with the mapping files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, as named to the loader (e.g. `mappings/slots-eu.json`).
    pub file: String,
    /// JSONPath of the offending value, e.g. `$.tables["slots.players"].primary_key`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
    /// Line and column (1-based) in the file, when the path leads into it.
    pub at: Option<(usize, usize)>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "{}:{line}:{col}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        write!(f, "{}: {}; fix: {}", self.path, self.message, self.fix)
    }
}

/// A step of a JSON path.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg<'a> {
    /// An object member.
    Key(&'a str),
    /// An array element.
    Index(usize),
}

/// Renders a JSONPath: `$.source.name`, `$.tables["slots.players"].primary_key[0]`.
pub(crate) fn json_path(segs: &[Seg<'_>]) -> String {
    let mut out = String::from("$");
    for seg in segs {
        match seg {
            Seg::Key(k) if is_plain_member(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Key(k) => {
                out.push('[');
                out.push_str(&serde_json::Value::String((*k).to_owned()).to_string());
                out.push(']');
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn is_plain_member(k: &str) -> bool {
    k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// Collects problems for one file.
struct Report<'f> {
    file: &'f str,
    problems: Vec<Problem>,
}

impl Report<'_> {
    fn add(&mut self, segs: &[Seg<'_>], message: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            path: json_path(segs),
            message: message.into(),
            fix: fix.into(),
            at: None,
        });
    }

    /// Runs a naming check, reporting its failure with `fix`.
    fn check(&mut self, segs: &[Seg<'_>], result: Result<(), String>, fix: &str) -> bool {
        match result {
            Ok(()) => true,
            Err(message) => {
                self.add(segs, message, fix);
                false
            }
        }
    }
}

/// Parses and validates one mapping file. `file` names it in problems; `stem` is its name
/// without `.json`, which must equal the source name. The source is `None` only when the JSON
/// does not parse; a catalog may be built only when no file has problems.
pub(crate) fn validate_file(file: &str, stem: &str, text: &str) -> (Option<Source>, Vec<Problem>) {
    let mut report = Report {
        file,
        problems: Vec::new(),
    };
    let (raw, found) = parse_json(text);
    for (path, message, fix, at) in found {
        report.problems.push(Problem {
            file: file.to_owned(),
            path,
            message,
            fix,
            at,
        });
    }
    let Some(raw) = raw else {
        return (None, report.problems);
    };
    // The source is returned with its problems too (minus the tables that failed), so that the
    // checks across files still see its folder and targets.
    let shapes = report.problems.len();
    let source = validate_raw(&mut report, stem, raw);
    // A member cut out for its shape is not reported again as missing; a table with a
    // malformed value (not merely an unknown field) is not checked further, since the defaults
    // standing in for the value would raise problems of their own.
    let cut: Vec<String> = report.problems[..shapes]
        .iter()
        .map(|p| match p.path.strip_prefix("$.tables[") {
            Some(rest) if !p.message.starts_with("unknown field") => rest.find("\"]").map_or_else(
                || p.path.clone(),
                |end| format!("$.tables[{}\"]", &rest[..end]),
            ),
            _ => p.path.clone(),
        })
        .collect();
    let under = |p: &str, c: &str| {
        p == c || p.starts_with(&format!("{c}.")) || p.starts_with(&format!("{c}["))
    };
    let semantic = report.problems.split_off(shapes);
    report.problems.extend(
        semantic
            .into_iter()
            .filter(|p| !cut.iter().any(|c| under(&p.path, c))),
    );
    (Some(source), report.problems)
}

/// A problem found while parsing: path, message, fix, and the line and column when known.
type ParseProblem = (String, String, String, Option<(usize, usize)>);

/// Parses a mapping file, reporting every member of the wrong shape, not only the first: each
/// unknown or malformed member is reported and cut out of the text, and the rest is parsed
/// again (from text, so that duplicate keys are still seen). The file is returned (without
/// those members) unless its JSON does not parse or its root is malformed.
fn parse_json(text: &str) -> (Option<RawMappingFile>, Vec<ParseProblem>) {
    let mut problems = Vec::new();
    let mut current = text.to_owned();
    // Each round cuts one member out, so the rounds are bounded by the file's size.
    for _ in 0..1000 {
        let mut de = serde_json::Deserializer::from_str(&current);
        let result: Result<RawMappingFile, _> = serde_path_to_error::deserialize(&mut de);
        let err = match result {
            Ok(raw) => {
                // Trailing content after the object is rejected by `end`.
                if let Err(e) = de.end() {
                    problems.push((
                        "$".to_owned(),
                        e.to_string(),
                        "remove what follows the closing brace".to_owned(),
                        None,
                    ));
                    return (None, problems);
                }
                return (Some(raw), problems);
            }
            Err(err) => err,
        };
        let segs: Vec<String> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(format!("\u{0}{index}")),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let segs: Vec<Seg<'_>> = segs
            .iter()
            .map(
                |s| match s.strip_prefix('\u{0}').and_then(|i| i.parse().ok()) {
                    Some(i) => Seg::Index(i),
                    None => Seg::Key(s),
                },
            )
            .collect();
        let inner = err.inner();
        let path = json_path(&segs);
        if inner.is_syntax() || inner.is_eof() {
            // Only the first round can meet one (cutting members keeps the syntax valid).
            problems.push((
                path,
                inner.to_string(),
                "fix the JSON syntax there (a missing comma, quote or bracket is the usual cause)"
                    .to_owned(),
                Some((inner.line(), inner.column())),
            ));
            return (None, problems);
        }
        // serde appends " at line L column C" of the text it read, which after a cut is not
        // the file's: the location is computed from the file instead.
        let message = inner.to_string();
        let message = match message.rfind(" at line ") {
            Some(i) => message[..i].to_owned(),
            None => message,
        };
        let fix = if let Some(suggestion) = did_you_mean(&message) {
            format!(
                "did you mean `{suggestion}`? (fields are listed in mappings/schema/ferry-mapping.schema.json)"
            )
        } else {
            "see mappings/schema/ferry-mapping.schema.json for the expected shape".to_owned()
        };
        let rest = super::locate::without(&current, &path);
        problems.push((path, message, fix, None));
        match rest {
            Some(rest) => current = rest,
            None => return (None, problems),
        }
    }
    (None, problems)
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown variant"), the
/// expected name closest to `x`, when one is close enough to be a typo.
fn did_you_mean(message: &str) -> Option<String> {
    if !message.starts_with("unknown field") && !message.starts_with("unknown variant") {
        return None;
    }
    let mut quoted = message.split('`').skip(1).step_by(2);
    let wrong = quoted.next()?;
    quoted
        .map(|c| (edit_distance(&wrong.to_lowercase(), c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min()
        .map(|(_, c)| c.to_owned())
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn validate_raw(r: &mut Report<'_>, stem: &str, raw: RawMappingFile) -> Source {
    use Seg::Key;
    let src = &raw.source;
    if r.check(
        &[Key("source"), Key("name")],
        names::check_source_name(&src.name),
        "rename the source",
    ) && src.name != stem
    {
        r.add(
            &[Key("source"), Key("name")],
            format!(
                "source name {:?} differs from the file name {stem:?}",
                src.name
            ),
            format!(
                "rename the file to {}.json or set \"name\": {stem:?}",
                src.name
            ),
        );
    }
    r.check(
        &[Key("source"), Key("bucket")],
        names::check_bucket(&src.bucket),
        "use the DMS endpoint's BucketName",
    );
    let folder = &src.folder;
    if folder.starts_with('/') || folder.ends_with('/') || folder.contains("//") {
        r.add(
            &[Key("source"), Key("folder")],
            format!("bucket folder {folder:?} has a leading, trailing or doubled '/'"),
            format!(
                "write it as {:?}",
                folder
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("/")
            ),
        );
    }
    r.check(
        &[Key("source"), Key("folder")],
        names::check_folder(folder),
        "use the DMS endpoint's BucketFolder as it is",
    );
    if let Some(col) = &src.dms.timestamp_column {
        r.check(
            &[Key("source"), Key("dms"), Key("timestamp_column")],
            names::check_column(col),
            "name the column as the DMS endpoint's TimestampColumnName, a valid BigQuery column name",
        );
    }
    if !(1..=1_048_576).contains(&src.dms.lob_max_size_kb) {
        r.add(
            &[Key("source"), Key("dms"), Key("lob_max_size_kb")],
            format!("lob_max_size_kb is {}", src.dms.lob_max_size_kb),
            "give the task's LobMaxSize in KB (1 to 1048576; DMS's default is 32)",
        );
    }
    let bq = &raw.bigquery;
    r.check(
        &[Key("bigquery"), Key("project")],
        names::check_project(&bq.project),
        "use the Google Cloud project id",
    );
    r.check(
        &[Key("bigquery"), Key("dataset")],
        names::check_dataset(&bq.dataset),
        "use letters, digits and '_'",
    );
    if bq.location.as_deref().is_some_and(|l| l.trim().is_empty()) {
        r.add(
            &[Key("bigquery"), Key("location")],
            "location is empty",
            "remove it or name a location such as \"US\"",
        );
    }
    if raw.tables.0.is_empty() {
        r.add(
            &[Key("tables")],
            "no tables are mapped",
            "add a table such as \"db.players\": {\"primary_key\": [\"id\"]}, or delete the file",
        );
    }

    if let Some(h) = &src.heartbeat {
        let mapped = raw.tables.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(h));
        match mapped {
            None => r.add(
                &[Key("source"), Key("heartbeat")],
                format!("heartbeat table {h:?} is not mapped in this file"),
                format!("map it under tables (\"{h}\": {{\"primary_key\": [\"id\"]}}), or remove heartbeat"),
            ),
            Some((_, t)) if t.enabled == Some(false) => r.add(
                &[Key("source"), Key("heartbeat")],
                format!("heartbeat table {h:?} is disabled"),
                "enable it: its changes are what the heartbeat alarm watches",
            ),
            Some(_) => {}
        }
    }
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut tables = Vec::new();
    for (name, table) in &raw.tables.0 {
        let path = [Key("tables"), Key(name)];
        if let Some(first) = seen.insert(name.to_lowercase(), name) {
            let message = if first == name {
                format!("source table {name:?} is mapped twice in this file")
            } else {
                format!("source table {name:?} is mapped twice in this file (also as {first:?})")
            };
            r.add(
                &path,
                message,
                "keep one entry and merge the settings into it",
            );
            continue;
        }
        if let Some(t) = validate_table(r, &raw, name, table) {
            tables.push(t);
        }
    }

    Source {
        name: src.name.clone(),
        file: r.file.to_owned(),
        bucket: src.bucket.clone(),
        folder: src.folder.trim_matches('/').to_owned(),
        timestamp_column: src.dms.timestamp_column.clone(),
        date_partitioning: src.dms.date_partitioning,
        lob_max_size_kb: src.dms.lob_max_size_kb,
        project: bq.project.clone(),
        dataset: bq.dataset.clone(),
        location: bq.location.clone(),
        heartbeat: src.heartbeat.clone(),
        hash_key: None,
        tables,
    }
}

fn validate_table(
    r: &mut Report<'_>,
    raw: &RawMappingFile,
    name: &str,
    t: &RawTable,
) -> Option<TableMapping> {
    use Seg::{Index, Key};
    let at = |field: &'static str| [Key("tables"), Key(name), Key(field)];
    let before = r.problems.len();

    let Some((schema, table)) = name.split_once('.') else {
        r.add(
            &[Key("tables"), Key(name)],
            format!("{name:?} is not \"schema.table\""),
            "name the source table as \"database.table\"",
        );
        return None;
    };
    for part in [schema, table] {
        r.check(
            &[Key("tables"), Key(name)],
            names::check_mysql_identifier(part),
            "name the source table as in MySQL",
        );
    }

    let target = t.target.clone().unwrap_or_else(|| table.to_owned());
    let target_fix = if t.target.is_some() {
        "choose a name of letters, digits, '_' and '-'"
    } else {
        "the source table's name is not a valid BigQuery table name: set \"target\" to one"
    };
    r.check(&at("target"), names::check_table(&target), target_fix);

    let mode = t.mode.or(raw.defaults.mode).unwrap_or(Mode::Replica);
    let primary_key = t.primary_key.clone().unwrap_or_default();
    if mode == Mode::Replica && primary_key.is_empty() {
        r.add(
            &at("primary_key"),
            "a replica table needs a primary key to apply updates and deletes",
            "add \"primary_key\": [\"<column>\", …] or set \"mode\": \"changelog\"",
        );
    }

    let mut hints: Vec<(String, ColumnHint)> = Vec::new();
    for (column, hint) in &t.columns.0 {
        let path = [Key("tables"), Key(name), Key("columns"), Key(column)];
        r.check(
            &path,
            names::check_column(column),
            "use the column's name as in MySQL, if BigQuery accepts it",
        );
        if hints.iter().any(|(c, _)| c.eq_ignore_ascii_case(column)) {
            r.add(
                &path,
                format!("column {column:?} has two hints"),
                "keep one",
            );
            continue;
        }
        match ColumnHint::parse(&hint.0) {
            Ok(h) => hints.push((column.clone(), h)),
            Err(message) => r.add(
                &path,
                message,
                "write the column's MySQL type as SHOW CREATE TABLE prints it",
            ),
        }
    }
    let hint_of = |c: &str| hints.iter().find(|(h, _)| h == c).map(|(_, h)| *h);

    let check_columns = |r: &mut Report<'_>, field: &'static str, cols: &[String]| {
        for (i, c) in cols.iter().enumerate() {
            let path = [Key("tables"), Key(name), Key(field), Index(i)];
            r.check(
                &path,
                names::check_column(c),
                "use the column's name as in MySQL",
            );
            if cols[..i].contains(c) {
                r.add(
                    &path,
                    format!("column {c:?} is listed twice"),
                    "list each column once",
                );
            }
            let usable = |t: crate::bqtype::BqType| match field {
                "cluster_by" => t.can_cluster(),
                _ => t.can_key(),
            };
            if let Some(h) = hint_of(c).filter(|h| !usable(h.bigquery_type())) {
                let role = if field == "cluster_by" {
                    "cluster"
                } else {
                    "key"
                };
                r.add(
                    &path,
                    format!("column {c:?} is hinted {h} ({}), which BigQuery cannot use as a {role} column", h.bigquery_type()),
                    format!("remove {c:?} from {field} or correct its hint"),
                );
            }
        }
    };
    if t.primary_key.as_ref().is_some_and(Vec::is_empty) && mode == Mode::Changelog {
        r.add(
            &at("primary_key"),
            "primary_key is an empty list",
            "remove it or list the key columns",
        );
    }
    check_columns(r, "primary_key", &primary_key);
    check_column_controls(r, name, t, &primary_key);

    let cluster_by = match &t.cluster_by {
        Some(cols) => {
            if cols.len() > MAX_CLUSTER_COLUMNS {
                r.add(
                    &at("cluster_by"),
                    format!(
                        "{} clustering columns; BigQuery allows at most {MAX_CLUSTER_COLUMNS}",
                        cols.len()
                    ),
                    "keep the 4 most filtered-on columns",
                );
            }
            check_columns(r, "cluster_by", cols);
            cols.clone()
        }
        None => primary_key
            .iter()
            .take(MAX_CLUSTER_COLUMNS)
            .cloned()
            .collect(),
    };

    let partition = match (&t.partition_by, t.partition_granularity) {
        (Some(column), granularity) => {
            r.check(
                &at("partition_by"),
                names::check_column(column),
                "use a DATE, DATETIME or TIMESTAMP column's name",
            );
            if let Some(h) = hint_of(column).filter(|h| !h.bigquery_type().can_partition()) {
                r.add(
                    &at("partition_by"),
                    format!(
                        "column {column:?} is hinted {h} ({}), which BigQuery cannot partition by",
                        h.bigquery_type()
                    ),
                    "partition by a DATE, DATETIME or TIMESTAMP column",
                );
            }
            let granularity = granularity.unwrap_or(Granularity::Day);
            // A hinted column's type is known now: a pair BigQuery has no PARTITION BY form
            // for is a mapping error, not a DDL failure on the first file.
            if let Some(h) = hint_of(column).filter(|h| h.bigquery_type().can_partition())
                && let Err(why) =
                    crate::sql::partition_clause(column, granularity, h.bigquery_type())
            {
                r.add(
                    &at("partition_granularity"),
                    why,
                    "choose a granularity the column's type allows",
                );
            }
            Some(PartitionSpec {
                column: column.clone(),
                granularity,
            })
        }
        (None, Some(_)) => {
            r.add(
                &at("partition_granularity"),
                "partition_granularity without partition_by",
                "add \"partition_by\" or remove the granularity",
            );
            None
        }
        (None, None) => None,
    };

    let soft_delete = t.soft_delete.or(raw.defaults.soft_delete).unwrap_or(false);
    if t.soft_delete == Some(true) && mode == Mode::Changelog {
        r.add(
            &at("soft_delete"),
            "soft_delete applies to replica tables; a change log keeps every delete anyway",
            "remove it or set \"mode\": \"replica\"",
        );
    }

    let on_type_change = t
        .on_type_change
        .or(raw.defaults.on_type_change)
        .unwrap_or_default();
    let on_truncate = t
        .on_truncate
        .or(raw.defaults.on_truncate)
        .unwrap_or_default();
    if t.on_truncate == Some(OnTruncate::Empty) && mode == Mode::Changelog {
        r.add(
            &at("on_truncate"),
            "on_truncate \"empty\" applies to replica tables; a change log keeps what was loaded",
            "remove it or set \"mode\": \"replica\"",
        );
    }

    let apply_every = match t.apply_every.as_ref().or(raw.defaults.apply_every.as_ref()) {
        None => None,
        Some(text) => match parse_interval(text) {
            Some(d) if (60..=86_400).contains(&d.as_secs()) => Some(d),
            _ => {
                let defaults = [Key("defaults"), Key("apply_every")];
                let own = at("apply_every");
                r.add(
                    if t.apply_every.is_some() {
                        &own
                    } else {
                        &defaults
                    },
                    format!("apply_every {text:?} is not an interval from 1 minute to 24 hours"),
                    "write seconds, minutes or hours, e.g. \"300s\", \"15m\" or \"1h\"",
                );
                None
            }
        },
    };
    if t.apply_every.is_some() && mode == Mode::Changelog {
        r.add(
            &at("apply_every"),
            "apply_every applies to replica tables; a change log has nothing to apply",
            "remove it or set \"mode\": \"replica\"",
        );
    }

    let table_ref = |table: String| TableRef {
        project: raw.bigquery.project.clone(),
        dataset: raw.bigquery.dataset.clone(),
        table,
    };
    let (replica, changelog) = match mode {
        Mode::Replica => (
            Some(table_ref(target.clone())),
            table_ref(format!("{target}{CHANGELOG_SUFFIX}")),
        ),
        Mode::Changelog => (None, table_ref(target)),
    };
    if changelog.table.len() > 1024 {
        r.add(
            &at("target"),
            "the change-log table name would exceed 1,024 bytes",
            "choose a shorter target",
        );
    }

    (r.problems.len() == before).then(|| TableMapping {
        schema: schema.to_owned(),
        table: table.to_owned(),
        mode,
        changelog,
        replica,
        primary_key,
        partition,
        cluster_by,
        soft_delete: soft_delete && mode == Mode::Replica,
        on_type_change,
        on_truncate: if mode == Mode::Replica {
            on_truncate
        } else {
            OnTruncate::Keep
        },
        apply_every: apply_every.filter(|_| mode == Mode::Replica),
        enabled: t.enabled.unwrap_or(true),
        columns: hints,
        description: t.description.clone(),
        exclude: t.exclude.clone(),
        hash: t.hash.clone(),
    })
}

/// `exclude` and `hash`: real column names, each once, never a key, partition or clustering
/// column, never both, and no hint on an excluded column (it never arrives).
fn check_column_controls(r: &mut Report<'_>, name: &str, t: &RawTable, keys: &[String]) {
    use Seg::{Index, Key};
    for (field, cols) in [("exclude", &t.exclude), ("hash", &t.hash)] {
        for (i, c) in cols.iter().enumerate() {
            let path = [Key("tables"), Key(name), Key(field), Index(i)];
            if !r.check(
                &path,
                names::check_column(c),
                "use the column's name as in MySQL",
            ) {
                continue;
            }
            if cols[..i].iter().any(|o| o.eq_ignore_ascii_case(c)) {
                r.add(
                    &path,
                    format!("column {c:?} is listed twice"),
                    "list each column once",
                );
            }
            let used_as = if keys.iter().any(|k| k.eq_ignore_ascii_case(c)) {
                Some("primary_key")
            } else if t
                .cluster_by
                .iter()
                .flatten()
                .any(|k| k.eq_ignore_ascii_case(c))
            {
                Some("cluster_by")
            } else if t
                .partition_by
                .as_deref()
                .is_some_and(|p| p.eq_ignore_ascii_case(c))
            {
                Some("partition_by")
            } else {
                None
            };
            if let Some(role) = used_as {
                r.add(
                    &path,
                    format!(
                        "column {c:?} is in {role}; {} column cannot be",
                        if field == "exclude" {
                            "an excluded"
                        } else {
                            "a hashed"
                        }
                    ),
                    format!("remove {c:?} from {field} or from {role}"),
                );
            }
            if field == "hash" && t.exclude.iter().any(|e| e.eq_ignore_ascii_case(c)) {
                r.add(
                    &path,
                    format!("column {c:?} is both excluded and hashed"),
                    "keep it in one of the two lists: exclude drops it at the source, hash keeps a joinable digest",
                );
            }
            if field == "exclude" && t.columns.0.iter().any(|(h, _)| h.eq_ignore_ascii_case(c)) {
                r.add(
                    &path,
                    format!("column {c:?} is excluded but has a type hint"),
                    format!("remove the hint for {c:?} from columns"),
                );
            }
        }
    }
}

/// `90s`, `15m`, `1h`: a whole number of seconds, minutes or hours.
pub fn parse_interval(text: &str) -> Option<std::time::Duration> {
    let unit = match text.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        _ => return None,
    };
    let n: u64 = text[..text.len() - 1].parse().ok()?;
    Some(std::time::Duration::from_secs(n.checked_mul(unit)?))
}

/// Checks that need every file: unique source names, no two sources sharing a bucket folder,
/// and no BigQuery table written by two mappings.
pub(crate) fn check_across(sources: &[Source]) -> Vec<Problem> {
    use Seg::Key;
    let mut problems = Vec::new();
    let mut add = |file: &str, segs: &[Seg<'_>], message: String, fix: String| {
        problems.push(Problem {
            file: file.to_owned(),
            path: json_path(segs),
            message,
            fix,
            at: None,
        });
    };
    for (i, b) in sources.iter().enumerate() {
        for a in &sources[..i] {
            if a.name == b.name {
                add(
                    &b.file,
                    &[Key("source"), Key("name")],
                    format!("source name {:?} is also used by {}", b.name, a.file),
                    "give each source its own name".into(),
                );
            }
            if a.bucket == b.bucket && (a.owns_key(&b.prefix()) || b.owns_key(&a.prefix())) {
                add(
                    &b.file,
                    &[Key("source"), Key("folder")],
                    format!(
                        "folder {:?} of bucket {} overlaps folder {:?} of {}: their files could not be told apart",
                        b.folder, b.bucket, a.folder, a.file
                    ),
                    "give each DMS task its own BucketFolder, neither inside the other".into(),
                );
            }
        }
    }
    let mut owners: BTreeMap<&TableRef, (&str, String)> = BTreeMap::new();
    for s in sources {
        for t in &s.tables {
            let name = t.source_table();
            for target in t.targets() {
                match owners.get(target) {
                    Some((file, other)) => add(
                        &s.file,
                        &[Key("tables"), Key(&name), Key("target")],
                        format!("BigQuery table {target} is also written by {other:?} in {file}"),
                        "map each source table to its own BigQuery table (set \"target\")".into(),
                    ),
                    None => {
                        owners.insert(target, (&s.file, name.clone()));
                    }
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_field() {
        let m = "unknown field `primry_key`, expected one of `target`, `mode`, `primary_key` at line 4 column 40";
        assert_eq!(did_you_mean(m).as_deref(), Some("primary_key"));
        let m = "unknown variant `Replica`, expected `replica` or `changelog` at line 1 column 2";
        assert_eq!(did_you_mean(m).as_deref(), Some("replica"));
        let m = "unknown field `zzzzzz`, expected one of `target`, `mode`";
        assert_eq!(did_you_mean(m), None);
        assert_eq!(did_you_mean("invalid type: string"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn json_paths_quote_what_needs_quoting() {
        assert_eq!(
            json_path(&[Seg::Key("source"), Seg::Key("name")]),
            "$.source.name"
        );
        assert_eq!(
            json_path(&[
                Seg::Key("tables"),
                Seg::Key("slots.players"),
                Seg::Key("primary_key"),
                Seg::Index(1)
            ]),
            "$.tables[\"slots.players\"].primary_key[1]"
        );
        assert_eq!(json_path(&[Seg::Key("a\"b")]), "$[\"a\\\"b\"]");
        assert_eq!(json_path(&[]), "$");
    }
}

#[cfg(test)]
mod apply_every_tests {
    use crate::mapping::{Catalog, MappingFile};

    fn catalog(tables: &str, defaults: &str) -> Result<Catalog, Vec<super::Problem>> {
        let text = format!(
            r#"{{"source": {{"name": "s", "bucket": "dms-bucket", "folder": "f"}},
                "bigquery": {{"project": "my-project", "dataset": "d"}},
                "defaults": {{{defaults}}}, "tables": {{{tables}}}}}"#
        );
        Catalog::from_files(&[MappingFile {
            path: "s.json".into(),
            text,
        }])
    }

    #[test]
    fn apply_every_is_an_interval_of_a_replica() {
        let c = catalog(
            r#""a.x": {"primary_key": ["id"], "apply_every": "5m"}, "a.y": {"primary_key": ["id"]}"#,
            r#""apply_every": "1h""#,
        )
        .unwrap();
        let tables = &c.sources()[0].tables;
        assert_eq!(tables[0].apply_every.map(|d| d.as_secs()), Some(300));
        assert_eq!(
            tables[1].apply_every.map(|d| d.as_secs()),
            Some(3600),
            "the default"
        );
        for value in ["30s", "2d", "25h", "m"] {
            let problems = catalog(
                &format!(r#""a.x": {{"primary_key": ["id"], "apply_every": "{value}"}}"#),
                "",
            )
            .unwrap_err();
            assert!(
                problems
                    .iter()
                    .any(|p| p.path == r#"$.tables["a.x"].apply_every"#
                        && p.message
                            .contains("is not an interval from 1 minute to 24 hours")),
                "{value}: {problems:?}"
            );
        }
        let problems =
            catalog(r#""a.x": {"mode": "changelog", "apply_every": "5m"}"#, "").unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("replica tables")),
            "{problems:?}"
        );
    }
}
