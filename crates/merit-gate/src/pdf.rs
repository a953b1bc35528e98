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

use std::cell::Cell;
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
    let length_targets = check_names(b)?;
    check_length_chains(b, &length_targets)?;
    let mut used = 0u64;
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
        inflate_layers(&b[start..], budget, &mut used)?;
    }
    Ok(())
}

/// Whether bytes start with a zlib header (deflate, valid check bits).
fn zlib_header(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] & 0x0F == 8 && b[0] >> 4 <= 7 && (u16::from(b[0]) * 256 + u16::from(b[1])) % 31 == 0
}

/// Inflates a zlib stream and any zlib stream inside it, adding the output to
/// `used`; refuses when `used` passes `budget` or the output nests too deep.
fn inflate_layers(data: &[u8], budget: u64, used: &mut u64) -> Result<(), Reason> {
    let mut layer = data.to_vec();
    for _ in 0..8 {
        if !zlib_header(&layer) {
            return Ok(());
        }
        let mut out = Vec::new();
        let mut depth = Depth::default();
        inflate_bounded(&layer, budget.saturating_sub(*used), |chunk| {
            depth.feed(chunk);
            if out.len() < 2 || zlib_header(&out) {
                out.extend_from_slice(chunk);
            }
        })
        .map_err(|produced| bomb(used.saturating_add(produced), budget))
        .map(|produced| *used += produced)?;
        if depth.max > MAX_DEPTH {
            return Err(refuse("pdf", format!("a PDF stream nests arrays or dictionaries more than {MAX_DEPTH} deep")));
        }
        layer = out;
    }
    Err(refuse("pdf", "the PDF nests compressed streams more than 8 deep"))
}

/// Inflates zlib `data`, handing the output to `sink` in chunks; returns the
/// bytes produced, or `Err(produced)` when more than `limit` would be.
/// A corrupt stream just ends early (lopdf keeps what it decoded, too).
pub(crate) fn inflate_bounded(data: &[u8], limit: u64, mut sink: impl FnMut(&[u8])) -> Result<u64, u64> {
    let mut d = flate2::Decompress::new(true);
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

/// Refuses filters whose expansion is not checked and predictor parameters
/// that would make lopdf allocate huge rows.
/// Also returns the objects that `/Length` entries refer to.
fn check_names(b: &[u8]) -> Result<HashSet<u64>, Reason> {
    let mut length_targets = HashSet::new();
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
            b"Length" => {
                if let Some(id) = reference_at(b, end) {
                    length_targets.insert(id);
                }
            }
            _ => {}
        }
    }
    Ok(length_targets)
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

/// Whether the object whose body starts at `i` is a stream: lexes (skipping
/// strings, names, comments) until `stream`, `endobj` or `obj`.
fn body_is_stream(b: &[u8], mut i: usize) -> bool {
    for _ in 0..100_000 {
        i = skip_space(b, i);
        let Some(&c) = b.get(i) else { return false };
        match c {
            b'(' => {
                let mut depth = 0usize;
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' if depth == 0 => break,
                        b')' => depth -= 1,
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
            }
            b'<' if b.get(i + 1) == Some(&b'<') => i += 2,
            b'<' => {
                while i < b.len() && b[i] != b'>' {
                    i += 1;
                }
                i += 1;
            }
            b'>' | b'[' | b']' | b'{' | b'}' | b')' => i += 1,
            b'/' => {
                i += 1;
                while i < b.len() && !is_delimiter(b[i]) {
                    i += 1;
                }
            }
            _ => {
                let start = i;
                while i < b.len() && !is_delimiter(b[i]) {
                    i += 1;
                }
                match &b[start..i] {
                    b"stream" => return true,
                    b"endobj" | b"obj" => return false,
                    _ => {}
                }
            }
        }
    }
    true
}

/// lopdf resolves an indirect `/Length` by parsing the object it names, and
/// if that is a stream with an indirect length, the next, and so on: a chain
/// costs time quadratic in its length and stack linear in it. Refuses a PDF
/// where any `/Length` names an object that is itself a stream (looking at
/// every `N G obj` header in the file, wherever a cross-reference could point).
fn check_length_chains(b: &[u8], targets: &HashSet<u64>) -> Result<(), Reason> {
    if targets.is_empty() {
        return Ok(());
    }
    static HEADER: OnceLock<regex::bytes::Regex> = OnceLock::new();
    let header = HEADER.get_or_init(|| {
        regex::bytes::Regex::new(
            r"(?-u)(\d{1,10})(?:[\x00\t\n\x0C\r ]|%[^\r\n]*)+\d{1,5}(?:[\x00\t\n\x0C\r ]|%[^\r\n]*)+obj",
        )
        .expect("the object header pattern is a valid constant")
    });
    for caps in header.captures_iter(b) {
        let (Some(id), Some(whole)) = (caps.get(1), caps.get(0)) else {
            continue;
        };
        let id = id.as_bytes().iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
        if targets.contains(&id) && body_is_stream(b, whole.end()) {
            return Err(refuse("pdf", "the PDF gives a stream's length as another stream"));
        }
    }
    Ok(())
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
}

/// lopdf's per-object hook: lets an object stream through only while the
/// tokens of all object streams fit [`MAX_OBJECT_STREAM_TOKENS`].
fn object_filter(id: ObjectId, object: &mut Object) -> Option<(ObjectId, Object)> {
    if let Object::Stream(stream) = object {
        if stream.dict.type_is(b"ObjStm") {
            let mut tokens = 0u64;
            let mut in_token = false;
            let mut count = |chunk: &[u8]| {
                for &c in chunk {
                    let delim = is_delimiter(c);
                    if !delim && !in_token {
                        tokens += 1;
                    }
                    in_token = !delim;
                }
            };
            let limit = MAX_OBJECT_STREAM_TOKENS.saturating_sub(OBJECT_STREAM_TOKENS.with(Cell::get));
            let result = if zlib_header(&stream.content) {
                inflate_bounded(&stream.content, 64 << 20, &mut count).is_ok()
            } else {
                count(&stream.content);
                true
            };
            OBJECT_STREAM_TOKENS.with(|t| t.set(t.get().saturating_add(tokens)));
            if !result || tokens > limit {
                OBJECT_STREAM_REFUSED.with(|r| r.set(true));
                return None;
            }
        }
    }
    // lopdf keeps its own copy of a top-level object and uses the returned one
    // only for objects out of object streams, which are never streams.
    match object {
        Object::Stream(_) => Some((id, Object::Null)),
        other => Some((id, other.clone())),
    }
}

fn load_and_read(bytes: &[u8], budget: u64) -> Result<String, Reason> {
    OBJECT_STREAM_TOKENS.with(|t| t.set(0));
    OBJECT_STREAM_REFUSED.with(|r| r.set(false));
    let doc = lopdf::Reader { buffer: bytes, document: Document::new() }
        .read(Some(object_filter))
        .map_err(|e| refuse("pdf", format!("the PDF cannot be parsed: {e}")))?;
    if OBJECT_STREAM_REFUSED.with(Cell::get) {
        return Err(refuse("pdf", "the PDF's object streams hold too many objects"));
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
                                if !encodings.contains_key(&key) {
                                    account_to_unicode(doc, font, budget, &mut used)?;
                                    let enc =
                                        if font.type_is(b"Font") { font.get_font_encoding(doc).ok() } else { None };
                                    encodings.insert(key, enc);
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

/// Trims lines and drops runs of blank lines.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
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
        deep.extend(std::iter::repeat(b'[').take(MAX_DEPTH + 1));
        assert!(preflight(&deep, 1 << 20).unwrap_err().message.contains("nests"));
        assert!(preflight(b"%PDF-1.4 << /Filter /LZW#44ecode >>", 1 << 20).unwrap_err().message.contains("LZWDecode"));
        assert!(preflight(b"%PDF-1.4 << /DecodeParms << /Columns 99999999 >> >>", 1 << 20).is_err());
        assert!(preflight(b"%PDF-1.4 << /DecodeParms << /Columns 5 /Predictor 12 >> >>", 1 << 20).is_ok());
    }
}
