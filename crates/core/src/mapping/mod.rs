//! Mapping files: which source tables ferry loads, and where they land in BigQuery.
//!
//! One file per DMS source in `mappings/`, edited by analysts through pull requests. Loading a
//! directory parses and checks every file and then the files together; the result is a
//! [`Catalog`] or the complete list of [`Problem`]s, each naming file, JSON path and fix.
//!
//! # Layout
//! - [`raw`]: the JSON format as written (serde), also the source of the JSON Schema.
//! - [`hint`]: per-column MySQL type hints.
//! - [`model`]: the validated types the rest of ferry uses.
//! - `validate`: the checks, per file and across files.
//! - `locate`: a problem's line and column in its file.

pub mod hint;
mod locate;
pub mod model;
pub mod raw;
mod validate;

use std::path::Path;

pub use hint::ColumnHint;
pub use model::{PartitionSpec, Source, TableMapping, TableRef};
pub use raw::{Granularity, Mode, OnTruncate, OnTypeChange};
pub use validate::{CHANGELOG_SUFFIX, MAX_CLUSTER_COLUMNS, Problem, parse_interval};

/// Every validated mapping: the sources, each with its tables.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    sources: Vec<Source>,
}

/// A mapping file's name and text, for [`Catalog::from_files`].
#[derive(Debug, Clone)]
pub struct MappingFile {
    /// How problems name the file, e.g. `mappings/slots-eu.json`.
    pub path: String,
    /// The file's JSON text.
    pub text: String,
}

impl Catalog {
    /// Reads every `*.json` file directly in `dir` (not subfolders: `schema/` lives there) and
    /// validates them together.
    pub fn load_dir(dir: &Path) -> Result<Catalog, Vec<Problem>> {
        let problem = |message: String, fix: &str| Problem {
            file: dir.display().to_string(),
            path: "$".into(),
            message,
            fix: fix.into(),
            at: None,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![problem(
                format!("cannot read the mappings folder: {e}"),
                "pass the folder holding the *.json mapping files",
            )]
        })?;
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| {
                    vec![problem(
                        format!("cannot list the mappings folder: {e}"),
                        "check its permissions",
                    )]
                })?
                .path();
            if path.is_file() && path.extension().is_some_and(|e| e == "json") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut files = Vec::with_capacity(paths.len());
        let mut problems = Vec::new();
        for path in paths {
            match std::fs::read_to_string(&path) {
                Ok(text) => files.push(MappingFile {
                    path: path.display().to_string(),
                    text,
                }),
                Err(e) => problems.push(Problem {
                    file: path.display().to_string(),
                    path: "$".into(),
                    message: format!("cannot read the file: {e}"),
                    fix: "make it a readable UTF-8 JSON file".into(),
                    at: None,
                }),
            }
        }
        if files.is_empty() && problems.is_empty() {
            problems.push(problem(
                "no *.json mapping files found".into(),
                "add one mapping file per DMS source",
            ));
        }
        match Catalog::from_files(&files) {
            Ok(catalog) if problems.is_empty() => Ok(catalog),
            Ok(_) => Err(problems),
            Err(more) => {
                problems.extend(more);
                Err(problems)
            }
        }
    }

    /// Validates mapping files given as text (each file's name without `.json` must be its
    /// source's name).
    pub fn from_files(files: &[MappingFile]) -> Result<Catalog, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut sources = Vec::with_capacity(files.len());
        for file in files {
            let name = file.path.rsplit(['/', '\\']).next().unwrap_or(&file.path);
            let stem = name.strip_suffix(".json").unwrap_or(name);
            let (source, found) = validate::validate_file(&file.path, stem, &file.text);
            problems.extend(found);
            sources.extend(source);
        }
        problems.extend(validate::check_across(&sources));
        for p in &mut problems {
            if p.at.is_none()
                && let Some(file) = files.iter().find(|f| f.path == p.file)
            {
                p.at = locate::locate(&file.text, &p.path);
            }
        }
        // In each file, in the order of the text.
        problems.sort_by(|a, b| a.file.cmp(&b.file).then(a.at.cmp(&b.at)));
        if problems.is_empty() {
            Ok(Catalog { sources })
        } else {
            Err(problems)
        }
    }

    /// The catalog with the deployment's key for hashed columns set on every source.
    pub fn with_hash_key(mut self, key: crate::hashkey::HashKey) -> Catalog {
        for s in &mut self.sources {
            s.hash_key = Some(key.clone());
        }
        self
    }

    /// Whether any enabled table hashes a column (the loader then needs a hash key).
    pub fn hashes_columns(&self) -> bool {
        self.sources
            .iter()
            .flat_map(|s| &s.tables)
            .any(|t| t.enabled && !t.hash.is_empty())
    }

    /// The sources, in file-name order.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The source named `name`.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// How many tables are mapped, enabled or not.
    pub fn table_count(&self) -> usize {
        self.sources.iter().map(|s| s.tables.len()).sum()
    }

    /// The JSON Schema of a mapping file, for editors (`mappings/schema/ferry-mapping.schema.json`).
    pub fn json_schema() -> serde_json::Value {
        let schema = schemars::schema_for!(raw::RawMappingFile);
        serde_json::to_value(schema).unwrap_or_default()
    }
}
