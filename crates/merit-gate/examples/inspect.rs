//! Inspects files with the default policy of their kind and prints what the
//! gates say: `cargo run --release -p merit-gate --example inspect -- FILE…`.

fn main() {
    for path in std::env::args().skip(1) {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        let kind = match merit_gate::Format::from_name(path.rsplit('.').next().unwrap_or("")).map(|f| f.kind()) {
            Some(kind) => kind,
            None => merit_core::Kind::Text,
        };
        let mut policy = merit_gate::Policy::default_for(kind);
        policy.max_file_bytes = 256 << 20;
        let started = std::time::Instant::now();
        let inspection = merit_gate::inspect(&policy, &path, &bytes);
        let elapsed = started.elapsed();
        println!(
            "{path}: {:?}, {} rows, {} reasons, {:.1} ms",
            inspection.format,
            inspection.rows.len(),
            inspection.reasons.len(),
            elapsed.as_secs_f64() * 1e3
        );
        for r in inspection.reasons.iter().take(8) {
            println!("  {}/{} {} (threshold {}): {}", r.gate, r.metric, r.value, r.threshold, r.message);
        }
        if let Some(row) = inspection.rows.first() {
            let preview: String = row.text.chars().take(160).collect();
            println!("  score {:.3}; text: {:?}", row.score, preview);
        }
    }
}
