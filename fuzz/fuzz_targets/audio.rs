#![no_main]
//! Audio durations (WAV, FLAC, MP3), by content.
use libfuzzer_sys::fuzz_target;
use merit_core::{Kind, Policy};

fuzz_target!(|data: &[u8]| {
    let policy = Policy::default_for(Kind::Audio);
    for name in ["f.wav", "f.flac", "f.mp3", "f"] {
        let _ = merit_gate::inspect(&policy, name, data);
    }
});
