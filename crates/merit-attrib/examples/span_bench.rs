//! Span attribution benchmark: builds an index over N synthetic tokens
//! (rows of ~200 Zipf-distributed ids from a 49,152-token vocabulary, like
//! text) and times `attribute` on 256-token answers that copy 100 tokens of
//! one row among fresh text. Target (issue 7): < 20 ms at 10 M tokens.
//!
//!     cargo run --release -p merit-attrib --example span_bench [-- TOKENS]
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000_000);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Zipf-like: id = floor(V^u) − 1 for u uniform in [0, 1).
    let token =
        |next: &mut dyn FnMut() -> u64| ((49_152f64).powf((next() % 1_000_000) as f64 / 1e6) as u32).saturating_sub(1);
    let mut rows: Vec<Vec<u32>> = Vec::new();
    let mut total = 0;
    while total < n {
        let len = 100 + (next() % 200) as usize;
        rows.push((0..len).map(|_| token(&mut next)).collect());
        total += len + 1;
    }
    let t = Instant::now();
    let ix = merit_attrib::SpanIndex::build(rows.iter().enumerate().map(|(i, r)| (i as u64, &r[..]))).expect("index");
    println!("index: {} rows, {} tokens, built in {:.1} s", ix.rows(), ix.len(), t.elapsed().as_secs_f64());
    let mut times = Vec::new();
    let mut hits = 0;
    for q in 0..50 {
        let src = &rows[(next() as usize) % rows.len()];
        let mut answer: Vec<u32> = (0..78).map(|_| token(&mut next)).collect();
        answer.extend_from_slice(&src[..100.min(src.len())]);
        while answer.len() < 256 {
            answer.push(token(&mut next));
        }
        let t = Instant::now();
        let a = ix.attribute(&answer, 8);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        hits += usize::from(!a.is_empty() && q < 50);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "attribute (256-token answers, k = 8): median {:.2} ms, max {:.2} ms over {} answers ({} attributed); target < 20 ms",
        times[times.len() / 2],
        times[times.len() - 1],
        times.len(),
        hits
    );
}
