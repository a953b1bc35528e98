#![no_main]
//! merit_core::Policy::from_toml, with a schema loader that returns the input again.
use libfuzzer_sys::fuzz_target;
use merit_core::Policy;

fuzz_target!(|data: &[u8]| {
    merit_fuzz::contain_panics();
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Policy::from_toml(text, |_| Ok(text.to_string()));
    let _ = Policy::from_toml(text, |_| Err("no such file".to_string()));
});
