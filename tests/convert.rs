//! The conversion, end to end on simulated DMS files: every value of the simulator's nasty
//! cases survives exactly, LOAD and CDC files give one schema, the derived schemas match the
//! golden files, and bad input fails with a clear, classified error.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, ListArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use ferry_convert::{
    ConvertError, ConvertOutcome, ConvertRequest, RangeReader, RangeSource, canonical, convert,
};
use ferry_core::key::DmsObject;
use ferry_core::mapping::{Catalog, MappingFile};
use ferry_core::schema::{TableSchema, meta};
use ferry_core::{Source, TableMapping, plan_object};
use ferry_sim::{Manifest, SimOptions, TableManifest, simulate};
use ferry_tests::{TempDir, repo_root};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value as Json};

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/convert").join(name)
}

fn lab_catalog(edit: impl FnOnce(&mut Json)) -> Catalog {
    let mut doc: Json =
        serde_json::from_str(&std::fs::read_to_string(fixture("types-lab.json")).unwrap()).unwrap();
    edit(&mut doc);
    Catalog::from_files(&[MappingFile {
        path: "types-lab.json".into(),
        text: doc.to_string(),
    }])
    .unwrap()
}

fn sim(catalog: &Catalog, opts: SimOptions) -> (TempDir, Manifest) {
    let dir = TempDir::new("convert");
    let manifest = simulate(catalog, &opts, dir.path()).unwrap();
    (dir, manifest)
}

fn small() -> SimOptions {
    SimOptions {
        rows: 250,
        minutes: 6,
        changes_per_minute: 30,
        row_group_rows: 64,
        manifest_rows: 100_000,
        ..SimOptions::default()
    }
}

struct Converted {
    object: DmsObject,
    outcome: ConvertOutcome,
    rows: Vec<Map<String, Json>>,
}

fn read_rows(bytes: Bytes) -> Vec<Map<String, Json>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    reader.flat_map(|b| canonical::rows(&b.unwrap())).collect()
}

fn lookup<'c>(catalog: &'c Catalog, key: &str) -> (&'c Source, DmsObject, &'c TableMapping) {
    let plan = plan_object(catalog, None, key, None);
    assert!(plan.skip.is_none(), "{key}: {:?}", plan.skip);
    (
        plan.source.unwrap(),
        plan.object.unwrap(),
        plan.table.unwrap(),
    )
}

/// Converts every file of a table in the order DMS wrote them (the manifest's), carrying the
/// table's schema from file to file; each file dated as S3 would date it.
fn convert_table(catalog: &Catalog, bucket: &Path, table: &TableManifest) -> Vec<Converted> {
    let objects: Vec<DmsObject> = table.files.iter().map(|k| lookup(catalog, k).1).collect();
    let mut known: Option<TableSchema> = None;
    let mut out = Vec::new();
    for object in objects {
        let (source, _, mapping) = lookup(catalog, &object.key);
        let input = RangeReader::new(Arc::new(
            std::fs::File::open(bucket.join(&object.key)).unwrap(),
        ));
        let written = std::fs::metadata(bucket.join(&object.key))
            .unwrap()
            .modified()
            .unwrap();
        let request = ConvertRequest {
            source,
            table: mapping,
            object: &object,
            object_time_micros: Some(
                written
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_micros() as i64,
            ),
            known: known.as_ref(),
        };
        let mut buf = Vec::new();
        let outcome =
            convert(&input, &request, &mut buf).unwrap_or_else(|e| panic!("{}: {e}", object.key));
        assert_eq!(outcome.bytes_written, buf.len() as u64);
        let size = std::fs::metadata(bucket.join(&object.key)).unwrap().len();
        assert!(
            outcome.bytes_read <= size,
            "{}: read {} of {size} bytes: nothing is read twice",
            object.key,
            outcome.bytes_read
        );
        let rows = read_rows(buf.into());
        known = Some(outcome.schema.clone());
        out.push(Converted {
            object,
            outcome,
            rows,
        });
    }
    out
}

/// A converted row's source columns: ferry's metadata left out, and a column that continued
/// under `<column>__<type>` after a type change read back under its source name.
fn data_columns(row: &Map<String, Json>) -> Map<String, Json> {
    let mut out = Map::new();
    for (k, v) in row.iter().filter(|(k, _)| !k.starts_with("_ferry_")) {
        let source = match k.rsplit_once("__") {
            Some((name, ty))
                if ferry_core::bqtype::BqType::parse(&ty.to_ascii_uppercase()).is_some() =>
            {
                name
            }
            _ => k.as_str(),
        };
        if !v.is_null() || !out.contains_key(source) {
            out.insert(source.to_owned(), v.clone());
        }
    }
    out
}

/// Expected and actual rows agree column by column; a column the row's file did not have yet
/// reads as NULL.
fn same_row(expected: &Map<String, Json>, actual: &Map<String, Json>) -> bool {
    expected
        .iter()
        .all(|(k, v)| actual.get(k).unwrap_or(&Json::Null) == v)
        && actual
            .keys()
            .all(|k| k.starts_with("_ferry_") || expected.contains_key(k))
}

#[test]
fn every_value_survives_and_the_replica_matches_the_simulator() {
    let catalog = lab_catalog(|_| {});
    let (dir, manifest) = sim(&catalog, small());
    assert_eq!(manifest.tables.len(), 3);
    for table in &manifest.tables {
        let mapping = catalog.sources()[0]
            .tables
            .iter()
            .find(|t| t.source_table() == table.table)
            .unwrap();
        let converted = convert_table(&catalog, dir.path(), table);
        let expected = table.rows.as_ref().expect("small tables list their rows");

        if table.mode == "replica" {
            let key = |row: &Map<String, Json>| -> String {
                Json::Array(
                    mapping
                        .primary_key
                        .iter()
                        .map(|k| row.get(k).cloned().unwrap_or(Json::Null))
                        .collect(),
                )
                .to_string()
            };
            // The files replayed in the order DMS wrote them; a load run's first file replaces
            // the table (a reload), and a delete may name a row the full load never read.
            let mut state: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
            for c in &converted {
                if c.object.is_run_start() {
                    state.clear();
                }
                for row in &c.rows {
                    match row[meta::OP].as_str().unwrap() {
                        "DELETE" => {
                            state.remove(&key(row));
                        }
                        _ => {
                            state.insert(key(row), data_columns(row));
                        }
                    }
                }
            }
            assert_eq!(state.len() as u64, table.expected_rows, "{}", table.table);
            for want in expected {
                let got = state
                    .get(&key(want))
                    .unwrap_or_else(|| panic!("{}: row {} missing", table.table, key(want)));
                assert!(
                    same_row(want, got),
                    "{}: row {}\n want {want:?}\n  got {got:?}",
                    table.table,
                    key(want)
                );
            }
        } else {
            let mut got: Vec<Map<String, Json>> = converted
                .iter()
                .flat_map(|c| c.rows.iter())
                .map(|r| {
                    let mut d = data_columns(r);
                    d.insert(meta::OP.into(), r[meta::OP].clone());
                    d
                })
                .collect();
            assert_eq!(got.len(), expected.len(), "{}", table.table);
            // The change log keeps the simulator's order exactly.
            for (i, (want, got)) in expected.iter().zip(&mut got).enumerate() {
                assert!(
                    same_row(want, got),
                    "{} change {i}\n want {want:?}\n  got {got:?}",
                    table.table
                );
            }
        }

        let ops = converted.iter().fold([0u64; 4], |acc, c| {
            let o = c.outcome.ops;
            [
                acc[0] + o.load,
                acc[1] + o.insert,
                acc[2] + o.update,
                acc[3] + o.delete,
            ]
        });
        let ch = table.changes;
        assert_eq!(
            ops,
            [ch.load, ch.insert, ch.update, ch.delete],
            "{}",
            table.table
        );
    }
}

#[test]
fn metadata_columns_identify_and_order_every_row() {
    let catalog = lab_catalog(|_| {});
    let (dir, manifest) = sim(&catalog, small());
    let table = manifest
        .tables
        .iter()
        .find(|t| t.table == "lab.accounts")
        .unwrap();
    let converted = convert_table(&catalog, dir.path(), table);
    let start = "2026-11-26T00:00:00.000000Z";
    let mut last_seq = String::new();
    let mut last_change = String::new();
    let mut newest_load_ts = String::new();
    let (mut older_than_load, mut out_of_order) = (0, 0);
    for c in &converted {
        // Files in the order DMS wrote them are in source order.
        let seq = c.outcome.file_seq.clone();
        assert!(seq > last_seq, "{}: {seq} after {last_seq}", c.object.key);
        last_seq = seq.clone();
        let mut last_ts = String::new();
        for (i, row) in c.rows.iter().enumerate() {
            assert_eq!(row[meta::ROW], Json::String(i.to_string()));
            assert_eq!(row[meta::FILE], Json::String(c.object.key.clone()));
            assert_eq!(row[meta::FILE_SEQ], Json::String(seq.clone()));
            assert_eq!(row[meta::SOURCE], Json::String("types-lab".into()));
            let ts = row[meta::COMMIT_TS].as_str().unwrap().to_owned();
            let change = row[meta::CHANGE_SEQ].as_str().unwrap().to_owned();
            if c.object.kind() == ferry_core::FileKind::FullLoad {
                assert!(ts.as_str() >= start, "full load: the transfer time {ts}");
                assert_eq!(
                    change, "",
                    "DMS leaves AR_H_CHANGE_SEQ empty in a full load"
                );
                newest_load_ts = newest_load_ts.max(ts.clone());
            } else {
                assert!(
                    ts.ends_with(":00.000000Z")
                        || ts[17..].starts_with(|c: char| c.is_ascii_digit())
                            && ts.ends_with(".000000Z"),
                    "whole seconds: {ts}"
                );
                assert_eq!(change.len(), 35, "{change}");
                assert!(change > last_change, "AR_H_CHANGE_SEQ grows: {change}");
                last_change = change;
                older_than_load += usize::from(ts < newest_load_ts);
                out_of_order += usize::from(ts < last_ts);
            }
            last_ts = ts;
        }
        assert_eq!(c.outcome.commit_ts_fallbacks, 0);
    }
    // The hard cases happened: changes made during the full load carry older timestamps than
    // the full-load rows they override, and binlog timestamps disagree with commit order.
    assert!(older_than_load > 0, "changes during the full load");
    assert!(
        out_of_order > 0,
        "whole-second timestamps out of commit order"
    );
    // Date partition folders in the declared DDMMYYYY/DASH layout were read.
    assert!(
        converted
            .iter()
            .any(|c| c.object.key.contains("/26-11-2026/")),
        "{:?}",
        table.files
    );
}

#[test]
fn load_and_cdc_files_yield_one_schema_and_the_added_column_is_reported_once() {
    let catalog = lab_catalog(|_| {});
    let (dir, manifest) = sim(&catalog, small());
    for table in &manifest.tables {
        let converted = convert_table(&catalog, dir.path(), table);
        let last = &converted.last().unwrap().outcome.schema;
        let mut added = Vec::new();
        for c in &converted {
            let fields = &c.outcome.schema.fields;
            assert_eq!(
                fields[..],
                last.fields[..fields.len()],
                "{}: a prefix of the final schema",
                c.object.key
            );
            added.extend(c.outcome.added.iter().map(|f| f.name.clone()));
        }
        // Added once, unless the files before it are gone (a truncate deletes them); a type
        // change adds the column's typed continuation, once.
        let from_start = converted[0]
            .outcome
            .schema
            .field(ferry_sim::model::ADDED_COLUMN)
            .is_some();
        let mut want: Vec<&str> = Vec::new();
        if table.cases.iter().any(|c| c.starts_with("type_change@")) {
            want.push("level__string");
        }
        if !from_start {
            want.push("promo_code");
        }
        added.sort();
        assert_eq!(added, want, "{}", table.table);
        assert!(
            converted[0].outcome.columns_copied > 10,
            "unchanged columns are copied, not decoded"
        );
    }
}

#[test]
fn derived_schemas_match_the_golden_files() {
    let catalog = lab_catalog(|_| {});
    let (dir, manifest) = sim(&catalog, small());
    let update = std::env::var_os("FERRY_UPDATE_GOLDEN").is_some();
    for table in &manifest.tables {
        let converted = convert_table(&catalog, dir.path(), table);
        let schema = &converted.last().unwrap().outcome.schema;
        let text = serde_json::to_string_pretty(&schema.fields).unwrap() + "\n";
        let path = fixture(&format!("golden/{}.schema.json", table.table));
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            text,
            golden,
            "{} differs; rerun with FERRY_UPDATE_GOLDEN=1 and review the diff",
            path.display()
        );
    }
    // The traps, spelled out.
    let golden: Json = serde_json::from_str(
        &std::fs::read_to_string(fixture("golden/lab.accounts.schema.json")).unwrap(),
    )
    .unwrap();
    let types: BTreeMap<&str, &str> = golden
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["type"].as_str().unwrap()))
        .collect();
    for (column, bq) in [
        ("account_id", "NUMERIC"), // bigint unsigned: above 2^63
        ("is_active", "BOOL"),     // tinyint(1)
        ("verified", "BOOL"),      // bit(1)
        ("flags", "INT64"),        // bit(8)
        ("mask", "NUMERIC"),       // bit(64)
        ("opened_at", "DATETIME"), // wall clock
        ("seen_at", "TIMESTAMP"),  // UTC
        ("profile", "STRING"),     // json: text in the change log, JSON in the replica
        ("daily_cutoff", "TIME"),
        ("amount", "NUMERIC"),           // DECIMAL(20,4)
        ("jackpot_share", "BIGNUMERIC"), // DECIMAL(65,30)
        ("external_ref", "NUMERIC"),     // unhinted BIGINT UNSIGNED
        ("points", "INT64"),             // INT UNSIGNED
        ("updated_at", "TIMESTAMP"),
        ("birth_date", "DATE"),
        ("avatar", "BYTES"),
        ("stars", "INT64"),       // TINYINT (INT8)
        ("spins_left", "INT64"),  // TINYINT UNSIGNED (UINT8)
        ("seat_count", "INT64"),  // SMALLINT UNSIGNED (UINT16)
        ("xp", "INT64"),          // MEDIUMINT (INT32)
        ("signup_year", "INT64"), // YEAR (INT16)
        ("score", "FLOAT64"),
        (meta::OP, "STRING"),
        (meta::COMMIT_TS, "TIMESTAMP"),
    ] {
        assert_eq!(types.get(column), Some(&bq), "{column}");
    }
}

/// Writes a parquet file of the given columns to bytes.
fn parquet_bytes(columns: Vec<(&str, ArrayRef)>) -> Bytes {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf.into()
}

fn convert_bytes(
    catalog: &Catalog,
    key: &str,
    bytes: Bytes,
    known: Option<&TableSchema>,
) -> Result<ConvertOutcome, ConvertError> {
    convert_source(catalog, key, Arc::new(bytes), known)
}

fn convert_source(
    catalog: &Catalog,
    key: &str,
    source: Arc<dyn RangeSource>,
    known: Option<&TableSchema>,
) -> Result<ConvertOutcome, ConvertError> {
    let (src, object, table) = lookup(catalog, key);
    let request = ConvertRequest {
        source: src,
        table,
        object: &object,
        object_time_micros: None,
        known,
    };
    convert(&RangeReader::new(source), &request, Vec::new())
}

/// Converts `input` as object `key` of a new table; the outcome and the converted bytes.
fn convert_out(catalog: &Catalog, key: &str, input: Vec<u8>) -> (ConvertOutcome, Vec<u8>) {
    let (outcome, out) = try_convert_out(catalog, key, input);
    (outcome.unwrap(), out)
}

/// [`convert_out`] returning the converter's result.
fn try_convert_out(
    catalog: &Catalog,
    key: &str,
    input: Vec<u8>,
) -> (Result<ConvertOutcome, ConvertError>, Vec<u8>) {
    let (src, object, table) = lookup(catalog, key);
    let request = ConvertRequest {
        source: src,
        table,
        object: &object,
        object_time_micros: None,
        known: None,
    };
    let mut out = Vec::new();
    let outcome = convert(
        &RangeReader::new(Arc::new(Bytes::from(input))),
        &request,
        &mut out,
    );
    (outcome, out)
}

const CDC_KEY: &str = "lab/dms/lab/accounts/20261126-101500123.parquet";

fn cdc_columns(op: &str, cutoff: &str) -> Vec<(&'static str, ArrayRef)> {
    vec![
        ("Op", Arc::new(StringArray::from(vec!["I", op])) as ArrayRef),
        (
            "dms_ts",
            Arc::new(StringArray::from(vec![
                "2026-11-26 10:14:00.000001",
                "2026-11-26 10:14:00.000002",
            ])),
        ),
        (
            "account_id",
            Arc::new(arrow_array::UInt64Array::from(vec![1, u64::MAX])),
        ),
        (
            "daily_cutoff",
            Arc::new(StringArray::from(vec!["12:00:00", cutoff])),
        ),
    ]
}

#[test]
fn corrupt_and_truncated_objects_are_permanent_errors() {
    let catalog = lab_catalog(|_| {});
    let good = parquet_bytes(cdc_columns("U", "13:00:00"));
    let ok = convert_bytes(&catalog, CDC_KEY, good.clone(), None).unwrap();
    assert_eq!((ok.rows, ok.ops.insert, ok.ops.update), (2, 1, 1));
    for (what, bytes) in [
        ("truncated", good.slice(..good.len() / 2)),
        ("footer only", good.slice(good.len() - 8..)),
        ("empty", Bytes::new()),
        ("not parquet", Bytes::from_static(b"Op,account_id\nI,1\n")),
        ("corrupt pages", {
            let mut b = good.to_vec();
            for x in &mut b[4..good.len() / 2] {
                *x ^= 0x5A;
            }
            b.into()
        }),
    ] {
        let err = convert_bytes(&catalog, CDC_KEY, bytes, None).expect_err(what);
        assert!(
            matches!(err, ConvertError::Corrupt { .. }),
            "{what}: {err:?}"
        );
        assert!(!err.is_retryable(), "{what}");
        assert!(
            err.to_string().starts_with("not a readable parquet file"),
            "{what}: {err}"
        );
    }
}

#[test]
fn a_failing_read_is_retryable() {
    struct Flaky(Bytes);
    impl RangeSource for Flaky {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            if offset == 4 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by peer",
                ));
            }
            RangeSource::read_at(&self.0, offset, buf)
        }
    }
    let catalog = lab_catalog(|_| {});
    let good = parquet_bytes(cdc_columns("U", "13:00:00"));
    let err = convert_source(&catalog, CDC_KEY, Arc::new(Flaky(good)), None).unwrap_err();
    assert!(matches!(err, ConvertError::Read { .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[test]
fn bad_values_name_the_column_row_and_value() {
    let catalog = lab_catalog(|_| {});
    let err = convert_bytes(
        &catalog,
        CDC_KEY,
        parquet_bytes(cdc_columns("X", "13:00:00")),
        None,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "row 1: DMS Op is \"X\", expected I, U or D"
    );
    let err = convert_bytes(
        &catalog,
        CDC_KEY,
        parquet_bytes(cdc_columns("U", "838:59:59")),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(&err, ConvertError::BadValue { column, row: 1, value, .. } if column == "daily_cutoff" && value == "838:59:59"),
        "{err}"
    );
    assert!(err.to_string().contains("remove the hint"), "{err}");
    assert!(!err.is_retryable());
}

#[test]
fn hints_that_do_not_fit_and_schema_conflicts() {
    let catalog = lab_catalog(|d| d["tables"]["lab.accounts"]["columns"]["amount"] = "json".into());
    let mut cols = cdc_columns("U", "13:00:00");
    cols.push(("amount", Arc::new(Int64Array::from(vec![1, 2]))));
    let err = convert_bytes(&catalog, CDC_KEY, parquet_bytes(cols.clone()), None).unwrap_err();
    assert!(
        matches!(&err, ConvertError::HintMismatch { column, hint, .. } if column == "amount" && hint == "json"),
        "{err}"
    );

    // A table that stops on type changes refuses the file, naming both types.
    let catalog = lab_catalog(|d| d["tables"]["lab.accounts"]["on_type_change"] = "stop".into());
    let known = TableSchema {
        fields: vec![ferry_core::schema::BqField {
            name: "amount".into(),
            bq_type: ferry_core::bqtype::BqType::String,
            mode: ferry_core::schema::FieldMode::Nullable,
            description: None,
        }],
    };
    let err = convert_bytes(&catalog, CDC_KEY, parquet_bytes(cols), Some(&known))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "column \"amount\": the table has it as STRING, this file as INT64; BigQuery cannot change a column's type on load. Fix: "
        ),
        "{err}"
    );
    // The reason names both fixes: a backfill after a corrected hint, or a new column.
    assert!(
        err.contains("ferry backfill --source S --table T --direct")
            && err.contains("\"on_type_change\": \"new_column\"")
            && err.contains("amount__<type>"),
        "{err}"
    );
}

#[test]
fn unloadable_columns_are_named() {
    let catalog = lab_catalog(|_| {});
    let mut cols = cdc_columns("U", "13:00:00");
    cols.push(("my col", Arc::new(Int64Array::from(vec![1, 2]))));
    let err = convert_bytes(&catalog, CDC_KEY, parquet_bytes(cols), None).unwrap_err();
    assert!(
        matches!(&err, ConvertError::InvalidColumnName { column, .. } if column == "my col"),
        "{err}"
    );

    let mut cols = cdc_columns("U", "13:00:00");
    let list = ListArray::from_iter_primitive::<arrow_array::types::Int32Type, _, _>(vec![
        Some(vec![Some(1)]),
        None,
    ]);
    cols.push(("scores", Arc::new(list)));
    let err = convert_bytes(&catalog, CDC_KEY, parquet_bytes(cols), None).unwrap_err();
    assert!(
        matches!(&err, ConvertError::UnsupportedType { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("scores"), "{err}");
}

#[test]
fn a_file_without_rows_converts_to_a_loadable_empty_file() {
    let catalog = lab_catalog(|_| {});
    let schema = Arc::new(Schema::new(vec![
        Field::new("Op", DataType::Utf8, true),
        Field::new("account_id", DataType::UInt64, true),
    ]));
    let mut buf = Vec::new();
    ArrowWriter::try_new(&mut buf, schema, None)
        .unwrap()
        .close()
        .unwrap();
    let (outcome, out) = convert_out(&catalog, CDC_KEY, buf);
    assert_eq!((outcome.rows, outcome.row_groups), (0, 0));
    assert!(read_rows(out.into()).is_empty());
}

#[test]
fn gzip_files_convert_too() {
    let catalog = lab_catalog(|_| {});
    let (dir, manifest) = sim(
        &catalog,
        SimOptions {
            gzip: true,
            ..small()
        },
    );
    let table = manifest
        .tables
        .iter()
        .find(|t| t.table == "lab.events")
        .unwrap();
    let converted = convert_table(&catalog, dir.path(), table);
    let rows: usize = converted.iter().map(|c| c.rows.len()).sum();
    assert_eq!(rows as u64, table.expected_rows);
}

/// Every file under `dir`, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn the_simulator_is_deterministic_for_a_seed() {
    let catalog = lab_catalog(|_| {});
    let (a, ma) = sim(&catalog, small());
    let (b, mb) = sim(&catalog, small());
    let (ta, tb) = (tree(a.path()), tree(b.path()));
    assert!(!ta.is_empty());
    assert!(ta == tb, "same seed, same bytes");
    assert_eq!(
        serde_json::to_string(&ma).unwrap(),
        serde_json::to_string(&mb).unwrap()
    );
    let (c, _) = sim(&catalog, SimOptions { seed: 2, ..small() });
    assert!(tree(c.path()) != ta, "another seed, other values");
}

#[test]
fn full_load_files_with_op_include_op_for_full_load() {
    // IncludeOpForFullLoad=true: DMS writes Op = "I" in LOAD files too. They are full-load rows.
    let catalog = lab_catalog(|_| {});
    let key = "lab/dms/lab/accounts/LOAD00000001.parquet";
    let bytes = parquet_bytes(cdc_columns("I", "13:00:00"));
    let (src, object, table) = lookup(&catalog, key);
    let request = ConvertRequest {
        source: src,
        table,
        object: &object,
        object_time_micros: None,
        known: None,
    };
    let mut out = Vec::new();
    let outcome = convert(&RangeReader::new(Arc::new(bytes)), &request, &mut out).unwrap();
    assert_eq!((outcome.ops.load, outcome.ops.insert), (2, 0));
    let rows = read_rows(out.into());
    assert!(
        rows.iter()
            .all(|r| r[meta::OP] == "LOAD" && !r.contains_key("Op") && !r.contains_key("dms_ts")),
        "{rows:?}"
    );
    assert_eq!(rows[1]["account_id"], "18446744073709551615");
    assert_eq!(rows[1][meta::COMMIT_TS], "2026-11-26T10:14:00.000002Z");
}

#[test]
fn a_full_load_file_of_3m_rows_in_one_row_group_converts_with_every_column_complete() {
    use parquet::file::properties::WriterProperties;
    let catalog = lab_catalog(|_| {});
    let rows = 3_000_000usize;
    let schema = Arc::new(Schema::new(vec![
        Field::new("dms_ts", DataType::Utf8, false),
        Field::new("account_id", DataType::UInt64, true),
    ]));
    let ts = StringArray::from_iter_values(std::iter::repeat_n("2026-11-26 10:00:00.000000", rows));
    let ids = arrow_array::UInt64Array::from_iter_values(0..rows as u64);
    let batch =
        RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(ts), Arc::new(ids)]).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    drop(batch);
    let (outcome, out) = convert_out(&catalog, "lab/dms/lab/accounts/LOAD00000001.parquet", buf);
    assert_eq!((outcome.rows, outcome.row_groups), (rows as u64, 1));
    let out_bytes = Bytes::from(out);
    let reader = parquet::file::reader::SerializedFileReader::new(out_bytes.clone()).unwrap();
    use parquet::file::reader::FileReader;
    let meta = reader.metadata();
    assert_eq!(meta.file_metadata().num_rows(), rows as i64);
    for rg in meta.row_groups() {
        for c in rg.columns() {
            assert_eq!(c.num_values(), rg.num_rows(), "{}", c.column_path());
        }
    }
    // The values round-trip: every id in order, every constant column complete.
    drop(reader);
    let bytes = out_bytes;
    let mut next_id: u64 = 0;
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    for batch in builder.with_batch_size(1 << 20).build().unwrap() {
        let batch = batch.unwrap();
        let ids = batch
            .column_by_name("account_id")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::Decimal128Array>()
            .map(|a| a.iter().map(|v| v.unwrap() as u64).collect::<Vec<_>>())
            .unwrap();
        for id in ids {
            assert_eq!(id, next_id);
            next_id += 1;
        }
        let files = batch.column_by_name("_ferry_file").unwrap();
        assert_eq!(files.null_count(), 0);
    }
    assert_eq!(next_id, rows as u64);
}

#[test]
fn a_commit_time_after_the_file_was_written_is_clamped_to_the_files_time() {
    let catalog = lab_catalog(|_| {});
    // The file's name says 2026-11-26 10:15:00.123; one row claims year 9999.
    let bytes = parquet_bytes(vec![
        (
            "Op",
            Arc::new(StringArray::from(vec!["I", "I"])) as ArrayRef,
        ),
        (
            "dms_ts",
            Arc::new(StringArray::from(vec![
                "2026-11-26 10:14:00.000001",
                "9999-12-31 23:59:59.999999",
            ])),
        ),
        (
            "account_id",
            Arc::new(arrow_array::UInt64Array::from(vec![1, 2])),
        ),
    ]);
    let outcome = convert_bytes(&catalog, CDC_KEY, bytes, None).unwrap();
    assert_eq!(outcome.commit_ts_clamped, 1);
    let file_time = 1_795_688_100_123_000; // 2026-11-26T10:15:00.123Z
    assert_eq!(outcome.commit_ts_max, Some(file_time));
}

#[test]
fn op_and_the_timestamp_column_are_found_by_name_in_any_position() {
    let catalog = lab_catalog(|_| {});
    // Real DMS files put the timestamp column first; Op second here. A delete must stay one.
    let bytes = parquet_bytes(vec![
        (
            "dms_ts",
            Arc::new(StringArray::from(vec![
                "2026-11-26 10:14:00.000001",
                "2026-11-26 10:14:00.000002",
            ])) as ArrayRef,
        ),
        ("Op", Arc::new(StringArray::from(vec!["I", "D"]))),
        (
            "account_id",
            Arc::new(arrow_array::UInt64Array::from(vec![1, 1])),
        ),
    ]);
    let outcome = convert_bytes(&catalog, CDC_KEY, bytes, None).unwrap();
    assert_eq!(
        (outcome.ops.insert, outcome.ops.delete),
        (1, 1),
        "{:?}",
        outcome.ops
    );
    assert!(!outcome.timestamp_column_missing);
    assert!(outcome.schema.field("Op").is_none() && outcome.schema.field("dms_ts").is_none());
    // A file without the mapped timestamp column says so.
    let bytes = parquet_bytes(vec![
        ("Op", Arc::new(StringArray::from(vec!["I"])) as ArrayRef),
        (
            "account_id",
            Arc::new(arrow_array::UInt64Array::from(vec![1])),
        ),
    ]);
    let outcome = convert_bytes(&catalog, CDC_KEY, bytes, None).unwrap();
    assert!(outcome.timestamp_column_missing);
}

#[test]
fn crafted_claims_are_refused_before_anything_is_decoded() {
    use ferry_tests::crafted;
    let catalog = lab_catalog(|_| {});
    let e = convert_bytes(
        &catalog,
        CDC_KEY,
        Bytes::from(crafted::page_claims_2_gib()),
        None,
    )
    .unwrap_err();
    assert!(!e.is_retryable());
    let m = e.to_string();
    assert!(
        m.contains("page of column Op")
            && m.contains("2147483647")
            && m.contains("FERRY_MAX_PAGE_MIB"),
        "{m}"
    );
    // A footer claiming 50M rows over 10 real ones: a clear permanent error, no allocation to
    // the claim's size.
    let e = convert_bytes(
        &catalog,
        CDC_KEY,
        Bytes::from(crafted::footer_claims_rows(50_000_000)),
        None,
    )
    .unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    // Over the row cap, it is refused from the footer alone.
    let e = convert_bytes(
        &catalog,
        CDC_KEY,
        Bytes::from(crafted::footer_claims_rows(600_000_000)),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("FERRY_MAX_ROWS_PER_FILE"), "{e}");
}

#[test]
fn claims_over_the_caps_are_refused_naming_the_cap_and_the_setting() {
    use ferry_convert::Limits;
    let catalog = lab_catalog(|_| {});
    let (src, object, table) = lookup(&catalog, CDC_KEY);
    let request = ConvertRequest {
        source: src,
        table,
        object: &object,
        object_time_micros: None,
        known: None,
    };
    let file = Bytes::from(ferry_tests::crafted::snappy_cdc(50_000));
    let run = |limits: Limits| {
        ferry_convert::convert_with(
            &RangeReader::new(Arc::new(file.clone())),
            &request,
            Vec::new(),
            limits,
        )
    };
    run(Limits::default()).unwrap();
    for (limits, needle) in [
        (
            Limits {
                max_rows_per_file: 10_000,
                ..Limits::default()
            },
            "FERRY_MAX_ROWS_PER_FILE",
        ),
        (
            Limits {
                max_rows_per_row_group: 10_000,
                ..Limits::default()
            },
            "FERRY_MAX_ROWS_PER_ROW_GROUP",
        ),
        (
            Limits {
                max_page_bytes: 4096,
                ..Limits::default()
            },
            "FERRY_MAX_PAGE_MIB",
        ),
    ] {
        let e = run(limits).unwrap_err();
        assert!(!e.is_retryable());
        assert!(e.to_string().contains(needle), "{e}");
    }
}

use ferry_sim::rng::Rng;

/// A random DMS-like CDC file of `lab.accounts` and the canonical rows it holds, by column.
fn random_dms_file(rng: &mut Rng) -> (Vec<u8>, Vec<Map<String, Json>>) {
    use arrow_array::{
        BinaryArray, Date32Array, Float64Array, Int32Array, Int64Array, TimestampMicrosecondArray,
        TimestampMillisecondArray,
    };
    use parquet::basic::{Compression, GzipLevel};
    use parquet::file::properties::{WriterProperties, WriterVersion};
    let groups = [0usize, 1, 1, 2, 3][rng.below(5) as usize];
    let per_group = [0usize, 1, 7, 100, 1_500][rng.below(5) as usize];
    let rows = groups * per_group;
    let null_pct = [0, 10, 50, 100][rng.below(4) as usize];
    let nulls = |rng: &mut Rng| rng.chance(null_pct);
    let ops: Vec<&str> = (0..rows)
        .map(|_| ["I", "U", "D"][rng.below(3) as usize])
        .collect();
    let ts: Vec<String> = (0..rows)
        .map(|i| {
            format!(
                "2026-11-26 10:{:02}:{:02}.{:06}",
                (i / 60) % 15,
                i % 60,
                rng.below(1_000_000)
            )
        })
        .collect();
    let ints: Vec<Option<i32>> = (0..rows)
        .map(|_| (!nulls(rng)).then(|| rng.next() as i32))
        .collect();
    let longs: Vec<Option<i64>> = (0..rows)
        .map(|_| (!nulls(rng)).then(|| rng.next() as i64))
        .collect();
    let floats: Vec<Option<f64>> = (0..rows)
        .map(|_| (!nulls(rng)).then(|| (rng.next() % 1_000_000) as f64 / 7.0))
        .collect();
    let long_text = rng.chance(20);
    let texts: Vec<Option<String>> = (0..rows)
        .map(|_| {
            (!nulls(rng)).then(|| {
                let n = if long_text {
                    5_000 + rng.below(20_000)
                } else {
                    rng.below(40)
                } as usize;
                let base = ["a", "é", "你", "😊", " ", "'", "\"", "\\"][rng.below(8) as usize];
                base.repeat(n)
            })
        })
        .collect();
    let blobs: Vec<Option<Vec<u8>>> = (0..rows)
        .map(|_| {
            (!nulls(rng)).then(|| {
                let n = if long_text && rng.chance(5) {
                    40_000
                } else {
                    rng.below(64)
                } as usize;
                (0..n).map(|i| (i as u8).wrapping_mul(31)).collect()
            })
        })
        .collect();
    let dates: Vec<Option<i32>> = (0..rows)
        .map(|_| (!nulls(rng)).then(|| rng.below(40_000) as i32))
        .collect();
    let millis: Vec<Option<i64>> = (0..rows)
        .map(|_| (!nulls(rng)).then(|| 1_700_000_000_000 + rng.below(1 << 30) as i64))
        .collect();
    let micros: Vec<Option<i64>> = (0..rows)
        .map(|_| (!nulls(rng)).then(|| 1_700_000_000_000_000 + rng.below(1 << 40) as i64))
        .collect();
    // Real DMS files put the timestamp column first.
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("dms_ts", Arc::new(StringArray::from_iter_values(ts.iter()))),
        ("Op", Arc::new(StringArray::from(ops.clone()))),
        ("n_i32", Arc::new(Int32Array::from(ints))),
        ("n_i64", Arc::new(Int64Array::from(longs))),
        ("ratio", Arc::new(Float64Array::from(floats))),
        (
            "note",
            Arc::new(StringArray::from_iter(texts.iter().map(|t| t.as_deref()))),
        ),
        (
            "blob",
            Arc::new(BinaryArray::from_iter(blobs.iter().map(|b| b.as_deref()))),
        ),
        ("day", Arc::new(Date32Array::from(dates))),
        (
            "seen_ms",
            Arc::new(TimestampMillisecondArray::from(millis).with_timezone("UTC")),
        ),
        (
            "seen_us",
            Arc::new(TimestampMicrosecondArray::from(micros).with_timezone("UTC")),
        ),
    ];
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), *n != "dms_ts"))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        columns.iter().map(|(_, a)| Arc::clone(a)).collect(),
    )
    .unwrap();
    let compression = [
        Compression::UNCOMPRESSED,
        Compression::SNAPPY,
        Compression::GZIP(GzipLevel::default()),
    ][rng.below(3) as usize];
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_dictionary_enabled(rng.chance(50))
        .set_writer_version(if rng.chance(50) {
            WriterVersion::PARQUET_1_0
        } else {
            WriterVersion::PARQUET_2_0
        })
        .set_data_page_size_limit([256usize, 4096, 1 << 20][rng.below(3) as usize])
        .set_max_row_group_row_count(Some(per_group.max(1)))
        .build();
    let mut buf = Vec::new();
    // Half the files carry the legacy converted-type annotations real DMS files have (no
    // logical types), half the logical types the Arrow writer adds.
    if rng.chance(50) {
        let mut w =
            ferry_sim::legacy::LegacyWriter::try_new(&mut buf, &schema, props, per_group.max(1))
                .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    } else {
        let mut w = ArrowWriter::try_new(&mut buf, Arc::clone(&schema), Some(props)).unwrap();
        if rows > 0 {
            w.write(&batch).unwrap();
        }
        w.close().unwrap();
    }
    (buf, canonical::rows(&batch))
}

#[test]
fn random_dms_like_files_never_panic_and_every_value_round_trips() {
    let catalog = lab_catalog(|_| {});
    let cases: u64 = std::env::var("FERRY_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for seed in 1..=cases {
        let mut rng = Rng::new(seed);
        let (file, expected) = random_dms_file(&mut rng);
        let result = std::panic::catch_unwind(|| try_convert_out(&catalog, CDC_KEY, file));
        let (outcome, out) = match result {
            Ok((Ok(outcome), out)) => (outcome, out),
            Ok((Err(e), _)) => panic!("seed {seed}: a valid file was refused: {e}"),
            Err(_) => panic!("seed {seed}: the converter panicked"),
        };
        assert_eq!(outcome.rows as usize, expected.len(), "seed {seed}");
        let got = read_rows(Bytes::from(out));
        assert_eq!(got.len(), expected.len(), "seed {seed}");
        for (i, (want, row)) in expected.iter().zip(&got).enumerate() {
            for (name, value) in want {
                if name == "Op" || name == "dms_ts" {
                    continue;
                }
                assert_eq!(
                    row.get(name),
                    Some(value),
                    "seed {seed} row {i} column {name}"
                );
            }
            let op = match want["Op"].as_str().unwrap() {
                "I" => "INSERT",
                "U" => "UPDATE",
                _ => "DELETE",
            };
            assert_eq!(row[meta::OP].as_str(), Some(op), "seed {seed} row {i}");
        }
    }
}

/// DMS cuts a LOB at `LobMaxSize` with only a warning in its task log: a JSON value cut there
/// is no longer JSON. The file still loads, and the values that reach the limit are counted
/// by column. A value one byte shorter is not.
#[test]
fn lob_values_at_the_task_s_lob_max_size_are_counted_and_their_file_loads() {
    for (limit_kb, want) in [(32u32, 1u64), (33, 0)] {
        let catalog = lab_catalog(|doc| {
            doc["source"]["dms"]["lob_max_size_kb"] = serde_json::json!(limit_kb);
        });
        let cut: String = format!("{{\"history\": \"{}", "x".repeat(32 * 1024 - 13));
        assert_eq!(cut.len(), 32 * 1024);
        let short = "x".repeat(32 * 1024 - 1);
        let mut columns = cdc_columns("I", "13:00:00");
        columns.push((
            "profile",
            Arc::new(StringArray::from(vec![cut.as_str(), r#"{"a": 1}"#])),
        ));
        columns.push((
            "nickname",
            Arc::new(StringArray::from(vec![short.as_str(), "ok"])),
        ));
        let outcome = convert_bytes(&catalog, CDC_KEY, parquet_bytes(columns), None)
            .unwrap_or_else(|e| panic!("a cut JSON value must not fail its file: {e}"));
        assert_eq!(outcome.rows, 2);
        assert_eq!(outcome.lob_at_limit, want, "LobMaxSize {limit_kb} KB");
        let cols: &[&str] = if want > 0 { &["profile"] } else { &[] };
        assert_eq!(outcome.lob_columns, cols);
    }
    // A bad limit in the mapping is refused.
    let mut doc: Json =
        serde_json::from_str(&std::fs::read_to_string(fixture("types-lab.json")).unwrap()).unwrap();
    doc["source"]["dms"]["lob_max_size_kb"] = serde_json::json!(0);
    let problems = Catalog::from_files(&[MappingFile {
        path: "types-lab.json".into(),
        text: doc.to_string(),
    }])
    .unwrap_err();
    assert!(
        format!("{problems:?}").contains("lob_max_size_kb"),
        "{problems:?}"
    );
}

/// A source column changes type (`ALTER TABLE ... MODIFY level VARCHAR(20)`): with the default
/// `on_type_change: new_column`, the file's column continues as `level__string`, the table's
/// `level` keeps its type (NULL in this file), and the values arrive intact; a file still of
/// the old type goes to `level` as before. With `stop`, the file is refused with both types.
#[test]
fn a_changed_column_type_continues_in_a_typed_column_or_stops_the_table() {
    let catalog = lab_catalog(|_| {});
    let first = {
        let mut c = cdc_columns("U", "13:00:00");
        c.push(("level", Arc::new(Int64Array::from(vec![3, 4]))));
        parquet_bytes(c)
    };
    let known = convert_bytes(&catalog, CDC_KEY, first.clone(), None)
        .unwrap()
        .schema;
    let level = known.field("level").unwrap();
    assert_eq!(level.bq_type, ferry_core::bqtype::BqType::Int64);
    let changed = {
        let mut c = cdc_columns("U", "13:00:00");
        c.push(("level", Arc::new(StringArray::from(vec!["gold", "7"]))));
        parquet_bytes(c)
    };
    let (src, object, table) = lookup(&catalog, CDC_KEY);
    let request = ConvertRequest {
        source: src,
        table,
        object: &object,
        object_time_micros: None,
        known: Some(&known),
    };
    let mut out = Vec::new();
    let outcome = convert(
        &RangeReader::new(Arc::new(changed.clone())),
        &request,
        &mut out,
    )
    .unwrap();
    let added: Vec<(&str, &str)> = outcome
        .added
        .iter()
        .map(|f| (f.name.as_str(), f.bq_type.as_str()))
        .collect();
    assert_eq!(added, [("level__string", "STRING")]);
    let rows = read_rows(out.into());
    assert_eq!(rows[0]["level"], Json::Null);
    assert_eq!(rows[0]["level__string"], Json::String("gold".into()));
    assert_eq!(rows[1]["level__string"], Json::String("7".into()));
    // The next file of the new type finds the column; a late file of the old type still goes
    // to `level`.
    for (file, column, value) in [(&changed, "level__string", "gold"), (&first, "level", "3")] {
        let request = ConvertRequest {
            known: Some(&outcome.schema),
            ..request
        };
        let mut out = Vec::new();
        let again = convert(
            &RangeReader::new(Arc::new(file.clone())),
            &request,
            &mut out,
        )
        .unwrap();
        assert!(again.added.is_empty(), "{:?}", again.added);
        assert_eq!(read_rows(out.into())[0][column], Json::String(value.into()));
    }

    let stop = lab_catalog(|doc| {
        doc["tables"]["lab.accounts"]["on_type_change"] = serde_json::json!("stop");
    });
    let err = convert_bytes(&stop, CDC_KEY, changed, Some(&known)).unwrap_err();
    assert!(
        matches!(&err, ConvertError::SchemaConflict { column, .. } if column == "level"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("INT64") && err.to_string().contains("STRING"),
        "{err}"
    );
}

/// ZSTD: DMS writes parquet with GZIP or no compression only (`CompressionType`), so ferry is
/// built without a ZSTD codec. A ZSTD file (written by pyarrow, `fixtures/convert/zstd-cdc.parquet`)
/// is refused permanently with an error that names the codec, never a panic.
#[test]
fn a_zstd_file_is_refused_naming_the_codec() {
    let catalog = lab_catalog(|_| {});
    let bytes = Bytes::from(std::fs::read(fixture("zstd-cdc.parquet")).unwrap());
    let result = std::panic::catch_unwind(|| convert_bytes(&catalog, CDC_KEY, bytes, None));
    let err = result.expect("no panic").expect_err("ZSTD is not read");
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string().to_ascii_lowercase().contains("zstd"),
        "{err}"
    );
}
