#![no_main]
//! CSV with a header, every row schema (list columns as JSON).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| merit_fuzz::inspect_every_schema("f.csv", data));
