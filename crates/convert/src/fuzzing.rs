//! Entry points for the fuzz targets (`fuzz/`, run by `scripts/fuzz`) and for the test that
//! replays their corpus on every build. Each takes arbitrary bytes and checks what must hold
//! for any input: no panic, and the invariants named below. A failed invariant panics, which is
//! what a fuzzer reports.

use std::sync::{Arc, OnceLock};

use ferry_core::mapping::{Catalog, MappingFile};
use ferry_core::{event, key};

use crate::{Conversion, ConvertRequest, Limits, RangeReader};

/// Key parsing: a key that parses names its own table, and orders like itself.
pub fn key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for folder in ["", "dms", "a/b"] {
        if let Ok(object) = key::parse_key(text, folder, None) {
            assert_eq!(object.key, text);
            assert!(
                !object.schema.is_empty() && !object.table.is_empty(),
                "{text:?}"
            );
            assert_eq!(object.apply_order(&object), std::cmp::Ordering::Equal);
            let seq = object.file_seq(Some(1));
            assert!(seq.len() > 22 && seq.is_char_boundary(21), "{seq:?}");
        }
    }
}

/// Event bodies: any text parses or is refused with a reason; what parses names objects.
pub fn event_body(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = event::parse_body(text) {
        for o in n.objects.iter().chain(&n.removed) {
            assert!(!o.bucket.is_empty(), "{text:?}");
            if let Some(t) = &o.event_time {
                let _ = crate::timefmt::event_time_micros(t);
            }
        }
    }
}

/// The mapping the parquet target converts under: one table `s.t` of source folder `dms`,
/// with hints of every kind.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let text = r#"{"source": {"name": "fuzz", "bucket": "fuzz-bucket", "folder": "dms",
                        "dms": {"timestamp_column": "dms_ts"}},
                       "bigquery": {"project": "fuzz-project", "dataset": "d"},
                       "tables": {"s.t": {"primary_key": ["id"],
                                          "columns": {"flag": "tinyint(1)", "doc": "json",
                                                      "at": "datetime", "big": "bigint unsigned"}}}}"#;
        Catalog::from_files(&[MappingFile {
            path: "fuzz.json".into(),
            text: text.into(),
        }])
        .unwrap_or_else(|p| panic!("the fuzz catalog is valid: {p:?}"))
    })
}

/// The parquet reader and converter: any bytes as a CDC file and as a full-load file either
/// convert or fail with an error, under caps small enough that no input can take much memory;
/// a converted file reports as many rows as it holds.
pub fn parquet(data: &[u8]) {
    let limits = Limits {
        max_rows_per_file: 1 << 20,
        max_rows_per_row_group: 1 << 16,
        max_page_bytes: 4 << 20,
        max_compression_ratio: 1_100,
    };
    let source = &catalog().sources()[0];
    let table = &source.tables[0];
    for name in [
        "dms/s/t/20261126-101500123.parquet",
        "dms/s/t/LOAD00000001.parquet",
    ] {
        let Ok(object) = key::parse_key(name, "dms", None) else {
            panic!("{name} parses");
        };
        let input = RangeReader::new(Arc::new(bytes::Bytes::copy_from_slice(data)));
        let request = ConvertRequest {
            source,
            table,
            object: &object,
            object_time_micros: Some(1_795_651_200_000_000),
            known: None,
        };
        let Ok(conversion) = Conversion::plan_with(&input, &request, limits) else {
            continue;
        };
        if let Ok(outcome) = conversion.write(&input, &request, std::io::sink()) {
            assert_eq!(
                outcome.ops.total(),
                outcome.rows,
                "every row has one operation"
            );
        }
    }
}
