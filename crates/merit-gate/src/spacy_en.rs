//! English word tokens as spaCy's tokenizer makes them (`spacy.blank("en")`),
//! which is how datatrove counts English words for its Gopher and FineWeb
//! filters. The algorithm follows spaCy's `Tokenizer`: split on whitespace;
//! a chunk that is a special case (`don't` → `do` `n't`, `e.g.`) is taken as
//! it is; otherwise prefixes and suffixes are peeled off (stopping early when
//! what remains is a special case), a URL stays whole, and infixes split the
//! rest. The rules themselves are spaCy's, generated into `spacy_en_data.rs`.
//!
//! Then, as spaCy's second pass does, special cases that only show once
//! affixes were split (`):` in `adduser.conf(5):`, `''`) are merged back.

use std::collections::HashMap;
use std::sync::OnceLock;

use fancy_regex::Regex;

use crate::spacy_en_data as data;
use crate::text::py_is_space;

/// Hashes strings with the crate's fast hash (SipHash costs more than the
/// lookups it serves here).
#[derive(Default, Clone, Copy)]
struct FastHash(u64);

impl std::hash::Hasher for FastHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = crate::hash::combine(self.0, crate::hash::bytes64(bytes));
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHash>>;

struct Rules {
    prefix: Pieces,
    suffix: Pieces,
    infix: Pieces,
    url: Regex,
    specials: FastMap<&'static str, &'static [&'static str]>,
    /// Special cases that hold affixes, as the tokens they split into without
    /// special cases, by the hash of their first two tokens: spaCy's phrase matcher.
    merges: FastMap<u64, Vec<Vec<String>>>,
    /// The first bytes of the merges' first tokens.
    merge_first: [bool; 256],
    /// The longest special case, in bytes (longer strings are not looked up).
    special_max: usize,
    /// `shape[len][first byte]` and `[len][last byte]`: whether a special case
    /// of that byte length starts / ends so (most words are no special case,
    /// and two table reads are cheaper than hashing them).
    shape_first: Vec<[bool; 256]>,
    shape_last: Vec<[bool; 256]>,
}

impl Rules {
    #[inline(always)]
    fn special(&self, t: &str) -> Option<&'static [&'static str]> {
        let (n, b) = (t.len(), t.as_bytes());
        if n == 0
            || n > self.special_max
            || !self.shape_first[n][b[0] as usize]
            || !self.shape_last[n][b[n - 1] as usize]
        {
            return None;
        }
        self.specials.get(t).copied()
    }
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let compile = |what: &str, pattern: &str| {
            Regex::new(pattern).unwrap_or_else(|e| panic!("spaCy's {what} pattern does not compile: {e}"))
        };
        let mut rules = Rules {
            prefix: Pieces::new(data::PREFIX_PIECES, "^", ""),
            suffix: Pieces::new(data::SUFFIX_PIECES, "", "$"),
            infix: Pieces::new(data::INFIX_PIECES, "", ""),
            url: compile("url", data::URL),
            specials: data::SPECIALS.iter().copied().collect(),
            merges: FastMap::default(),
            merge_first: [false; 256],
            special_max: data::SPECIALS.iter().map(|(k, _)| k.len()).max().unwrap_or(0),
            shape_first: Vec::new(),
            shape_last: Vec::new(),
        };
        rules.shape_first = vec![[false; 256]; rules.special_max + 1];
        rules.shape_last = vec![[false; 256]; rules.special_max + 1];
        for (k, _) in data::SPECIALS {
            let b = k.as_bytes();
            if let (Some(&f), Some(&l)) = (b.first(), b.last()) {
                rules.shape_first[b.len()][f as usize] = true;
                rules.shape_last[b.len()][l as usize] = true;
            }
        }
        // `add_special_case` with faster heuristics: a special case goes to the
        // matcher when an affix rule matches it or it holds a space.
        let mut merges: FastMap<u64, Vec<Vec<String>>> = FastMap::default();
        for (key, _) in data::SPECIALS {
            let affixed = rules.prefix.prefix_len(key) > 0
                || rules.suffix.suffix_len(key) > 0
                || rules.infix.next_match(key, 0, &mut Vec::new()).is_some()
                || key.contains(' ');
            if !affixed {
                continue;
            }
            let mut spans = Vec::new();
            split_chunks(&rules, key, false, &mut spans);
            if spans.len() < 2 {
                continue;
            }
            let pattern: Vec<String> = spans.iter().map(|&(a, b)| key[a..b].to_string()).collect();
            merges.entry(pair_hash(&pattern[0], &pattern[1])).or_default().push(pattern);
        }
        for p in merges.values().flatten() {
            rules.merge_first[p[0].as_bytes()[0] as usize] = true;
        }
        rules.merges = merges;
        rules
    })
}

/// A chunk spaCy never splits: ASCII letters only, and not a special case
/// (no prefix, suffix or infix rule matches a letter-only string).
#[inline(always)]
fn plain_word(chunk: &str) -> bool {
    chunk.bytes().all(|b| b.is_ascii_alphabetic())
}

/// Appends the byte ranges of `text`'s word tokens to `out`.
pub(crate) fn tokenize(text: &str, out: &mut Vec<(usize, usize)>) {
    let r = rules();
    let first = out.len();
    // The merge pass can only change chunks split the long way or into
    // special-case pieces (its merges never cross whitespace: no special case
    // but whitespace itself holds any); rows of plain words skip it.
    if split_chunks(r, text, true, out) {
        merge_specials(r, text, first, out);
    }
}

/// The first pass: every whitespace-free chunk, split. Returns whether the
/// merge pass may change something.
fn split_chunks(r: &Rules, text: &str, specials: bool, out: &mut Vec<(usize, usize)>) -> bool {
    let bytes = text.as_bytes();
    let mut start = None;
    let mut may_merge = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // ASCII without decoding; other characters by their `char`.
        let (space, len) = if b < 0x80 {
            (matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f), 1)
        } else {
            let c = text[i..].chars().next().unwrap_or(' ');
            (py_is_space(c), c.len_utf8())
        };
        match (space, start) {
            (true, Some(s)) => {
                may_merge |= chunk(r, text, s, i, specials, out);
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
        i += len;
    }
    if let Some(s) = start {
        may_merge |= chunk(r, text, s, text.len(), specials, out);
    }
    may_merge
}

fn pair_hash(a: &str, b: &str) -> u64 {
    crate::hash::combine(crate::hash::bytes64(a.as_bytes()), crate::hash::bytes64(b.as_bytes()))
}

/// spaCy's second pass (`_apply_special_cases`): runs of tokens that spell
/// an affixed special case's split form are found (tokens separated by
/// nothing or one space, as in spaCy's Doc); overlapping finds are settled
/// longest first; a find whose text is the special case becomes its tokens.
fn merge_specials(r: &Rules, text: &str, first: usize, out: &mut Vec<(usize, usize)>) {
    let toks = &out[first..];
    let mut found: Vec<(usize, usize)> = Vec::new();
    // Whether token i is ASCII letters only: a pattern never starts with two
    // such tokens (something split them: an affix or an infix, a token itself).
    let mut plain_here = toks.first().is_some_and(|&(a, b)| plain_word(&text[a..b]));
    for i in 0..toks.len().saturating_sub(1) {
        let tok = &text[toks[i].0..toks[i].1];
        let next = &text[toks[i + 1].0..toks[i + 1].1];
        let plain_next = plain_word(next);
        let plain_tok = plain_here;
        plain_here = plain_next;
        if (plain_tok && plain_next) || !r.merge_first[tok.as_bytes()[0] as usize] {
            continue;
        }
        let gap = &text[toks[i].1..toks[i + 1].0];
        if !(gap.is_empty() || gap == " ") {
            continue;
        }
        let Some(patterns) = r.merges.get(&pair_hash(tok, next)) else { continue };
        'pattern: for p in patterns {
            if i + p.len() > toks.len() {
                continue;
            }
            for (k, piece) in p.iter().enumerate() {
                let (a, b) = toks[i + k];
                if &text[a..b] != piece {
                    continue 'pattern;
                }
                if k > 0 {
                    let gap = &text[toks[i + k - 1].1..a];
                    if !(gap.is_empty() || gap == " ") {
                        continue 'pattern;
                    }
                }
            }
            found.push((i, i + p.len()));
        }
    }
    if found.is_empty() {
        return;
    }
    // `_filter_special_spans`: sorted by (length, start), taken from the
    // back; a span whose first or last token is taken already is dropped.
    found.sort_by_key(|&(s, e)| (e - s, s));
    found.dedup();
    let mut taken = vec![false; toks.len()];
    let mut keep = Vec::new();
    for &(s, e) in found.iter().rev() {
        if !taken[s] && !taken[e - 1] {
            keep.push((s, e));
        }
        for t in taken.iter_mut().take(e).skip(s) {
            *t = true;
        }
    }
    keep.sort();
    let mut merged = Vec::with_capacity(toks.len());
    let mut i = 0;
    let mut k = 0;
    while i < toks.len() {
        match keep.get(k) {
            Some(&(s, e)) if s == i => {
                let (a, b) = (toks[s].0, toks[e - 1].1);
                match r.special(&text[a..b]) {
                    Some(pieces) => push_special(pieces, a, &mut merged),
                    None => merged.extend_from_slice(&toks[s..e]),
                }
                i = e;
                k += 1;
            }
            _ => {
                merged.push(toks[i]);
                i += 1;
            }
        }
    }
    out.truncate(first);
    out.extend(merged);
}

fn push_special(pieces: &[&str], at: usize, out: &mut Vec<(usize, usize)>) {
    let mut p = at;
    for piece in pieces {
        out.push((p, p + piece.len()));
        p += piece.len();
    }
}

/// One of spaCy's affix patterns (`^p|^q…`, `p$|q$…` or `p|q…`), matched
/// with Python's `re` semantics but fast: a `RegexSet` of the pieces with
/// their lookarounds removed says in one pass which pieces may match; only
/// those are then run exactly, alone (regex when a piece has no lookaround,
/// fancy-regex when it has).
struct Pieces {
    set: regex::RegexSet,
    exact: Vec<Piece>,
}

enum Piece {
    Plain(regex::Regex),
    /// `(?<=B)C(?=A)` (either side optional, `!` for negative): `C` run by
    /// the regex crate, the lookarounds checked on the text beside it.
    Look {
        core: regex::Regex,
        behind: Option<(regex::Regex, bool)>,
        ahead: Option<(regex::Regex, bool)>,
    },
    Fancy(Regex),
}

impl Piece {
    /// The leftmost match at or after `from` (lookbehind sees the text before).
    fn find_from(&self, s: &str, from: usize) -> Option<(usize, usize)> {
        match self {
            Piece::Plain(re) => re.find_at(s, from).map(|m| (m.start(), m.end())),
            Piece::Look { core, behind, ahead } => {
                let mut at = from;
                while at <= s.len() {
                    let m = core.find_at(s, at)?;
                    let before = behind.as_ref().is_none_or(|(re, pos)| re.is_match(&s[..m.start()]) == *pos);
                    let after = ahead.as_ref().is_none_or(|(re, pos)| re.is_match(&s[m.end()..]) == *pos);
                    if before && after {
                        return Some((m.start(), m.end()));
                    }
                    at = m.start() + s[m.start()..].chars().next().map_or(1, char::len_utf8);
                }
                None
            }
            Piece::Fancy(re) => re.find_from_pos(s, from).ok().flatten().map(|m| (m.start(), m.end())),
        }
    }

    /// `p` as a `Look` when its lookarounds are only a leading lookbehind and
    /// a trailing lookahead (as spaCy's are).
    fn look(p: &str, pre: &str, post: &str) -> Option<Piece> {
        let (mut rest, mut behind) = (p, None);
        for (open, positive) in [("(?<=", true), ("(?<!", false)] {
            if rest.starts_with(open) {
                let end = group_end(rest)?;
                let inner = &rest[open.len()..end - 1];
                behind = Some((regex::Regex::new(&format!("(?:{inner})$")).ok()?, positive));
                rest = &rest[end..];
            }
        }
        let mut ahead = None;
        for (open, positive) in [("(?=", true), ("(?!", false)] {
            if let Some(at) = rest.rfind(open) {
                if group_end(&rest[at..]) == Some(rest.len() - at) {
                    let inner = &rest[at + open.len()..rest.len() - 1];
                    ahead = Some((regex::Regex::new(&format!("^(?:{inner})")).ok()?, positive));
                    rest = &rest[..at];
                    break;
                }
            }
        }
        if strip_lookarounds(rest) != rest {
            return None;
        }
        let core = regex::Regex::new(&format!("{pre}{rest}{post}")).ok()?;
        Some(Piece::Look { core, behind, ahead })
    }
}

/// The length of the group that `p` starts with (`(` … its `)`), if any.
fn group_end(p: &str) -> Option<usize> {
    let stripped_len = |q: &str| q.len() - strip_lookarounds(q).len();
    // A lookaround group is what `strip_lookarounds` removes from the front.
    let n = stripped_len(p);
    (n > 0 && strip_lookarounds(p) == p[n..]).then_some(n)
}

impl Pieces {
    fn new(pieces: &[&str], pre: &str, post: &str) -> Pieces {
        let mut loose = Vec::with_capacity(pieces.len());
        let mut exact = Vec::with_capacity(pieces.len());
        for p in pieces {
            let full = format!("{pre}{p}{post}");
            let stripped = format!("{pre}{}{post}", strip_lookarounds(p));
            exact.push(if stripped == full {
                match regex::Regex::new(&full) {
                    Ok(re) => Piece::Plain(re),
                    Err(_) => Piece::Fancy(fancy(&full)),
                }
            } else {
                Piece::look(p, pre, post).unwrap_or_else(|| Piece::Fancy(fancy(&full)))
            });
            loose.push(stripped);
        }
        let set = regex::RegexSet::new(&loose).unwrap_or_else(|e| panic!("spaCy's affix pieces do not compile: {e}"));
        Pieces { set, exact }
    }

    /// `prefix_search`: the length of the prefix, 0 when none.
    fn prefix_len(&self, s: &str) -> usize {
        // No prefix starts with an ASCII letter or digit but `US$`, `C$`, `A$`.
        if s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric) && !s.contains('$') {
            return 0;
        }
        for i in self.set.matches(s).iter() {
            if let Some((0, end)) = self.exact[i].find_from(s, 0) {
                return end;
            }
        }
        0
    }

    /// `suffix_search`: the length of the suffix (from the leftmost start at
    /// which a piece matches to the end; the first piece on ties), 0 when none.
    fn suffix_len(&self, s: &str) -> usize {
        // Only the tail can hold a suffix (the longest is a few characters,
        // but for a run of dots): looking there keeps long chunks linear.
        let mut tail = s.len().saturating_sub(32);
        while !s.is_char_boundary(tail) {
            tail -= 1;
        }
        while tail > 0 && s.as_bytes()[tail - 1] == b'.' {
            tail -= 1;
        }
        // No suffix ends with an ASCII digit; the ones that end with an ASCII
        // letter are `'s` (`’s`) and units after a digit.
        if let Some(&last) = s.as_bytes().last() {
            if last.is_ascii_digit()
                || (last.is_ascii_alphabetic()
                    && !s.bytes().any(|b| b.is_ascii_digit() || b == b'\'')
                    && !s.contains('\u{2019}'))
            {
                return 0;
            }
        }
        let mut best: Option<usize> = None;
        for i in self.set.matches(&s[tail..]).iter() {
            if let Some((start, _)) = self.exact[i].find_from(s, tail) {
                if best.is_none_or(|b| start < b) {
                    best = Some(start);
                }
            }
        }
        best.map_or(0, |start| s.len() - start)
    }

    /// `finditer`'s next match at or after `from`: the leftmost start, the
    /// first piece on ties. `next` caches each candidate's next match.
    fn next_match(
        &self,
        s: &str,
        from: usize,
        next: &mut Vec<(usize, Option<(usize, usize)>)>,
    ) -> Option<(usize, usize)> {
        if from == 0 {
            next.clear();
            // Every infix needs one of these (or a non-ASCII character).
            if s.is_ascii()
                && !s.bytes().any(|b| {
                    matches!(b, b'.' | b'+' | b'-' | b'*' | b'^' | b',' | b'~' | b':' | b'<' | b'>' | b'=' | b'/')
                })
            {
                return None;
            }
            next.extend(self.set.matches(s).iter().map(|i| (i, None)));
        }
        let mut best: Option<(usize, usize)> = None;
        for (i, cached) in next.iter_mut() {
            if cached.is_none_or(|(start, _)| start < from) {
                *cached = self.exact[*i].find_from(s, from);
            }
            if let Some(m) = *cached {
                if best.is_none_or(|b| m.0 < b.0) {
                    best = Some(m);
                }
            }
        }
        best
    }
}

fn fancy(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("a spaCy pattern does not compile: {e}"))
}

/// A pattern with its lookaround groups (`(?=…)`, `(?!…)`, `(?<=…)`, `(?<!…)`)
/// removed: it matches wherever the pattern does, and maybe more.
fn strip_lookarounds(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    // Copies or skips one atom starting at i; returns the index after it.
    fn char_len(lead: u8) -> usize {
        match lead {
            0xF0..=0xFF => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        }
    }
    fn atom_end(b: &[u8], i: usize) -> usize {
        match b[i] {
            b'\\' => (i + 1 + b.get(i + 1).map_or(0, |&c| char_len(c))).min(b.len()),
            b'[' => {
                let mut j = i + 1;
                if j < b.len() && b[j] == b'^' {
                    j += 1;
                }
                if j < b.len() && b[j] == b']' {
                    j += 1;
                }
                while j < b.len() && b[j] != b']' {
                    j += if b[j] == b'\\' { 1 + b.get(j + 1).map_or(0, |&c| char_len(c)) } else { char_len(b[j]) };
                }
                (j + 1).min(b.len())
            }
            c => i + char_len(c),
        }
    }
    while i < b.len() {
        let look = b[i] == b'('
            && (p[i..].starts_with("(?=")
                || p[i..].starts_with("(?!")
                || p[i..].starts_with("(?<=")
                || p[i..].starts_with("(?<!"));
        if look {
            // Skip to the matching parenthesis.
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            j += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                j = if b[j] == b'(' || b[j] == b')' { j + 1 } else { atom_end(b, j) };
            }
            i = j;
            continue;
        }
        let end = atom_end(b, i);
        out.push_str(&p[i..end]);
        i = end;
    }
    out
}

/// How many split chunks a thread remembers (spaCy keeps a cache too: the
/// same chunks come back all the time).
const CACHE_ENTRIES: usize = 8192;

thread_local! {
    static CACHE: std::cell::RefCell<FastMap<String, Vec<(u32, u32)>>> = std::cell::RefCell::new(FastMap::default());
}

/// `chunk` through the thread's cache (chunks of ASCII letters, special
/// cases and long chunks go straight through). Returns whether the merge
/// pass may change the chunk's tokens.
fn chunk(r: &Rules, text: &str, s: usize, e: usize, specials: bool, out: &mut Vec<(usize, usize)>) -> bool {
    let whole = &text[s..e];
    if let Some(may_merge) = quick(r, whole, s, specials, out) {
        return may_merge;
    }
    if !specials || e - s > 64 {
        split_chunk(r, text, s, e, specials, out);
        return true;
    }
    let hit = CACHE.with(|c| {
        let c = c.borrow();
        c.get(whole).map(|spans| out.extend(spans.iter().map(|&(a, b)| (s + a as usize, s + b as usize))))
    });
    if hit.is_some() {
        return true;
    }
    let first = out.len();
    split_chunk(r, text, s, e, specials, out);
    let spans: Vec<(u32, u32)> = out[first..].iter().map(|&(a, b)| ((a - s) as u32, (b - s) as u32)).collect();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(whole.to_string(), spans);
    });
    true
}

/// The commonest chunks, split as `split_chunk` would without its work: a
/// special case; a word of ASCII letters; such a word and one closing mark
/// (`,` `;` `:` `!` `?` `)` `"`, or `.` after a lowercase letter), which is a
/// suffix. `None` when `whole` (at `s`) is none of them, else whether the
/// merge pass may change its tokens (special-case pieces).
#[inline]
fn quick(r: &Rules, whole: &str, s: usize, specials: bool, out: &mut Vec<(usize, usize)>) -> Option<bool> {
    if let Some(pieces) = r.special(whole).filter(|_| specials) {
        push_special(pieces, s, out);
        return Some(true);
    }
    if plain_word(whole) {
        out.push((s, s + whole.len()));
        return Some(false);
    }
    let bytes = whole.as_bytes();
    let [.., before, last] = bytes else { return None };
    let closing = matches!(last, b',' | b';' | b':' | b'!' | b'?' | b')' | b'"')
        || (*last == b'.' && before.is_ascii_lowercase());
    // (`last` is ASCII, so the word ends on a character boundary.)
    if !closing || !plain_word(&whole[..whole.len() - 1]) {
        return None;
    }
    let word = &whole[..whole.len() - 1];
    let special = r.special(word).filter(|_| specials);
    match special {
        Some(pieces) => push_special(pieces, s, out),
        None => out.push((s, s + word.len())),
    }
    out.push((s + word.len(), s + whole.len()));
    Some(special.is_some())
}

/// One whitespace-free chunk `text[s..e]` (`specials`: whether special
/// cases apply, as spaCy's `with_special_cases`).
fn split_chunk(r: &Rules, text: &str, s: usize, e: usize, specials: bool, out: &mut Vec<(usize, usize)>) {
    let is_special = |t: &str| specials && r.special(t).is_some();
    let whole = &text[s..e];
    if let Some(pieces) = r.special(whole).filter(|_| specials) {
        push_special(pieces, s, out);
        return;
    }
    let (mut a, mut b) = (s, e);
    let mut prefixes: Vec<(usize, usize)> = Vec::new();
    let mut suffixes: Vec<(usize, usize)> = Vec::new();
    let mut last_size = 0;
    while a < b && b - a != last_size {
        let string = &text[a..b];
        if is_special(string) {
            break;
        }
        last_size = b - a;
        let pre_len = r.prefix.prefix_len(string);
        if pre_len != 0 {
            let minus_pre = &string[pre_len..];
            if !minus_pre.is_empty() && is_special(minus_pre) {
                prefixes.push((a, a + pre_len));
                a += pre_len;
                break;
            }
        }
        let suf_len = r.suffix.suffix_len(&string[pre_len..]);
        if suf_len != 0 {
            let minus_suf = &string[..string.len() - suf_len];
            if !minus_suf.is_empty() && is_special(minus_suf) {
                suffixes.push((b - suf_len, b));
                b -= suf_len;
                break;
            }
        }
        if pre_len != 0 && suf_len != 0 && pre_len + suf_len <= string.len() {
            prefixes.push((a, a + pre_len));
            suffixes.push((b - suf_len, b));
            a += pre_len;
            b -= suf_len;
        } else if pre_len != 0 {
            prefixes.push((a, a + pre_len));
            a += pre_len;
        } else if suf_len != 0 {
            suffixes.push((b - suf_len, b));
            b -= suf_len;
        }
    }
    out.extend_from_slice(&prefixes);
    if a < b {
        let string = &text[a..b];
        if let Some(pieces) = r.special(string).filter(|_| specials) {
            push_special(pieces, a, out);
        } else if plain_word(string) || (string.contains('.') && matches!(r.url.is_match(string), Ok(true))) {
            // (A URL has a dot in its host.)
            out.push((a, b));
        } else {
            // Infixes split the rest; one at its very start does not.
            let mut start = 0;
            let mut from = 0;
            let mut cache = Vec::new();
            while from <= string.len() {
                let Some((ms, me)) = r.infix.next_match(string, from, &mut cache) else { break };
                from = if me > ms { me } else { me + string[me..].chars().next().map_or(1, char::len_utf8) };
                if ms == 0 {
                    continue;
                }
                if ms != start {
                    out.push((a + start, a + ms));
                }
                if ms != me {
                    out.push((a + ms, a + me));
                }
                start = me;
            }
            if start < string.len() {
                out.push((a + start, b));
            }
        }
    }
    out.extend(suffixes.iter().rev());
}

#[cfg(test)]
mod tests {
    fn tokens(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        super::tokenize(text, &mut out);
        out.iter().map(|&(a, b)| &text[a..b]).collect()
    }

    /// What `spacy.blank("en")` gives for these (spaCy 3.8).
    #[test]
    fn splits_like_spacy() {
        assert_eq!(
            tokens("Don't stop (e.g. here), it's fine."),
            ["Do", "n't", "stop", "(", "e.g.", "here", ")", ",", "it", "'s", "fine", "."]
        );
        assert_eq!(
            tokens("urgency=medium non-free-firmware apt-cdrom's +0200"),
            ["urgency", "=", "medium", "non", "-", "free", "-", "firmware", "apt", "-", "cdrom", "'s", "+0200"]
        );
        assert_eq!(
            tokens("See https://example.org/a-b?x=1 or mail@example.org."),
            ["See", "https://example.org/a-b?x=1", "or", "mail@example.org", "."]
        );
        assert_eq!(
            tokens("It costs $5.99, about 10km away... U.S. cannot"),
            ["It", "costs", "$", "5.99", ",", "about", "10", "km", "away", "...", "U.S.", "can", "not"]
        );
        assert_eq!(tokens("  \n\t "), Vec::<&str>::new());
        // The second pass: special cases that only show once affixes are split.
        assert_eq!(
            tokens("see adduser.conf(5): If AS IS'' AND note:*"),
            ["see", "adduser.conf(5", "):", "If", "AS", "IS", "''", "AND", "note", ":*"]
        );
    }
}
