//! Table-driven tests of key decoding, parsing and ordering.

use super::*;
use crate::partition::{DateDelimiter, DatePartitioning, DateSequence};

/// What a row expects: the parsed fields, or the skip reason's variant.
#[derive(Debug)]
enum Want {
    Load {
        folder: &'static str,
        schema: &'static str,
        table: &'static str,
        partition: Option<&'static str>,
        segment: Option<u32>,
        counter: u32,
    },
    Cdc {
        folder: &'static str,
        schema: &'static str,
        table: &'static str,
        stamp: &'static str,
        date: Option<&'static str>,
    },
    Skip(fn(&SkipReason) -> bool),
}

fn check(key: &str, got: &ParsedKey, want: &Want) {
    match (got, want) {
        (
            Ok(o),
            Want::Load {
                folder,
                schema,
                table,
                partition,
                segment,
                counter,
            },
        ) => {
            assert_eq!(
                (o.folder.as_str(), o.schema.as_str(), o.table.as_str()),
                (*folder, *schema, *table),
                "{key}"
            );
            assert_eq!(o.key, key);
            assert_eq!(
                o.file,
                DmsFile::FullLoad {
                    partition: partition.map(str::to_owned),
                    segment: *segment,
                    counter: *counter
                },
                "{key}"
            );
            assert_eq!(o.kind(), FileKind::FullLoad);
        }
        (
            Ok(o),
            Want::Cdc {
                folder,
                schema,
                table,
                stamp,
                date,
            },
        ) => {
            assert_eq!(
                (o.folder.as_str(), o.schema.as_str(), o.table.as_str()),
                (*folder, *schema, *table),
                "{key}"
            );
            assert_eq!(o.kind(), FileKind::Cdc, "{key}");
            assert_eq!(o.file.stamp(), *stamp, "{key}");
            assert_eq!(
                o.partition_date.map(|d| d.to_string()).as_deref(),
                *date,
                "{key}"
            );
        }
        (Err(reason), Want::Skip(is)) => assert!(is(reason), "{key}: wrong skip reason {reason:?}"),
        (got, want) => panic!("{key}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn full_load_keys() {
    use Want::Load;
    let rows: &[(&str, &str, Want)] = &[
        (
            "slots/players/LOAD00000001.parquet",
            "",
            Load {
                folder: "",
                schema: "slots",
                table: "players",
                partition: None,
                segment: None,
                counter: 1,
            },
        ),
        (
            "dms/slots/players/LOAD0000000A.parquet",
            "dms",
            Load {
                folder: "dms",
                schema: "slots",
                table: "players",
                partition: None,
                segment: None,
                counter: 10,
            },
        ),
        (
            "dms/slots/players/LOAD0000000a.parquet",
            "dms",
            Load {
                folder: "dms",
                schema: "slots",
                table: "players",
                partition: None,
                segment: None,
                counter: 10,
            },
        ),
        (
            "dms/slots/players/LOADFFFFFFFF.parquet",
            "dms",
            Load {
                folder: "dms",
                schema: "slots",
                table: "players",
                partition: None,
                segment: None,
                counter: u32::MAX,
            },
        ),
        (
            "a/b/c/slots/players/SEGMENT12_LOAD00000003.parquet",
            "a/b/c",
            Load {
                folder: "a/b/c",
                schema: "slots",
                table: "players",
                partition: None,
                segment: Some(12),
                counter: 3,
            },
        ),
        (
            "dms/slots/players/p_2023_q1/LOAD00000002.parquet",
            "dms",
            Load {
                folder: "dms",
                schema: "slots",
                table: "players",
                partition: Some("p_2023_q1"),
                segment: None,
                counter: 2,
            },
        ),
        (
            "dms/slots/players/p0/SEGMENT1_LOAD00000002.parquet",
            "dms",
            Load {
                folder: "dms",
                schema: "slots",
                table: "players",
                partition: Some("p0"),
                segment: Some(1),
                counter: 2,
            },
        ),
        // Schema and table names that look like dates are exact when the folder is known.
        (
            "dms/2023/01/LOAD00000001.parquet",
            "dms",
            Load {
                folder: "dms",
                schema: "2023",
                table: "01",
                partition: None,
                segment: None,
                counter: 1,
            },
        ),
        // A folder given with slashes around it.
        (
            "dms/slots/players/LOAD00000001.parquet",
            "/dms/",
            Load {
                folder: "dms",
                schema: "slots",
                table: "players",
                partition: None,
                segment: None,
                counter: 1,
            },
        ),
    ];
    for (key, folder, want) in rows {
        check(key, &parse_key(key, folder, None), want);
    }
}

#[test]
fn cdc_keys() {
    use Want::Cdc;
    let rows: &[(&str, &str, Want)] = &[
        (
            "dms/slots/players/20230115-093000123.parquet",
            "dms",
            Cdc {
                folder: "dms",
                schema: "slots",
                table: "players",
                stamp: "20230115T093000123",
                date: None,
            },
        ),
        (
            "slots/players/20141029-1134010000.parquet",
            "",
            Cdc {
                folder: "",
                schema: "slots",
                table: "players",
                stamp: "20141029T1134010000",
                date: None,
            },
        ),
        (
            "slots/players/20230115-093000.parquet",
            "",
            Cdc {
                folder: "",
                schema: "slots",
                table: "players",
                stamp: "20230115T093000",
                date: None,
            },
        ),
        (
            "slots/players/20240229-235960123456789123.parquet",
            "",
            Cdc {
                folder: "",
                schema: "slots",
                table: "players",
                stamp: "20240229T235960123456789",
                date: None,
            },
        ),
        (
            "dms/slots/players/2023/01/15/20230115-093000123.parquet",
            "dms",
            Cdc {
                folder: "dms",
                schema: "slots",
                table: "players",
                stamp: "20230115T093000123",
                date: Some("2023-01-15"),
            },
        ),
        (
            "dms/slots/players/2023/01/15/09/20230115-093000123.parquet",
            "dms",
            Cdc {
                folder: "dms",
                schema: "slots",
                table: "players",
                stamp: "20230115T093000123",
                date: Some("2023-01-15T09"),
            },
        ),
    ];
    for (key, folder, want) in rows {
        check(key, &parse_key(key, folder, None), want);
    }
}

#[test]
fn skipped_keys_say_why() {
    use Want::Skip;
    let rows: &[(&str, &str, Want)] = &[
        (
            "dms/slots/players/",
            "dms",
            Skip(|r| *r == SkipReason::Folder),
        ),
        ("dms/", "dms", Skip(|r| *r == SkipReason::Folder)),
        (
            "dms/cdc/CDC_TXN-20230115-093000123.csv",
            "dms",
            Skip(|r| *r == SkipReason::TransactionFile),
        ),
        (
            "dms/slots/players/LOAD00000001.csv",
            "dms",
            Skip(|r| matches!(r, SkipReason::NotParquet { extension } if extension == "csv")),
        ),
        (
            "dms/slots/players/20230115-093000123.csv",
            "dms",
            Skip(|r| matches!(r, SkipReason::NotParquet { extension } if extension == "csv")),
        ),
        (
            "dms/slots/players/LOAD00000001.parquet.tmp",
            "dms",
            Skip(|r| matches!(r, SkipReason::NotParquet { extension } if extension == "tmp")),
        ),
        (
            "dms/slots/players/README",
            "dms",
            Skip(|r| matches!(r, SkipReason::NotParquet { extension } if extension.is_empty())),
        ),
        (
            "dms/slots/players/part-0001.parquet",
            "dms",
            Skip(
                |r| matches!(r, SkipReason::UnknownFileName { name } if name == "part-0001.parquet"),
            ),
        ),
        (
            "dms/slots/players/LOAD0000001.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::UnknownFileName { .. })),
        ),
        (
            "dms/slots/players/LOAD0000000G.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::UnknownFileName { .. })),
        ),
        (
            "dms/slots/players/SEGMENT_LOAD00000001.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::UnknownFileName { .. })),
        ),
        (
            "dms/slots/players/20231315-093000123.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::UnknownFileName { .. })),
        ),
        (
            "dms/slots/players/20230115-253000123.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::UnknownFileName { .. })),
        ),
        (
            "dms/slots/players/20230115-0930.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::UnknownFileName { .. })),
        ),
        (
            "dms/slots/players/.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::UnknownFileName { .. })),
        ),
        (
            "dms/LOAD00000001.parquet",
            "dms",
            Skip(|r| *r == SkipReason::NotUnderTableFolder),
        ),
        (
            "dms/slots/LOAD00000001.parquet",
            "dms",
            Skip(|r| *r == SkipReason::NotUnderTableFolder),
        ),
        (
            "LOAD00000001.parquet",
            "",
            Skip(|r| *r == SkipReason::NotUnderTableFolder),
        ),
        (
            "other/slots/players/LOAD00000001.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::OutsideBucketFolder { folder } if folder == "dms")),
        ),
        (
            "dmsx/slots/players/LOAD00000001.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::OutsideBucketFolder { .. })),
        ),
        (
            "dms/slots/players/junk/20230115-093000123.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::UnexpectedFolders { folders } if folders == "junk")),
        ),
        (
            "dms/slots/players/2023/13/15/20230115-093000123.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::UnexpectedFolders { .. })),
        ),
        (
            "dms/slots/players/a/b/LOAD00000001.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::UnexpectedFolders { .. })),
        ),
        (
            "dms//players/LOAD00000001.parquet",
            "dms",
            Skip(|r| matches!(r, SkipReason::UnexpectedFolders { .. })),
        ),
    ];
    for (key, folder, want) in rows {
        check(key, &parse_key(key, folder, None), want);
    }
}

#[test]
fn every_date_partition_layout() {
    // 2023-01-15, hour 09; each layout written as DMS writes it.
    let cases = [
        (
            DateSequence::YyyyMmDd,
            ["2023", "01", "15"].as_slice(),
            "2023-01-15",
        ),
        (
            DateSequence::YyyyMmDdHh,
            &["2023", "01", "15", "09"],
            "2023-01-15T09",
        ),
        (DateSequence::YyyyMm, &["2023", "01"], "2023-01"),
        (DateSequence::MmYyyyDd, &["01", "2023", "15"], "2023-01-15"),
        (DateSequence::DdMmYyyy, &["15", "01", "2023"], "2023-01-15"),
    ];
    for (sequence, parts, want) in cases {
        for delimiter in DateDelimiter::ALL {
            let folders = match delimiter {
                DateDelimiter::Slash => parts.join("/"),
                DateDelimiter::Dash => parts.join("-"),
                DateDelimiter::Underscore => parts.join("_"),
                DateDelimiter::None => parts.concat(),
            };
            let layout = DatePartitioning {
                sequence,
                delimiter,
            };
            for file in ["20230115-093000123.parquet", "LOAD00000001.parquet"] {
                let key = format!("dms/slots/players/{folders}/{file}");
                let declared =
                    parse_key(&key, "dms", Some(layout)).unwrap_or_else(|r| panic!("{key}: {r}"));
                assert_eq!(
                    declared.partition_date.map(|d| d.to_string()).as_deref(),
                    Some(want),
                    "{key} as {layout:?}"
                );
                assert_eq!(
                    (declared.schema.as_str(), declared.table.as_str()),
                    ("slots", "players"),
                    "{key}"
                );
                if let DmsFile::FullLoad { partition, .. } = &declared.file {
                    assert_eq!(
                        partition, &None,
                        "{key}: a date folder is not a load partition"
                    );
                }
                // Undeclared layouts are recognised too, with the folder known or not.
                let any = parse_key(&key, "dms", None).unwrap_or_else(|r| panic!("{key}: {r}"));
                assert_eq!(
                    (any.schema.as_str(), any.table.as_str()),
                    ("slots", "players"),
                    "{key}"
                );
                assert!(any.partition_date.is_some(), "{key}");
                if file.starts_with('2') {
                    let unanchored =
                        parse_key_unanchored(&key).unwrap_or_else(|r| panic!("{key}: {r}"));
                    assert_eq!(
                        (
                            unanchored.folder.as_str(),
                            unanchored.schema.as_str(),
                            unanchored.table.as_str()
                        ),
                        ("dms", "slots", "players"),
                        "{key}"
                    );
                }
            }
        }
    }
}

#[test]
fn declared_layout_is_preferred_over_guessing() {
    // 01/02/2023 is 2023-02-01 as DDMMYYYY and 2023-01-02 as MMYYYYDD would not parse; as
    // DDMMYYYY declared it must be read day-first.
    let key = "dms/s/t/01122023/20231201-000000.parquet";
    let layout = DatePartitioning {
        sequence: DateSequence::DdMmYyyy,
        delimiter: DateDelimiter::None,
    };
    let o = parse_key(key, "dms", Some(layout)).expect("parses");
    assert_eq!(
        o.partition_date.map(|d| d.to_string()).as_deref(),
        Some("2023-12-01")
    );
}

#[test]
fn unanchored_parsing_reads_from_the_right() {
    let o = parse_key_unanchored("a/b/c/slots/players/2023/01/15/20230115-093000123.parquet")
        .expect("parses");
    assert_eq!(
        (o.folder.as_str(), o.schema.as_str(), o.table.as_str()),
        ("a/b/c", "slots", "players")
    );
    let o = parse_key_unanchored("slots/players/LOAD00000001.parquet").expect("parses");
    assert_eq!(
        (o.folder.as_str(), o.schema.as_str(), o.table.as_str()),
        ("", "slots", "players")
    );
    // A table whose name is a year: the date run is found below it.
    let o = parse_key_unanchored("logs/2023/2023/01/15/20230115-093000.parquet").expect("parses");
    assert_eq!((o.schema.as_str(), o.table.as_str()), ("logs", "2023"));
    assert_eq!(
        parse_key_unanchored("t/2023/01/15/20230115-093000.parquet").map(|o| o.table),
        Ok("15".to_owned()),
        "too shallow for a date run: read as folders"
    );
    assert_eq!(
        parse_key_unanchored("t/20230115-093000.parquet"),
        Err(SkipReason::NotUnderTableFolder)
    );
}

#[test]
fn decodes_event_keys() {
    let rows = [
        (
            "dms/slots/players/LOAD00000001.parquet",
            "dms/slots/players/LOAD00000001.parquet",
        ),
        (
            "dms/my+db/my+table/LOAD00000001.parquet",
            "dms/my db/my table/LOAD00000001.parquet",
        ),
        (
            "dms/a%2Bb/c%25d/LOAD00000001.parquet",
            "dms/a+b/c%d/LOAD00000001.parquet",
        ),
        (
            "dms%2Fslots%2Fplayers%2FLOAD00000001.parquet",
            "dms/slots/players/LOAD00000001.parquet",
        ),
        (
            "dms/%ED%94%8C%EB%A0%88%EC%9D%B4%EC%96%B4/%F0%9F%98%8A/LOAD00000001.parquet",
            "dms/플레이어/😊/LOAD00000001.parquet",
        ),
        ("%e4%bd%a0%e5%a5%bd", "你好"),
    ];
    for (encoded, decoded) in rows {
        assert_eq!(
            decode_event_key(encoded).as_deref(),
            Ok(decoded),
            "{encoded}"
        );
    }
    assert_eq!(
        decode_event_key("a%zzb"),
        Err(KeyDecodeError::BadEscape { offset: 1 })
    );
    assert_eq!(
        decode_event_key("abc%"),
        Err(KeyDecodeError::BadEscape { offset: 3 })
    );
    assert_eq!(
        decode_event_key("abc%4"),
        Err(KeyDecodeError::BadEscape { offset: 3 })
    );
    assert_eq!(decode_event_key("a%FFb"), Err(KeyDecodeError::NotUtf8));
    assert_eq!(decode_event_key(""), Err(KeyDecodeError::Empty));
}

#[test]
fn hostile_names_survive_encoding_and_parse_exactly() {
    let long_table = "t".repeat(64);
    let tables = [
        "my table",
        "a+b",
        "100%",
        "플레이어",
        "😊",
        "你好",
        "we'ird \"quotes\"",
        "tab\there",
        long_table.as_str(),
        "2023",
    ];
    for table in tables {
        for file in ["LOAD00000001.parquet", "20230115-093000123.parquet"] {
            let key = format!("game one/my db/{table}/{file}");
            let encoded = crate::event::encode_event_key(&key);
            let decoded = decode_event_key(&encoded).expect("decodes");
            assert_eq!(decoded, key);
            assert!(looks_event_encoded(&encoded) || encoded == key, "{encoded}");
            let o = parse_key(&decoded, "game one", None).unwrap_or_else(|r| panic!("{key}: {r}"));
            assert_eq!(
                (o.folder.as_str(), o.schema.as_str(), o.table.as_str()),
                ("game one", "my db", table)
            );
        }
    }
    // A very long key (S3 allows 1,024 bytes).
    let key = format!("{}/s/t/20230115-093000123.parquet", "f".repeat(990));
    let o = parse_key(&key, &"f".repeat(990), None).expect("parses");
    assert_eq!(o.table, "t");
}

#[test]
fn apply_order_is_total_and_puts_full_load_first() {
    let ordered = [
        "d/s/t/p0/LOAD00000001.parquet",
        "d/s/t/p0/LOAD00000002.parquet",
        "d/s/t/p1/LOAD00000001.parquet",
        "d/s/t/LOAD00000001.parquet",
        "d/s/t/LOAD00000002.parquet",
        "d/s/t/LOAD0000000A.parquet",
        "d/s/t/LOAD00000010.parquet",
        "d/s/t/SEGMENT1_LOAD00000001.parquet",
        "d/s/t/SEGMENT1_LOAD00000002.parquet",
        "d/s/t/SEGMENT2_LOAD00000001.parquet",
        "d/s/t/SEGMENT10_LOAD00000001.parquet",
        "d/s/t/20221231-235959999.parquet",
        "d/s/t/20230115-093000.parquet",
        "d/s/t/20230115-0930000.parquet",
        "d/s/t/20230115-0930001.parquet",
        "d/s/t/20230115-093000123.parquet",
        "d/s/t/2023/01/15/20230115-093000124.parquet",
        "d/s/t/20230115-0930009.parquet",
        "d/s/t/20230115-093001.parquet",
        "d/s/t/20240101-000000.parquet",
    ];
    let parsed: Vec<DmsObject> = ordered
        .iter()
        .map(|k| parse_key(k, "d", None).expect(k))
        .collect();
    let mut shuffled = parsed.clone();
    shuffled.reverse();
    shuffled.rotate_left(7);
    shuffled.sort_by(DmsObject::apply_order);
    let keys: Vec<&str> = shuffled.iter().map(|o| o.key.as_str()).collect();
    // Every full-load file before every CDC file, and CDC files by time, not by name.
    let first_cdc = keys
        .iter()
        .position(|k| k.contains("/20"))
        .expect("has cdc");
    assert!(keys[..first_cdc].iter().all(|k| k.contains("LOAD")));
    let cdc: Vec<&str> = keys[first_cdc..].to_vec();
    assert_eq!(
        cdc,
        [
            "d/s/t/20221231-235959999.parquet",
            "d/s/t/20230115-093000.parquet",
            "d/s/t/20230115-0930000.parquet",
            "d/s/t/20230115-0930001.parquet",
            "d/s/t/20230115-093000123.parquet",
            "d/s/t/2023/01/15/20230115-093000124.parquet",
            "d/s/t/20230115-0930009.parquet",
            "d/s/t/20230115-093001.parquet",
            "d/s/t/20240101-000000.parquet",
        ]
    );
    let load: Vec<&str> = keys[..first_cdc].to_vec();
    assert_eq!(
        load,
        [
            "d/s/t/LOAD00000001.parquet",
            "d/s/t/LOAD00000002.parquet",
            "d/s/t/LOAD0000000A.parquet",
            "d/s/t/LOAD00000010.parquet",
            "d/s/t/SEGMENT1_LOAD00000001.parquet",
            "d/s/t/SEGMENT1_LOAD00000002.parquet",
            "d/s/t/SEGMENT2_LOAD00000001.parquet",
            "d/s/t/SEGMENT10_LOAD00000001.parquet",
            "d/s/t/p0/LOAD00000001.parquet",
            "d/s/t/p0/LOAD00000002.parquet",
            "d/s/t/p1/LOAD00000001.parquet",
        ]
    );
    // Antisymmetric and reflexive on every pair: a total order.
    for a in &parsed {
        assert_eq!(a.apply_order(a), Ordering::Equal);
        for b in &parsed {
            assert_eq!(
                a.apply_order(b),
                b.apply_order(a).reverse(),
                "{} vs {}",
                a.key,
                b.key
            );
        }
    }
}

#[test]
fn file_seq_orders_by_write_time_so_a_reload_follows_the_changes_before_it() {
    let at = |key: &str| parse_key(key, "d", None).expect(key);
    let t = |h: i64, m: i64, s: i64| {
        crate::civil::days_from_civil(2026, 11, 26) * crate::civil::MICROS_PER_DAY
            + ((h * 60 + m) * 60 + s) * 1_000_000
    };
    let load1 = at("d/s/t/LOAD00000001.parquet");
    let load2 = at("d/s/t/LOAD00000002.parquet");
    // Changes captured during the load are written after it, so their files are newer than
    // every LOAD file of the run even though their rows' timestamps are older.
    let cached = at("d/s/t/20261126-100500000.parquet");
    let later = at("d/s/t/20261126-110000000.parquet");
    let first_run = [
        load1.file_seq(Some(t(10, 0, 0))),
        load2.file_seq(Some(t(10, 4, 59))),
        cached.file_seq(None),
        later.file_seq(None),
    ];
    assert!(first_run.windows(2).all(|w| w[0] < w[1]), "{first_run:#?}");
    // A reload writes LOAD00000001 again, after the CDC files before it.
    let reload = load1.file_seq(Some(t(12, 0, 0)));
    assert!(reload > first_run[3], "{reload} > {}", first_run[3]);
    // Only the run's first file is a run start, and the SQL test reads the same position.
    assert!(load1.is_run_start() && !load2.is_run_start() && !cached.is_run_start());
    assert!(!at("d/s/t/SEGMENT1_LOAD00000001.parquet").is_run_start());
    assert!(!at("d/s/t/p0/LOAD00000001.parquet").is_run_start());
    for (seq, start) in [
        (&reload, true),
        (&first_run[1], false),
        (&first_run[2], false),
    ] {
        assert_eq!(&seq[21..24] == "0.0", start, "{seq}");
    }
    assert_eq!(run_start_sql("x"), "SUBSTR(x, 22, 3) = '0.0'");
    // The same instant: a full-load file sorts before a CDC file.
    let same = at("d/s/t/20261126-100000000.parquet").file_seq(None);
    assert!(load1.file_seq(Some(t(10, 0, 0))) < same);
}
