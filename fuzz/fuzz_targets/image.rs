#![no_main]
//! Image dimensions (PNG, JPEG, WebP, TIFF, BMP), by content.
use libfuzzer_sys::fuzz_target;
use merit_core::Kind;

fuzz_target!(|data: &[u8]| merit_fuzz::inspect_as(Kind::Image, &["f.png", "f.jpg", "f.webp", "f.tiff", "f.bmp", "f"], data));
