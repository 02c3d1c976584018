//! Fuzz target: `ferry_convert::fuzzing::parquet` (see there for what must hold).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_convert::fuzzing::parquet(data));
