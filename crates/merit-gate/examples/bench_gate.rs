//! Measures the text gates' throughput:
//! `cargo run --release -p merit-gate --example bench_gate [MEGABYTES] [REPEAT]`.

fn main() {
    let mut args = std::env::args().skip(1);
    let megabytes = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let repeat: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let corpus = merit_gate::bench::corpus(megabytes);
    for _ in 0..repeat.max(1) {
        let report = merit_gate::bench::run_on(&corpus);
        println!(
            "gate bench: {:.1} MB in {:.2} s: {:.1} MB/s, {:.0} rows/s ({} rows, {} accepted)",
            report.bytes as f64 / 1e6,
            report.seconds,
            report.mb_per_s(),
            report.rows_per_s(),
            report.rows,
            report.accepted_rows
        );
    }
}
