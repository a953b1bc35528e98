#![no_main]
//! JSON lines, every row schema, duplicates within the file.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| merit_fuzz::inspect_every_schema("f.jsonl", data));
