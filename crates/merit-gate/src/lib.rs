//! File → rows: format detection, text extraction, quality gates, duplicate
//! and PII detection for Merit datanets.
//!
//! [`inspect`] is the whole crate in one call: it takes a datanet [`Policy`],
//! a file name and the file's bytes, recognises the format **by content**
//! (the extension is only a claim that has to match), extracts the rows the
//! file would add, runs every gate the policy switches on and returns an
//! [`Inspection`]: the recognised [`Format`], one [`Candidate`] per row and the
//! machine-readable [`Reason`]s why the file fails (none means it passed).
//!
//! * A [`Candidate`] is one row as it will be stored (`content`), the text the
//!   gates measured, its exact-duplicate hash, its [`minhash`] signature and a
//!   validation score in [0, 1].
//! * Duplicates *within* the file are found here; duplicates against the rows a
//!   datanet already holds are found by the store with the same hashes
//!   ([`minhash::band_keys`], [`minhash::similarity`]); both are worded by
//!   `merit_core::verdict::{exact_duplicate, near_duplicate}`.
//! * [`export::write_parquet`] writes rows as a parquet file pandas can read;
//!   [`bench::run`] measures the text gates' throughput.
//!
//! Architecture invariant: this crate does no I/O and reads no clock (except
//! [`bench`](mod@bench), which times itself). No input makes it panic: third-party parsers
//! run under `catch_unwind`, and every decoder is bounded (see *Hostile input*).
//!
//! # Formats
//!
//! Magic bytes decide: `%PDF` (pdf), a zip holding `word/document.xml` (docx),
//! `PAR1` at both ends (parquet), PNG, JPEG, WEBP, TIFF, BMP, WAV, FLAC and MP3.
//! Anything else that is UTF-8 without NUL bytes is text: `jsonl` when every
//! non-empty line is a JSON object, `csv` when the name says so, `md` when the
//! name says so, `txt` otherwise. A name that claims one format for content of
//! another is refused (gate `format`, metric `detected`).
//!
//! Text documents (txt, md, pdf, docx) become one row `{"text": …}` (a PDF's
//! visual lines are reflowed into sentences and paragraphs; a docx paragraph
//! is a line). Structured
//! files (jsonl, csv, parquet) give one row per record, shaped by the policy's
//! `rows` schema (`text`, `alpaca`, `sharegpt`, `messages`) and checked against
//! `gates.json_schema` when the policy has one. Images become
//! `{"format", "width", "height"}` and audio `{"format", "duration_seconds",
//! "sample_rate", "channels"}`.
//!
//! # Gates and thresholds
//!
//! Text gates run on each row's text (its string fields joined by `\n`). The
//! thresholds are [datatrove]'s defaults, which come from the Gopher
//! (Rae et al. 2021, table A1), C4 (Raffel et al. 2020) and FineWeb papers.
//! Words are counted as datatrove counts them for English: the tokens of
//! spaCy's English tokenizer (`spacy_en`: its rules, generated from spaCy by
//! `scripts/spacy_tables.py`; `don't` is `do` `n't`, hyphens and `=` between
//! words are tokens), and a word is a token not made only of datatrove's
//! punctuation.
//!
//! | gate | metric | fails when | origin |
//! | --- | --- | --- | --- |
//! | `length` | `word_count` | `< gates.min_words` or `> gates.max_words` (0 = off) | `GopherQualityFilter` `min_doc_words` 50, `max_doc_words` 100 000 |
//! | `gopher_quality` | `avg_word_length` | `< 3` or `> 10` | `GopherQualityFilter` |
//! | `gopher_quality` | `hash_word_ratio` | `#` per word `> 0.1` | `max_symbol_word_ratio` |
//! | `gopher_quality` | `ellipsis_word_ratio` | `...`/`…` per word `> 0.1` | `max_symbol_word_ratio` |
//! | `gopher_quality` | `bullet_line_ratio` | lines starting with `•` or `-` `> 0.9` | `max_bullet_lines_ratio` |
//! | `gopher_quality` | `ellipsis_line_ratio` | lines ending in an ellipsis `> 0.3` | `max_ellipsis_lines_ratio` |
//! | `gopher_quality` | `alpha_word_ratio` | words with a letter `< 0.8` | `max_non_alpha_words_ratio` |
//! | `gopher_quality` | `stop_word_count` | `< 2` distinct words of *the, be, to, of, and, that, have, with* (as written: *The* is not *the*) | `min_stop_words` |
//! | `gopher_repetition` | `dup_para_ratio`, `dup_para_char_ratio` | `> 0.3`, `> 0.2` | `GopherRepetitionFilter` |
//! | `gopher_repetition` | `dup_line_ratio`, `dup_line_char_ratio` | `> 0.3`, `> 0.2` (lines split on runs of `\n`, so blank lines do not repeat) | `GopherRepetitionFilter` |
//! | `gopher_repetition` | `top_2gram_char_ratio` … `top_4gram_char_ratio` | `> 0.20, 0.18, 0.16` | `top_n_grams` |
//! | `gopher_repetition` | `dup_5gram_char_ratio` … `dup_10gram_char_ratio` | `> 0.15, 0.14, 0.13, 0.12, 0.11, 0.10` | `dup_n_grams` |
//! | `c4` | `lorem_ipsum`, `curly_bracket` | present in a line C4 keeps | `C4QualityFilter` |
//! | `c4` | `sentence_count` | `< 5` sentences in the lines C4 keeps | `min_num_sentences` |
//! | `fineweb` | `line_punct_ratio` | non-blank lines ending in datatrove's terminal punctuation `< 0.12` | `FineWebQualityFilter` |
//! | `fineweb` | `short_line_ratio` | non-blank lines of at most 30 characters `> 0.67` | `short_line_thr`, `short_line_length` |
//! | `fineweb` | `char_dup_ratio` | characters in repeated non-blank lines `> 0.01` | `char_duplicates_ratio` |
//! | `fineweb` | `new_line_ratio` | newlines per word `> 0.3` | `new_line_ratio` |
//! | `language` | `language` | the detected ISO 639-1 code is not in `gates.languages` | whatlang |
//! | `pii` | `email`, `phone`, `ip`, `card` | any found and `gates.pii = "reject"` | Merit |
//! | `exact_duplicate` | `sha256` | same normalised text as an earlier row | Merit |
//! | `near_duplicate` | `jaccard` | MinHash estimate `>= gates.near_duplicate_threshold` | Merit |
//! | `schema`, `json_schema` | `row` | a record does not fit `rows` or `gates.json_schema` | Merit |
//! | `image_size` | `width`, `height` | outside `gates.min/max_width/height` (0 = off) | Merit |
//! | `duration` | `duration_seconds` | outside `gates.min/max_duration_seconds` (0 = off) | Merit |
//! | `size` | `bytes`, `rows`, `values`, `zip_entries` | over `max_file_bytes`, too many rows, values or entries | Merit |
//! | `size` | `decompressed_bytes`, `decoded_bytes`, `extracted_bytes` | a decompression or decoding bomb (see *Hostile input*) | Merit |
//! | `format` | `detected`, `format`, `encoding` | content unlike the name, a format the policy refuses, invalid UTF-8 | Merit |
//! | `format` | `pdf`, `docx`, `parquet`, `csv`, `image`, `audio` | the file cannot be read as that format (encrypted, corrupt, unsupported) | Merit |
//!
//! Reasons about one row carry its index in `row` (records count from 0 in
//! file order, misfits included); reasons about the whole file carry none.
//!
//! C4 is a line *filter* in datatrove: it drops lines (no terminal punctuation,
//! fewer than 3 words, a word over 1000 characters, *javascript*, cookie and
//! terms-of-use notices) and drops documents (*lorem ipsum*, `{`, fewer than 5
//! sentences left). Merit stores rows as given and applies the document rules
//! as datatrove does: lines C4 would drop do not count against a row.
//!
//! `scripts/datatrove_diff.sh` checks these families against datatrove 0.10
//! itself, document by document, on real text gathered from the machine
//! (CI requires 99% agreement per family). Known differences: C4 counts
//! sentences with Merit's own splitter where datatrove runs spaCy's
//! sentencizer; the second pass that merges special cases across tokens
//! settles overlapping finds slightly differently from spaCy's phrase matcher
//! (`[:]`); rows in other languages are still measured as English.
//!
//! Language identification (whatlang) reads the first 2000 bytes of a row.
//! When whatlang calls its guess reliable, the guess must be in
//! `gates.languages`. When it is unreliable (short or mixed text), the row
//! passes if its script is one that an accepted language is written in, so
//! that short rows are not refused on a coin toss but Cyrillic text still
//! fails an English-only datanet. Text with no letters at all fails. Since a
//! whatlang call costs about 50 µs whatever the length, a row whose first 100
//! words are at least 12% (and at least 5) English function words that no
//! other supported language uses as words (*the, and, that, with, which, …*)
//! is taken as reliably English without calling it.
//!
//! PII: e-mail addresses, phone numbers (international `+…` numbers and the
//! common national layouts with at least three digit groups, never bare years
//! or plain numbers), IPv4 and IPv6 addresses and payment card numbers (13–19
//! digits, Luhn-valid). `reject` refuses the row (the message gives only the
//! count), `redact` replaces them with `<EMAIL>`, `<PHONE>`, `<IP>`, `<CARD>`
//! before hashing, `allow` does not look.
//!
//! # Score
//!
//! Each text rule that ran gives a sub-score: 0 when the rule fails, otherwise
//! its relative margin from the threshold, doubled and capped at 1 — so a value
//! at least half-way clear of the threshold scores 1 and a value just inside it
//! scores near 0. The margin is `(t - v) / t` for a maximum `t`, `(v - t) / t`
//! for a minimum count and `(v - t) / (1 - t)` for a minimum ratio. Present/absent
//! rules score 1 or 0; the language rule scores 1 (reliable) or 0.5 (unreliable
//! but accepted). A row's score is the mean of its sub-scores (1 when no rule
//! ran); media rows score 1. Structured records that do not fit the schema
//! score 0. The score is deterministic.
//!
//! # Hostile input
//!
//! The file size is checked first, and every decoder is bounded by the
//! decompression budget `min(16 × max_file_bytes, 64 MiB)`:
//! * PDF: before lopdf sees the file, a pre-scan inflates every deflate stream
//!   (nested layers too) under the budget, bounds bracket nesting, refuses
//!   `LZWDecode`/`ASCII85Decode` and oversized predictor parameters, refuses
//!   stream lengths that point at other streams or add up to more than the
//!   file, and checks that cross-reference entries (tables and streams) never
//!   point many objects at one place or at overlapping objects; object streams
//!   are checked the same way while lopdf loads them. lopdf runs on its own
//!   thread with a large stack; page text comes from a small lexer of ours and
//!   every content stream it inflates counts against the budget. Encrypted PDFs
//!   are refused.
//! * docx: at most 10 000 zip entries, declared sizes within the budget, and
//!   `word/document.xml` read through a hard limit (headers can lie).
//! * parquet: the footer and every page header are walked with a
//!   bounds-checking Thrift reader before the parquet crate decodes them; the
//!   schema may nest 16 deep; rows, values, pages, declared page sizes and the
//!   memory the record API would use (dictionary fan-out included) are capped.
//!   Uncompressed, snappy and gzip files are read; zstd, lz4 and brotli are
//!   refused with a reason.
//! * jsonl, csv: at most `max(100 000, max_file_bytes / 50)` rows.
//!
//! Third-party parsers run under `catch_unwind`, so a panic in one of them
//! becomes a refusal (this needs `panic = "unwind"`, the default). All loops
//! over input are linear or bounded.
//!
//! [datatrove]: https://github.com/huggingface/datatrove
//!
//! # Example
//!
//! ```
//! use merit_core::{Kind, Policy};
//!
//! let policy = Policy::default_for(Kind::Text);
//! let prose = "The river runs through the old town and the people of the valley have \
//!     lived with its floods for centuries. Each spring the water rises to the steps of \
//!     the church. The farmers move their animals to the hills and wait. When the water \
//!     falls, the fields are rich and dark with new soil. The old stories say that the \
//!     river gives more than it takes, and most of the people who live there believe it.";
//! let inspection = merit_gate::inspect(&policy, "river.txt", prose.as_bytes());
//! assert_eq!(inspection.format, Some(merit_gate::Format::Txt));
//! assert!(inspection.reasons.is_empty(), "{:?}", inspection.reasons);
//! assert_eq!(inspection.rows[0].content["text"], prose);
//! assert!(inspection.rows[0].score > 0.0 && inspection.rows[0].score <= 1.0);
//!
//! let renamed = merit_gate::inspect(&policy, "river.pdf", prose.as_bytes());
//! assert_eq!(renamed.reasons[0].gate, "format");
//! ```

#![deny(missing_docs)]
// A `Reason` is the error of every extractor: built once per refusal, so its
// size does not matter, and boxing it would only add noise.
#![allow(clippy::result_large_err)]

pub use merit_core::{Format, Policy, Reason};
pub use parquet_in::all_rows as parquet_rows;

pub mod bench;
pub mod export;
pub mod minhash;

/// This crate's version; verdicts on the ledger name the gates that gave them.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

mod detect;
mod docx;
mod dt_tables;
mod hash;
mod media;
mod parquet_in;
mod pdf;
mod pii;
mod pipeline;
mod rows;
mod spacy_en;
#[rustfmt::skip]
mod spacy_en_data;
mod text;
mod thrift;

#[cfg(test)]
mod tests;

/// One row a file would add to the datanet.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The row as it will be stored: text documents (txt, md, pdf, docx) →
    /// `{"text": "..."}`; structured rows → the object per the policy's `rows`
    /// schema (after PII redaction when `pii = "redact"`); image →
    /// `{"format", "width", "height"}`; audio →
    /// `{"format", "duration_seconds", "sample_rate", "channels"}`. A record
    /// that does not fit the schema keeps the value it was read as.
    pub content: serde_json::Value,
    /// The text the gates measured (string fields of the row joined by `\n`);
    /// empty for image and audio and for records that do not fit the schema.
    pub text: String,
    /// SHA-256 of the normalised text (lowercase, whitespace collapsed,
    /// trimmed) for text rows; of the file bytes for media.
    pub exact_hash: [u8; 32],
    /// MinHash signature, [`minhash::BANDS`] × [`minhash::ROWS`] values over
    /// 5-word shingles; empty for media and for records that do not fit the schema.
    pub minhash: Vec<u32>,
    /// Validation score in [0, 1] (see the crate documentation).
    pub score: f64,
}

/// What [`inspect`] found in one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    /// The format recognised from the content, if any.
    pub format: Option<Format>,
    /// Rows the file would add (all of them, even when `reasons` is not empty);
    /// `rows[i]` is record `i` of the file.
    pub rows: Vec<Candidate>,
    /// Why the file fails: empty means it passed every gate. At most
    /// [`MAX_REASONS`]; a reason about one row carries its index in `row`.
    pub reasons: Vec<Reason>,
}

/// The web-text rule families, as policies name them (`gates.<family>`).
pub const WEB_TEXT_FAMILIES: [&str; 4] = ["gopher_quality", "gopher_repetition", "c4", "fineweb"];

/// The verdict of one web-text rule family alone on `text`: the first rule it
/// breaks, or `None` when the text passes. This is what datatrove's filter of
/// the same name decides with its default settings (`gopher_quality`
/// includes datatrove's 50 to 100,000 word bounds, which policies hold as
/// `min_words` / `max_words`); `scripts/datatrove_diff.sh` compares the two.
/// `None` also for a family name that is not one of [`WEB_TEXT_FAMILIES`].
pub fn family_verdict(text: &str, family: &str) -> Option<Reason> {
    let mut gates = merit_core::Gates {
        min_words: 0,
        max_words: 0,
        gopher_quality: false,
        gopher_repetition: false,
        c4: false,
        fineweb: false,
        ..merit_core::Gates::default()
    };
    match family {
        "gopher_quality" => {
            gates.gopher_quality = true;
            gates.min_words = 50;
            gates.max_words = 100_000;
        }
        "gopher_repetition" => gates.gopher_repetition = true,
        "c4" => gates.c4 = true,
        "fineweb" => gates.fineweb = true,
        _ => return None,
    }
    let mut s = text::Scratch::new();
    text::measure(text, &gates, &mut s);
    s.rules.iter().find(|r| !r.passed()).map(|r| r.reason(0))
}

/// The word tokens the text gates count (datatrove's `split_into_words`
/// for English), as text: for differential tests of the tokenizer.
pub fn word_tokens(text: &str) -> Vec<&str> {
    let mut toks = Vec::new();
    text::tokenize(text, &mut toks);
    toks.iter().map(|t| &text[t.start..t.end]).collect()
}

/// The most reasons an [`Inspection`] carries.
pub const MAX_REASONS: usize = 50;

/// Recognises, extracts and checks one file. Pure: no I/O, no clock. Never panics.
pub fn inspect(policy: &Policy, filename: &str, bytes: &[u8]) -> Inspection {
    let full = pipeline::inspect_full(policy, filename, bytes);
    let mut reasons = full.file_reasons;
    'rows: for row_reasons in full.row_reasons {
        for reason in row_reasons {
            if reasons.len() >= MAX_REASONS {
                break 'rows;
            }
            reasons.push(reason);
        }
    }
    reasons.truncate(MAX_REASONS);
    Inspection { format: full.format, rows: full.rows, reasons }
}

/// Rounds a measurement for reasons, so that JSON stays readable.
pub(crate) fn round4(x: f64) -> f64 {
    if x.is_finite() {
        (x * 10_000.0).round() / 10_000.0
    } else {
        0.0
    }
}
