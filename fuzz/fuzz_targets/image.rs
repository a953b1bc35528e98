#![no_main]
//! Image dimensions (PNG, JPEG, WebP, TIFF, BMP), by content.
use libfuzzer_sys::fuzz_target;
use merit_core::{Kind, Policy};

fuzz_target!(|data: &[u8]| {
    let policy = Policy::default_for(Kind::Image);
    for name in ["f.png", "f.jpg", "f.webp", "f.tiff", "f.bmp", "f"] {
        let _ = merit_gate::inspect(&policy, name, data);
    }
});
