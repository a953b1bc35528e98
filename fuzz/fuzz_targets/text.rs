#![no_main]
//! Plain text through every text gate, PII redaction and the public hashes.
use libfuzzer_sys::fuzz_target;
use merit_core::{Kind, Policy};

fuzz_target!(|data: &[u8]| {
    merit_fuzz::contain_panics();
    let mut policy = Policy::default_for(Kind::Text);
    let _ = merit_gate::inspect(&policy, "f.txt", data);
    policy.gates.pii = merit_core::PiiMode::Redact;
    policy.gates.languages = vec!["fr".into(), "ru".into()];
    let _ = merit_gate::inspect(&policy, "f.md", data);
    if let Ok(text) = std::str::from_utf8(data) {
        let sig = merit_gate::minhash::signature(text);
        assert_eq!(merit_gate::minhash::similarity(&sig, &sig), 1.0);
        assert_eq!(merit_gate::minhash::band_keys(&sig).len(), merit_gate::minhash::BANDS);
    }
});
