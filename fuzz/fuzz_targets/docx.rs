#![no_main]
//! docx extraction (zip, quick-xml) and the text gates.
use libfuzzer_sys::fuzz_target;
use merit_core::Kind;

fuzz_target!(|data: &[u8]| merit_fuzz::inspect_as(Kind::Text, &["f.docx"], data));
