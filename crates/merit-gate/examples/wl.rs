use std::time::Instant;
fn main() {
    let text = "The old river carried the heavy engine of the village. In the end, the quiet teacher studied the museum near the harbour and that was warm. The young doctor followed the bright railway. According to the report, the famous painter visited the island behind the forest. ".repeat(8);
    for &n in &[200usize, 300, 400, 600, 1000, 2000] {
        let s = &text[..n];
        let t = Instant::now();
        let mut rel = 0;
        for _ in 0..2000 {
            if let Some(i) = whatlang::detect(s) {
                if i.is_reliable() {
                    rel += 1;
                }
            }
        }
        let i = whatlang::detect(s).unwrap();
        println!(
            "{n}: {:.1} us, reliable {rel}, {:?} conf {:.3}",
            t.elapsed().as_secs_f64() / 2000.0 * 1e6,
            i.lang(),
            i.confidence()
        );
    }
}
