//! Personal data in text: e-mail addresses, phone numbers, IP addresses and
//! payment card numbers, found by one linear scan (no backtracking).
//!
//! Phone numbers are matched only in layouts people write them in, so that
//! years, prices and plain numbers are left alone:
//! * international: `+` and 8 to 15 digits, in groups or not (`+44 20 7946 0958`,
//!   `+14155552671`);
//! * national: 10 or 11 digits in at least three groups of two or more digits
//!   (the first may be a single `0` or `1` trunk digit), separated by one space,
//!   `-`, `.` or `/`, the area code optionally in brackets (`(555) 123-4567`,
//!   `555-123-4567`, `020 7946 0958`, `01 23 45 67 89`), never a number written
//!   with thousands separators (`1 234 567 890`).
//!
//! Card numbers are 13 to 19 digits, grouped by spaces or dashes or not, that
//! pass the Luhn check. IPv4 addresses are four dot-separated numbers up to 255;
//! IPv6 addresses are whatever `std::net::Ipv6Addr` parses, with at least three
//! groups.

use std::net::Ipv6Addr;

/// A kind of personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Email,
    Phone,
    Ip,
    Card,
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [Kind::Email, Kind::Phone, Kind::Ip, Kind::Card];

    /// The metric name used in reasons.
    pub(crate) fn metric(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Ip => "ip",
            Kind::Card => "card",
        }
    }

    /// What replaces it when redacting.
    pub(crate) fn placeholder(self) -> &'static str {
        match self {
            Kind::Email => "<EMAIL>",
            Kind::Phone => "<PHONE>",
            Kind::Ip => "<IP>",
            Kind::Card => "<CARD>",
        }
    }

    /// Words for people.
    pub(crate) fn noun(self, n: usize) -> &'static str {
        match (self, n == 1) {
            (Kind::Email, true) => "e-mail address",
            (Kind::Email, false) => "e-mail addresses",
            (Kind::Phone, true) => "phone number",
            (Kind::Phone, false) => "phone numbers",
            (Kind::Ip, true) => "IP address",
            (Kind::Ip, false) => "IP addresses",
            (Kind::Card, true) => "payment card number",
            (Kind::Card, false) => "payment card numbers",
        }
    }
}

/// One piece of personal data: a byte range of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub start: usize,
    pub end: usize,
    pub kind: Kind,
}

/// Finds personal data in `text`: sorted, not overlapping.
pub(crate) fn find(text: &str) -> Vec<Found> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    if b.contains(&b'@') {
        emails(b, &mut found);
    }
    numbers(b, &mut found);
    if b.contains(&b':') {
        ipv6(text, &mut found);
    }
    found.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut out: Vec<Found> = Vec::with_capacity(found.len());
    for f in found {
        if out.last().is_none_or(|last| f.start >= last.end) {
            out.push(f);
        }
    }
    out
}

/// Replaces each found range with its placeholder.
pub(crate) fn redact(text: &str, found: &[Found]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for f in found {
        if f.start < pos || f.end > text.len() || !text.is_char_boundary(f.start) || !text.is_char_boundary(f.end) {
            continue;
        }
        out.push_str(&text[pos..f.start]);
        out.push_str(f.kind.placeholder());
        pos = f.end;
    }
    out.push_str(&text[pos..]);
    out
}

#[inline]
fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

fn emails(b: &[u8], out: &mut Vec<Found>) {
    let local_ok = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-');
    let domain_ok = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-');
    let mut skip_to = 0;
    for at in 0..b.len() {
        if b[at] != b'@' || at < skip_to {
            continue;
        }
        let mut l = at;
        while l > 0 && local_ok(b[l - 1]) {
            l -= 1;
        }
        while l < at && b[l] == b'.' {
            l += 1;
        }
        let mut r = at + 1;
        while r < b.len() && domain_ok(b[r]) {
            r += 1;
        }
        while r > at + 1 && matches!(b[r - 1], b'.' | b'-') {
            r -= 1;
        }
        if l == at || r <= at + 1 {
            continue;
        }
        let domain = &b[at + 1..r];
        let labels: Vec<&[u8]> = domain.split(|&c| c == b'.').collect();
        let valid = labels.len() >= 2
            && labels.iter().all(|lab| !lab.is_empty() && lab[0] != b'-' && lab[lab.len() - 1] != b'-')
            && labels.last().is_some_and(|tld| tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic));
        if valid {
            out.push(Found { start: l, end: r, kind: Kind::Email });
            skip_to = r;
        }
    }
}

/// Digit groups of a number-like span and what separated them.
struct Span {
    start: usize,
    end: usize,
    plus: bool,
    groups: Vec<(usize, usize)>,
    seps: Vec<u8>,
    parens: bool,
}

fn numbers(b: &[u8], out: &mut Vec<Found>) {
    let mut i = 0;
    while i < b.len() {
        // Jump to the next digit; a span may start one byte earlier, at `+` or `(`.
        match b[i..].iter().position(u8::is_ascii_digit) {
            None => break,
            Some(p) => i += p,
        }
        if i > 0 && matches!(b[i - 1], b'+' | b'(') && (i < 2 || !b[i - 2].is_ascii_digit()) {
            i -= 1;
        }
        let boundary =
            i == 0 || !(is_alnum(b[i - 1]) || matches!(b[i - 1], b'.' | b',' | b'-' | b'_' | b'/' | b'@' | b'+'));
        if !boundary {
            // Skip the rest of this run of digits.
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            continue;
        }
        let span = scan_span(b, i);
        let next = span.end.max(i + 1);
        // The span must end at a word boundary too.
        let ends_clean = span.end >= b.len() || !is_alnum(b[span.end]);
        if ends_clean {
            if let Some(kind) = classify(b, &span) {
                out.push(Found { start: span.start, end: span.end, kind });
            }
        }
        // Skip the rest of this run of digits and separators.
        i = next;
        while i < b.len() && (b[i].is_ascii_digit()) {
            i += 1;
        }
    }
}

fn scan_span(b: &[u8], start: usize) -> Span {
    let mut pos = start;
    let mut plus = false;
    if b[pos] == b'+' {
        plus = true;
        pos += 1;
    }
    let mut groups = Vec::new();
    let mut seps = Vec::new();
    let mut parens = false;
    let mut end = start;
    // At most 24 groups: enough for any real number, and it bounds the work.
    while groups.len() < 24 {
        let mut p = pos;
        let open = p < b.len() && b[p] == b'(';
        if open {
            p += 1;
        }
        let g0 = p;
        while p < b.len() && b[p].is_ascii_digit() && p - g0 < 20 {
            p += 1;
        }
        if p == g0 {
            break;
        }
        let g1 = p;
        if open {
            if p < b.len() && b[p] == b')' {
                p += 1;
                parens = true;
            } else {
                break;
            }
        }
        groups.push((g0, g1));
        end = p;
        // One separator, then another group must follow.
        if p < b.len() && matches!(b[p], b' ' | b'-' | b'.' | b'/') {
            let next = p + 1;
            if next < b.len() && (b[next].is_ascii_digit() || b[next] == b'(') {
                seps.push(b[p]);
                pos = next;
                continue;
            }
        } else if open && p < b.len() && (b[p].is_ascii_digit()) {
            // "(555)1234567"
            seps.push(b')');
            pos = p;
            continue;
        }
        break;
    }
    if groups.is_empty() {
        end = start + 1;
    }
    Span { start, end, plus, groups, seps, parens }
}

fn classify(b: &[u8], s: &Span) -> Option<Kind> {
    let lens: Vec<usize> = s.groups.iter().map(|(a, z)| z - a).collect();
    let ndigits: usize = lens.iter().sum();
    let digits = || s.groups.iter().flat_map(|&(a, z)| b[a..z].iter().map(|d| d - b'0'));
    let n = lens.len();
    if n == 0 {
        return None;
    }
    // IPv4: d.d.d.d, each at most 255.
    if !s.plus && !s.parens && n == 4 && s.seps.iter().all(|&c| c == b'.') && lens.iter().all(|&l| l <= 3) {
        let ok = s.groups.iter().all(|&(a, z)| b[a..z].iter().fold(0u32, |v, d| v * 10 + u32::from(d - b'0')) <= 255);
        return ok.then_some(Kind::Ip);
    }
    // Payment cards: 13-19 digits, grouped by spaces or dashes, Luhn-valid.
    if !s.plus
        && !s.parens
        && (13..=19).contains(&ndigits)
        && s.seps.iter().all(|&c| c == b' ' || c == b'-')
        && (n == 1 || lens.iter().all(|&l| l >= 3))
        && luhn(digits())
    {
        return Some(Kind::Card);
    }
    if s.plus {
        return (8..=15).contains(&ndigits).then_some(Kind::Phone);
    }
    if !(10..=11).contains(&ndigits) || n < 3 && !(s.parens && n >= 2) {
        return None;
    }
    let first_ok = lens[0] >= 2 || (n >= 4 && matches!(b[s.groups[0].0], b'0' | b'1'));
    let rest_ok = lens[1..].iter().all(|&l| l >= 2);
    let thousands = lens[0] <= 3 && lens[1..].iter().all(|&l| l == 3);
    let mixed = s.seps.windows(2).any(|w| w[0] != w[1] && w[0] != b')' && w[1] != b')' && w[0] != b' ' && w[1] != b' ');
    (first_ok && rest_ok && !thousands && !mixed).then_some(Kind::Phone)
}

fn luhn(digits: impl Iterator<Item = u8>) -> bool {
    let ds: Vec<u8> = digits.collect();
    let mut sum = 0u32;
    for (i, &d) in ds.iter().rev().enumerate() {
        let mut v = u32::from(d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !ds.is_empty() && sum.is_multiple_of(10) && ds.iter().any(|&d| d != 0)
}

fn ipv6(text: &str, out: &mut Vec<Found>) {
    let b = text.as_bytes();
    let ok = |c: u8| c.is_ascii_hexdigit() || c == b':' || c == b'.';
    let mut i = 0;
    // Where the last candidate ended: the next one looks no further back, and
    // no more than 64 bytes back (an address is at most 45), so the scan is linear.
    let mut floor = 0;
    while i < b.len() {
        if b[i] != b':' {
            i += 1;
            continue;
        }
        let mut l = i;
        while l > floor && l + 64 > i && ok(b[l - 1]) {
            l -= 1;
        }
        let mut r = i;
        while r < b.len() && ok(b[r]) && r - l < 64 {
            r += 1;
        }
        while r > l && b[r - 1] == b'.' {
            r -= 1;
        }
        let clean_left = l == 0 || !is_alnum(b[l - 1]);
        let clean_right = r >= b.len() || !is_alnum(b[r]);
        let cand = &text[l..r];
        let groups = cand.split(':').filter(|g| !g.is_empty()).count();
        if clean_left && clean_right && groups >= 3 && cand.parse::<Ipv6Addr>().is_ok() {
            out.push(Found { start: l, end: r, kind: Kind::Ip });
        }
        i = r.max(i + 1);
        floor = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(String, Kind)> {
        find(text).into_iter().map(|f| (text[f.start..f.end].to_string(), f.kind)).collect()
    }

    #[test]
    fn finds_each_kind() {
        assert_eq!(kinds("mail jane.doe+x@example.co.uk."), [("jane.doe+x@example.co.uk".into(), Kind::Email)]);
        assert_eq!(kinds("call (555) 123-4567 now"), [("(555) 123-4567".into(), Kind::Phone)]);
        assert_eq!(kinds("call 555-123-4567"), [("555-123-4567".into(), Kind::Phone)]);
        assert_eq!(kinds("ring +44 20 7946 0958."), [("+44 20 7946 0958".into(), Kind::Phone)]);
        assert_eq!(kinds("ring +14155552671"), [("+14155552671".into(), Kind::Phone)]);
        assert_eq!(kinds("tel 020 7946 0958"), [("020 7946 0958".into(), Kind::Phone)]);
        assert_eq!(kinds("tel 01 23 45 67 89"), [("01 23 45 67 89".into(), Kind::Phone)]);
        assert_eq!(kinds("tel 1-800-555-1234"), [("1-800-555-1234".into(), Kind::Phone)]);
        assert_eq!(kinds("host 192.168.1.20 up"), [("192.168.1.20".into(), Kind::Ip)]);
        assert_eq!(kinds("v6 2001:db8::8a2e:370:7334 ok"), [("2001:db8::8a2e:370:7334".into(), Kind::Ip)]);
        assert_eq!(kinds("card 4111 1111 1111 1111"), [("4111 1111 1111 1111".into(), Kind::Card)]);
        assert_eq!(kinds("card 4111-1111-1111-1111"), [("4111-1111-1111-1111".into(), Kind::Card)]);
        assert_eq!(kinds("card 4111111111111111"), [("4111111111111111".into(), Kind::Card)]);
    }

    #[test]
    fn leaves_ordinary_numbers_alone() {
        for text in [
            "In 1999 and 2001 the price was 1,234,567 dollars.",
            "The years 1990 2000 2010 were good.",
            "Version 1.2.3 and 3.14159 and 12:30:45.",
            "Count 1 2 3 4 5 6 7 8 9 10 11 12.",
            "Population 1 234 567 890 people.",
            "Dated 2021-05-12 and 12/05/2021.",
            "Card-like 4111 1111 1111 1112 fails Luhn.",
            "Invalid 999.1.1.1 address and std::vector<int> code.",
            "ISBN 978-3-16-148410-0 and order 5551234567.",
            "user@localhost and @handle and a@b.",
        ] {
            assert!(kinds(text).is_empty(), "{text}: {:?}", kinds(text));
        }
    }

    #[test]
    fn redacts_in_place() {
        let text = "Write to a@b.io or call 555-123-4567.";
        assert_eq!(redact(text, &find(text)), "Write to <EMAIL> or call <PHONE>.");
    }
}
