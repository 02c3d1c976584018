//! BigQuery load job ids derived from the object they load.
//!
//! `ferry_<schema>_<table>_<file stamp>_<hash>_a<attempt>`, for example
//! `ferry_slots_players_20230115T093000123_5c1f…_a0`. The hash covers the bucket, the key, the
//! object's ETag and the destination table, so the same object version loaded into the same
//! table always gets the same id (BigQuery answers a second insert with 409), a rewritten object
//! or a remapped table gets a new one, and the readable parts are there for people only.
//!
//! A load job is atomic: one that ended in error wrote nothing and its id can never be used
//! again. The attempt number is how the writer retries it: attempt `n + 1` of the same object
//! is a new id, and the writer only moves to it after BigQuery reported attempt `n` failed.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::key::DmsObject;
use crate::mapping::TableRef;

/// BigQuery's limit on a job id's length.
pub const MAX_JOB_ID_LEN: usize = 1024;

/// Bytes of the readable schema and table parts (each), after sanitising.
const READABLE_PART_MAX: usize = 64;

/// Hex digits of the hash (128 bits).
const HASH_HEX: usize = 32;

/// A BigQuery load job id: `[A-Za-z0-9_-]`, at most 1,024 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId {
    base: String,
    attempt: u32,
}

impl JobId {
    /// The id of attempt `attempt` to load version `etag` of `object` from `bucket` into
    /// `destination`. `etag` may be quoted (as HeadObject returns it) or not (as S3 events carry it).
    pub fn for_object(
        bucket: &str,
        object: &DmsObject,
        etag: Option<&str>,
        destination: &TableRef,
        attempt: u32,
    ) -> JobId {
        let mut hasher = Sha256::new();
        let etag = etag.map(|e| e.trim_matches('"'));
        for field in [
            "ferry-load-v1",
            bucket,
            &object.key,
            etag.unwrap_or(""),
            &destination.project,
            &destination.dataset,
            &destination.table,
        ] {
            hasher.update((field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
        hasher.update([u8::from(etag.is_some())]);
        let digest = hasher.finalize();
        let hash: String = digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..HASH_HEX]
            .to_owned();
        let base = format!(
            "ferry_{}_{}_{}_{hash}",
            readable(&object.schema),
            readable(&object.table),
            readable(&object.file.stamp()),
        );
        JobId { base, attempt }
    }

    /// The id without the attempt suffix: the same for every attempt at one object.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The attempt number.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The id of the next attempt, to use only once BigQuery reported this one failed.
    pub fn next_attempt(&self) -> JobId {
        JobId {
            base: self.base.clone(),
            attempt: self.attempt + 1,
        }
    }

    /// Reads an id ferry made back into base and attempt.
    pub fn parse(id: &str) -> Option<JobId> {
        let (base, attempt) = id.rsplit_once("_a")?;
        if !base.starts_with("ferry_")
            || attempt.is_empty()
            || !attempt.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(JobId {
            base: base.to_owned(),
            attempt: attempt.parse().ok()?,
        })
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_a{}", self.base, self.attempt)
    }
}

/// Keeps ASCII letters and digits, turns every other run of characters into one `_`, trims `_`
/// at both ends and cuts to [`READABLE_PART_MAX`] bytes; `x` when nothing is left.
fn readable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(READABLE_PART_MAX));
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
        if out.len() >= READABLE_PART_MAX {
            break;
        }
    }
    let trimmed = out.trim_matches('_');
    if trimmed.is_empty() {
        "x".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::parse_key;

    fn dest(table: &str) -> TableRef {
        TableRef {
            project: "acme-casino-analytics".into(),
            dataset: "slots_account".into(),
            table: table.into(),
        }
    }

    fn id(key: &str, etag: Option<&str>, table: &str, attempt: u32) -> String {
        let object = parse_key(key, "", None).expect("test key parses");
        JobId::for_object("acme-dms", &object, etag, &dest(table), attempt).to_string()
    }

    /// Pinned vectors, cross-checked with an independent implementation (Python hashlib over the
    /// same length-prefixed fields). These ids are in BigQuery's job history of running deployments. If this
    /// test fails, a change made ferry name the same object differently and would load it again.
    #[test]
    fn pinned_vectors() {
        let vectors = [
            (
                "slots/players/LOAD00000001.parquet",
                Some("9b2cf535f27731c974343645a3985328"),
                "players_changelog",
                0,
                "ferry_slots_players_load00000001_d9de4212e50391d1166f2eb0f37eea9b_a0",
            ),
            (
                "slots/players/20230115-093000123.parquet",
                Some("\"9b2cf535f27731c974343645a3985328\""),
                "players_changelog",
                2,
                "ferry_slots_players_20230115T093000123_67c2218fe0c7e7ff1af5b171ec3e2cc6_a2",
            ),
            (
                "my db/플레이어 😊/SEGMENT3_LOAD0000000A.parquet",
                Some("abc-3"),
                "players",
                0,
                "ferry_my_db_x_seg3_load0000000a_66f19770ad9b19095df69e31f5621cc7_a0",
            ),
        ];
        for (key, etag, table, attempt, expected) in vectors {
            assert_eq!(id(key, etag, table, attempt), expected, "{key}");
        }
    }

    #[test]
    fn quoted_and_bare_etags_agree() {
        let key = "slots/players/20230115-093000123.parquet";
        assert_eq!(
            id(key, Some("\"abc\""), "t", 0),
            id(key, Some("abc"), "t", 0)
        );
    }

    #[test]
    fn identity_changes_change_the_id() {
        let key = "slots/players/20230115-093000123.parquet";
        let base = id(key, Some("e1"), "t", 0);
        assert_ne!(base, id(key, Some("e2"), "t", 0), "new object version");
        assert_ne!(base, id(key, None, "t", 0), "unknown etag");
        assert_ne!(base, id(key, Some("e1"), "t2", 0), "remapped table");
        assert_ne!(
            base,
            id(
                "slots/players/20230115-093000124.parquet",
                Some("e1"),
                "t",
                0
            ),
            "other key"
        );
        assert_ne!(base, id(key, Some("e1"), "t", 1), "next attempt");
        let object = parse_key(key, "", None).expect("parses");
        let a = JobId::for_object("bucket-a", &object, Some("e1"), &dest("t"), 0);
        let b = JobId::for_object("bucket-b", &object, Some("e1"), &dest("t"), 0);
        assert_ne!(a, b, "other bucket");
        assert_eq!(a.base().len(), b.base().len());
    }

    #[test]
    fn length_prefixing_prevents_field_shifting() {
        // Moving bytes between dataset and table must not give the same hash.
        let object = parse_key("s/t/LOAD00000001.parquet", "", None).expect("parses");
        let a = TableRef {
            project: "proj-one".into(),
            dataset: "ab".into(),
            table: "c".into(),
        };
        let b = TableRef {
            project: "proj-one".into(),
            dataset: "a".into(),
            table: "bc".into(),
        };
        assert_ne!(
            JobId::for_object("bk", &object, None, &a, 0),
            JobId::for_object("bk", &object, None, &b, 0)
        );
    }

    #[test]
    fn attempts_and_parse_round_trip() {
        let object = parse_key("slots/players/LOAD00000001.parquet", "", None).expect("parses");
        let first = JobId::for_object("b", &object, Some("e"), &dest("t"), 0);
        let second = first.next_attempt();
        assert_eq!(second.attempt(), 1);
        assert_eq!(second.base(), first.base());
        assert!(second.to_string().ends_with("_a1"));
        assert_eq!(JobId::parse(&second.to_string()), Some(second));
        assert_eq!(JobId::parse("not_ferry_a1"), None);
        assert_eq!(JobId::parse("ferry_x_ab"), None);
    }

    #[test]
    fn always_legal_even_for_hostile_names() {
        let long = "표".repeat(64);
        let keys = [
            "a b/c+d%25/LOAD00000001.parquet".to_owned(),
            format!("{long}/{long}/20230115-093000123456789999.parquet"),
            "___/---/LOAD00000001.parquet".to_owned(),
            "😊/你好/2023/01/15/20230115-093000.parquet".to_owned(),
        ];
        for key in &keys {
            let object = crate::key::parse_key_unanchored(key).expect("parses");
            let id = JobId::for_object("b", &object, Some("e"), &dest(&"t".repeat(1024)), u32::MAX)
                .to_string();
            assert!(id.len() <= MAX_JOB_ID_LEN, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{id}"
            );
            assert!(!id.contains("__"), "{id}");
        }
    }

    #[test]
    fn readable_parts() {
        assert_eq!(readable("players"), "players");
        assert_eq!(readable("my table+1"), "my_table_1");
        assert_eq!(readable("😊"), "x");
        assert_eq!(readable(&"a".repeat(200)).len(), READABLE_PART_MAX);
    }
}
