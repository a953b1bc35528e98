#![no_main]
//! PDF extraction (pre-scan, lopdf, content lexer) and the text gates.
use libfuzzer_sys::fuzz_target;
use merit_core::Kind;

fuzz_target!(|data: &[u8]| merit_fuzz::inspect_as(Kind::Text, &["f.pdf"], data));
