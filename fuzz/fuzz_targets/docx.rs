#![no_main]
//! docx extraction (zip, quick-xml) and the text gates.
use libfuzzer_sys::fuzz_target;
use merit_core::{Kind, Policy};

fuzz_target!(|data: &[u8]| {
    let policy = Policy::default_for(Kind::Text);
    let _ = merit_gate::inspect(&policy, "f.docx", data);
});
