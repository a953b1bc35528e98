//! Verbatim-span attribution over a suffix array of token ids.
//!
//! The index holds every row's tokens, each followed by a separator that no
//! answer contains (so no match crosses rows), and the suffix array of that
//! sequence. For an answer, [`SpanIndex::find_spans`] finds, at every start
//! position, the longest prefix occurring in the index by narrowing a
//! suffix-array interval one token at a time, and keeps the maximal spans of
//! at least `k` tokens; [`SpanIndex::attribute`] credits each span to the
//! rows containing it, weighted by its length and rarity, and sums the
//! credit per row id (a contribution).

use std::io::{Read, Write};
use std::path::Path;

/// Ends every row; never a token id.
const SEP: u32 = u32::MAX;
const MAGIC: &[u8; 8] = b"MRTSPAN1";
/// Occurrences of one span that are credited (a span found more often is
/// common text: its weight is small and goes to the first rows found).
pub const MAX_OCCURRENCES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SpanIndexError {
    #[error("span index {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("span index {path}: {reason}")]
    Format { path: String, reason: String },
    #[error("row {row}: token id {token} is reserved")]
    ReservedToken { row: usize, token: u32 },
    #[error("the index would hold {0} tokens; at most {max} fit", max = u32::MAX - 1)]
    TooLarge(usize),
}

/// A suffix array over the tokens of many rows, each row tagged with an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanIndex {
    /// Every row's tokens followed by [`SEP`].
    tokens: Vec<u32>,
    /// Start positions of the suffixes of `tokens`, in lexicographic order.
    sa: Vec<u32>,
    /// Where each row starts in `tokens`, ascending.
    starts: Vec<u32>,
    /// The id of each row (a contribution id); several rows may share one.
    ids: Vec<u64>,
}

/// A maximal verbatim span of an answer: tokens `start..end` occur, in this
/// order, in `occurrences` places of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub occurrences: usize,
}

/// The credit of one row id for an answer: its share of the span weight
/// (the shares of all ids sum to 1) and the spans found in its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    pub id: u64,
    pub score: f64,
    pub spans: Vec<Span>,
}

impl SpanIndex {
    /// Builds the index over `rows` (id, tokens).
    pub fn build<'a>(rows: impl IntoIterator<Item = (u64, &'a [u32])>) -> Result<SpanIndex, SpanIndexError> {
        let (mut tokens, mut starts, mut ids) = (Vec::new(), Vec::new(), Vec::new());
        for (row, (id, toks)) in rows.into_iter().enumerate() {
            if let Some(&token) = toks.iter().find(|&&t| t == SEP) {
                return Err(SpanIndexError::ReservedToken { row, token });
            }
            if tokens.len() + toks.len() + 1 >= SEP as usize {
                return Err(SpanIndexError::TooLarge(tokens.len() + toks.len() + 1));
            }
            starts.push(tokens.len() as u32);
            ids.push(id);
            tokens.extend_from_slice(toks);
            tokens.push(SEP);
        }
        let sa = suffix_array(&tokens);
        Ok(SpanIndex { tokens, sa, starts, ids })
    }

    /// Tokens in the index (separators included).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Rows in the index.
    pub fn rows(&self) -> usize {
        self.starts.len()
    }

    /// The suffix-array interval of the suffixes that start with `pattern`.
    fn interval(&self, pattern: &[u32]) -> (usize, usize) {
        let (mut lo, mut hi) = (0, self.sa.len());
        for (l, &c) in pattern.iter().enumerate() {
            match self.narrow(lo, hi, l, c) {
                Some((a, b)) => (lo, hi) = (a, b),
                None => return (0, 0),
            }
        }
        (lo, hi)
    }

    /// Within `lo..hi` (suffixes sharing their first `l` tokens), the
    /// suffixes whose token `l` is `c`; None when there are none.
    fn narrow(&self, lo: usize, hi: usize, l: usize, c: u32) -> Option<(usize, usize)> {
        // Inside the interval the first l tokens match a pattern without
        // separators, so every suffix has a token at offset l.
        let at = |j: usize| self.tokens[self.sa[j] as usize + l];
        if hi - lo == 1 {
            return (at(lo) == c).then_some((lo, hi));
        }
        let first = lo + self.sa[lo..hi].partition_point(|&p| self.tokens[p as usize + l] < c);
        if first == hi || at(first) != c {
            return None;
        }
        let end = first + self.sa[first..hi].partition_point(|&p| self.tokens[p as usize + l] == c);
        Some((first, end))
    }

    /// The maximal spans of `answer` of at least `min_len` tokens that occur
    /// in the index, in order of their start.
    pub fn find_spans(&self, answer: &[u32], min_len: usize) -> Vec<Span> {
        let min_len = min_len.max(1);
        let mut spans = Vec::new();
        let mut reach = 0;
        for i in 0..answer.len() {
            if answer.len() - i < min_len || self.sa.is_empty() {
                break;
            }
            let (mut lo, mut hi, mut l) = (0, self.sa.len(), 0);
            while i + l < answer.len() && answer[i + l] != SEP {
                match self.narrow(lo, hi, l, answer[i + l]) {
                    Some((a, b)) => (lo, hi) = (a, b),
                    None => break,
                }
                l += 1;
            }
            // A span inside the previous one (same end) is not maximal.
            if l >= min_len && i + l > reach {
                spans.push(Span { start: i, end: i + l, occurrences: hi - lo });
            }
            reach = reach.max(i + l);
        }
        spans
    }

    /// The rows (by position in the index) where `pattern` occurs, at most `limit`.
    fn rows_with(&self, pattern: &[u32], limit: usize) -> Vec<usize> {
        let (lo, hi) = self.interval(pattern);
        let mut rows: Vec<usize> =
            self.sa[lo..hi.min(lo + limit)].iter().map(|&p| self.starts.partition_point(|&s| s <= p) - 1).collect();
        rows.sort_unstable();
        rows.dedup();
        rows
    }

    /// Credits the maximal spans (≥ `min_len` tokens) of `answer` to the
    /// ids of the rows that contain them. A span of length ℓ found in d of
    /// the index's D rows weighs ℓ · ln(1 + D / d), shared equally by those
    /// d rows; each id's score is its share of the total, so the scores sum
    /// to 1 (an empty list when nothing matched). Sorted by score, highest
    /// first.
    pub fn attribute(&self, answer: &[u32], min_len: usize) -> Vec<Attribution> {
        normalize(self.credits(answer, min_len))
    }

    /// [`SpanIndex::attribute`] before normalising: each id's summed span
    /// weight, so the credits of several indexes can be merged first.
    pub fn credits(&self, answer: &[u32], min_len: usize) -> Vec<Attribution> {
        let total_rows = self.rows() as f64;
        let mut by_id: Vec<Attribution> = Vec::new();
        for span in self.find_spans(answer, min_len) {
            let rows = self.rows_with(&answer[span.start..span.end], MAX_OCCURRENCES);
            if rows.is_empty() {
                continue;
            }
            let d = rows.len() as f64;
            let weight = (span.end - span.start) as f64 * (1.0 + total_rows / d).ln() / d;
            for &r in &rows {
                let id = self.ids[r];
                let entry = match by_id.iter_mut().position(|a| a.id == id) {
                    Some(p) => &mut by_id[p],
                    None => {
                        by_id.push(Attribution { id, score: 0.0, spans: Vec::new() });
                        by_id.last_mut().expect("just pushed")
                    }
                };
                entry.score += weight;
                // One copy of the span per id, however many of its rows hold it.
                if entry.spans.last() != Some(&span) {
                    entry.spans.push(span.clone());
                }
            }
        }
        by_id
    }

    /// Writes the index to `path` atomically (a temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), SpanIndexError> {
        let io = |source| SpanIndexError::Io { path: path.display().to_string(), source };
        let tmp = path.with_extension("tmp");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        f.write_all(MAGIC).map_err(io)?;
        for n in [self.tokens.len(), self.starts.len()] {
            f.write_all(&(n as u64).to_le_bytes()).map_err(io)?;
        }
        for v in self.tokens.iter().chain(&self.sa).chain(&self.starts) {
            f.write_all(&v.to_le_bytes()).map_err(io)?;
        }
        for id in &self.ids {
            f.write_all(&id.to_le_bytes()).map_err(io)?;
        }
        let f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads an index written by [`SpanIndex::save`], checking its structure.
    pub fn load(path: &Path) -> Result<SpanIndex, SpanIndexError> {
        let p = path.display().to_string();
        let bad = |reason: &str| SpanIndexError::Format { path: p.clone(), reason: reason.to_string() };
        let bytes = std::fs::read(path).map_err(|source| SpanIndexError::Io { path: p.clone(), source })?;
        let mut r = &bytes[..];
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(|_| bad("too short"))?;
        if &magic != MAGIC {
            return Err(bad("not a Merit span index"));
        }
        let mut word = [0u8; 8];
        let mut count = || -> Result<usize, SpanIndexError> {
            r.read_exact(&mut word).map_err(|_| bad("too short"))?;
            Ok(u64::from_le_bytes(word) as usize)
        };
        let (n, rows) = (count()?, count()?);
        let body = &bytes[24..];
        if n >= SEP as usize || body.len() != (2 * n + rows) * 4 + rows * 8 {
            return Err(bad("sizes do not match the header (truncated or corrupt)"));
        }
        let u32s = |from: usize, len: usize| -> Vec<u32> {
            body[from * 4..(from + len) * 4]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let (tokens, sa, starts) = (u32s(0, n), u32s(n, n), u32s(2 * n, rows));
        let ids: Vec<u64> = body[(2 * n + rows) * 4..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if sa.iter().any(|&s| s as usize >= n) || starts.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("suffix array or row starts out of range"));
        }
        if starts.first().is_some_and(|&s| s != 0) || tokens.last().is_some_and(|&t| t != SEP) {
            return Err(bad("rows are not laid out end to end"));
        }
        Ok(SpanIndex { tokens, sa, starts, ids })
    }
}

/// Scales credits (from one or several indexes) so they sum to 1, highest first.
pub fn normalize(mut credits: Vec<Attribution>) -> Vec<Attribution> {
    let total: f64 = credits.iter().map(|a| a.score).sum();
    if total > 0.0 {
        credits.iter_mut().for_each(|a| a.score /= total);
    }
    credits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    credits
}

/// The suffix array of `s` by prefix doubling: suffixes sorted by their
/// first 2ᵏ tokens, k = 0, 1, … until every rank is distinct.
fn suffix_array(s: &[u32]) -> Vec<u32> {
    let n = s.len();
    if n == 0 {
        return Vec::new();
    }
    // Ranks by first token, dense from 0.
    let mut vals: Vec<u32> = s.to_vec();
    vals.sort_unstable();
    vals.dedup();
    let mut rank: Vec<u32> = s.iter().map(|t| vals.partition_point(|v| v < t) as u32).collect();
    let mut keyed: Vec<(u64, u32)> = Vec::with_capacity(n);
    let mut k = 1;
    loop {
        keyed.clear();
        // (rank of the first k tokens, rank of the next k + 1; 0 past the end).
        keyed.extend((0..n).map(|i| {
            let second = if i + k < n { rank[i + k] as u64 + 1 } else { 0 };
            (((rank[i] as u64) << 32) | second, i as u32)
        }));
        keyed.sort_unstable();
        let mut r = 0u32;
        for j in 0..n {
            if j > 0 && keyed[j].0 != keyed[j - 1].0 {
                r += 1;
            }
            rank[keyed[j].1 as usize] = r;
        }
        if r as usize == n - 1 || k >= n {
            break;
        }
        k *= 2;
    }
    keyed.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn index(rows: &[Vec<u32>]) -> SpanIndex {
        SpanIndex::build(rows.iter().enumerate().map(|(i, r)| (i as u64, &r[..]))).unwrap()
    }

    /// The longest prefix of `answer[i..]` found in any row, by brute force.
    fn naive_longest(rows: &[Vec<u32>], answer: &[u32], i: usize) -> (usize, usize) {
        let mut best = (0, 0);
        for l in 1..=answer.len() - i {
            let pat = &answer[i..i + l];
            let count: usize = rows.iter().map(|r| r.windows(l).filter(|w| *w == pat).count()).sum();
            if count == 0 {
                break;
            }
            best = (l, count);
        }
        best
    }

    proptest! {
        #[test]
        fn suffixes_come_out_sorted(rows in proptest::collection::vec(proptest::collection::vec(0u32..4, 0..12), 0..6)) {
            let ix = index(&rows);
            prop_assert_eq!(ix.sa.len(), ix.tokens.len());
            for w in ix.sa.windows(2) {
                prop_assert!(ix.tokens[w[0] as usize..] < ix.tokens[w[1] as usize..]);
            }
        }

        /// Every maximal span is the longest match at its start, with the
        /// right occurrence count, and no longer match is missed.
        #[test]
        fn spans_match_brute_force(
            rows in proptest::collection::vec(proptest::collection::vec(0u32..3, 0..15), 1..5),
            answer in proptest::collection::vec(0u32..3, 0..20),
            min_len in 1usize..4,
        ) {
            let ix = index(&rows);
            let spans = ix.find_spans(&answer, min_len);
            let mut reach = 0;
            let mut want = Vec::new();
            for i in 0..answer.len() {
                let (l, count) = naive_longest(&rows, &answer, i);
                if l >= min_len && i + l > reach {
                    want.push(Span { start: i, end: i + l, occurrences: count });
                }
                reach = reach.max(i + l);
            }
            prop_assert_eq!(spans, want);
        }

        #[test]
        fn scores_sum_to_one(
            rows in proptest::collection::vec(proptest::collection::vec(0u32..5, 1..15), 1..6),
            answer in proptest::collection::vec(0u32..5, 0..20),
        ) {
            let ix = index(&rows);
            let a = ix.attribute(&answer, 2);
            if !a.is_empty() {
                let sum: f64 = a.iter().map(|x| x.score).sum();
                prop_assert!((sum - 1.0).abs() < 1e-9, "{}", sum);
                prop_assert!(a.iter().all(|x| x.score > 0.0 && !x.spans.is_empty()));
            }
        }
    }

    /// A row with a distinctive sequence gets the credit for an answer that
    /// repeats it; common text spread over many rows counts for little.
    #[test]
    fn the_source_of_a_distinctive_span_gets_the_credit() {
        let common: Vec<u32> = (1..=8).collect();
        let mut rows: Vec<Vec<u32>> = (0..20).map(|i| [common.clone(), vec![100 + i]].concat()).collect();
        rows.push((500..530).collect());
        let ix =
            SpanIndex::build(rows.iter().enumerate().map(|(i, r)| (if i == 20 { 7 } else { 1000 + i as u64 }, &r[..])))
                .unwrap();
        let answer: Vec<u32> = [common.clone(), (505..525).collect(), vec![9, 9]].concat();
        let a = ix.attribute(&answer, 8);
        assert_eq!(a[0].id, 7);
        assert!(a[0].score > 0.8, "{a:?}");
        assert_eq!(a[0].spans, vec![Span { start: 8, end: 28, occurrences: 1 }]);
        assert!(ix.attribute(&[42, 43, 44], 2).is_empty());
    }

    #[test]
    fn reserved_tokens_and_files_are_checked() {
        assert!(matches!(
            SpanIndex::build([(1, &[1u32, SEP][..])]),
            Err(SpanIndexError::ReservedToken { row: 0, token: SEP })
        ));
        let ix = index(&[vec![3, 1, 4, 1, 5], vec![9, 2, 6]]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spans.idx");
        ix.save(&path).unwrap();
        assert_eq!(SpanIndex::load(&path).unwrap(), ix);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = SpanIndex::load(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(SpanIndex::load(&path).unwrap_err().to_string().contains("not a Merit span index"));
    }
}
