//! MinHash signatures and LSH band keys for near-duplicate detection.
//!
//! A text's shingles are its overlapping runs of 5 normalised words (words are
//! split on whitespace and lowercased; a text of fewer than 5 words is one
//! shingle). Each shingle is hashed once (64 bits, folded to 32); the
//! `BANDS × ROWS` = 112 signature values are the minima, over the shingles, of
//! 112 fixed pseudo-random permutations of that hash (a xor, a 32-bit multiply
//! by an odd constant and a xor-shift each, so the inner loop vectorises). The constants are generated
//! from a fixed seed: signatures are stable across runs and versions, since the
//! store keeps them.
//!
//! With 14 bands of 8 rows, two texts of Jaccard similarity `s` share at least
//! one band key with probability `1 - (1 - s^8)^14`: about 0.96 at `s = 0.8`,
//! 0.40 at `s = 0.6`. Candidates found through band keys are then confirmed
//! with [`similarity`].

use crate::hash::{bytes64, combine, fmix64, normalise_into};

/// Number of LSH bands.
pub const BANDS: usize = 14;
/// Signature values per band.
pub const ROWS: usize = 8;
/// Words per shingle.
pub const SHINGLE: usize = 5;

const N: usize = BANDS * ROWS;

const fn splitmix(state: u64) -> (u64, u64) {
    let s = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (s, z ^ (z >> 31))
}

const fn constants(seed: u64) -> [u32; N] {
    let mut out = [0u32; N];
    let mut state = seed;
    let mut i = 0;
    while i < N {
        let (s, z) = splitmix(state);
        state = s;
        out[i] = (z as u32) | 1;
        i += 1;
    }
    out
}

static A: [u32; N] = constants(0x4D45_5249_545F_4131); // "MERIT_A1"
static B: [u32; N] = constants(0x4D45_5249_545F_4232);

/// The MinHash signature of `text`: `BANDS * ROWS` values. A text without words
/// gets a signature of `u32::MAX` everywhere.
pub fn signature(text: &str) -> Vec<u32> {
    let mut normalised = String::new();
    let mut words = Vec::new();
    normalise_into(text, &mut normalised, &mut words);
    signature_of_words(&words)
}

pub(crate) fn signature_of_words(words: &[u64]) -> Vec<u32> {
    let mut sig = [u32::MAX; N];
    if words.is_empty() {
        return sig.to_vec();
    }
    let hashes: Vec<u32> = if words.len() < SHINGLE {
        vec![shingle_hash(words)]
    } else {
        words.windows(SHINGLE).map(shingle_hash).collect()
    };
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { mins_avx2(&hashes, &mut sig) };
            return sig.to_vec();
        }
    }
    mins(&hashes, &mut sig);
    sig.to_vec()
}

/// The same integer arithmetic compiled for AVX2, so the 112 lanes run 8 at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mins_avx2(hashes: &[u32], sig: &mut [u32; N]) {
    mins(hashes, sig)
}

/// Value `i` of a shingle hashed to `x`: `((x ^ B[i]) * A[i]) ^ (· >> 16)` on
/// 32 bits, `A[i]` odd (a bijection of `x`, then a xor-shift so that the low bits
/// depend on the high ones).
#[inline(always)]
fn mins(hashes: &[u32], sig: &mut [u32; N]) {
    for &x in hashes {
        for i in 0..N {
            let mut v = (x ^ B[i]).wrapping_mul(A[i]);
            v ^= v >> 16;
            sig[i] = sig[i].min(v);
        }
    }
}

/// One hash per shingle, folded to 32 bits.
#[inline]
fn shingle_hash(words: &[u64]) -> u32 {
    let mut h = 0x5348_494E_474C_4535; // "SHINGLE5"
    for &w in words {
        h = combine(h, w);
    }
    let h = fmix64(h);
    (h ^ (h >> 32)) as u32
}

/// The `BANDS` LSH keys of a signature: key `i` hashes `i` and the `ROWS`
/// values of band `i`. A signature of the wrong length gives no keys.
pub fn band_keys(signature: &[u32]) -> Vec<u64> {
    if signature.len() != N {
        return Vec::new();
    }
    signature
        .chunks_exact(ROWS)
        .enumerate()
        .map(|(i, band)| {
            let mut bytes = [0u8; 4 + 4 * ROWS];
            bytes[..4].copy_from_slice(&(i as u32).to_le_bytes());
            for (j, v) in band.iter().enumerate() {
                bytes[4 + 4 * j..8 + 4 * j].copy_from_slice(&v.to_le_bytes());
            }
            bytes64(&bytes)
        })
        .collect()
}

/// The fraction of positions where two signatures agree: an estimate of the
/// Jaccard similarity of the two texts' shingle sets. 0 when the lengths differ
/// or the signatures are empty.
pub fn similarity(a: &[u32], b: &[u32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_texts_match_and_different_texts_do_not() {
        let a = "the quick brown fox jumps over the lazy dog near the river bank today";
        assert_eq!(signature(a), signature(&a.to_uppercase()));
        assert_eq!(similarity(&signature(a), &signature(a)), 1.0);
        let b = "completely different words make up this sentence about mountains and snow";
        assert!(similarity(&signature(a), &signature(b)) < 0.1);
        assert_eq!(band_keys(&signature(a)).len(), BANDS);
        assert!(band_keys(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn similarity_tracks_jaccard() {
        // 200 words; change 10 of them: about 45 of 196 shingles change.
        let words: Vec<String> = (0..200).map(|i| format!("w{}", i * 7919 % 1000)).collect();
        let mut changed = words.clone();
        for i in (0..200).step_by(20) {
            changed[i] = format!("x{i}");
        }
        let s = similarity(&signature(&words.join(" ")), &signature(&changed.join(" ")));
        assert!((0.45..0.95).contains(&s), "similarity {s}");
    }

    #[test]
    fn the_vector_path_matches_the_plain_one() {
        let hashes: Vec<u32> = (0..500u32).map(|i| i.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995).collect();
        let mut plain = [u32::MAX; N];
        mins(&hashes, &mut plain);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            let mut vector = [u32::MAX; N];
            // SAFETY: AVX2 is available, checked just above.
            unsafe { mins_avx2(&hashes, &mut vector) };
            assert_eq!(plain, vector);
        }
    }

    #[test]
    fn signatures_are_stable() {
        // Stored signatures must not change between versions.
        let sig = signature("one two three four five six");
        assert_eq!(sig.len(), 112);
        let again = signature("  ONE two   three four five six ");
        assert_eq!(sig, again);
        // Pinned: changing the hashing invalidates every stored signature.
        assert_eq!(&sig[..4], &[613_813_712, 3_124_946_194, 2_894_831_325, 1_311_789_036]);
        assert_eq!(&band_keys(&sig)[..2], &[5_325_147_579_048_941_052, 4_096_034_041_494_024_379]);
    }
}
