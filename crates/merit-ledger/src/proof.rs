//! Inclusion and consistency proofs, generated and verified per RFC 9162
//! §2.1.3 and §2.1.4.
//!
//! Generation needs the roots of perfect subtrees, which a [`NodeSource`]
//! provides (level `l`, index `i` covers leaves `[i·2^l, (i+1)·2^l)`), so
//! storage stays pluggable: [`MemoryTree`] keeps every level in memory; a
//! store can serve them from tiles. Verification needs nothing but hashes.

use crate::{node_hash, Hash};

/// Roots of perfect subtrees of a tree.
pub trait NodeSource {
    /// The root of the perfect subtree at `level` with index `index`.
    fn node(&self, level: u32, index: u64) -> Hash;
}

/// Every level of a tree, in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    /// `levels[0]` are leaf hashes; `levels[l][i]` is the root of perfect subtree (l, i).
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// Builds a tree over leaf hashes.
    pub fn new(leaves: &[Hash]) -> MemoryTree {
        let mut t = MemoryTree::default();
        for h in leaves {
            t.push(*h);
        }
        t
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(h);
            let n = self.levels[level].len();
            if n % 2 == 1 {
                break;
            }
            h = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            level += 1;
        }
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Hash {
        if size == 0 {
            return crate::empty_root();
        }
        range_root(self, 0, size)
    }
}

impl NodeSource for MemoryTree {
    fn node(&self, level: u32, index: u64) -> Hash {
        self.levels[level as usize][index as usize]
    }
}

/// The Merkle Tree Hash of leaves `[start, end)`, where `start` is a multiple
/// of the largest power of two ≤ `end - start` (true of every subtree the RFC's
/// recursion visits). O(log n) node reads.
pub fn range_root(src: &dyn NodeSource, start: u64, end: u64) -> Hash {
    let n = end - start;
    debug_assert!(n > 0);
    if n.is_power_of_two() {
        let level = n.trailing_zeros();
        return src.node(level, start >> level);
    }
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    node_hash(&range_root(src, start, start + k), &range_root(src, start + k, end))
}

/// The audit path of leaf `index` in the tree of `size` leaves (RFC 9162 §2.1.3.1).
/// Requires `index < size`.
pub fn inclusion_proof(src: &dyn NodeSource, index: u64, size: u64) -> Vec<Hash> {
    let mut proof = Vec::new();
    path(src, index, 0, size, &mut proof);
    proof
}

fn path(src: &dyn NodeSource, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    if m < k {
        path(src, m, start, start + k, out);
        out.push(range_root(src, start + k, end));
    } else {
        path(src, m - k, start + k, end, out);
        out.push(range_root(src, start, start + k));
    }
}

/// The consistency proof between the trees of `old` and `new` leaves
/// (RFC 9162 §2.1.4.1). Requires `old <= new`; empty when `old` is 0 or equal to `new`.
pub fn consistency_proof(src: &dyn NodeSource, old: u64, new: u64) -> Vec<Hash> {
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(src, old, 0, new, true, &mut proof);
    }
    proof
}

fn subproof(src: &dyn NodeSource, m: u64, start: u64, end: u64, complete: bool, out: &mut Vec<Hash>) {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(range_root(src, start, end));
        }
        return;
    }
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    if m <= k {
        subproof(src, m, start, start + k, complete, out);
        out.push(range_root(src, start + k, end));
    } else {
        subproof(src, m - k, start + k, end, false, out);
        out.push(range_root(src, start, start + k));
    }
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The index is not below the tree size, or the sizes are out of order.
    #[error("{0}")]
    Bounds(String),
    /// The proof has the wrong number of hashes for these sizes.
    #[error("proof has {got} hashes, expected {want}")]
    Length { got: usize, want: usize },
    /// The recomputed root differs from the expected one.
    #[error("root mismatch: computed {computed}, expected {expected}")]
    RootMismatch { computed: String, expected: String },
}

fn mismatch(computed: &Hash, expected: &Hash) -> VerifyError {
    VerifyError::RootMismatch { computed: hex(computed), expected: hex(expected) }
}

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of `size` leaves with
/// root `root` (RFC 9162 §2.1.3.2). Requires `index < size`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    let computed = root_from_inclusion(index, size, leaf_hash, proof)?;
    if &computed != root {
        return Err(mismatch(&computed, root));
    }
    Ok(())
}

/// The root implied by an inclusion proof.
pub fn root_from_inclusion(index: u64, size: u64, leaf_hash: &Hash, proof: &[Hash]) -> Result<Hash, VerifyError> {
    if index >= size {
        return Err(VerifyError::Bounds(format!("index {index} is not below tree size {size}")));
    }
    let want = inclusion_len(index, size);
    if proof.len() != want {
        return Err(VerifyError::Length { got: proof.len(), want });
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if s_n == 0 {
            return Err(VerifyError::Length { got: proof.len(), want });
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(VerifyError::Length { got: proof.len(), want });
    }
    Ok(r)
}

/// The number of hashes in an inclusion proof for `index` in a tree of `size`.
fn inclusion_len(index: u64, size: u64) -> usize {
    // Inner part: levels where index and size-1 share no common ancestor yet;
    // border part: the right border of the tree above that.
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = (index >> inner).count_ones();
    (inner + border) as usize
}

/// Verifies that the tree of `new` leaves with root `new_root` extends the
/// tree of `old` leaves with root `old_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    if old > new {
        return Err(VerifyError::Bounds(format!("old size {old} is above new size {new}")));
    }
    if old == new {
        if !proof.is_empty() {
            return Err(VerifyError::Length { got: proof.len(), want: 0 });
        }
        if old_root != new_root {
            return Err(mismatch(new_root, old_root));
        }
        return Ok(());
    }
    if old == 0 {
        // Every tree extends the empty tree; the proof is empty.
        if !proof.is_empty() {
            return Err(VerifyError::Length { got: proof.len(), want: 0 });
        }
        return Ok(());
    }
    // RFC 9162 §2.1.4.2, step by step.
    let mut path: Vec<Hash> = proof.to_vec();
    if old.is_power_of_two() {
        path.insert(0, *old_root);
    }
    if path.is_empty() {
        return Err(VerifyError::Length { got: 0, want: 1 });
    }
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut f_r, mut s_r) = (path[0], path[0]);
    for c in &path[1..] {
        if s_n == 0 {
            return Err(VerifyError::Length { got: proof.len(), want: proof.len() - 1 });
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(VerifyError::Length { got: proof.len(), want: proof.len() + 1 });
    }
    if &f_r != old_root {
        return Err(mismatch(&f_r, old_root));
    }
    if &s_r != new_root {
        return Err(mismatch(&s_r, new_root));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{leaf_hash, root};
    use proptest::prelude::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn small_trees() {
        // Sizes 1 and 2 by hand.
        let l = leaves(2);
        let t = MemoryTree::new(&l);
        assert_eq!(t.root(1), l[0]);
        assert!(inclusion_proof(&t, 0, 1).is_empty());
        verify_inclusion(0, 1, &l[0], &[], &l[0]).unwrap();
        assert_eq!(inclusion_proof(&t, 0, 2), vec![l[1]]);
        assert_eq!(inclusion_proof(&t, 1, 2), vec![l[0]]);
        verify_inclusion(1, 2, &l[1], &[l[0]], &node_hash(&l[0], &l[1])).unwrap();
        assert!(verify_inclusion(0, 0, &l[0], &[], &l[0]).is_err());
        assert_eq!(consistency_proof(&t, 1, 2), vec![l[1]]);
        verify_consistency(1, 2, &l[0], &t.root(2), &[l[1]]).unwrap();
        verify_consistency(0, 2, &crate::empty_root(), &t.root(2), &[]).unwrap();
    }

    proptest! {
        #[test]
        fn every_proof_verifies_and_any_bit_flip_fails(n in 1u64..200, i_seed in any::<u64>(), m_seed in any::<u64>(), bit in 0usize..256) {
            let l = leaves(n);
            let t = MemoryTree::new(&l);
            prop_assert_eq!(t.root(n), root(&l));
            let i = i_seed % n;
            let r = t.root(n);
            let p = inclusion_proof(&t, i, n);
            prop_assert!(verify_inclusion(i, n, &l[i as usize], &p, &r).is_ok());
            if !p.is_empty() {
                let mut bad = p.clone();
                let k = (bit / 8) % 32;
                let which = bit % bad.len();
                bad[which][k] ^= 1 << (bit % 8);
                prop_assert!(verify_inclusion(i, n, &l[i as usize], &bad, &r).is_err());
                let mut short = p.clone();
                short.pop();
                prop_assert!(verify_inclusion(i, n, &l[i as usize], &short, &r).is_err());
            }
            let mut longer = p.clone();
            longer.push([0; 32]);
            prop_assert!(verify_inclusion(i, n, &l[i as usize], &longer, &r).is_err());
            let mut wrong_leaf = l[i as usize];
            wrong_leaf[bit / 8 % 32] ^= 1;
            prop_assert!(verify_inclusion(i, n, &wrong_leaf, &p, &r).is_err());

            let m = m_seed % (n + 1);
            let c = consistency_proof(&t, m, n);
            let old = t.root(m);
            prop_assert!(verify_consistency(m, n, &old, &r, &c).is_ok());
            if !c.is_empty() {
                let mut bad = c.clone();
                let which = bit % bad.len();
                bad[which][bit / 8 % 32] ^= 1 << (bit % 8);
                prop_assert!(verify_consistency(m, n, &old, &r, &bad).is_err());
                let mut short = c.clone();
                short.pop();
                prop_assert!(verify_consistency(m, n, &old, &r, &short).is_err());
            }
            if m > 0 && m < n {
                let mut extra = c.clone();
                extra.push([7; 32]);
                prop_assert!(verify_consistency(m, n, &old, &r, &extra).is_err());
                let mut bad_old = old;
                bad_old[0] ^= 1;
                prop_assert!(verify_consistency(m, n, &bad_old, &r, &c).is_err());
            }
        }
    }
}
