//! The text gates: one tokenisation per row, shared by the Gopher, C4 and
//! FineWeb rules, the word count and the language check.
//!
//! Thresholds are datatrove's defaults (`src/datatrove/pipeline/filters/`
//! `gopher_quality_filter.py`, `gopher_repetition_filter.py`,
//! `c4_filters.py`, `fineweb_quality_filter.py`), which follow the Gopher
//! paper's table A1, the C4 paper and the FineWeb report.

use std::sync::OnceLock;

use merit_core::{Gates, Reason};
use regex::Regex;

use crate::hash::{bytes64, combine, CountTable};
use crate::round4;

/// How a rule compares its value with its threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Bound {
    /// Fails when `value > threshold`.
    Max,
    /// Fails when `value < threshold`.
    Min,
}

/// Whether a value is a ratio in [0, 1] or an unbounded count (for the margin).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Unit {
    Count,
    Ratio,
    /// Present (1) or absent (0): scores 1 or 0.
    Flag,
}

/// One measured rule.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rule {
    pub gate: &'static str,
    pub metric: &'static str,
    pub what: &'static str,
    pub value: f64,
    pub threshold: f64,
    pub bound: Bound,
    pub unit: Unit,
}

impl Rule {
    pub(crate) fn passed(&self) -> bool {
        let (v, t) = (self.value, self.threshold);
        match self.bound {
            Bound::Max => v <= t,
            Bound::Min => v >= t,
        }
    }

    /// The sub-score: 0 when failing, else twice the relative margin, capped at 1.
    pub(crate) fn sub_score(&self) -> f64 {
        if !self.passed() {
            return 0.0;
        }
        let (v, t) = (self.value, self.threshold);
        let margin = match (self.unit, self.bound) {
            (Unit::Flag, _) => return 1.0,
            (_, Bound::Max) => {
                if t <= 0.0 {
                    return 1.0;
                }
                (t - v) / t
            }
            (Unit::Ratio, Bound::Min) => {
                if t >= 1.0 {
                    return 1.0;
                }
                (v - t) / (1.0 - t)
            }
            (Unit::Count, Bound::Min) => {
                if t <= 0.0 {
                    return 1.0;
                }
                (v - t) / t
            }
        };
        (2.0 * margin).clamp(0.0, 1.0)
    }

    pub(crate) fn reason(&self, row: u64) -> Reason {
        let shown = |x: f64| match self.unit {
            Unit::Ratio => format!("{:.3}", x),
            _ => format!("{}", round4(x)),
        };
        let (v, t) = (shown(self.value), shown(self.threshold));
        let relation = match self.bound {
            Bound::Max => format!("above the maximum of {t}"),
            Bound::Min => format!("below the minimum of {t}"),
        };
        let message = match self.unit {
            Unit::Flag => self.what.to_string(),
            _ => format!("{} is {v}, {relation}", self.what),
        };
        let json = |x: f64| -> serde_json::Value {
            if self.unit != Unit::Ratio && x.fract() == 0.0 && x.abs() < 9e15 {
                serde_json::Value::from(x as i64)
            } else {
                serde_json::Value::from(round4(x))
            }
        };
        Reason::new(self.gate, self.metric, json(self.value), json(self.threshold), message).at_row(row)
    }
}

/// One word token: a byte range of the text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tok {
    pub start: usize,
    pub end: usize,
    pub chars: u32,
    pub hash: u64,
    /// Made of punctuation only.
    pub symbol: bool,
    /// Holds at least one letter.
    pub alpha: bool,
}

/// Buffers reused between rows on one thread.
pub(crate) struct Scratch {
    pub toks: Vec<Tok>,
    pub rules: Vec<Rule>,
    /// The normalised text and its word hashes (exact-duplicate hash, MinHash).
    pub normalised: String,
    pub words: Vec<u64>,
    grams: Vec<u64>,
    multi: Vec<bool>,
    active: Vec<u32>,
    prefix: Vec<u64>,
    table: CountTable,
}

impl Scratch {
    pub(crate) fn new() -> Self {
        Scratch {
            toks: Vec::new(),
            rules: Vec::new(),
            normalised: String::new(),
            words: Vec::new(),
            grams: Vec::new(),
            multi: Vec::new(),
            active: Vec::new(),
            prefix: Vec::new(),
            table: CountTable::new(),
        }
    }
}

/// Splits `text` into word tokens as datatrove does for English: spaCy's
/// English tokenizer (see `spacy_en`), whitespace tokens left out.
pub(crate) fn tokenize(text: &str, out: &mut Vec<Tok>) {
    thread_local! {
        static SPANS: std::cell::RefCell<Vec<(usize, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    out.clear();
    SPANS.with(|spans| {
        let mut spans = spans.borrow_mut();
        spans.clear();
        crate::spacy_en::tokenize(text, &mut spans);
        out.extend(spans.iter().map(|&(a, b)| make_tok(text, a, b)));
    });
}

#[inline]
fn make_tok(text: &str, start: usize, end: usize) -> Tok {
    let s = &text[start..end];
    let (chars, symbol, alpha) = if s.is_ascii() {
        let b = s.as_bytes();
        (b.len() as u32, b.iter().all(|c| c.is_ascii_punctuation()), b.iter().any(|c| c.is_ascii_alphabetic()))
    } else {
        let mut chars = 0u32;
        let mut symbol = true;
        let mut alpha = false;
        for c in s.chars() {
            chars += 1;
            symbol &= crate::dt_tables::contains(crate::dt_tables::PUNCTUATION, c);
            alpha |= c.is_alphabetic();
        }
        (chars, symbol, alpha)
    };
    Tok { start, end, chars, hash: bytes64(s.as_bytes()), symbol, alpha }
}

/// Number of Unicode scalar values (Python's `len`).
#[inline]
pub(crate) fn char_count(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

/// Python's `str.isspace()` for one character: Unicode White_Space and the
/// four information separators `\x1c`..`\x1f`.
#[inline]
pub(crate) fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
#[inline]
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(py_is_space)
}

/// Python's `str.splitlines()`: lines end at `\n`, `\r\n`, `\r`, `\x0b`,
/// `\x0c`, `\x1c`, `\x1d`, `\x1e`, `\x85`, U+2028 and U+2029; no empty line
/// after a final line break.
pub(crate) fn splitlines(text: &str) -> impl Iterator<Item = &str> {
    // Bytes that start a line break: the ASCII ones, and the lead bytes of
    // U+0085 (C2 85) and U+2028 / U+2029 (E2 80 A8 / A9).
    const fn breaks() -> [bool; 256] {
        let mut t = [false; 256];
        let mut i = 0;
        let list = [b'\n', b'\r', 0x0b, 0x0c, 0x1c, 0x1d, 0x1e, 0xc2, 0xe2];
        while i < list.len() {
            t[list[i] as usize] = true;
            i += 1;
        }
        t
    }
    const BREAK: [bool; 256] = breaks();
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let b = rest.as_bytes();
        let mut i = 0;
        let (at, len) = loop {
            match b[i..].iter().position(|&c| BREAK[c as usize]) {
                None => {
                    let line = rest;
                    rest = "";
                    return Some(line);
                }
                Some(p) => {
                    let k = i + p;
                    let len = match b[k] {
                        0xc2 if b.get(k + 1) == Some(&0x85) => 2,
                        0xe2 if b.get(k + 1) == Some(&0x80) && matches!(b.get(k + 2), Some(0xa8 | 0xa9)) => 3,
                        0xc2 | 0xe2 => 0,
                        b'\r' if b.get(k + 1) == Some(&b'\n') => 2,
                        _ => 1,
                    };
                    if len > 0 {
                        break (k, len);
                    }
                    i = k + 1;
                }
            }
        };
        let line = &rest[..at];
        rest = &rest[at + len..];
        Some(line)
    })
}

/// `re.split("\n+", text)`: pieces between runs of `\n`, with an empty piece
/// before a leading run and after a trailing one.
fn split_newline_runs(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b'\n', r.as_bytes()) {
            None => {
                rest = None;
                Some(r)
            }
            Some(p) => {
                let run = r.as_bytes()[p..].iter().take_while(|&&b| b == b'\n').count();
                rest = Some(&r[p + run..]);
                Some(&r[..p])
            }
        }
    })
}

const STOP_WORDS: [&str; 8] = ["the", "be", "to", "of", "and", "that", "have", "with"];

/// Counts the word tokens the length gate counts: those not made of punctuation only.
pub(crate) fn word_count(toks: &[Tok]) -> usize {
    toks.iter().filter(|t| !t.symbol).count()
}

/// Measures every text rule the policy switches on (except language and PII)
/// into `s.rules`.
pub(crate) fn measure(text: &str, gates: &Gates, s: &mut Scratch) {
    tokenize(text, &mut s.toks);
    let mut rules = std::mem::take(&mut s.rules);
    rules.clear();
    let words = word_count(&s.toks) as f64;
    if gates.min_words > 0 {
        rules.push(Rule {
            gate: "length",
            metric: "word_count",
            what: "word count",
            value: words,
            threshold: gates.min_words as f64,
            bound: Bound::Min,
            unit: Unit::Count,
        });
    }
    if gates.max_words > 0 {
        rules.push(Rule {
            gate: "length",
            metric: "word_count",
            what: "word count",
            value: words,
            threshold: gates.max_words as f64,
            bound: Bound::Max,
            unit: Unit::Count,
        });
    }
    let text_chars = char_count(text);
    if gates.gopher_quality && !s.toks.is_empty() {
        gopher_quality(text, &s.toks, &mut rules);
    }
    if gates.gopher_repetition && text_chars > 0 {
        gopher_repetition(text, text_chars, s, &mut rules);
    }
    if gates.c4 {
        c4(text, &mut rules);
    }
    if gates.fineweb && !text.is_empty() {
        fineweb(text, s.toks.len(), &mut s.table, &mut rules);
    }
    s.rules = rules;
}

/// datatrove `GopherQualityFilter` defaults: min_avg_word_length 3,
/// max_avg_word_length 10, max_symbol_word_ratio 0.1, max_bullet_lines_ratio
/// 0.9, max_ellipsis_lines_ratio 0.3, max_non_alpha_words_ratio 0.8 (the share
/// of words holding a letter must be at least 0.8), min_stop_words 2.
/// (min_doc_words 50 and max_doc_words 100 000 are the `length` gate.)
fn gopher_quality(text: &str, toks: &[Tok], rules: &mut Vec<Rule>) {
    let n_words = toks.len() as f64;
    let (mut non_symbol, mut non_symbol_chars, mut alpha) = (0usize, 0usize, 0usize);
    // `len(STOP_WORDS ∩ set(words))`: distinct stop words, case as written.
    let mut stop_seen = 0u8;
    for t in toks {
        if !t.symbol {
            non_symbol += 1;
            non_symbol_chars += t.chars as usize;
        }
        if t.alpha {
            alpha += 1;
            let w = &text[t.start..t.end];
            if w.len() <= 4 {
                if let Some(k) = STOP_WORDS.iter().position(|s| *s == w) {
                    stop_seen |= 1 << k;
                }
            }
        }
    }
    let stop = stop_seen.count_ones();
    const G: &str = "gopher_quality";
    if non_symbol > 0 {
        let avg = non_symbol_chars as f64 / non_symbol as f64;
        rules.push(Rule {
            gate: G,
            metric: "avg_word_length",
            what: "average word length",
            value: avg,
            threshold: 3.0,
            bound: Bound::Min,
            unit: Unit::Count,
        });
        rules.push(Rule {
            gate: G,
            metric: "avg_word_length",
            what: "average word length",
            value: avg,
            threshold: 10.0,
            bound: Bound::Max,
            unit: Unit::Count,
        });
    }
    let hashes = text.bytes().filter(|&b| b == b'#').count() as f64;
    let ellipses = (text.matches("...").count() + text.matches('\u{2026}').count()) as f64;
    rules.push(Rule {
        gate: G,
        metric: "hash_word_ratio",
        what: "ratio of `#` symbols to words",
        value: hashes / n_words,
        threshold: 0.1,
        bound: Bound::Max,
        unit: Unit::Ratio,
    });
    rules.push(Rule {
        gate: G,
        metric: "ellipsis_word_ratio",
        what: "ratio of ellipses to words",
        value: ellipses / n_words,
        threshold: 0.1,
        bound: Bound::Max,
        unit: Unit::Ratio,
    });
    let (mut lines, mut bullets, mut ellipsis_lines) = (0usize, 0usize, 0usize);
    for line in splitlines(text) {
        lines += 1;
        let l = line.trim_start_matches(py_is_space);
        if l.starts_with('\u{2022}') || l.starts_with('-') {
            bullets += 1;
        }
        let r = line.trim_end_matches(py_is_space);
        if r.ends_with("...") || r.ends_with('\u{2026}') {
            ellipsis_lines += 1;
        }
    }
    if lines > 0 {
        rules.push(Rule {
            gate: G,
            metric: "bullet_line_ratio",
            what: "share of lines starting with a bullet",
            value: bullets as f64 / lines as f64,
            threshold: 0.9,
            bound: Bound::Max,
            unit: Unit::Ratio,
        });
        rules.push(Rule {
            gate: G,
            metric: "ellipsis_line_ratio",
            what: "share of lines ending with an ellipsis",
            value: ellipsis_lines as f64 / lines as f64,
            threshold: 0.3,
            bound: Bound::Max,
            unit: Unit::Ratio,
        });
    }
    rules.push(Rule {
        gate: G,
        metric: "alpha_word_ratio",
        what: "share of words holding a letter",
        value: alpha as f64 / n_words,
        threshold: 0.8,
        bound: Bound::Min,
        unit: Unit::Ratio,
    });
    rules.push(Rule {
        gate: G,
        metric: "stop_word_count",
        what: "number of distinct stop words (the, be, to, of, and, that, have, with)",
        value: stop as f64,
        threshold: 2.0,
        bound: Bound::Min,
        unit: Unit::Count,
    });
}

/// Duplicated elements and their characters, as datatrove's `find_duplicates`.
fn find_duplicates<'a>(
    items: impl Iterator<Item = &'a str>,
    table: &mut CountTable,
    cap: usize,
) -> (usize, usize, usize) {
    table.reset(cap);
    let (mut total, mut dups, mut dup_chars) = (0, 0, 0);
    for item in items {
        total += 1;
        if table.contains_or_insert(bytes64(item.as_bytes())) {
            dups += 1;
            dup_chars += char_count(item);
        }
    }
    (total, dups, dup_chars)
}

/// Paragraphs as `re.split(r"\n{2,}", text.strip())`.
fn paragraphs(text: &str) -> impl Iterator<Item = &str> {
    let t = py_strip(text);
    let bytes = t.as_bytes();
    let mut pos = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let start = pos;
        while let Some(p) = memchr::memchr(b'\n', &bytes[pos..]) {
            pos += p;
            if pos + 1 < bytes.len() && bytes[pos + 1] == b'\n' {
                let end = pos;
                while pos < bytes.len() && bytes[pos] == b'\n' {
                    pos += 1;
                }
                return Some(&t[start..end]);
            }
            pos += 1;
        }
        pos = bytes.len();
        done = true;
        Some(&t[start..])
    })
}

/// datatrove `GopherRepetitionFilter` defaults (Gopher table A1): dup_line_frac
/// 0.3, dup_para_frac 0.3, dup_line_char_frac 0.2, dup_para_char_frac 0.2,
/// top_n_grams (2, 0.2), (3, 0.18), (4, 0.16), dup_n_grams (5, 0.15),
/// (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10).
fn gopher_repetition(text: &str, text_chars: usize, s: &mut Scratch, rules: &mut Vec<Rule>) {
    const G: &str = "gopher_repetition";
    let len = text_chars as f64;
    let (paras, para_dups, para_dup_chars) = find_duplicates(paragraphs(text), &mut s.table, 16);
    rules.push(Rule {
        gate: G,
        metric: "dup_para_ratio",
        what: "share of duplicated paragraphs",
        value: para_dups as f64 / paras.max(1) as f64,
        threshold: 0.3,
        bound: Bound::Max,
        unit: Unit::Ratio,
    });
    rules.push(Rule {
        gate: G,
        metric: "dup_para_char_ratio",
        what: "share of characters in duplicated paragraphs",
        value: para_dup_chars as f64 / len,
        threshold: 0.2,
        bound: Bound::Max,
        unit: Unit::Ratio,
    });
    let (lines, line_dups, line_dup_chars) = find_duplicates(split_newline_runs(text), &mut s.table, 64);
    rules.push(Rule {
        gate: G,
        metric: "dup_line_ratio",
        what: "share of duplicated lines",
        value: line_dups as f64 / lines.max(1) as f64,
        threshold: 0.3,
        bound: Bound::Max,
        unit: Unit::Ratio,
    });
    rules.push(Rule {
        gate: G,
        metric: "dup_line_char_ratio",
        what: "share of characters in duplicated lines",
        value: line_dup_chars as f64 / len,
        threshold: 0.2,
        bound: Bound::Max,
        unit: Unit::Ratio,
    });

    let toks = &s.toks;
    let n_toks = toks.len();
    s.prefix.clear();
    s.prefix.push(0);
    let mut acc = 0u64;
    for t in toks {
        acc += t.chars as u64;
        s.prefix.push(acc);
    }
    // grams[i] holds the hash of the n-gram starting at token i, grown one word per round.
    s.grams.clear();
    s.grams.extend(toks.iter().map(|t| t.hash));
    s.multi.clear();
    s.multi.resize(n_toks, false);
    // Positions whose (n-1)-gram occurs more than once: only there can an n-gram
    // occur more than once, so only those are counted (all of them for n = 2).
    s.active.clear();
    s.active.extend(0..n_toks as u32);
    const TOP: [(usize, f64, &str, &str); 3] = [
        (2, 0.20, "top_2gram_char_ratio", "share of characters covered by the most frequent 2-gram"),
        (3, 0.18, "top_3gram_char_ratio", "share of characters covered by the most frequent 3-gram"),
        (4, 0.16, "top_4gram_char_ratio", "share of characters covered by the most frequent 4-gram"),
    ];
    const DUP: [(usize, f64, &str, &str); 6] = [
        (5, 0.15, "dup_5gram_char_ratio", "share of characters in duplicated 5-grams"),
        (6, 0.14, "dup_6gram_char_ratio", "share of characters in duplicated 6-grams"),
        (7, 0.13, "dup_7gram_char_ratio", "share of characters in duplicated 7-grams"),
        (8, 0.12, "dup_8gram_char_ratio", "share of characters in duplicated 8-grams"),
        (9, 0.11, "dup_9gram_char_ratio", "share of characters in duplicated 9-grams"),
        (10, 0.10, "dup_10gram_char_ratio", "share of characters in duplicated 10-grams"),
    ];
    let gram_chars = |prefix: &[u64], i: usize, n: usize| prefix[i + n] - prefix[i] + (n as u64 - 1);
    for n in 2..=10usize {
        if n_toks < n {
            break;
        }
        let count = n_toks - n + 1;
        s.active.retain(|&i| (i as usize) < count);
        // Count the n-grams at the active positions; mark those occurring twice or more.
        s.table.reset(s.active.len());
        let (mut best_count, mut best_first) = (0u32, u32::MAX);
        for &i in &s.active {
            s.grams[i as usize] = combine(s.grams[i as usize], toks[i as usize + n - 1].hash);
            s.multi[i as usize] = false;
        }
        for &i in &s.active {
            let (c, first) = s.table.add(s.grams[i as usize], i);
            if c >= 2 {
                s.multi[i as usize] = true;
                s.multi[first as usize] = true;
            }
            if c > best_count || (c == best_count && first < best_first) {
                best_count = c;
                best_first = first;
            }
        }
        let multi = &s.multi;
        s.active.retain(|&i| multi[i as usize]);
        if n <= 4 {
            // datatrove's `Counter.most_common(1)`: the highest count, the earliest on ties.
            if best_count <= 1 {
                (best_count, best_first) = (1, 0);
            }
            let (_, threshold, metric, what) = TOP[n - 2];
            let top_chars = gram_chars(&s.prefix, best_first as usize, n) * best_count as u64;
            rules.push(Rule {
                gate: G,
                metric,
                what,
                value: top_chars as f64 / len,
                threshold,
                bound: Bound::Max,
                unit: Unit::Ratio,
            });
        } else {
            // datatrove's `find_all_duplicate`: walk the n-grams, skipping n words
            // after each repeat. An n-gram that occurs once can never be a repeat
            // nor be repeated, so only the (sorted) active positions are visited.
            let (_, threshold, metric, what) = DUP[n - 5];
            s.table.reset(s.active.len());
            let mut repeated = 0u64;
            let mut next_allowed = 0usize;
            for &i in &s.active {
                let i = i as usize;
                if i < next_allowed {
                    continue;
                }
                if s.table.contains_or_insert(s.grams[i]) {
                    // `"".join(words[i:i + n])`: no spaces between the words.
                    repeated += s.prefix[i + n] - s.prefix[i];
                    next_allowed = i + n;
                }
            }
            rules.push(Rule {
                gate: G,
                metric,
                what,
                value: repeated as f64 / len,
                threshold,
                bound: Bound::Max,
                unit: Unit::Ratio,
            });
        }
    }
}

/// Rare pieces of C4's phrases, so that the search seldom stops on ordinary
/// words; each hit is then checked against the whole phrase.
fn c4_anchors() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)ipsum|vascript|rms of use|ivacy policy|cookie")
            .expect("the C4 anchor pattern is a valid constant")
    })
}

/// Which of C4's phrases a line holds: (lorem ipsum, javascript, a policy
/// phrase: terms of use, privacy policy, cookie policy, uses cookies, use of
/// cookies, use cookies). Case-insensitive substrings, as datatrove's `in`.
fn c4_phrases(line: &str) -> (bool, bool, bool) {
    let b = line.as_bytes();
    let before =
        |at: usize, what: &str| at >= what.len() && b[at - what.len()..at].eq_ignore_ascii_case(what.as_bytes());
    let after = |at: usize, what: &str| {
        b.len() >= at + what.len() && b[at..at + what.len()].eq_ignore_ascii_case(what.as_bytes())
    };
    let (mut lorem, mut javascript, mut policy) = (false, false, false);
    for m in c4_anchors().find_iter(line) {
        let at = m.start();
        match m.as_str().as_bytes()[0].to_ascii_lowercase() {
            b'i' if m.as_str().len() == 5 => lorem |= before(at, "lorem "),
            b'v' => javascript |= before(at, "ja"),
            b'r' => policy |= before(at, "te"),
            b'i' => policy |= before(at, "pr"),
            _ => {
                policy |= after(at, "cookie policy")
                    || (after(at, "cookies") && (before(at, "uses ") || before(at, "use of ") || before(at, "use ")))
            }
        }
    }
    (lorem, javascript, policy)
}

/// Removes Wikipedia-style citations: `[12]`, `[]`, `[edit]`, `[citation needed]`.
fn strip_citations(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains('[') {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(p) = rest.find('[') {
        out.push_str(&rest[..p]);
        let tail = &rest[p..];
        // Citations are short: look for the `]` within 32 bytes only, so a
        // line of many `[` stays linear.
        let close = tail.as_bytes().iter().take(32).position(|&b| b == b']');
        let citation = match close {
            Some(c) => {
                let inner = &tail[1..c];
                inner.bytes().all(|b| b.is_ascii_digit()) || inner == "edit" || inner == "citation needed"
            }
            None => false,
        };
        match (citation, close) {
            (true, Some(c)) => rest = &tail[c + 1..],
            _ => {
                out.push('[');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Sentences in a kept line, approximating NLTK's Punkt: runs of `.`, `!`, `?`
/// that end a word (followed by whitespace, a closing quote or bracket, or the
/// end of the line); at least one per non-empty line.
fn count_sentences(line: &str) -> usize {
    let b = line.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while let Some(p) = memchr::memchr3(b'.', b'!', b'?', &b[i..]) {
        i += p;
        {
            let start = i;
            while i < b.len() && matches!(b[i], b'.' | b'!' | b'?') {
                i += 1;
            }
            let mut j = i;
            while j < b.len() && matches!(b[j], b'"' | b'\'' | b')' | b']') {
                j += 1;
            }
            let ends = j >= b.len() || b[j].is_ascii_whitespace();
            if ends && start > 0 && !b[start - 1].is_ascii_whitespace() {
                n += 1;
            }
        }
    }
    n.max(usize::from(!line.trim().is_empty()))
}

/// datatrove `C4QualityFilter` defaults: split_paragraph (lines),
/// remove_citations, filter_no_terminal_punct (`. ? ! " '`, not `...`),
/// min_num_sentences 5, min_words_per_line 3, max_word_length 1000,
/// filter_lorem_ipsum, filter_javascript, filter_curly_bracket, filter_policy.
/// C4 is a line filter: lines it drops do not count against a row (a row is
/// not rewritten), only the document rules decide — lorem ipsum or a curly
/// bracket in a line that survived the line rules before them, and fewer than
/// 5 sentences in the lines kept.
fn c4(text: &str, rules: &mut Vec<Rule>) {
    const G: &str = "c4";
    let mut sentences = 0usize;
    let (mut lorem, mut curly) = (false, false);
    for raw in splitlines(text) {
        let line = py_strip(raw);
        if line.is_empty() {
            continue;
        }
        // `line.split()`: Python's whitespace.
        let mut words = line.split(py_is_space).filter(|w| !w.is_empty());
        let long_word = line.len() > 1000 && line.split(py_is_space).any(|w| w.len() > 1000 && char_count(w) > 1000);
        if long_word {
            continue;
        }
        let few_words = words.by_ref().take(3).count() < 3;
        let cleaned = strip_citations(line);
        let l: &str = &cleaned;
        let terminal = l.ends_with(['.', '?', '!', '"', '\'']) && !l.ends_with("...");
        if !terminal || few_words {
            continue;
        }
        let (has_lorem, javascript, policy) = c4_phrases(l);
        if has_lorem {
            // datatrove drops the document at the first such line.
            lorem = true;
            break;
        }
        if javascript {
            continue;
        }
        if l.contains('{') {
            curly = true;
            break;
        }
        if policy {
            continue;
        }
        sentences += count_sentences(l);
    }
    rules.push(Rule {
        gate: G,
        metric: "lorem_ipsum",
        what: "the text holds placeholder text (lorem ipsum)",
        value: f64::from(u8::from(lorem)),
        threshold: 0.0,
        bound: Bound::Max,
        unit: Unit::Flag,
    });
    rules.push(Rule {
        gate: G,
        metric: "curly_bracket",
        what: "the text holds a curly bracket, a sign of code or markup",
        value: f64::from(u8::from(curly)),
        threshold: 0.0,
        bound: Bound::Max,
        unit: Unit::Flag,
    });
    if !lorem && !curly {
        rules.push(Rule {
            gate: G,
            metric: "sentence_count",
            what: "number of sentences in lines that end with punctuation and have at least 3 words",
            value: sentences as f64,
            threshold: 5.0,
            bound: Bound::Min,
            unit: Unit::Count,
        });
    }
}

/// datatrove `FineWebQualityFilter` defaults, over the lines of `text.split("\n")`
/// that are not blank (a row with none fails): line_punct_thr 0.12 (share of
/// lines ending in datatrove's `TERMINAL_PUNCTUATION`; fails below),
/// short_line_thr 0.67 with short_line_length 30 (fails above),
/// char_duplicates_ratio 0.01 (characters of repeated lines over the
/// characters that are not `\n`; fails above), new_line_ratio 0.3 (`\n` per
/// word token; fails above).
fn fineweb(text: &str, n_words: usize, seen: &mut CountTable, rules: &mut Vec<Rule>) {
    const G: &str = "fineweb";
    let (mut lines, mut punct, mut short) = (0usize, 0usize, 0usize);
    seen.reset(64);
    let mut dup_chars = 0usize;
    for line in text.split('\n') {
        if py_strip(line).is_empty() {
            continue;
        }
        lines += 1;
        if line
            .chars()
            .next_back()
            .is_some_and(|c| crate::dt_tables::contains(crate::dt_tables::TERMINAL_PUNCTUATION, c))
        {
            punct += 1;
        }
        let chars = char_count(line);
        if chars <= 30 {
            short += 1;
        }
        if seen.contains_or_insert(bytes64(line.as_bytes())) {
            dup_chars += chars;
        }
    }
    if lines == 0 {
        rules.push(Rule {
            gate: G,
            metric: "empty",
            what: "the text has no line that is not blank",
            value: 1.0,
            threshold: 0.0,
            bound: Bound::Max,
            unit: Unit::Flag,
        });
        return;
    }
    let newlines = text.bytes().filter(|&b| b == b'\n').count();
    let non_newline_chars = char_count(text) - newlines;
    rules.push(Rule {
        gate: G,
        metric: "line_punct_ratio",
        what: "share of lines ending with punctuation",
        value: punct as f64 / lines as f64,
        threshold: 0.12,
        bound: Bound::Min,
        unit: Unit::Ratio,
    });
    rules.push(Rule {
        gate: G,
        metric: "short_line_ratio",
        what: "share of lines of 30 characters or fewer",
        value: short as f64 / lines as f64,
        threshold: 0.67,
        bound: Bound::Max,
        unit: Unit::Ratio,
    });
    rules.push(Rule {
        gate: G,
        metric: "char_dup_ratio",
        what: "share of characters in duplicated lines",
        value: if non_newline_chars == 0 { 0.0 } else { dup_chars as f64 / non_newline_chars as f64 },
        threshold: 0.01,
        bound: Bound::Max,
        unit: Unit::Ratio,
    });
    rules.push(Rule {
        gate: G,
        metric: "new_line_ratio",
        what: "ratio of line breaks to words",
        value: if n_words == 0 { newlines as f64 } else { newlines as f64 / n_words as f64 },
        threshold: 0.3,
        bound: Bound::Max,
        unit: Unit::Ratio,
    });
}

/// The ISO 639-1 code of a whatlang language.
pub(crate) fn iso639_1(lang: whatlang::Lang) -> &'static str {
    match lang.code() {
        "epo" => "eo",
        "eng" => "en",
        "rus" => "ru",
        "cmn" => "zh",
        "spa" => "es",
        "por" => "pt",
        "ita" => "it",
        "ben" => "bn",
        "fra" => "fr",
        "deu" => "de",
        "ukr" => "uk",
        "kat" => "ka",
        "ara" => "ar",
        "hin" => "hi",
        "jpn" => "ja",
        "heb" => "he",
        "yid" => "yi",
        "pol" => "pl",
        "amh" => "am",
        "jav" => "jv",
        "kor" => "ko",
        "nob" => "nb",
        "dan" => "da",
        "swe" => "sv",
        "fin" => "fi",
        "tur" => "tr",
        "nld" => "nl",
        "hun" => "hu",
        "ces" => "cs",
        "ell" => "el",
        "bul" => "bg",
        "bel" => "be",
        "mar" => "mr",
        "kan" => "kn",
        "ron" => "ro",
        "slv" => "sl",
        "hrv" => "hr",
        "srp" => "sr",
        "mkd" => "mk",
        "lit" => "lt",
        "lav" => "lv",
        "est" => "et",
        "tam" => "ta",
        "vie" => "vi",
        "urd" => "ur",
        "tha" => "th",
        "guj" => "gu",
        "uzb" => "uz",
        "pan" => "pa",
        "aze" => "az",
        "ind" => "id",
        "tel" => "te",
        "pes" => "fa",
        "mal" => "ml",
        "ori" => "or",
        "mya" => "my",
        "nep" => "ne",
        "sin" => "si",
        "khm" => "km",
        "tuk" => "tk",
        "aka" => "ak",
        "zul" => "zu",
        "sna" => "sn",
        "afr" => "af",
        "lat" => "la",
        "slk" => "sk",
        "cat" => "ca",
        "tgl" => "tl",
        "hye" => "hy",
        _ => "und",
    }
}

/// English function words that are not common words in any other language
/// whatlang knows (so not *of*, *is* (Dutch), *for*, *at*, *her* (Danish),
/// *was*, *will*, *also* (German), *he* (Spanish), *to* (Czech, Polish)).
#[inline]
fn english_marker(lower: &[u8]) -> bool {
    matches!(
        lower,
        b"the"
            | b"and"
            | b"that"
            | b"with"
            | b"are"
            | b"this"
            | b"which"
            | b"have"
            | b"from"
            | b"were"
            | b"been"
            | b"has"
            | b"had"
            | b"would"
            | b"their"
            | b"there"
            | b"they"
            | b"what"
            | b"when"
            | b"where"
            | b"who"
            | b"it"
            | b"its"
            | b"not"
            | b"but"
            | b"she"
            | b"his"
            | b"we"
            | b"you"
            | b"our"
            | b"than"
            | b"these"
            | b"those"
            | b"into"
            | b"about"
            | b"after"
            | b"because"
            | b"could"
            | b"should"
            | b"very"
    )
}

/// A fast path in front of whatlang (whose cost is ~50 µs a call whatever the
/// length): a sample where at least 12% of the first 100 words (and at least 5)
/// are English marker words is English.
fn obviously_english(sample: &str) -> bool {
    let (mut words, mut hits) = (0usize, 0usize);
    for w in sample.split_ascii_whitespace().take(100) {
        words += 1;
        let b = w.as_bytes();
        // Drop one punctuation character at either end ("The", "that," "(with").
        let b = match b.first() {
            Some(c) if c.is_ascii_punctuation() => &b[1..],
            _ => b,
        };
        let b = match b.last() {
            Some(c) if c.is_ascii_punctuation() => &b[..b.len() - 1],
            _ => b,
        };
        if (2..=7).contains(&b.len()) {
            let mut buf = [0u8; 7];
            for (d, s) in buf.iter_mut().zip(b) {
                *d = s.to_ascii_lowercase();
            }
            if english_marker(&buf[..b.len()]) {
                hits += 1;
            }
        }
    }
    hits >= 5 && hits * 100 >= words * 12
}

/// Bytes of a row the language check reads.
pub(crate) const LANGUAGE_PREFIX_BYTES: usize = 2000;

/// The language check: `None` when the row passes with sub-score 1 (reliable)
/// or 0.5 (unreliable but plausible); a reason when it fails.
pub(crate) fn language(text: &str, accepted: &[String], row: u64) -> Result<f64, Reason> {
    let mut end = text.len().min(LANGUAGE_PREFIX_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let sample = &text[..end];
    let threshold = serde_json::json!(accepted);
    if obviously_english(sample) {
        if accepted.iter().any(|a| a == "en") {
            return Ok(1.0);
        }
        return Err(Reason::new(
            "language",
            "language",
            "en",
            threshold,
            format!("the text is in `en`, which this datanet does not accept (accepted: {})", accepted.join(", ")),
        )
        .at_row(row));
    }
    let Some(info) = whatlang::detect(sample) else {
        return Err(Reason::new(
            "language",
            "language",
            "unknown",
            threshold,
            format!("no language could be identified; accepted: {}", accepted.join(", ")),
        )
        .at_row(row));
    };
    let code = iso639_1(info.lang());
    let in_list = accepted.iter().any(|a| a == code);
    if info.is_reliable() {
        if in_list {
            return Ok(1.0);
        }
        return Err(Reason::new(
            "language",
            "language",
            code,
            threshold,
            format!("the text is in `{code}`, which this datanet does not accept (accepted: {})", accepted.join(", ")),
        )
        .at_row(row));
    }
    let script_fits = info.script().langs().iter().any(|l| accepted.iter().any(|a| a == iso639_1(*l)));
    if in_list || script_fits {
        return Ok(0.5);
    }
    Err(Reason::new(
        "language",
        "language",
        code,
        threshold,
        format!(
            "the text is written in {} script, which no accepted language uses (accepted: {})",
            info.script().name(),
            accepted.join(", ")
        ),
    )
    .at_row(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        tokenize(text, &mut out);
        out.iter().map(|t| text[t.start..t.end].to_string()).collect()
    }

    #[test]
    fn tokenizer_splits_like_spacy() {
        assert_eq!(toks("Hello, world!"), ["Hello", ",", "world", "!"]);
        assert_eq!(toks("(wait...) ok"), ["(", "wait", "...", ")", "ok"]);
        assert_eq!(toks("-- ... U.S. don't"), ["--", "...", "U.S.", "do", "n't"]);
        assert_eq!(toks("«Grüße» 東京。"), ["«", "Grüße", "»", "東京", "。"]);
        assert!(toks(" \n\t ").is_empty());
    }

    #[test]
    fn splitlines_matches_python() {
        let v: Vec<&str> = splitlines("a\nb\r\nc\rd\n").collect();
        assert_eq!(v, ["a", "b", "c", "d"]);
        let v: Vec<&str> = splitlines("a\n\nb").collect();
        assert_eq!(v, ["a", "", "b"]);
        let v: Vec<&str> = paragraphs("\n a\n\n\nb\nc \n").collect();
        assert_eq!(v, ["a", "b\nc"]);
    }

    #[test]
    fn c4_phrases_are_found_case_insensitively() {
        assert_eq!(c4_phrases("Lorem Ipsum dolor"), (true, false, false));
        assert_eq!(c4_phrases("enable JavaScript here"), (false, true, false));
        assert_eq!(c4_phrases("see our Terms of Use and Privacy Policy"), (false, false, true));
        assert_eq!(c4_phrases("this site uses cookies"), (false, false, true));
        assert_eq!(c4_phrases("the use of cookies"), (false, false, true));
        assert_eq!(c4_phrases("a cookie jar, an ipsum, a script, private policy"), (false, false, false));
    }

    #[test]
    fn citations_and_sentences() {
        assert_eq!(strip_citations("Paris[1] is big.[citation needed]"), "Paris is big.");
        assert_eq!(strip_citations("a [b] c"), "a [b] c");
        assert_eq!(count_sentences("One. Two! Three? \"Four.\""), 4);
        assert_eq!(count_sentences("version 1.2 is out"), 1);
    }

    #[test]
    fn sub_scores_fall_to_zero_at_the_threshold() {
        let r =
            |value, threshold, bound, unit| Rule { gate: "g", metric: "m", what: "w", value, threshold, bound, unit };
        assert_eq!(r(0.0, 0.1, Bound::Max, Unit::Ratio).sub_score(), 1.0);
        assert!((r(0.075, 0.1, Bound::Max, Unit::Ratio).sub_score() - 0.5).abs() < 1e-9);
        assert_eq!(r(0.2, 0.1, Bound::Max, Unit::Ratio).sub_score(), 0.0);
        assert_eq!(r(100.0, 50.0, Bound::Min, Unit::Count).sub_score(), 1.0);
        assert!((r(60.0, 50.0, Bound::Min, Unit::Count).sub_score() - 0.4).abs() < 1e-9);
        assert_eq!(r(0.11, 0.12, Bound::Min, Unit::Ratio).sub_score(), 0.0);
        assert_eq!(r(1.0, 0.0, Bound::Max, Unit::Flag).sub_score(), 0.0);
    }
}

#[cfg(test)]
mod py_tests {
    #[test]
    fn splitlines_is_pythons() {
        fn lines(t: &str) -> Vec<&str> {
            super::splitlines(t).collect()
        }
        assert_eq!(
            lines("a\nb\r\nc\rd\u{0b}e\u{0c}f\u{1c}g\u{85}h\u{2028}i\u{2029}j"),
            ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
        );
        assert_eq!(lines("a\n\nb\n"), ["a", "", "b"]);
        assert_eq!(lines("é\u{2026}\u{00e2}x"), ["é\u{2026}\u{00e2}x"]);
        assert_eq!(lines(""), Vec::<&str>::new());
    }
}
