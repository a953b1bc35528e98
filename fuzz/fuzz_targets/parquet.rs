#![no_main]
//! Parquet footer and page walking, the record API, every row schema.
use libfuzzer_sys::fuzz_target;
use merit_core::{Kind, Policy, RowSchema};

fuzz_target!(|data: &[u8]| {
    for rows in [RowSchema::Text, RowSchema::Alpaca, RowSchema::Sharegpt, RowSchema::Messages] {
        let mut policy = Policy::default_for(Kind::Text);
        policy.rows = rows;
        let _ = merit_gate::inspect(&policy, "f.parquet", data);
    }
});
