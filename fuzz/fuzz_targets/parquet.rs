#![no_main]
//! Parquet footer and page walking, the record API, every row schema.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| merit_fuzz::inspect_every_schema("f.parquet", data));
