//! The committed mapping files, their JSON Schema, and every class of broken mapping.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use ferry_core::Catalog;
use ferry_core::mapping::{MappingFile, Mode};
use ferry_tests::{TempDir, ferry, mappings_dir};
use serde_json::{Value, json};

#[test]
fn every_committed_mapping_file_is_valid() {
    let catalog = Catalog::load_dir(&mappings_dir()).unwrap_or_else(|problems| {
        panic!(
            "{}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    // The seed's estate: 3 games x 2 clusters, about 70 tables.
    assert_eq!(catalog.sources().len(), 6);
    assert!(
        (60..=80).contains(&catalog.table_count()),
        "{} tables",
        catalog.table_count()
    );
    let files = std::fs::read_dir(mappings_dir()).expect("mappings/ readable");
    let json_files = files
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(json_files, catalog.sources().len(), "one source per file");
    for source in catalog.sources() {
        for t in &source.tables {
            if t.mode == Mode::Replica {
                assert!(!t.primary_key.is_empty(), "{}", t.source_table());
            }
        }
    }
}

#[test]
fn committed_json_schema_is_current() {
    let path = mappings_dir().join("schema/ferry-mapping.schema.json");
    let (code, out, err) = ferry(&[
        "mappings",
        "schema",
        "--check",
        path.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(
        code,
        0,
        "regenerate with `ferry mappings schema > {}`: {out}{err}",
        path.display()
    );
}

#[test]
fn json_schema_describes_every_field() {
    let schema = Catalog::json_schema();
    let table = &schema["$defs"]["RawTable"]["properties"];
    for field in [
        "target",
        "mode",
        "primary_key",
        "partition_by",
        "cluster_by",
        "soft_delete",
        "enabled",
        "columns",
    ] {
        assert!(
            table[field]["description"].is_string(),
            "{field} has no description: {table}"
        );
    }
    assert_eq!(
        schema["additionalProperties"],
        json!(false),
        "unknown top-level fields must be flagged in editors"
    );
}

/// A valid mapping file for source `name` writing under `folder` into `dataset`.
fn base(name: &str, folder: &str, dataset: &str) -> Value {
    json!({
        "source": {"name": name, "bucket": "acme-dms", "folder": folder},
        "bigquery": {"project": "acme-analytics", "dataset": dataset},
        "tables": {
            "db.players": {"primary_key": ["player_id"], "columns": {"is_vip": "tinyint(1)", "created_at": "datetime"}},
            "db.events": {"mode": "changelog"}
        }
    })
}

fn check(files: &[(&str, String)]) -> Vec<String> {
    let files: Vec<MappingFile> = files
        .iter()
        .map(|(name, text)| MappingFile {
            path: format!("mappings/{name}"),
            text: text.clone(),
        })
        .collect();
    // Problems as printed, without their line and column (tests/cli.rs checks those), so that
    // the file and path read as `mappings/one.json: $.path`.
    match Catalog::from_files(&files) {
        Ok(_) => Vec::new(),
        Err(problems) => problems
            .iter()
            .map(|p| {
                assert!(p.at.is_some(), "every problem has a line: {p}");
                ferry_core::Problem {
                    at: None,
                    ..p.clone()
                }
                .to_string()
            })
            .collect(),
    }
}

/// Applies `edit` to the base file `one.json` and expects exactly one problem containing every
/// one of `needles` (file, JSON path, message and fix fragments).
fn expect_one(edit: impl FnOnce(&mut Value), needles: &[&str]) {
    let mut doc = base("one", "one", "one_ds");
    edit(&mut doc);
    let problems = check(&[("one.json", doc.to_string())]);
    assert_eq!(
        problems.len(),
        1,
        "want one problem with {needles:?}, got {problems:#?}"
    );
    for needle in needles {
        assert!(
            problems[0].contains(needle),
            "{:?} lacks {needle:?}",
            problems[0]
        );
    }
    assert!(
        problems[0].starts_with("mappings/one.json: $"),
        "{}",
        problems[0]
    );
    assert!(problems[0].contains("; fix: "), "{}", problems[0]);
}

#[test]
fn base_file_is_valid() {
    assert_eq!(
        check(&[("one.json", base("one", "one", "one_ds").to_string())]),
        Vec::<String>::new()
    );
}

#[test]
fn unknown_fields_are_rejected_with_a_suggestion() {
    expect_one(
        |d| d["tables"]["db.players"]["primry_key"] = json!(["id"]),
        &[
            "$.tables[\"db.players\"].primry_key",
            "unknown field",
            "did you mean `primary_key`",
        ],
    );
    expect_one(
        |d| d["source"]["bukket"] = json!("x"),
        &["$.source.bukket", "unknown field"],
    );
    expect_one(|d| d["extra"] = json!(1), &["$.extra", "unknown field"]);
}

#[test]
fn wrong_shapes_name_the_path() {
    expect_one(
        |d| d["tables"]["db.players"]["primary_key"] = json!("player_id"),
        &[
            "$.tables[\"db.players\"].primary_key",
            "expected a sequence",
        ],
    );
    expect_one(
        |d| d["tables"]["db.events"]["mode"] = json!("upsert"),
        &["$.tables[\"db.events\"].mode", "unknown variant `upsert`"],
    );
    expect_one(
        |d| d["tables"]["db.events"]["enabled"] = json!("no"),
        &["$.tables[\"db.events\"].enabled", "expected a boolean"],
    );
    expect_one(
        |d| {
            d.as_object_mut()
                .map(|o| o.remove("bigquery"))
                .map(drop)
                .unwrap_or(())
        },
        &["missing field `bigquery`"],
    );
}

#[test]
fn json_syntax_errors_give_line_and_column() {
    let problems = check(&[(
        "one.json",
        "{\n  \"source\": {\"name\": \"one\",}\n}".into(),
    )]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("line 2"), "{}", problems[0]);
    assert!(problems[0].contains("JSON syntax"), "{}", problems[0]);
    let problems = check(&[("one.json", format!("{} {{}}", base("one", "one", "one_ds")))]);
    assert!(problems[0].contains("trailing characters"), "{problems:?}");
}

#[test]
fn a_replica_needs_a_primary_key() {
    expect_one(
        |d| d["tables"]["db.players"] = json!({}),
        &[
            "$.tables[\"db.players\"].primary_key",
            "needs a primary key",
            "\"mode\": \"changelog\"",
        ],
    );
    // ... unless the file's default mode is changelog.
    let mut doc = base("one", "one", "one_ds");
    doc["defaults"] = json!({"mode": "changelog"});
    doc["tables"]["db.audit"] = json!({});
    assert_eq!(
        check(&[("one.json", doc.to_string())]),
        Vec::<String>::new()
    );
}

#[test]
fn invalid_bigquery_names() {
    expect_one(
        |d| d["bigquery"]["dataset"] = json!("one-ds"),
        &["$.bigquery.dataset", "not '-'"],
    );
    expect_one(
        |d| d["bigquery"]["project"] = json!("Acme"),
        &["$.bigquery.project", "project id"],
    );
    expect_one(
        |d| d["tables"]["db.players"]["target"] = json!("play ers"),
        &["$.tables[\"db.players\"].target", "not ' '"],
    );
    expect_one(
        |d| d["tables"]["db.events"]["partition_by"] = json!("1st"),
        &[
            "$.tables[\"db.events\"].partition_by",
            "starts with a letter",
        ],
    );
    expect_one(
        |d| d["tables"]["db.players"]["primary_key"] = json!(["player id"]),
        &["$.tables[\"db.players\"].primary_key[0]", "column name"],
    );
    expect_one(
        |d| d["tables"]["db.players"]["columns"]["_ferry_op"] = json!("json"),
        &["columns._ferry_op", "reserved"],
    );
    // A source table whose own name BigQuery rejects needs a target.
    expect_one(
        |d| d["tables"]["db.my table"] = json!({"mode": "changelog"}),
        &["$.tables[\"db.my table\"].target", "set \"target\""],
    );
}

#[test]
fn hints_on_columns_that_cannot_take_them() {
    expect_one(
        |d| d["tables"]["db.players"]["columns"]["flags"] = json!("varchar(8)"),
        &["columns.flags", "unknown type hint", "accepted:"],
    );
    expect_one(
        |d| d["tables"]["db.players"]["columns"]["flags"] = json!("bit(65)"),
        &["columns.flags", "1 to 64"],
    );
    expect_one(
        |d| d["tables"]["db.players"]["columns"]["player_id"] = json!("json"),
        &[
            "$.tables[\"db.players\"].primary_key[0]",
            "cannot use as a key",
        ],
    );
    expect_one(
        |d| {
            d["tables"]["db.players"]["partition_by"] = json!("is_vip");
        },
        &[
            "$.tables[\"db.players\"].partition_by",
            "hinted tinyint(1) (BOOL)",
            "cannot partition",
        ],
    );
    expect_one(
        |d| {
            d["tables"]["db.players"]["cluster_by"] = json!(["player_id", "doc"]);
            d["tables"]["db.players"]["columns"]["doc"] = json!("JSON");
        },
        &["cluster_by[1]", "cannot use as a cluster column"],
    );
    // TIME can key a MERGE but not cluster a table.
    expect_one(
        |d| {
            d["tables"]["db.players"]["cluster_by"] = json!(["player_id", "cutoff"]);
            d["tables"]["db.players"]["columns"]["cutoff"] = json!("time");
        },
        &[
            "cluster_by[1]",
            "hinted time (TIME)",
            "cannot use as a cluster column",
        ],
    );
    // A hinted DATETIME/TIMESTAMP column takes every granularity; the DDL is checked in core.
    expect_one(
        |d| {
            d["tables"]["db.players"]["partition_by"] = json!("is_vip");
            d["tables"]["db.players"]["partition_granularity"] = json!("HOUR");
        },
        &["partition_by", "cannot partition"],
    );
}

#[test]
fn partitioning_and_clustering_rules() {
    expect_one(
        |d| d["tables"]["db.events"]["partition_granularity"] = json!("DAY"),
        &["partition_granularity without partition_by"],
    );
    expect_one(
        |d| d["tables"]["db.players"]["cluster_by"] = json!(["a", "b", "c", "d", "e"]),
        &["cluster_by", "at most 4"],
    );
    expect_one(
        |d| d["tables"]["db.players"]["cluster_by"] = json!(["a", "a"]),
        &["cluster_by[1]", "listed twice"],
    );
    expect_one(
        |d| d["tables"]["db.events"]["soft_delete"] = json!(true),
        &["soft_delete applies to replica tables"],
    );
}

#[test]
fn source_rules() {
    expect_one(
        |d| d["source"]["name"] = json!("two"),
        &[
            "$.source.name",
            "differs from the file name",
            "rename the file to two.json",
        ],
    );
    expect_one(
        |d| d["source"]["bucket"] = json!("Acme_DMS"),
        &["$.source.bucket"],
    );
    expect_one(
        |d| d["source"]["folder"] = json!("one/"),
        &["$.source.folder", "write it as \"one\""],
    );
    expect_one(
        |d| d["tables"] = json!({}),
        &["$.tables", "no tables are mapped"],
    );
    expect_one(
        |d| d["tables"]["nodot"] = json!({}),
        &["$.tables.nodot", "not \"schema.table\""],
    );
}

#[test]
fn a_source_table_mapped_twice() {
    // Duplicate JSON keys: a plain map would silently keep the last one.
    let text = base("one", "one", "one_ds").to_string().replacen(
        "\"db.events\":{\"mode\":\"changelog\"}",
        "\"db.events\":{\"mode\":\"changelog\"},\"db.events\":{\"mode\":\"changelog\",\"target\":\"events2\"}",
        1,
    );
    assert!(text.matches("db.events").count() == 2, "{text}");
    let problems = check(&[("one.json", text)]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("$.tables[\"db.events\"]: source table \"db.events\" is mapped twice"),
        "{}",
        problems[0]
    );
    // Names differing only in case are the same table on a case-insensitive MySQL.
    expect_one(
        |d| d["tables"]["db.Events"] = json!({"mode": "changelog", "target": "events_upper"}),
        &["mapped twice", "also as \"db."],
    );
}

#[test]
fn two_sources_into_one_target() {
    // Same dataset, same table name from two sources.
    let problems = check(&[
        ("one.json", base("one", "one", "shared").to_string()),
        ("two.json", base("two", "two", "shared").to_string()),
    ]);
    assert_eq!(
        problems.len(),
        3,
        "players, players_changelog and events collide: {problems:#?}"
    );
    assert!(
        problems
            .iter()
            .all(|p| p.starts_with("mappings/two.json: $.tables[")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.contains(
            "acme-analytics.shared.players is also written by \"db.players\" in mappings/one.json"
        )),
        "{problems:#?}"
    );
    // A replica's change log colliding with another table's name in the same file.
    expect_one(
        |d| d["tables"]["db.players_changelog"] = json!({"mode": "changelog"}),
        &["players_changelog is also written by \"db.players\""],
    );
}

#[test]
fn overlapping_bucket_folders() {
    for (a, b) in [("one", "one/two"), ("one", "one"), ("", "two")] {
        let problems = check(&[
            ("one.json", base("one", a, "ds_one").to_string()),
            ("two.json", base("two", b, "ds_two").to_string()),
        ]);
        assert_eq!(problems.len(), 1, "{a:?} vs {b:?}: {problems:#?}");
        assert!(
            problems[0].contains("$.source.folder") && problems[0].contains("overlaps"),
            "{}",
            problems[0]
        );
    }
    // Siblings sharing a name prefix do not overlap.
    let ok = check(&[
        ("one.json", base("one", "game", "ds_one").to_string()),
        ("two.json", base("two", "game-b", "ds_two").to_string()),
    ]);
    assert_eq!(ok, Vec::<String>::new());
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut doc = base("one", "one", "one_ds");
    doc["bigquery"]["dataset"] = json!("bad-ds");
    doc["tables"]["db.players"]["primary_key"] = json!([]);
    doc["tables"]["db.events"]["cluster_by"] = json!(["a", "b", "c", "d", "e"]);
    let problems = check(&[("one.json", doc.to_string())]);
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

#[test]
fn load_dir_reads_only_json_files_and_reports_an_empty_folder() {
    let dir = TempDir::new("mappings-dir");
    assert!(
        Catalog::load_dir(dir.path()).expect_err("empty")[0]
            .message
            .contains("no *.json mapping files")
    );
    dir.write("one.json", &base("one", "one", "one_ds").to_string());
    dir.write("README.md", "not a mapping");
    std::fs::create_dir_all(dir.path().join("schema")).expect("mkdir");
    dir.write("schema/other.json", "not even json");
    let catalog = Catalog::load_dir(dir.path()).expect("valid");
    assert_eq!(catalog.table_count(), 2);
    let missing = Catalog::load_dir(&dir.path().join("nope")).expect_err("missing folder");
    assert!(
        missing[0]
            .message
            .contains("cannot read the mappings folder")
    );
}

#[test]
fn folders_that_would_inject_into_iam_or_the_deploy_resolver_are_refused() {
    for (folder, needle) in [
        ("x${env:SOMETHING}", "'$'"),
        ("*", "'*'"),
        ("cdc/a?b", "'?'"),
        ("cdc/[x]", "'['"),
        ("cdc/../other", "\"..\" segment"),
    ] {
        expect_one(
            |d| d["source"]["folder"] = json!(folder),
            &["mappings/one.json", "$.source.folder", needle],
        );
    }
    // Names with DMS pattern characters are fine: the generated rules escape them.
    let mut doc = base("one", "one", "one_ds");
    doc["tables"]["db.100%_bonus"] = json!({"mode": "changelog", "target": "bonus_pct"});
    assert_eq!(
        check(&[("one.json", doc.to_string())]),
        Vec::<String>::new()
    );
    let catalog = Catalog::from_files(&[MappingFile {
        path: "mappings/one.json".into(),
        text: doc.to_string(),
    }])
    .unwrap();
    let rules = ferry_core::deploy::dms_table_mappings(&catalog.sources()[0]);
    assert!(rules.to_string().contains("\"100[%][_]bonus\""), "{rules}");
}
