//! Shared pieces of the fuzz targets.

use merit_core::{Kind, Policy, RowSchema};

/// merit-gate runs third-party parsers (lopdf, zip, parquet, imagesize) under
/// `catch_unwind` and turns their panics into refusals; libFuzzer's panic hook
/// would abort on those contained panics too. This hook counts panics raised
/// in third-party code and aborts, as libFuzzer's does, on any raised in
/// Merit's own code. A panic escaping `inspect` aborts anyway (libfuzzer-sys
/// catches it at the boundary).
pub fn contain_panics() {
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

/// Inspects `data` named `name` under the default policy of `kind`.
pub fn inspect_as(kind: Kind, names: &[&str], data: &[u8]) {
    contain_panics();
    let policy = Policy::default_for(kind);
    for name in names {
        let _ = merit_gate::inspect(&policy, name, data);
    }
}

/// Inspects a structured text file under every row schema.
pub fn inspect_every_schema(name: &str, data: &[u8]) {
    contain_panics();
    for rows in [RowSchema::Text, RowSchema::Alpaca, RowSchema::Sharegpt, RowSchema::Messages] {
        let mut policy = Policy::default_for(Kind::Text);
        policy.rows = rows;
        let _ = merit_gate::inspect(&policy, name, data);
    }
}
