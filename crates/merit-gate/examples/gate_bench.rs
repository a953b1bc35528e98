//! `merit bench gate` without the rest of the binary (a quicker release build):
//!
//!     cargo run --release -p merit-gate --example gate_bench -- [MB]

fn main() {
    let mb: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(100);
    let r = merit_gate::bench::run(mb);
    println!("{:.1} MB/s, {:.0} rows/s ({mb} MB)", r.mb_per_s(), r.rows_per_s());
}
