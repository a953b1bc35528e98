//! A throughput benchmark of the text gates on a generated JSONL corpus.
//!
//! ```
//! let report = merit_gate::bench::run(1);
//! assert!(report.rows > 100 && report.accepted_rows > 0);
//! assert!(report.mb_per_s() > 0.0);
//! ```

use std::time::Instant;

use merit_core::{Kind, Policy};

/// What one benchmark run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Size of the corpus in bytes.
    pub bytes: u64,
    /// Rows in the corpus.
    pub rows: u64,
    /// Seconds spent in the gates (corpus generation is not timed).
    pub seconds: f64,
    /// Rows that passed every gate.
    pub accepted_rows: u64,
}

impl Report {
    /// Throughput in megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / 1e6 / self.seconds
        } else {
            0.0
        }
    }

    /// Throughput in rows per second.
    pub fn rows_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.rows as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Generates a deterministic corpus of about `megabytes` MB (JSONL, rows
/// `{"text": ...}` of 50–400 words of English-like prose, with near
/// duplicates, personal data and junk mixed in) and runs every text gate on it
/// with the default text policy (file size cap lifted), timing only the gates.
pub fn run(megabytes: usize) -> Report {
    run_on(&corpus(megabytes))
}

/// Runs every text gate on a JSONL `corpus` (such as one from [`corpus`]) with
/// the default text policy (file size cap lifted), timing only the gates.
pub fn run_on(corpus: &[u8]) -> Report {
    let mut policy = Policy::default_for(Kind::Text);
    policy.max_file_bytes = u64::MAX;
    let start = Instant::now();
    let full = crate::pipeline::inspect_full(&policy, "bench.jsonl", corpus);
    let seconds = start.elapsed().as_secs_f64();
    let accepted = full.row_reasons.iter().filter(|r| r.is_empty()).count() as u64;
    Report {
        bytes: corpus.len() as u64,
        rows: full.rows.len() as u64,
        seconds,
        accepted_rows: if full.file_reasons.is_empty() { accepted } else { 0 },
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const NOUNS: &[&str] = &[
    "river",
    "city",
    "farmer",
    "teacher",
    "market",
    "village",
    "winter",
    "garden",
    "mountain",
    "family",
    "report",
    "council",
    "engine",
    "school",
    "harvest",
    "window",
    "bridge",
    "doctor",
    "library",
    "question",
    "season",
    "company",
    "journey",
    "letter",
    "forest",
    "machine",
    "student",
    "kitchen",
    "history",
    "island",
    "weather",
    "evening",
    "museum",
    "festival",
    "railway",
    "village",
    "theory",
    "problem",
    "country",
    "summer",
    "house",
    "church",
    "street",
    "government",
    "painter",
    "writer",
    "morning",
    "valley",
    "harbour",
    "factory",
];
const ADJECTIVES: &[&str] = &[
    "old",
    "quiet",
    "young",
    "local",
    "small",
    "large",
    "early",
    "careful",
    "bright",
    "heavy",
    "simple",
    "public",
    "ancient",
    "modern",
    "narrow",
    "famous",
    "patient",
    "strange",
    "northern",
    "green",
    "busy",
    "gentle",
    "common",
    "important",
    "difficult",
    "natural",
    "useful",
    "warm",
    "cold",
    "wooden",
];
const VERBS: &[&str] = &[
    "carried",
    "opened",
    "visited",
    "described",
    "followed",
    "changed",
    "built",
    "watched",
    "remembered",
    "finished",
    "studied",
    "crossed",
    "protected",
    "explained",
    "painted",
    "covered",
    "needed",
    "moved",
    "found",
    "started",
    "reached",
    "planned",
    "believed",
    "questioned",
    "welcomed",
    "measured",
    "repaired",
    "discovered",
];
const LINKS: &[&str] =
    &["in", "across", "near", "behind", "before", "after", "through", "under", "beside", "around", "towards", "with"];
const OPENERS: &[&str] = &[
    "In the end",
    "For many years",
    "During the summer",
    "According to the report",
    "At first",
    "Later that day",
    "As a result",
    "On the other hand",
    "In those days",
    "By the evening",
];

fn sentence(rng: &mut Rng, out: &mut Vec<String>) {
    let mut s: Vec<String> = Vec::with_capacity(16);
    if rng.below(4) == 0 {
        s.push(format!("{},", rng.pick(OPENERS)));
        s.push("the".into());
    } else {
        s.push("The".into());
    }
    if rng.below(2) == 0 {
        s.push(rng.pick(ADJECTIVES).into());
    }
    s.push(rng.pick(NOUNS).into());
    if rng.below(3) == 0 {
        s.push("of".into());
        s.push("the".into());
        s.push(rng.pick(NOUNS).into());
    }
    s.push(rng.pick(VERBS).into());
    s.push("the".into());
    if rng.below(2) == 0 {
        s.push(rng.pick(ADJECTIVES).into());
    }
    s.push(rng.pick(NOUNS).into());
    match rng.below(4) {
        0 => {
            s.push(rng.pick(LINKS).into());
            s.push("the".into());
            s.push(rng.pick(NOUNS).into());
        }
        1 => {
            s.push("and".into());
            s.push("that".into());
            s.push("was".into());
            s.push(rng.pick(ADJECTIVES).into());
        }
        _ => {}
    }
    if let Some(last) = s.last_mut() {
        last.push('.');
    }
    out.extend(s);
}

fn prose(rng: &mut Rng) -> String {
    let target = 50 + rng.below(351);
    let mut words = Vec::with_capacity(target + 16);
    let paragraphs = if rng.below(5) == 0 { 2 + rng.below(2) } else { 1 };
    let mut text = String::with_capacity(target * 7);
    for p in 0..paragraphs {
        words.clear();
        while words.len() < target / paragraphs {
            sentence(rng, &mut words);
        }
        if p > 0 {
            text.push_str("\n\n");
        }
        text.push_str(&words.join(" "));
    }
    text
}

fn junk(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => "Home | About | Contact | Login\n".repeat(20),
        1 => "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(12),
        2 => (0..120).map(|i| format!("#{} ${}", i * 37 % 101, i)).collect::<Vec<_>>().join(" "),
        _ => "function main() { return 42; } // javascript\n".repeat(15),
    }
}

/// The benchmark corpus: about `megabytes` MB (at least 1) of JSON lines
/// `{"text": ...}`, the same for every call.
pub fn corpus(megabytes: usize) -> Vec<u8> {
    let target = megabytes.max(1) * 1_000_000;
    let mut rng = Rng(0x4D45_5249_5442_454E);
    let mut out = Vec::with_capacity(target + 4096);
    let mut recent: Vec<String> = Vec::new();
    while out.len() < target {
        let roll = rng.below(100);
        let text = if roll < 3 && !recent.is_empty() {
            // A near duplicate: an earlier row with a few words changed.
            let base = recent[rng.below(recent.len())].clone();
            let mut words: Vec<&str> = base.split(' ').collect();
            for _ in 0..2 {
                let i = rng.below(words.len());
                words[i] = rng.pick(NOUNS);
            }
            words.join(" ")
        } else if roll < 5 {
            let mut t = prose(&mut rng);
            t.push_str(if rng.below(2) == 0 {
                " You can write to jane.doe@example.com for the full report."
            } else {
                " Call the office on 555-123-4567 for the full report."
            });
            t
        } else if roll < 8 {
            junk(&mut rng)
        } else {
            prose(&mut rng)
        };
        if recent.len() < 64 {
            recent.push(text.clone());
        } else {
            let i = rng.below(64);
            recent[i] = text.clone();
        }
        let line = serde_json::json!({ "text": text }).to_string();
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}
