//! `inspect` step by step: size, format, extraction, per-row gates (in
//! parallel), then duplicates within the file (in order).

use std::collections::HashMap;

use merit_core::{Format, PiiMode, Policy, Reason};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::detect::{self, Sniffed};
use crate::hash::{normalise_into, sha256};
use crate::rows::{self, Record, Shaped};
use crate::{media, minhash, pii, round4, text, Candidate};

/// Everything `inspect` found, before reasons are capped.
pub(crate) struct Full {
    pub format: Option<Format>,
    pub rows: Vec<Candidate>,
    pub file_reasons: Vec<Reason>,
    /// Reasons per row, `row_reasons[i]` about `rows[i]`.
    pub row_reasons: Vec<Vec<Reason>>,
}

impl Full {
    fn refused(format: Option<Format>, reason: Reason) -> Full {
        Full { format, rows: Vec::new(), file_reasons: vec![reason], row_reasons: Vec::new() }
    }
}

/// Resource limits derived from the policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Most bytes any decompression may produce: min(16 × max_file_bytes, 64 MiB).
    pub decompressed: u64,
    /// Most records a structured file may hold.
    pub max_rows: usize,
}

impl Budget {
    pub(crate) fn of(policy: &Policy) -> Budget {
        Budget {
            decompressed: policy.max_file_bytes.saturating_mul(16).min(64 << 20),
            max_rows: (policy.max_file_bytes / 50).clamp(100_000, 50_000_000) as usize,
        }
    }
}

pub(crate) fn inspect_full(policy: &Policy, filename: &str, bytes: &[u8]) -> Full {
    if bytes.len() as u64 > policy.max_file_bytes {
        let reason = Reason::new(
            "size",
            "bytes",
            bytes.len() as u64,
            policy.max_file_bytes,
            format!("the file is {} bytes, over this datanet's limit of {} bytes", bytes.len(), policy.max_file_bytes),
        );
        return Full::refused(None, reason);
    }
    let format = match resolve_format(filename, bytes) {
        Ok(f) => f,
        Err((detected, reason)) => return Full::refused(detected, *reason),
    };
    if format.kind() != policy.kind || !policy.formats.contains(&format) {
        let accepted: Vec<&str> = policy.formats.iter().map(|f| f.as_str()).collect();
        let reason = Reason::new(
            "format",
            "format",
            format.as_str(),
            json!(accepted),
            format!("{} files are not accepted here; this datanet accepts {}", format.as_str(), accepted.join(", ")),
        );
        return Full::refused(Some(format), reason);
    }
    let budget = Budget::of(policy);
    let extracted: Result<Vec<Record>, Reason> = match format {
        Format::Txt | Format::Md => match detect::utf8_text(bytes) {
            Some(t) => Ok(vec![Record::Fits { shaped: Shaped::Text(t.to_string()), original: None }]),
            None => Err(Reason::new("format", "encoding", "invalid", "utf-8", "the file is not valid UTF-8 text")),
        },
        Format::Pdf => crate::pdf::extract(bytes, budget.decompressed)
            .map(|t| vec![Record::Fits { shaped: Shaped::Text(t), original: None }]),
        Format::Docx => crate::docx::extract(bytes, budget.decompressed)
            .map(|t| vec![Record::Fits { shaped: Shaped::Text(t), original: None }]),
        Format::Jsonl => jsonl(policy, bytes, &budget),
        Format::Csv => match detect::utf8_text(bytes) {
            Some(t) => {
                rows::csv_records(policy.rows, t, budget.max_rows, policy.gates.json_schema.is_some()).map_err(|why| {
                    if why.starts_with("more than") {
                        too_many_rows(budget.max_rows)
                    } else {
                        Reason::new(
                            "format",
                            "csv",
                            Value::Null,
                            Value::Null,
                            format!("the file cannot be read as CSV: {why}"),
                        )
                    }
                })
            }
            None => Err(Reason::new("format", "encoding", "invalid", "utf-8", "the file is not valid UTF-8 text")),
        },
        Format::Parquet => crate::parquet_in::records(bytes, policy.rows, &budget, policy.gates.json_schema.is_some()),
        Format::Png | Format::Jpg | Format::Webp | Format::Tiff | Format::Bmp => return image(policy, format, bytes),
        Format::Wav | Format::Mp3 | Format::Flac => return audio(policy, format, bytes),
    };
    match extracted {
        Ok(records) => {
            let (rows, row_reasons) = process(policy, records);
            Full { format: Some(format), rows, file_reasons: Vec::new(), row_reasons }
        }
        Err(reason) => Full::refused(Some(format), reason),
    }
}

fn too_many_rows(max: usize) -> Reason {
    Reason::new("size", "rows", Value::Null, max as u64, format!("the file holds more than {max} rows"))
}

fn jsonl(policy: &Policy, bytes: &[u8], budget: &Budget) -> Result<Vec<Record>, Reason> {
    let Some(text) = detect::utf8_text(bytes) else {
        return Err(Reason::new("format", "encoding", "invalid", "utf-8", "the file is not valid UTF-8 text"));
    };
    let lines: Vec<&str> = rows::jsonl_lines(text).take(budget.max_rows + 1).collect();
    if lines.len() > budget.max_rows {
        return Err(too_many_rows(budget.max_rows));
    }
    let keep = policy.gates.json_schema.is_some();
    Ok(lines.into_par_iter().map(|line| rows::jsonl_record(policy.rows, line, keep)).collect())
}

/// Decides the format from the content and the name's claim.
fn resolve_format(filename: &str, bytes: &[u8]) -> Result<Format, (Option<Format>, Box<Reason>)> {
    let sniffed = detect::sniff(bytes);
    let claimed = detect::claimed(filename);
    let ext = detect::extension(filename).unwrap_or_default();
    let mismatch = |claim: Format, detected: &str, detected_format: Option<Format>| {
        let reason = Reason::new(
            "format",
            "detected",
            detected,
            claim.as_str(),
            format!("file is named .{ext} but its content is not {} (detected: {detected})", detect::describe(claim)),
        );
        (detected_format, Box::new(reason))
    };
    let is_text_format = |f: Format| matches!(f, Format::Txt | Format::Md | Format::Csv | Format::Jsonl);
    match sniffed {
        Sniffed::Binary(f) => match claimed {
            Some(c) if c != f => Err(mismatch(c, f.as_str(), Some(f))),
            _ => Ok(f),
        },
        Sniffed::Text => {
            let text = detect::utf8_text(bytes).unwrap_or_default();
            match claimed {
                Some(c) if is_text_format(c) => Ok(c),
                Some(c) => {
                    let detected = if rows::looks_like_jsonl(text) { Format::Jsonl } else { Format::Txt };
                    Err(mismatch(c, detected.as_str(), Some(detected)))
                }
                None => Ok(if rows::looks_like_jsonl(text) { Format::Jsonl } else { Format::Txt }),
            }
        }
        Sniffed::Zip | Sniffed::Unknown { .. } => {
            let invalid_utf8_at = match sniffed {
                Sniffed::Unknown { invalid_utf8_at } => invalid_utf8_at,
                _ => None,
            };
            match (claimed, invalid_utf8_at) {
                (Some(c), Some(at)) if is_text_format(c) => Err((
                    None,
                    Box::new(Reason::new(
                        "format",
                        "encoding",
                        "invalid",
                        "utf-8",
                        format!(
                            "the file is named .{ext} but is not valid UTF-8 text (first invalid byte at offset {at})"
                        ),
                    )),
                )),
                (Some(c), _) => Err(mismatch(c, sniffed.name(), None)),
                (None, _) => Err((
                    None,
                    Box::new(Reason::new(
                        "format",
                        "detected",
                        sniffed.name(),
                        Value::Null,
                        "the file's content is not a format Merit recognises",
                    )),
                )),
            }
        }
    }
}

fn image(policy: &Policy, format: Format, bytes: &[u8]) -> Full {
    let (width, height) = match media::image_size(bytes) {
        Ok(wh) => wh,
        Err(why) => return Full::refused(Some(format), Reason::new("format", "image", Value::Null, Value::Null, why)),
    };
    if format == Format::Png {
        if let Err(why) = media::png_data_fits(bytes, width, height) {
            return Full::refused(Some(format), Reason::new("format", "image", Value::Null, Value::Null, why));
        }
    }
    let g = &policy.gates;
    let mut reasons = Vec::new();
    for (metric, value, min, max) in
        [("width", width, g.min_width, g.max_width), ("height", height, g.min_height, g.max_height)]
    {
        if min > 0 && value < min {
            reasons.push(Reason::new(
                "image_size",
                metric,
                value,
                min,
                format!("the image is {value} pixels in {metric}, below the minimum of {min}"),
            ));
        }
        if max > 0 && value > max {
            reasons.push(Reason::new(
                "image_size",
                metric,
                value,
                max,
                format!("the image is {value} pixels in {metric}, above the maximum of {max}"),
            ));
        }
    }
    let row = Candidate {
        content: json!({"format": format.as_str(), "width": width, "height": height}),
        text: String::new(),
        exact_hash: sha256(bytes),
        minhash: Vec::new(),
        score: 1.0,
    };
    Full { format: Some(format), rows: vec![row], file_reasons: reasons, row_reasons: vec![Vec::new()] }
}

fn audio(policy: &Policy, format: Format, bytes: &[u8]) -> Full {
    let a = match media::audio(format, bytes) {
        Ok(a) => a,
        Err(why) => {
            let reason = Reason::new(
                "format",
                "audio",
                Value::Null,
                Value::Null,
                format!("the recording cannot be read: {why}"),
            );
            return Full::refused(Some(format), reason);
        }
    };
    let g = &policy.gates;
    let secs = round4(a.duration_seconds);
    let mut reasons = Vec::new();
    if g.min_duration_seconds > 0.0 && a.duration_seconds < g.min_duration_seconds {
        reasons.push(Reason::new(
            "duration",
            "duration_seconds",
            secs,
            g.min_duration_seconds,
            format!("the recording lasts {secs} s, below the minimum of {} s", g.min_duration_seconds),
        ));
    }
    if g.max_duration_seconds > 0.0 && a.duration_seconds > g.max_duration_seconds {
        reasons.push(Reason::new(
            "duration",
            "duration_seconds",
            secs,
            g.max_duration_seconds,
            format!("the recording lasts {secs} s, above the maximum of {} s", g.max_duration_seconds),
        ));
    }
    let row = Candidate {
        content: json!({
            "format": format.as_str(),
            "duration_seconds": secs,
            "sample_rate": a.sample_rate,
            "channels": a.channels,
        }),
        text: String::new(),
        exact_hash: sha256(bytes),
        minhash: Vec::new(),
        score: 1.0,
    };
    Full { format: Some(format), rows: vec![row], file_reasons: reasons, row_reasons: vec![Vec::new()] }
}

/// Rows examined per row for near duplicates within a file (bounds the work
/// on adversarial input).
const NEAR_CANDIDATES: usize = 256;

/// Runs the per-row gates in parallel, then finds duplicates within the file.
pub(crate) fn process(policy: &Policy, records: Vec<Record>) -> (Vec<Candidate>, Vec<Vec<Reason>>) {
    let checked: Vec<(Candidate, Vec<Reason>, bool)> = records
        .into_par_iter()
        .enumerate()
        .map_init(text::Scratch::new, |s, (i, rec)| row(policy, i as u64, rec, s))
        .collect();
    let gates = &policy.gates;
    let n = checked.len();
    let mut rows = Vec::with_capacity(n);
    let mut all_reasons = Vec::with_capacity(n);
    let mut exact: HashMap<[u8; 32], usize, BuildPassThrough> = HashMap::default();
    // LSH buckets without an allocation per key: `heads` maps a band key to the
    // last row inserted with it, `links[r * BANDS + b]` to the row before that.
    let mut heads: HashMap<u64, u32, BuildPassThrough> = HashMap::default();
    let mut links: Vec<u32> = Vec::new();
    let mut seen: Vec<u32> = Vec::with_capacity(NEAR_CANDIDATES);
    for (i, (cand, mut reasons, comparable)) in checked.into_iter().enumerate() {
        if comparable {
            let mut duplicate = false;
            if gates.exact_duplicates {
                if let Some(&j) = exact.get(&cand.exact_hash) {
                    reasons.push(merit_core::verdict::exact_duplicate(i as u64, j as u64, "this file"));
                    duplicate = true;
                } else {
                    exact.insert(cand.exact_hash, i);
                }
            }
            if gates.near_duplicates && !duplicate {
                let keys = minhash::band_keys(&cand.minhash);
                seen.clear();
                let mut found = None;
                'search: for (b, key) in keys.iter().enumerate() {
                    let mut j = heads.get(key).copied().unwrap_or(NONE);
                    while j != NONE {
                        if seen.len() >= NEAR_CANDIDATES {
                            break 'search;
                        }
                        if !seen.contains(&j) {
                            seen.push(j);
                            let sim = minhash::similarity(&cand.minhash, rows_minhash(&rows, j as usize));
                            if sim >= gates.near_duplicate_threshold {
                                found = Some((j, sim));
                                break 'search;
                            }
                        }
                        j = links.get(j as usize * minhash::BANDS + b).copied().unwrap_or(NONE);
                    }
                }
                match found {
                    Some((j, sim)) => reasons.push(merit_core::verdict::near_duplicate(
                        i as u64,
                        j as u64,
                        "this file",
                        sim,
                        gates.near_duplicate_threshold,
                    )),
                    None if keys.len() == minhash::BANDS => {
                        links.resize((i + 1) * minhash::BANDS, NONE);
                        for (b, key) in keys.into_iter().enumerate() {
                            links[i * minhash::BANDS + b] = heads.insert(key, i as u32).unwrap_or(NONE);
                        }
                    }
                    None => {}
                }
            }
        }
        rows.push(cand);
        all_reasons.push(reasons);
    }
    (rows, all_reasons)
}

const NONE: u32 = u32::MAX;

/// Hashing for keys that are hashes already (band keys, SHA-256 digests).
#[derive(Default, Clone, Copy)]
struct BuildPassThrough;

impl std::hash::BuildHasher for BuildPassThrough {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(w);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
    fn write_usize(&mut self, v: usize) {
        self.0 ^= v as u64;
    }
}

fn rows_minhash(rows: &[Candidate], j: usize) -> &[u32] {
    rows.get(j).map(|c| c.minhash.as_slice()).unwrap_or(&[])
}

/// Checks one record; the flag says whether it takes part in duplicate detection.
fn row(policy: &Policy, i: u64, rec: Record, s: &mut text::Scratch) -> (Candidate, Vec<Reason>, bool) {
    let gates = &policy.gates;
    let (mut shaped, original) = match rec {
        Record::Misfit { original, error } => {
            let reason = Reason::new(
                "schema",
                "row",
                Value::Null,
                policy.rows.as_str(),
                format!("row {i} does not fit the {} row schema: {error}", policy.rows.as_str()),
            )
            .at_row(i);
            let exact_hash = sha256(&serde_json::to_vec(&original).unwrap_or_default());
            let cand =
                Candidate { content: original, text: String::new(), exact_hash, minhash: Vec::new(), score: 0.0 };
            return (cand, vec![reason], false);
        }
        Record::Fits { shaped, original } => (shaped, original),
    };
    let mut reasons = Vec::new();
    if let (Some(schema), Some(orig)) = (&gates.json_schema, &original) {
        if let Err(why) = merit_core::schema::validate(schema, orig) {
            reasons.push(
                Reason::new(
                    "json_schema",
                    "row",
                    Value::Null,
                    Value::Null,
                    format!("row {i} does not match the datanet's JSON schema: {why}"),
                )
                .at_row(i),
            );
        }
    }
    if gates.pii != PiiMode::Allow {
        let mut counts = [0usize; 4];
        for field in shaped.fields_mut() {
            let found = pii::find(field);
            if found.is_empty() {
                continue;
            }
            for f in &found {
                counts[f.kind as usize] += 1;
            }
            if gates.pii == PiiMode::Redact {
                *field = pii::redact(field, &found);
            }
        }
        if gates.pii == PiiMode::Reject {
            for kind in pii::Kind::ALL {
                let n = counts[kind as usize];
                if n > 0 {
                    reasons.push(
                        Reason::new(
                            "pii",
                            kind.metric(),
                            n as u64,
                            0,
                            format!(
                                "the text contains {n} {}; this datanet does not accept personal data",
                                kind.noun(n)
                            ),
                        )
                        .at_row(i),
                    );
                }
            }
        }
    }
    let text = shaped.text();
    text::measure(&text, gates, s);
    let (mut sum, mut count) = (0.0, 0usize);
    for rule in &s.rules {
        sum += rule.sub_score();
        count += 1;
        if !rule.passed() {
            reasons.push(rule.reason(i));
        }
    }
    if !gates.languages.is_empty() {
        count += 1;
        match text::language(&text, &gates.languages, i) {
            Ok(sub) => sum += sub,
            Err(reason) => reasons.push(reason),
        }
    }
    let score = if count == 0 { 1.0 } else { sum / count as f64 };
    normalise_into(&text, &mut s.normalised, &mut s.words);
    let cand = Candidate {
        content: shaped.into_value(),
        exact_hash: sha256(s.normalised.as_bytes()),
        minhash: minhash::signature_of_words(&s.words),
        score: score.clamp(0.0, 1.0),
        text,
    };
    (cand, reasons, true)
}
