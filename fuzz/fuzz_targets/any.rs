#![no_main]
//! Format detection: the first byte picks the claimed extension.
use libfuzzer_sys::fuzz_target;
use merit_core::{Kind, Policy};

fuzz_target!(|data: &[u8]| {
    merit_fuzz::contain_panics();
    const NAMES: [&str; 16] = [
        "f.txt", "f.md", "f.pdf", "f.docx", "f.jsonl", "f.csv", "f.parquet", "f.png", "f.jpg", "f.webp", "f.tiff",
        "f.bmp", "f.wav", "f.mp3", "f.flac", "f",
    ];
    let Some((&first, rest)) = data.split_first() else { return };
    let name = NAMES[first as usize % NAMES.len()];
    for kind in [Kind::Text, Kind::Image, Kind::Audio] {
        let _ = merit_gate::inspect(&Policy::default_for(kind), name, rest);
    }
});
