//! PDF text extraction: a bounded pre-scan of the raw bytes, lopdf for the
//! document structure, and a small content-stream lexer of our own for the text.
//!
//! lopdf trusts its input: it inflates streams without a limit, recurses on
//! nested arrays, follows indirect stream lengths recursively and allocates
//! PNG-predictor rows of any declared width. So before lopdf sees a file:
//! * every zlib stream is inflated (nested layers too) under the
//!   decompression budget, and the total must fit;
//! * bracket nesting, in the raw bytes and in every inflated stream, must stay
//!   under [`MAX_DEPTH`];
//! * `LZWDecode` and `ASCII85Decode` streams are refused (their expansion is
//!   not checked), and predictor parameters must be of sane size;
//! * the number of streams is capped, which caps the depth of indirect-length
//!   chains.
//!
//! lopdf then runs on a thread with a large stack, under `catch_unwind`, and
//! object streams are expanded only while their tokens fit a budget. Page text
//! is read by our own lexer (no recursion, bounded operand stack) and every
//! content and `ToUnicode` stream it inflates counts against the same budget.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use lopdf::{Document, Encoding, Object, ObjectId};
use merit_core::Reason;
use serde_json::Value;

/// Deepest bracket nesting (`[` and `<<`) accepted anywhere in a PDF.
pub(crate) const MAX_DEPTH: usize = 2_000;
/// Most streams a PDF may hold.
const MAX_STREAMS: usize = 100_000;
/// Most tokens lopdf may parse out of object streams (each becomes an object of
/// about 80 bytes).
const MAX_OBJECT_STREAM_TOKENS: u64 = 2_000_000;
/// Stack for the thread that runs lopdf.
const STACK_BYTES: usize = 256 << 20;

fn refuse(metric: &str, message: impl Into<String>) -> Reason {
    Reason::new("format", metric, Value::Null, Value::Null, message)
}

fn bomb(used: u64, budget: u64) -> Reason {
    Reason::new(
        "size",
        "decompressed_bytes",
        used,
        budget,
        format!("the PDF's compressed streams expand to more than {budget} bytes"),
    )
}

/// Extracts the text of a PDF, or says why it cannot.
pub(crate) fn extract(bytes: &[u8], budget: u64) -> Result<String, Reason> {
    preflight(bytes, budget)?;
    let outcome = std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("merit-gate-pdf".into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, || std::panic::catch_unwind(|| load_and_read(bytes, budget)));
        match worker {
            Ok(handle) => handle.join().ok(),
            // No thread: run here, under the same guards but on the caller's stack.
            Err(_) => Some(std::panic::catch_unwind(|| load_and_read(bytes, budget))),
        }
    });
    match outcome {
        Some(Ok(result)) => result,
        _ => Err(refuse("pdf", "the PDF could not be read")),
    }
}

// ----- pre-scan -----

/// Checks a PDF's raw bytes before any parser sees them.
pub(crate) fn preflight(b: &[u8], budget: u64) -> Result<(), Reason> {
    if max_depth(b) > MAX_DEPTH {
        return Err(refuse("pdf", format!("the PDF nests arrays or dictionaries more than {MAX_DEPTH} deep")));
    }
    let names = scan_names(b)?;
    let indirect_lengths = check_length_chains(b, &names.length_targets)?;
    // lopdf copies each stream's declared length out of the file: overlapping
    // streams would multiply the file in memory.
    let declared = names.direct_lengths.saturating_add(indirect_lengths);
    if declared > 2 * b.len() as u64 + 4096 {
        return Err(refuse("pdf", "the PDF's stream lengths add up to more than the file"));
    }
    let mut offsets = classic_xref_offsets(b);
    let mut used = 0u64;
    let mut work = 0u64;
    let work_limit = 4 * b.len() as u64 + (1 << 20);
    let mut streams = 0usize;
    let mut from = 0;
    while let Some(p) = crate::detect::find(&b[from..], b"stream") {
        let at = from + p;
        from = at + 6;
        if at >= 3 && &b[at - 3..at] == b"end" {
            continue;
        }
        streams += 1;
        if streams > MAX_STREAMS {
            return Err(refuse("pdf", format!("the PDF holds more than {MAX_STREAMS} streams")));
        }
        let mut start = at + 6;
        if b[start..].starts_with(b"\r\n") {
            start += 2;
        } else if b[start..].starts_with(b"\n") || b[start..].starts_with(b"\r") {
            start += 1;
        }
        if !zlib_header(&b[start..]) {
            // An uncompressed stream may be a cross-reference stream too: its
            // data runs to `endstream` (less the end-of-line before it).
            let data = &b[start..];
            let end = crate::detect::find(data, b"endstream").unwrap_or(data.len());
            for trim in 0..=2 {
                if let Some(d) = data.get(..end.saturating_sub(trim)) {
                    xref_stream_offsets(d, &names.widths, &mut offsets);
                }
            }
            continue;
        }
        let mut layer: Option<Vec<u8>> = None;
        for depth in 0..=8 {
            let input: &[u8] = layer.as_deref().unwrap_or(&b[start..]);
            if !zlib_header(input) {
                break;
            }
            if depth == 8 {
                return Err(refuse("pdf", "the PDF nests compressed streams more than 8 deep"));
            }
            let (out, consumed) = inflate_vec(input, budget.saturating_sub(used))
                .map_err(|produced| bomb(used.saturating_add(produced), budget))?;
            used += out.len() as u64;
            work = work.saturating_add(consumed);
            if work > work_limit {
                return Err(refuse("pdf", "the PDF's compressed streams overlap too much to check"));
            }
            if max_depth(&out) > MAX_DEPTH {
                return Err(refuse(
                    "pdf",
                    format!("a PDF stream nests arrays or dictionaries more than {MAX_DEPTH} deep"),
                ));
            }
            xref_stream_offsets(&out, &names.widths, &mut offsets);
            layer = Some(out);
        }
    }
    check_offsets(b, offsets)
}

/// Whether bytes start with a zlib header (deflate, valid check bits).
fn zlib_header(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] & 0x0F == 8 && b[0] >> 4 <= 7 && (u16::from(b[0]) * 256 + u16::from(b[1])) % 31 == 0
}

/// Inflates zlib `data` into a vector; also returns the input bytes read.
/// `Err(produced)` when more than `limit` bytes would come out.
fn inflate_vec(data: &[u8], limit: u64) -> Result<(Vec<u8>, u64), u64> {
    let mut out = Vec::new();
    let mut consumed = 0;
    inflate_with(data, limit, |chunk| out.extend_from_slice(chunk), &mut consumed)?;
    Ok((out, consumed))
}

/// Inflates zlib `data`, handing the output to `sink` in chunks; returns the
/// bytes produced, or `Err(produced)` when more than `limit` would be.
/// A corrupt stream just ends early (lopdf keeps what it decoded, too).
pub(crate) fn inflate_bounded(data: &[u8], limit: u64, sink: impl FnMut(&[u8])) -> Result<u64, u64> {
    inflate_with(data, limit, sink, &mut 0)
}

fn inflate_with(data: &[u8], limit: u64, mut sink: impl FnMut(&[u8]), consumed: &mut u64) -> Result<u64, u64> {
    let mut d = flate2::Decompress::new(true);
    let result = inflate_loop(&mut d, data, limit, &mut sink);
    *consumed = d.total_in();
    result
}

fn inflate_loop(d: &mut flate2::Decompress, data: &[u8], limit: u64, sink: &mut impl FnMut(&[u8])) -> Result<u64, u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut produced = 0u64;
    loop {
        let before_in = d.total_in();
        let before_out = d.total_out();
        let input = data.get(before_in as usize..).unwrap_or(&[]);
        let status = d.decompress(input, &mut buf, flate2::FlushDecompress::None);
        let n = (d.total_out() - before_out) as usize;
        produced += n as u64;
        if produced > limit {
            return Err(produced);
        }
        sink(&buf[..n]);
        match status {
            Ok(flate2::Status::StreamEnd) | Err(_) => return Ok(produced),
            Ok(_) => {
                if n == 0 && d.total_in() == before_in {
                    return Ok(produced);
                }
            }
        }
    }
}

/// Running bracket depth: `[` and `<<` open, `]` and `>>` close, never below 0.
#[derive(Default)]
struct Depth {
    depth: usize,
    max: usize,
    pending_lt: bool,
    pending_gt: bool,
}

impl Depth {
    fn feed(&mut self, chunk: &[u8]) {
        for &c in chunk {
            match c {
                b'[' => self.open(),
                b']' => self.depth = self.depth.saturating_sub(1),
                b'<' if self.pending_lt => {
                    self.pending_lt = false;
                    self.open();
                    continue;
                }
                b'>' if self.pending_gt => {
                    self.pending_gt = false;
                    self.depth = self.depth.saturating_sub(1);
                    continue;
                }
                _ => {}
            }
            self.pending_lt = c == b'<';
            self.pending_gt = c == b'>';
        }
    }

    fn open(&mut self) {
        self.depth += 1;
        self.max = self.max.max(self.depth);
    }
}

fn max_depth(b: &[u8]) -> usize {
    let mut d = Depth::default();
    d.feed(b);
    d.max
}

fn is_delimiter(c: u8) -> bool {
    matches!(c, b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%') || is_pdf_space(c)
}

fn is_pdf_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'\x0C' | b'\0')
}

/// What the name scan learns.
#[derive(Default)]
struct Names {
    /// Objects that `/Length` entries refer to.
    length_targets: HashSet<u64>,
    /// The sum of the direct `/Length` values.
    direct_lengths: u64,
    /// The `/W` arrays (field widths of cross-reference streams).
    widths: Vec<[usize; 3]>,
}

/// Refuses filters whose expansion is not checked and predictor parameters
/// that would make lopdf allocate huge rows; collects stream lengths and
/// cross-reference stream field widths.
fn scan_names(b: &[u8]) -> Result<Names, Reason> {
    let mut names = Names::default();
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'/', &b[i..]) {
        let start = i + p + 1;
        let mut end = start;
        while end < b.len() && !is_delimiter(b[end]) {
            end += 1;
        }
        i = end.max(start);
        let raw = &b[start..end];
        if raw.is_empty() || raw.len() > 40 {
            continue;
        }
        let name = decode_name(raw);
        match name.as_slice() {
            b"LZWDecode" | b"ASCII85Decode" => {
                return Err(refuse(
                    "pdf",
                    format!("the PDF uses the {} filter, which Merit does not read", String::from_utf8_lossy(&name)),
                ));
            }
            b"Columns" | b"Colors" | b"BitsPerComponent" => {
                let limit: u64 = match name.as_slice() {
                    b"Columns" => 1 << 16,
                    b"Colors" => 32,
                    _ => 32,
                };
                let mut j = end;
                while j < b.len() && is_pdf_space(b[j]) {
                    j += 1;
                }
                let digits = b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
                if digits > 0 {
                    let value = b[j..j + digits].iter().take(12).fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
                    if value > limit || digits > 12 {
                        return Err(refuse(
                            "pdf",
                            format!(
                                "the PDF declares a predictor {} of {value}, over {limit}",
                                String::from_utf8_lossy(&name)
                            ),
                        ));
                    }
                }
            }
            b"Length" => match reference_at(b, end) {
                Some(id) => {
                    names.length_targets.insert(id);
                }
                None => names.direct_lengths = names.direct_lengths.saturating_add(integer_at(b, end).unwrap_or(0)),
            },
            b"W" => {
                let mut j = skip_space(b, end);
                if b.get(j) == Some(&b'[') {
                    j += 1;
                    let mut w = [0usize; 3];
                    let mut ok = true;
                    for slot in &mut w {
                        j = skip_space(b, j);
                        match integer_at(b, j) {
                            Some(v) if v <= 8 => *slot = v as usize,
                            _ => ok = false,
                        }
                        j += b[j.min(b.len())..].iter().take_while(|c| c.is_ascii_digit()).count();
                    }
                    if ok && w.iter().sum::<usize>() > 0 && !names.widths.contains(&w) && names.widths.len() < 16 {
                        names.widths.push(w);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

/// The unsigned integer at `i` (after white space), if there is one.
fn integer_at(b: &[u8], i: usize) -> Option<u64> {
    let i = skip_space(b, i).min(b.len());
    let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 18 {
        return None;
    }
    Some(b[i..i + digits].iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0')))
}

/// Offsets of in-use entries in classic cross-reference tables, wherever
/// they are in the file (a superset of those lopdf reads).
fn classic_xref_offsets(b: &[u8]) -> Vec<u64> {
    static ENTRY: OnceLock<regex::bytes::Regex> = OnceLock::new();
    let entry = ENTRY.get_or_init(|| {
        regex::bytes::Regex::new(r"(?-u)(\d{1,10}) \d{1,5} n(?: \r| \n|\r\n)")
            .expect("the xref entry pattern is a valid constant")
    });
    entry
        .captures_iter(b)
        .filter_map(|c| c.get(1))
        .map(|m| m.as_bytes().iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0')))
        .collect()
}

/// Offsets of type-1 entries, if `data` reads as a cross-reference stream
/// with one of the `/W` field widths (plain, or PNG-predicted as is usual).
fn xref_stream_offsets(data: &[u8], widths: &[[usize; 3]], out: &mut Vec<u64>) {
    for w in widths {
        let row = w[0] + w[1] + w[2];
        let decoded = if data.len().is_multiple_of(row) {
            Some(std::borrow::Cow::Borrowed(data))
        } else if data.len().is_multiple_of(row + 1) {
            png_unfilter(data, row).map(std::borrow::Cow::Owned)
        } else {
            None
        };
        let Some(rows) = decoded else { continue };
        let field = |r: &[u8], from: usize, width: usize| {
            r[from..from + width].iter().fold(0u64, |v, &x| v << 8 | u64::from(x))
        };
        if rows.is_empty() || !rows.chunks_exact(row).all(|r| w[0] == 0 || field(r, 0, w[0]) <= 2) {
            continue;
        }
        for r in rows.chunks_exact(row) {
            let kind = if w[0] == 0 { 1 } else { field(r, 0, w[0]) };
            if kind == 1 {
                out.push(field(r, w[0], w[1]));
            }
        }
    }
}

/// Undoes PNG row filters (one byte per pixel), as xref streams use them.
fn png_unfilter(data: &[u8], columns: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    let mut prev = vec![0u8; columns];
    for chunk in data.chunks_exact(columns + 1) {
        let (filter, row) = (chunk[0], &chunk[1..]);
        let mut cur = row.to_vec();
        for i in 0..columns {
            let left = if i > 0 { cur[i - 1] } else { 0 };
            let up = prev[i];
            let up_left = if i > 0 { prev[i - 1] } else { 0 };
            cur[i] = match filter {
                0 => row[i],
                1 => row[i].wrapping_add(left),
                2 => row[i].wrapping_add(up),
                3 => row[i].wrapping_add(((u16::from(left) + u16::from(up)) / 2) as u8),
                4 => {
                    let p = i16::from(left) + i16::from(up) - i16::from(up_left);
                    let (pa, pb, pc) =
                        ((p - i16::from(left)).abs(), (p - i16::from(up)).abs(), (p - i16::from(up_left)).abs());
                    let pred = if pa <= pb && pa <= pc {
                        left
                    } else if pb <= pc {
                        up
                    } else {
                        up_left
                    };
                    row[i].wrapping_add(pred)
                }
                _ => return None,
            };
        }
        out.extend_from_slice(&cur);
        prev = cur;
    }
    Some(out)
}

/// Where cross-reference entries point, lopdf parses an object. Refuses many
/// entries at one offset, and objects that run into the next object (both
/// would make lopdf parse the same bytes over and over, or copy them).
fn check_offsets(b: &[u8], mut offsets: Vec<u64>) -> Result<(), Reason> {
    offsets.retain(|&o| o < b.len() as u64);
    offsets.sort_unstable();
    let mut run = 0;
    for w in offsets.windows(2) {
        run = if w[0] == w[1] { run + 1 } else { 0 };
        if run >= 16 {
            return Err(refuse("pdf", "the PDF's cross-reference table points many objects at one place"));
        }
    }
    offsets.dedup();
    for (i, &o) in offsets.iter().enumerate() {
        let limit = offsets.get(i + 1).map_or(b.len(), |&n| n as usize);
        if object_runs_past(b, o as usize, limit) {
            return Err(refuse("pdf", "the PDF's objects overlap one another"));
        }
    }
    Ok(())
}

/// Whether the object whose header is at `start` runs to `limit` or beyond
/// (when `limit` is the next object's offset): lexes until `endobj`, `stream`
/// or another `obj`. Not a header: false (lopdf does not parse it either).
fn object_runs_past(b: &[u8], start: usize, limit: usize) -> bool {
    let mut i = skip_space(b, start).min(b.len());
    for _ in 0..2 {
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        i = skip_space(b, i + digits).min(b.len());
    }
    if !b[i..].starts_with(b"obj") {
        return false;
    }
    i += 3;
    while i < limit {
        let t = lex_token(b, i);
        if t.start >= b.len() {
            return false;
        }
        if matches!(&b[t.start..t.end], b"stream" | b"endobj" | b"obj") {
            return false;
        }
        i = t.end.max(i + 1);
    }
    limit < b.len()
}

/// One lexical token's range: a string, a hex string, a name, a bracket or a
/// run of regular characters.
struct Lexed {
    start: usize,
    end: usize,
}

fn lex_token(b: &[u8], from: usize) -> Lexed {
    let i = skip_space(b, from).min(b.len());
    let Some(&c) = b.get(i) else { return Lexed { start: b.len(), end: b.len() } };
    let end = match c {
        b'(' => {
            let mut depth = 0usize;
            let mut j = i + 1;
            while j < b.len() {
                match b[j] {
                    b'\\' => j += 1,
                    b'(' => depth += 1,
                    b')' if depth == 0 => break,
                    b')' => depth -= 1,
                    _ => {}
                }
                j += 1;
            }
            j + 1
        }
        b'<' | b'>' if b.get(i + 1) == Some(&c) => i + 2,
        b'<' => i + 1 + b[i + 1..].iter().position(|&c| c == b'>').map_or(b.len() - i - 1, |p| p + 1),
        b'[' | b']' | b'{' | b'}' | b')' | b'>' => i + 1,
        b'/' => i + 1 + b[i + 1..].iter().take_while(|&&c| !is_delimiter(c)).count(),
        _ => i + b[i..].iter().take_while(|&&c| !is_delimiter(c)).count().max(1),
    };
    Lexed { start: i, end: end.min(b.len()) }
}

/// Skips PDF white space and comments from `i`.
fn skip_space(b: &[u8], mut i: usize) -> usize {
    loop {
        while i < b.len() && is_pdf_space(b[i]) {
            i += 1;
        }
        if i < b.len() && b[i] == b'%' {
            while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                i += 1;
            }
            continue;
        }
        return i;
    }
}

/// The object number of an indirect reference `N G R` starting at `i`, if one does.
fn reference_at(b: &[u8], i: usize) -> Option<u64> {
    let mut numbers = [0u64; 2];
    let mut i = i;
    for n in &mut numbers {
        i = skip_space(b, i);
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 10 {
            return None;
        }
        *n = b[i..i + digits].iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
        i += digits;
    }
    i = skip_space(b, i);
    (b.get(i) == Some(&b'R') && b.get(i + 1).is_none_or(|&c| is_delimiter(c))).then_some(numbers[0])
}

/// Whether the object whose body starts at `i` is a stream: lexes until
/// `stream`, `endobj` or `obj`, spending `budget` tokens at most (out of
/// budget: treated as a stream, the careful answer).
fn body_is_stream(b: &[u8], mut i: usize, budget: &mut u64) -> bool {
    loop {
        if *budget == 0 {
            return true;
        }
        *budget -= 1;
        let t = lex_token(b, i);
        if t.start >= b.len() {
            return false;
        }
        match &b[t.start..t.end] {
            b"stream" => return true,
            b"endobj" | b"obj" => return false,
            _ => {}
        }
        i = t.end.max(i + 1);
    }
}

/// lopdf resolves an indirect `/Length` by parsing the object it names, and
/// if that is a stream with an indirect length, the next, and so on: a chain
/// costs time quadratic in its length and stack linear in it. Refuses a PDF
/// where any `/Length` names an object that is itself a stream (looking at
/// every `N G obj` header in the file, wherever a cross-reference could
/// point). Returns the sum of the lengths those objects hold.
fn check_length_chains(b: &[u8], targets: &HashSet<u64>) -> Result<u64, Reason> {
    if targets.is_empty() {
        return Ok(0);
    }
    static HEADER: OnceLock<regex::bytes::Regex> = OnceLock::new();
    let header = HEADER.get_or_init(|| {
        regex::bytes::Regex::new(
            r"(?-u)(\d{1,10})(?:[\x00\t\n\x0C\r ]|%[^\r\n]*)+\d{1,5}(?:[\x00\t\n\x0C\r ]|%[^\r\n]*)+obj",
        )
        .expect("the object header pattern is a valid constant")
    });
    let mut budget = 4 * b.len() as u64 + 4096;
    let mut sum = 0u64;
    for caps in header.captures_iter(b) {
        let (Some(id), Some(whole)) = (caps.get(1), caps.get(0)) else {
            continue;
        };
        let id = id.as_bytes().iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
        if targets.contains(&id) {
            if body_is_stream(b, whole.end(), &mut budget) {
                return Err(refuse("pdf", "the PDF gives a stream's length as another stream"));
            }
            sum = sum.saturating_add(integer_at(b, whole.end()).unwrap_or(0));
        }
    }
    Ok(sum)
}

/// A PDF name with its `#xx` escapes decoded.
fn decode_name(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'#' && i + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

// ----- lopdf -----

thread_local! {
    /// Tokens parsed out of object streams so far, on this thread's load.
    static OBJECT_STREAM_TOKENS: Cell<u64> = const { Cell::new(0) };
    static OBJECT_STREAM_REFUSED: Cell<bool> = const { Cell::new(false) };
    /// Ids of the objects the last object stream holds, not yet seen.
    static PENDING: RefCell<HashSet<u32>> = RefCell::new(HashSet::new());
}

/// lopdf's per-object hook. An object stream passes only if every object its
/// index names starts at a top-level token (so no two parses overlap, and
/// none repeats more than 16 times) and the tokens of all object streams fit
/// [`MAX_OBJECT_STREAM_TOKENS`]; otherwise it is dropped and the PDF refused.
fn object_filter(id: ObjectId, object: &mut Object) -> Option<(ObjectId, Object)> {
    if let Object::Stream(stream) = object {
        if stream.dict.type_is(b"ObjStm") {
            match check_object_stream(stream) {
                Some(ids) => PENDING.with(|p| *p.borrow_mut() = ids.into_iter().collect()),
                None => {
                    OBJECT_STREAM_REFUSED.with(|r| r.set(true));
                    PENDING.with(|p| p.borrow_mut().clear());
                    return None;
                }
            }
        }
        // A top-level object: lopdf keeps its own and ignores what is returned.
        return Some((id, Object::Null));
    }
    // lopdf uses the returned object only for objects out of an object stream,
    // which all come right after their stream (in id order).
    let inner = PENDING.with(|p| p.borrow_mut().remove(&id.0));
    Some((id, if inner { std::mem::replace(object, Object::Null) } else { Object::Null }))
}

/// The ids an object stream holds, or `None` when it must be refused.
fn check_object_stream(stream: &lopdf::Stream) -> Option<Vec<u32>> {
    let predictor = stream
        .dict
        .get(b"DecodeParms")
        .and_then(Object::as_dict)
        .and_then(|d| d.get(b"Predictor"))
        .and_then(Object::as_i64)
        .unwrap_or(1);
    if predictor > 1 {
        return None;
    }
    // What lopdf will parse: the content after each FlateDecode, or the raw
    // content when another filter stops it.
    let filters = if stream.dict.get(b"Filter").is_ok() { stream.filters().ok()? } else { Vec::new() };
    let mut content = std::borrow::Cow::Borrowed(stream.content.as_slice());
    for f in &filters {
        if f != "FlateDecode" {
            content = std::borrow::Cow::Borrowed(stream.content.as_slice());
            break;
        }
        let (out, _) = inflate_vec(&content, 64 << 20).ok()?;
        content = std::borrow::Cow::Owned(out);
    }
    let content: &[u8] = &content;
    let first = stream.dict.get(b"First").and_then(Object::as_i64).ok().and_then(|f| usize::try_from(f).ok());
    let Some(first) = first.filter(|&f| f <= content.len()) else {
        return Some(Vec::new());
    };
    let Ok(index) = std::str::from_utf8(&content[..first]) else {
        return Some(Vec::new());
    };
    // Top-level token starts of the objects' part.
    let mut starts = Vec::new();
    let mut depth = 0usize;
    let mut i = first;
    let mut tokens = 0u64;
    let budget = MAX_OBJECT_STREAM_TOKENS.saturating_sub(OBJECT_STREAM_TOKENS.with(Cell::get));
    while i < content.len() {
        let t = lex_token(content, i);
        if t.start >= content.len() {
            break;
        }
        tokens += 1;
        if tokens > budget {
            return None;
        }
        match &content[t.start..t.end] {
            b"[" | b"<<" => {
                if depth == 0 {
                    starts.push(t.start);
                }
                depth += 1;
            }
            b"]" | b">>" => depth = depth.saturating_sub(1),
            _ if depth == 0 => starts.push(t.start),
            _ => {}
        }
        i = t.end.max(i + 1);
    }
    OBJECT_STREAM_TOKENS.with(|t| t.set(t.get().saturating_add(tokens)));
    let numbers: Vec<Option<u32>> = index.split_whitespace().map(|n| n.parse::<u32>().ok()).collect();
    let mut ids = Vec::new();
    let mut offsets = Vec::new();
    for pair in numbers.chunks_exact(2) {
        let (Some(id), Some(offset)) = (pair[0], pair[1]) else { continue };
        let at = first.saturating_add(offset as usize);
        if at >= content.len() {
            continue;
        }
        if starts.binary_search(&at).is_err() {
            return None;
        }
        ids.push(id);
        offsets.push(at);
    }
    offsets.sort_unstable();
    if offsets.windows(16).any(|w| w[0] == w[15]) {
        return None;
    }
    Some(ids)
}

fn load_and_read(bytes: &[u8], budget: u64) -> Result<String, Reason> {
    OBJECT_STREAM_TOKENS.with(|t| t.set(0));
    OBJECT_STREAM_REFUSED.with(|r| r.set(false));
    PENDING.with(|p| p.borrow_mut().clear());
    let doc = lopdf::Reader { buffer: bytes, document: Document::new() }
        .read(Some(object_filter))
        .map_err(|e| refuse("pdf", format!("the PDF cannot be parsed: {e}")))?;
    if OBJECT_STREAM_REFUSED.with(Cell::get) {
        return Err(refuse("pdf", "the PDF's object streams are malformed or hold too many objects"));
    }
    if doc.trailer.get(b"Encrypt").is_ok() {
        return Err(refuse("pdf", "the PDF is encrypted"));
    }
    read_text(&doc, budget)
}

/// Inflated bytes of one stream, per its filters (only FlateDecode or none);
/// counts against `used`.
fn stream_bytes(doc: &Document, id: ObjectId, budget: u64, used: &mut u64) -> Result<Option<Vec<u8>>, Reason> {
    let Ok(stream) = doc.get_object(id).and_then(Object::as_stream) else {
        return Ok(None);
    };
    let filters = match stream.dict.get(b"Filter") {
        Err(_) => Vec::new(),
        Ok(_) => match stream.filters() {
            Ok(f) => f,
            Err(_) => return Ok(None),
        },
    };
    match filters.as_slice() {
        [] => {
            *used += stream.content.len() as u64;
            if *used > budget {
                return Err(bomb(*used, budget));
            }
            Ok(Some(stream.content.clone()))
        }
        [f] if f == "FlateDecode" => {
            let mut out = Vec::new();
            let produced = inflate_bounded(&stream.content, budget.saturating_sub(*used), |c| out.extend_from_slice(c))
                .map_err(|p| bomb(used.saturating_add(p), budget))?;
            *used += produced;
            Ok(Some(out))
        }
        _ => Ok(None),
    }
}

/// The `ToUnicode` stream's inflated size, counted against `used` (lopdf
/// inflates it again when it builds the encoding).
fn account_to_unicode(doc: &Document, font: &lopdf::Dictionary, budget: u64, used: &mut u64) -> Result<(), Reason> {
    if let Ok(Object::Reference(id)) = font.get(b"ToUnicode") {
        stream_bytes(doc, *id, budget, used)?;
    }
    Ok(())
}

fn read_text(doc: &Document, budget: u64) -> Result<String, Reason> {
    let mut used = 0u64;
    let mut text = String::new();
    let mut encodings: HashMap<usize, Option<Encoding<'_>>> = HashMap::new();
    for (_, page_id) in doc.get_pages() {
        let fonts = doc.get_page_fonts(page_id).unwrap_or_default();
        let mut content = Vec::new();
        for id in doc.get_page_contents(page_id) {
            if let Some(bytes) = stream_bytes(doc, id, budget, &mut used)? {
                content.extend_from_slice(&bytes);
                content.push(b'\n');
            }
        }
        let mut page = Page { text: &mut text, limit: budget as usize, font: None };
        let mut lexer = Lexer::new(&content);
        let mut operands: Vec<Operand> = Vec::new();
        while let Some(token) = lexer.next() {
            match token {
                Token::Operand(op) => {
                    if operands.len() < 4096 {
                        operands.push(op);
                    }
                }
                Token::Operator(op) => {
                    match op {
                        b"Tf" => {
                            let name = operands.iter().rev().find_map(|o| match o {
                                Operand::Name(n) => Some(n.clone()),
                                _ => None,
                            });
                            page.font = None;
                            if let Some(font) = name.and_then(|n| fonts.get(&n).copied()) {
                                let key = font as *const lopdf::Dictionary as usize;
                                if let std::collections::hash_map::Entry::Vacant(slot) = encodings.entry(key) {
                                    account_to_unicode(doc, font, budget, &mut used)?;
                                    // lopdf debug-asserts that it is given a font dictionary.
                                    let enc =
                                        if font.type_is(b"Font") { font.get_font_encoding(doc).ok() } else { None };
                                    slot.insert(enc);
                                }
                                page.font = Some(key);
                            }
                        }
                        b"Tj" | b"TJ" => page.show(&operands, &encodings),
                        b"'" | b"\"" => {
                            page.newline();
                            page.show(&operands, &encodings);
                        }
                        b"T*" => page.newline(),
                        b"Td" | b"TD" => {
                            let ty = match operands.as_slice() {
                                [.., Operand::Number(_), Operand::Number(ty)] => *ty,
                                _ => 0.0,
                            };
                            if ty.abs() > 0.01 {
                                page.newline();
                            } else {
                                page.space();
                            }
                        }
                        b"Tm" => page.space(),
                        b"ET" => page.newline(),
                        _ => {}
                    }
                    operands.clear();
                }
            }
            if page.text.len() > page.limit {
                return Err(Reason::new(
                    "size",
                    "extracted_bytes",
                    page.text.len() as u64,
                    budget,
                    format!("the PDF's text is longer than {budget} bytes"),
                ));
            }
        }
    }
    Ok(tidy(&text))
}

struct Page<'t> {
    text: &'t mut String,
    limit: usize,
    font: Option<usize>,
}

impl Page<'_> {
    fn newline(&mut self) {
        while self.text.ends_with(' ') {
            self.text.pop();
        }
        if !self.text.is_empty() && !self.text.ends_with('\n') {
            self.text.push('\n');
        }
    }

    fn space(&mut self) {
        if !self.text.is_empty() && !self.text.ends_with([' ', '\n']) {
            self.text.push(' ');
        }
    }

    fn show(&mut self, operands: &[Operand], encodings: &HashMap<usize, Option<Encoding<'_>>>) {
        let encoding = self.font.and_then(|k| encodings.get(&k)).and_then(Option::as_ref);
        for op in operands {
            match op {
                Operand::String(bytes) => {
                    let decoded = match encoding {
                        Some(enc) => Document::decode_text(enc, bytes).unwrap_or_else(|_| latin1(bytes)),
                        None => latin1(bytes),
                    };
                    for c in decoded.chars() {
                        if c == '\n' || c == '\r' {
                            self.newline();
                        } else if !c.is_control() {
                            self.text.push(c);
                        }
                    }
                }
                // In a TJ array, a large negative adjustment is a word gap.
                Operand::Number(n) if *n < -180.0 => self.space(),
                _ => {}
            }
            if self.text.len() > self.limit {
                return;
            }
        }
    }
}

/// Bytes as Latin-1 characters (the fallback when a font's encoding is unknown).
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Reflows the page text: PDF lines are visual lines, so a line that does not
/// end a sentence (`.`, `!`, `?`, `:`, or a closing quote) is joined to the
/// next, undoing end-of-line hyphenation before a lower-case letter; blank
/// lines stay paragraph breaks. The line-based gates (C4, FineWeb, Gopher)
/// then see sentences and paragraphs rather than the page layout.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = false;
    for raw in text.lines() {
        let line = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            blank = !out.is_empty();
            continue;
        }
        if out.is_empty() {
        } else if blank {
            out.push_str("\n\n");
        } else if out.ends_with(['.', '!', '?', ':', '"', '\'', '\u{201D}']) {
            out.push('\n');
        } else if out.ends_with('-') && line.starts_with(|c: char| c.is_lowercase()) {
            out.pop();
        } else {
            out.push(' ');
        }
        blank = false;
        out.push_str(&line);
    }
    out
}

// ----- content-stream lexer -----

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Number(f64),
    String(Vec<u8>),
    Name(Vec<u8>),
    Other,
}

#[derive(Debug, PartialEq)]
enum Token<'a> {
    Operand(Operand),
    Operator(&'a [u8]),
}

/// A flat lexer for content streams: arrays and dictionaries are flattened
/// (their brackets are skipped), inline image data is skipped, nothing recurses.
struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    fn new(b: &'a [u8]) -> Self {
        Lexer { b, i: 0 }
    }

    fn next(&mut self) -> Option<Token<'a>> {
        let b = self.b;
        loop {
            while self.i < b.len() && is_pdf_space(b[self.i]) {
                self.i += 1;
            }
            let c = *b.get(self.i)?;
            match c {
                b'%' => {
                    while self.i < b.len() && b[self.i] != b'\n' && b[self.i] != b'\r' {
                        self.i += 1;
                    }
                }
                b'[' | b']' | b'{' | b'}' => self.i += 1,
                b'<' if b.get(self.i + 1) == Some(&b'<') => self.i += 2,
                b'>' => self.i += if b.get(self.i + 1) == Some(&b'>') { 2 } else { 1 },
                b'(' => return Some(Token::Operand(Operand::String(self.literal()))),
                b'<' => return Some(Token::Operand(Operand::String(self.hex()))),
                b'/' => {
                    let start = self.i + 1;
                    self.i = start;
                    while self.i < b.len() && !is_delimiter(b[self.i]) {
                        self.i += 1;
                    }
                    return Some(Token::Operand(Operand::Name(decode_name(&b[start..self.i]))));
                }
                b')' => self.i += 1,
                _ => {
                    let start = self.i;
                    while self.i < b.len() && !is_delimiter(b[self.i]) {
                        self.i += 1;
                    }
                    let word = &b[start..self.i];
                    if word.first().is_some_and(|c| c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.')) {
                        let n = std::str::from_utf8(word).ok().and_then(|s| s.parse::<f64>().ok());
                        return Some(Token::Operand(n.map_or(Operand::Other, Operand::Number)));
                    }
                    if word == b"true" || word == b"false" || word == b"null" {
                        return Some(Token::Operand(Operand::Other));
                    }
                    if word == b"ID" {
                        self.skip_inline_image();
                    }
                    return Some(Token::Operator(word));
                }
            }
        }
    }

    /// A literal string `( … )`, with nesting and escapes.
    fn literal(&mut self) -> Vec<u8> {
        let b = self.b;
        let mut out = Vec::new();
        let mut depth = 0usize;
        self.i += 1;
        while self.i < b.len() {
            let c = b[self.i];
            self.i += 1;
            match c {
                b'(' => {
                    depth += 1;
                    out.push(c);
                }
                b')' => {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                    out.push(c);
                }
                b'\\' => {
                    let Some(&e) = b.get(self.i) else { break };
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'\r' => {
                            if b.get(self.i) == Some(&b'\n') {
                                self.i += 1;
                            }
                        }
                        b'\n' => {}
                        b'0'..=b'7' => {
                            let mut v = u32::from(e - b'0');
                            for _ in 0..2 {
                                match b.get(self.i) {
                                    Some(&d @ b'0'..=b'7') => {
                                        v = v * 8 + u32::from(d - b'0');
                                        self.i += 1;
                                    }
                                    _ => break,
                                }
                            }
                            out.push(v as u8);
                        }
                        other => out.push(other),
                    }
                }
                _ => out.push(c),
            }
        }
        out
    }

    /// A hex string `< … >`.
    fn hex(&mut self) -> Vec<u8> {
        let b = self.b;
        self.i += 1;
        let mut out = Vec::new();
        let mut high: Option<u8> = None;
        while self.i < b.len() {
            let c = b[self.i];
            self.i += 1;
            if c == b'>' {
                break;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => continue,
            };
            match high.take() {
                Some(h) => out.push(h << 4 | v),
                None => high = Some(v),
            }
        }
        if let Some(h) = high {
            out.push(h << 4);
        }
        out
    }

    /// Skips inline image data after `ID`, up to `EI` between whitespace.
    fn skip_inline_image(&mut self) {
        let b = self.b;
        self.i += 1;
        while self.i + 2 <= b.len() {
            if &b[self.i..self.i + 2] == b"EI"
                && b.get(self.i.wrapping_sub(1)).is_some_and(|&c| is_pdf_space(c))
                && b.get(self.i + 2).is_none_or(|&c| is_pdf_space(c))
            {
                self.i += 2;
                return;
            }
            self.i += 1;
        }
        self.i = b.len();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lopdf::content::{Content, Operation};
    use lopdf::{dictionary, Stream};

    /// A one-page PDF whose page shows `lines` in Helvetica.
    pub(crate) fn pdf_bytes(lines: &[&str]) -> Vec<u8> {
        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let font_id = doc.add_object(dictionary! {
            "Type" => "Font",
            "Subtype" => "Type1",
            "BaseFont" => "Helvetica",
        });
        let resources_id = doc.add_object(dictionary! { "Font" => dictionary! { "F1" => font_id } });
        let mut ops = vec![Operation::new("BT", vec![]), Operation::new("Tf", vec!["F1".into(), 12.into()])];
        ops.push(Operation::new("Td", vec![72.into(), 720.into()]));
        for line in lines {
            ops.push(Operation::new("Tj", vec![Object::string_literal(*line)]));
            ops.push(Operation::new("Td", vec![0.into(), (-14).into()]));
        }
        ops.push(Operation::new("ET", vec![]));
        let content = Content { operations: ops };
        let mut stream = Stream::new(dictionary! {}, content.encode().unwrap());
        stream.compress().unwrap();
        let content_id = doc.add_object(stream);
        let page_id = doc.add_object(dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "Contents" => content_id,
        });
        let pages = dictionary! {
            "Type" => "Pages",
            "Kids" => vec![page_id.into()],
            "Count" => 1,
            "Resources" => resources_id,
            "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        };
        doc.objects.insert(pages_id, Object::Dictionary(pages));
        let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
        doc.trailer.set("Root", catalog_id);
        let mut out = Vec::new();
        doc.save_to(&mut out).unwrap();
        out
    }

    /// A PDF with these object bodies (object i+1 = bodies[i]) and a classic xref table.
    fn raw_pdf(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"%PDF-1.4\n".to_vec();
        let mut offsets = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            offsets.push(out.len());
            out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(b"\nendobj\n");
        }
        let xref = out.len();
        out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", bodies.len() + 1).as_bytes());
        for o in offsets {
            out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
        }
        let size = bodies.len() + 1;
        out.extend_from_slice(
            format!("trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n").as_bytes(),
        );
        out
    }

    fn catalog() -> Vec<Vec<u8>> {
        vec![b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(), b"<< /Type /Pages /Kids [] /Count 0 >>".to_vec()]
    }

    #[test]
    fn deep_nesting_under_the_limit_is_parsed_without_overflow() {
        let mut deep = b"[".repeat(MAX_DEPTH - 1);
        deep.extend_from_slice(&b"]".repeat(MAX_DEPTH - 1));
        let mut bodies = catalog();
        bodies.push(deep);
        assert_eq!(extract(&raw_pdf(&bodies), 1 << 20).unwrap(), "");
    }

    #[test]
    fn stream_length_chains_are_refused_quickly() {
        let mut bodies = catalog();
        for i in 0..2000 {
            bodies.push(format!("<< /Length {} 0 R >> stream\nxx\nendstream", i + 4).into_bytes());
        }
        bodies.push(b"2".to_vec());
        let started = std::time::Instant::now();
        let err = extract(&raw_pdf(&bodies), 1 << 20).unwrap_err();
        assert!(err.message.contains("length"), "{err:?}");
        assert!(started.elapsed().as_secs() < 5);
        // An indirect length that is a number is fine.
        let mut bodies = catalog();
        bodies.push(b"<< /Length 4 0 R >> stream\nxx\nendstream".to_vec());
        bodies.push(b"2".to_vec());
        assert!(extract(&raw_pdf(&bodies), 1 << 20).is_ok());
    }

    /// A PDF of `body` (after the header) whose cross-reference table lists
    /// objects 1.. at the given offsets into `body` (`None`: a free entry).
    fn pdf_with_xref(body: &[u8], offsets: &[Option<usize>]) -> Vec<u8> {
        let mut out = b"%PDF-1.4\n".to_vec();
        out.extend_from_slice(body);
        let xref = out.len();
        out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", offsets.len() + 1).as_bytes());
        for o in offsets {
            match o {
                Some(o) => out.extend_from_slice(format!("{:010} 00000 n \n", o + 9).as_bytes()),
                None => out.extend_from_slice(b"0000000000 00001 f \n"),
            }
        }
        let size = offsets.len() + 1;
        out.extend_from_slice(
            format!("trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n").as_bytes(),
        );
        out
    }

    const PAGE_TREE: &str = "<< /Type /Pages /Kids [4 0 R] /Count 1 /Resources << /Font << /F1 << /Type /Font \
        /Subtype /Type1 /BaseFont /Helvetica >> >> >> >> ";

    /// Objects 1 (catalog), 3 (page content) and 5 (an object stream holding
    /// the page tree 2 and the page 4), with `index` as the stream's index.
    fn object_stream_pdf(index: &str) -> Vec<u8> {
        let stm = format!("{index} {PAGE_TREE}<< /Type /Page /Parent 2 0 R /Contents 3 0 R >>");
        let first = index.len() + 1;
        let content = "BT /F1 12 Tf (Hello from an object stream.) Tj ET";
        let mut body = String::from("1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n");
        let o3 = body.len();
        body.push_str(&format!("3 0 obj << /Length {} >> stream\n{content}\nendstream endobj\n", content.len()));
        let o5 = body.len();
        body.push_str(&format!(
            "5 0 obj << /Type /ObjStm /N 2 /First {first} /Length {} >> stream\n{stm}\nendstream endobj\n",
            stm.len()
        ));
        pdf_with_xref(body.as_bytes(), &[Some(0), None, Some(o3), None, Some(o5)])
    }

    #[test]
    fn object_streams_are_read_and_overlapping_ones_refused() {
        let good = object_stream_pdf(&format!("2 0 4 {}", PAGE_TREE.len()));
        assert_eq!(extract(&good, 1 << 20).unwrap(), "Hello from an object stream.");
        // The page "starts" inside the page tree's dictionary: parses would overlap.
        let bad = object_stream_pdf("2 0 4 3");
        assert!(extract(&bad, 1 << 20).unwrap_err().message.contains("object streams"));
    }

    #[test]
    fn overlapping_and_repeated_objects_are_refused() {
        // Object 3's header hides in a comment inside object 2's array.
        let body = b"1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj [ % 3 0 obj [\n1 2 3 ] endobj\n";
        let o2 = crate::detect::find(body, b"2 0 obj").unwrap();
        let o3 = crate::detect::find(body, b"3 0 obj").unwrap();
        let err = extract(&pdf_with_xref(body, &[Some(0), Some(o2), Some(o3)]), 1 << 20).unwrap_err();
        assert!(err.message.contains("overlap"), "{err:?}");
        // Twenty entries at one object.
        let mut offsets = vec![Some(0)];
        offsets.extend(std::iter::repeat_n(Some(o2), 20));
        let err = extract(&pdf_with_xref(body, &offsets), 1 << 20).unwrap_err();
        assert!(err.message.contains("one place"), "{err:?}");
        // Stream lengths larger than the file.
        let body = b"1 0 obj << /Length 90000000 >> stream\nx\nendstream endobj\n";
        assert!(extract(&pdf_with_xref(body, &[Some(0)]), 1 << 20).unwrap_err().message.contains("lengths"));
    }

    #[test]
    fn cross_reference_streams_are_checked_too() {
        // An uncompressed xref stream (W [1 4 1]) with twenty rows at offset 9.
        let mut rows = Vec::new();
        for _ in 0..20 {
            rows.extend_from_slice(&[1, 0, 0, 0, 9, 0]);
        }
        let mut body =
            b"1 0 obj << /Type /Catalog >> endobj\n2 0 obj << /Type /XRef /W [1 4 1] /Size 21 /Length 120 >> stream\n"
                .to_vec();
        body.extend_from_slice(&rows);
        body.extend_from_slice(b"\nendstream endobj\n");
        let err = preflight(&pdf_with_xref(&body, &[Some(0)]), 1 << 20).unwrap_err();
        assert!(err.message.contains("one place"), "{err:?}");
    }

    #[test]
    fn encrypted_and_garbage_pdfs_are_refused() {
        let mut bodies = catalog();
        bodies.push(b"<< /Filter /Standard /V 1 /R 2 /O <00> /U <00> /P -4 >>".to_vec());
        let mut pdf = raw_pdf(&bodies);
        let at = crate::detect::find(&pdf, b"/Root 1 0 R").unwrap();
        pdf.splice(at..at, b"/Encrypt 3 0 R ".iter().copied());
        // The xref offset no longer matters for the trailer; lopdf finds it by startxref.
        let err = extract(&pdf, 1 << 20).unwrap_err();
        assert!(err.message.contains("encrypted"), "{err:?}");
        assert!(extract(b"%PDF-1.7\nnothing else", 1 << 20).is_err());
    }

    #[test]
    fn extracts_lines_from_a_generated_pdf() {
        let text = extract(&pdf_bytes(&["Hello (PDF) world.", "Second line here."]), 1 << 20).unwrap();
        assert_eq!(text, "Hello (PDF) world.\nSecond line here.");
    }

    #[test]
    fn visual_lines_are_reflowed() {
        assert_eq!(
            tidy("The river runs\nthrough the old town.\nIts banks are over-\ngrown and  green.\n\n\nNew paragraph:\nitems"),
            "The river runs through the old town.\nIts banks are overgrown and green.\n\nNew paragraph:\nitems"
        );
    }

    #[test]
    fn lexer_reads_strings_arrays_and_inline_images() {
        let mut lx = Lexer::new(b"[(Hel) -250 (lo\\051)] TJ <48 69> Tj BI /W 1 ID \x00\xFFEI x EI Q");
        let mut seen = Vec::new();
        while let Some(t) = lx.next() {
            seen.push(t);
        }
        assert_eq!(seen[0], Token::Operand(Operand::String(b"Hel".to_vec())));
        assert_eq!(seen[1], Token::Operand(Operand::Number(-250.0)));
        assert_eq!(seen[2], Token::Operand(Operand::String(b"lo)".to_vec())));
        assert_eq!(seen[3], Token::Operator(b"TJ"));
        assert_eq!(seen[4], Token::Operand(Operand::String(b"Hi".to_vec())));
        assert_eq!(seen.last(), Some(&Token::Operator(b"Q")));
    }

    #[test]
    fn preflight_refuses_bombs_nesting_and_unchecked_filters() {
        use std::io::Write;
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b'a'; 4 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        let mut pdf = b"%PDF-1.4\n1 0 obj << /Length 10 /Filter /FlateDecode >> stream\n".to_vec();
        pdf.extend_from_slice(&bomb);
        pdf.extend_from_slice(b"\nendstream endobj\n");
        let err = preflight(&pdf, 1 << 20).unwrap_err();
        assert_eq!((err.gate.as_str(), err.metric.as_str()), ("size", "decompressed_bytes"));
        assert!(preflight(&pdf, 8 << 20).is_ok());

        let mut deep = b"%PDF-1.4\n1 0 obj ".to_vec();
        deep.extend(std::iter::repeat_n(b'[', MAX_DEPTH + 1));
        assert!(preflight(&deep, 1 << 20).unwrap_err().message.contains("nests"));
        assert!(preflight(b"%PDF-1.4 << /Filter /LZW#44ecode >>", 1 << 20).unwrap_err().message.contains("LZWDecode"));
        assert!(preflight(b"%PDF-1.4 << /DecodeParms << /Columns 99999999 >> >>", 1 << 20).is_err());
        assert!(preflight(b"%PDF-1.4 << /DecodeParms << /Columns 5 /Predictor 12 >> >>", 1 << 20).is_ok());
    }
}
