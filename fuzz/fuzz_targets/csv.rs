#![no_main]
//! CSV with a header, every row schema (list columns as JSON).
use libfuzzer_sys::fuzz_target;
use merit_core::{Kind, Policy, RowSchema};

fuzz_target!(|data: &[u8]| {
    for rows in [RowSchema::Text, RowSchema::Alpaca, RowSchema::Sharegpt, RowSchema::Messages] {
        let mut policy = Policy::default_for(Kind::Text);
        policy.rows = rows;
        let _ = merit_gate::inspect(&policy, "f.csv", data);
    }
});
