//! Small, fast, fixed (unseeded) hashes for the gates, and the exact-duplicate hash.

use sha2::{Digest, Sha256};

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// The MurmurHash3 64-bit finaliser.
#[inline]
pub(crate) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Combines a running hash with one more 64-bit value (order-sensitive).
#[inline]
pub(crate) fn combine(h: u64, v: u64) -> u64 {
    (h.rotate_left(23) ^ v).wrapping_mul(K).wrapping_add(0x632B_E59B_D9B4_E019)
}

/// A fast 64-bit hash of bytes (8 bytes at a time, then finalised).
#[inline]
pub(crate) fn bytes64(b: &[u8]) -> u64 {
    let mut h = (b.len() as u64).wrapping_mul(K) ^ 0x2545_F491_4F6C_DD1D;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = combine(h, u64::from_le_bytes(w));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = combine(h, u64::from_le_bytes(w));
    }
    fmix64(h)
}

/// The normalised text (lowercase, whitespace runs collapsed to one space,
/// trimmed) into `out`.
/// Also pushes the 64-bit hash of each normalised word onto `words`.
pub(crate) fn normalise_into(text: &str, out: &mut String, words: &mut Vec<u64>) {
    out.clear();
    out.reserve(text.len());
    words.clear();
    if text.is_ascii() && !text.as_bytes().contains(&0x0B) {
        // ASCII without vertical tabs: `split_ascii_whitespace` splits exactly where
        // `split_whitespace` does, and lowercasing works on bytes.
        let mut bytes = std::mem::take(out).into_bytes();
        for word in text.split_ascii_whitespace() {
            if !bytes.is_empty() {
                bytes.push(b' ');
            }
            let at = bytes.len();
            bytes.extend_from_slice(word.as_bytes());
            bytes[at..].make_ascii_lowercase();
            words.push(bytes64(&bytes[at..]));
        }
        *out = String::from_utf8(bytes).unwrap_or_default();
        return;
    }
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        let at = out.len();
        if word.is_ascii() {
            out.extend(word.bytes().map(|b| b.to_ascii_lowercase() as char));
        } else {
            for c in word.chars() {
                out.extend(c.to_lowercase());
            }
        }
        words.push(bytes64(&out.as_bytes()[at..]));
    }
}

/// SHA-256 of raw bytes.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// An open-addressing table from 64-bit keys to a count and the first position,
/// cleared cheaply between uses. Keys are hashes already, so the low bits index.
pub(crate) struct CountTable {
    slots: Vec<Slot>,
    used: Vec<u32>,
    mask: usize,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    key: u64,
    count: u32,
    first: u32,
}

impl CountTable {
    pub(crate) fn new() -> Self {
        CountTable { slots: Vec::new(), used: Vec::new(), mask: 0 }
    }

    /// Empties the table and makes room for `n` keys.
    pub(crate) fn reset(&mut self, n: usize) {
        let want = (n.max(8) * 2).next_power_of_two();
        if self.slots.len() < want || self.slots.len() > want * 64 {
            self.slots = vec![Slot::default(); want];
            self.used.clear();
        } else {
            for &i in &self.used {
                self.slots[i as usize].count = 0;
            }
            self.used.clear();
        }
        self.mask = self.slots.len() - 1;
    }

    /// Adds one occurrence of `key` seen at `pos`; returns the new count and
    /// the position of its first occurrence.
    #[inline]
    pub(crate) fn add(&mut self, key: u64, pos: u32) -> (u32, u32) {
        if (self.used.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mut i = (key as usize) & self.mask;
        loop {
            let slot = &mut self.slots[i];
            if slot.count == 0 {
                *slot = Slot { key, count: 1, first: pos };
                self.used.push(i as u32);
                return (1, pos);
            }
            if slot.key == key {
                slot.count += 1;
                return (slot.count, slot.first);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Doubles the table (keeps the load under one half).
    #[cold]
    fn grow(&mut self) {
        let want = (self.slots.len() * 2).max(16);
        let old: Vec<Slot> = self.used.iter().map(|&i| self.slots[i as usize]).collect();
        self.slots = vec![Slot::default(); want];
        self.mask = want - 1;
        self.used.clear();
        for slot in old {
            let mut i = (slot.key as usize) & self.mask;
            while self.slots[i].count != 0 {
                i = (i + 1) & self.mask;
            }
            self.slots[i] = slot;
            self.used.push(i as u32);
        }
    }

    /// Inserts `key`; returns whether it was already there.
    #[inline]
    pub(crate) fn contains_or_insert(&mut self, key: u64) -> bool {
        self.add(key, 0).0 > 1
    }
}
