//! Merit's ledger: RFC 9162 (= RFC 6962 §2.1) Merkle tree hashing.
//!
//! * [`leaf_hash`] is SHA-256(0x00 ‖ leaf), [`node_hash`] SHA-256(0x01 ‖ left ‖ right).
//! * [`root`] computes the Merkle Tree Hash of a list of leaf hashes, straight
//!   from the RFC's recursive definition.
//! * [`Frontier`] is the compact range `[0, size)`: the roots of the perfect
//!   subtrees that make up a tree of `size` leaves. Appending is O(log n) and
//!   it yields the same root as [`root`], so an append-only list (the rows of a
//!   datanet) gets a root per version without rehashing what came before.
//!
//! Architecture invariant: no I/O here; storage keeps the frontier.
//!
//! ```
//! use merit_ledger::{leaf_hash, root, Frontier};
//! let leaves: Vec<_> = [b"a", b"b", b"c"].iter().map(|l| leaf_hash(*l)).collect();
//! let mut f = Frontier::default();
//! for h in &leaves { f.push(*h); }
//! assert_eq!(f.root(), root(&leaves));
//! ```

pub mod checkpoint;
pub mod event;
pub mod proof;

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Prefix of a leaf hash's input.
pub const LEAF_PREFIX: u8 = 0x00;
/// Prefix of an interior node hash's input.
pub const NODE_PREFIX: u8 = 0x01;

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// SHA-256(0x00 ‖ leaf).
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(leaf);
    h.finalize().into()
}

/// SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The Merkle Tree Hash of `leaves` (already leaf-hashed), by RFC 9162 §2.1.1.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = largest_power_of_two_below(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The largest power of two strictly less than `n` (n ≥ 2).
fn largest_power_of_two_below(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The compact range `[0, size)` of an append-only Merkle tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of perfect subtrees, left to right, largest first; one per set bit of `size`.
    hashes: Vec<Hash>,
}

/// A frontier read back from storage did not match its size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a frontier of size {size} needs {want} hashes, got {got}")]
pub struct FrontierError {
    pub size: u64,
    pub want: usize,
    pub got: usize,
}

impl Frontier {
    /// Rebuilds a frontier from its parts (as stored by [`Frontier::hashes`]).
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Frontier, FrontierError> {
        let want = size.count_ones() as usize;
        if hashes.len() != want {
            return Err(FrontierError { size, want, got: hashes.len() });
        }
        Ok(Frontier { size, hashes })
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree roots, largest subtree first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        // Merge with equal-sized subtrees: one per trailing set bit of `size`.
        let mut merges = self.size.trailing_ones();
        while merges > 0 {
            let left = self.hashes.pop().expect("a set bit of size has a subtree root");
            h = node_hash(&left, &h);
            merges -= 1;
        }
        self.hashes.push(h);
        self.size += 1;
    }

    /// The root of the tree of `size` leaves.
    pub fn root(&self) -> Hash {
        let mut it = self.hashes.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_digests() {
        // RFC 6962 test vectors used by transparency-dev/merkle rfc6962_test.go.
        assert_eq!(hex(&empty_root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(hex(&leaf_hash(b"")), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
        assert_eq!(hex(&leaf_hash(b"L123456")), "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56");
    }

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    proptest! {
        #[test]
        fn frontier_matches_the_rfc_definition(n in 0usize..300) {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&(i as u64).to_be_bytes())).collect();
            let mut f = Frontier::default();
            for (i, h) in leaves.iter().enumerate() {
                prop_assert_eq!(f.root(), root(&leaves[..i]));
                f.push(*h);
            }
            prop_assert_eq!(f.root(), root(&leaves));
            prop_assert_eq!(Frontier::from_parts(f.size(), f.hashes().to_vec()).unwrap(), f);
        }
    }
}
