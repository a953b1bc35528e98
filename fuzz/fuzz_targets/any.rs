#![no_main]
//! Format detection: the first byte picks the claimed extension.
use libfuzzer_sys::fuzz_target;
use merit_core::{Kind, Policy};

fuzz_target!(|data: &[u8]| {
    contain_panics();
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

/// merit-gate runs third-party parsers (lopdf, zip, parquet, imagesize) under
/// `catch_unwind` and turns their panics into refusals; libFuzzer's panic hook
/// would abort on those contained panics too. This hook counts panics raised
/// in third-party code and aborts, as libFuzzer's does, on any raised in
/// Merit's own code. A panic escaping `inspect` aborts anyway (libfuzzer-sys
/// catches it at the boundary).
fn contain_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    static CONTAINED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let ours = info.location().is_some_and(|l| l.file().contains("crates/merit-"));
            if ours {
                eprintln!("{info}");
                std::process::abort();
            }
            CONTAINED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }))
    });
}
