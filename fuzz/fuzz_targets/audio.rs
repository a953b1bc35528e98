#![no_main]
//! Audio durations (WAV, FLAC, MP3), by content.
use libfuzzer_sys::fuzz_target;
use merit_core::Kind;

fuzz_target!(|data: &[u8]| merit_fuzz::inspect_as(Kind::Audio, &["f.wav", "f.flac", "f.mp3", "f"], data));
