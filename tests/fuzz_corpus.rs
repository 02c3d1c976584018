//! The fuzz targets' corpus (`fuzz/corpus/<target>/`), replayed through the same entry points
//! (`ferry_convert::fuzzing`) on every test run, stable toolchain, no fuzzer: each seed, then
//! seeded mutations of it (bytes flipped, cut, repeated). `scripts/fuzz` runs the real
//! coverage-guided fuzzer for a bounded time; what it finds is added to the corpus, so it
//! stays fixed here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use ferry_convert::fuzzing;
use ferry_sim::rng::Rng;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = ferry_tests::repo_root().join("fuzz/corpus").join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{} has no seeds", dir.display());
    out
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(4) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = [0x00, 0xff, 0x7f, 0x80, b'%', b'/'][rng.below(6) as usize];
            }
            2 => b.truncate(rng.below(b.len() as u64 + 1) as usize),
            _ if !b.is_empty() => {
                let i = rng.below(b.len() as u64) as usize;
                let n = rng.below(16) as usize + 1;
                let chunk: Vec<u8> = b[i..(i + n).min(b.len())].to_vec();
                let at = rng.below(b.len() as u64) as usize;
                b.splice(at..at, chunk);
            }
            _ => b.push(rng.next() as u8),
        }
    }
    b
}

fn replay(target: &str, run: fn(&[u8])) {
    let mutations: usize = std::env::var("FERRY_FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    for (i, (path, seed)) in corpus(target).iter().enumerate() {
        let mut rng = Rng::new(i as u64 + 1);
        let mut inputs = vec![seed.clone()];
        inputs.extend((0..mutations).map(|_| mutate(seed, &mut rng)));
        for (n, input) in inputs.iter().enumerate() {
            if std::panic::catch_unwind(|| run(input)).is_err() {
                let out = std::env::temp_dir().join(format!("ferry-fuzz-{target}-{i}-{n}"));
                std::fs::write(&out, input).unwrap();
                panic!(
                    "{target}: input {n} from {} failed; saved to {}",
                    path.display(),
                    out.display()
                );
            }
        }
    }
}

#[test]
fn key_corpus_and_mutations() {
    replay("key", fuzzing::key);
}

#[test]
fn event_corpus_and_mutations() {
    replay("event", fuzzing::event_body);
}

#[test]
fn parquet_corpus_and_mutations() {
    replay("parquet", fuzzing::parquet);
}

/// The harness checks something: the seeds that are whole DMS files (`sim-*`) convert, so the
/// invariant runs; the inputs the fuzzer found (`found-*`) are refused with an error.
#[test]
fn the_parquet_harness_converts_the_seeds() {
    use std::sync::Arc;
    let all = corpus("parquet");
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    let seeds: Vec<&(PathBuf, Vec<u8>)> = all
        .iter()
        .filter(|(p, _)| name(p).starts_with("sim-"))
        .collect();
    let found: Vec<&(PathBuf, Vec<u8>)> = all
        .iter()
        .filter(|(p, _)| name(p).starts_with("found-"))
        .collect();
    assert!(seeds.len() >= 3 && found.len() >= 2, "{all:?}");
    let catalog = fuzzing::catalog();
    let source = &catalog.sources()[0];
    let object = ferry_core::key::parse_key("dms/s/t/LOAD00000001.parquet", "dms", None).unwrap();
    let convert = |bytes: &[u8]| {
        let input = ferry_convert::RangeReader::new(Arc::new(bytes::Bytes::copy_from_slice(bytes)));
        let request = ferry_convert::ConvertRequest {
            source,
            table: &source.tables[0],
            object: &object,
            object_time_micros: None,
            known: None,
        };
        ferry_convert::convert(&input, &request, std::io::sink())
    };
    for (path, bytes) in seeds {
        let outcome = convert(bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(outcome.rows > 0, "{}", path.display());
    }
    for (path, bytes) in found {
        let err = convert(bytes).expect_err(&path.display().to_string());
        assert!(!err.is_retryable(), "{}: {err}", path.display());
    }
}
