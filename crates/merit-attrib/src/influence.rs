//! Gradient influence (TracIn over saved checkpoints, with TRAK-style random
//! projections): each training example's LoRA gradient at a checkpoint is
//! projected to a few thousand dimensions and kept with the checkpoint; an
//! answer's gradient, projected the same way, scores every example by
//! `Σ_checkpoints lr · ⟨g(answer), g(example)⟩`.
//!
//! The projection is a sparse Johnson–Lindenstrauss transform: every
//! gradient coordinate goes to [`NONZEROS`] output dimensions with random
//! signs, chosen by hashing (seed, tensor name, index). It needs no stored
//! matrix, costs a few operations per coordinate on a CPU, and does not
//! depend on the order in which tensors are visited.

use std::io::Write;
use std::path::Path;

/// Output dimensions each gradient coordinate is spread over.
pub const NONZEROS: usize = 4;
const MAGIC: &[u8; 8] = b"MRTINFL1";

#[derive(Debug, thiserror::Error)]
pub enum InfluenceError {
    #[error("influence table {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("influence table {path}: {reason}")]
    Format { path: String, reason: String },
}

/// The random projection: `dims` outputs, fixed by `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projector {
    pub dims: usize,
    pub seed: u64,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01B3))
}

impl Projector {
    /// Adds the projection of tensor `name`'s values into `out` (`dims` long).
    pub fn add(&self, name: &str, values: &[f32], out: &mut [f32]) {
        let dims = self.dims.min(out.len()).max(1) as u64;
        let base = mix(self.seed ^ name_hash(name));
        let scale = 1.0 / (NONZEROS as f32).sqrt();
        for (j, &v) in values.iter().enumerate() {
            if v == 0.0 {
                continue;
            }
            let mut h = mix(base.wrapping_add((j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            for _ in 0..NONZEROS {
                let bucket = (h % dims) as usize;
                let sign = if h >> 63 == 1 { -scale } else { scale };
                out[bucket] += sign * v;
                h = mix(h);
            }
        }
    }
}

/// The projected gradients of training examples at one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct InfluenceTable {
    pub projector: Projector,
    /// The learning rate at the checkpoint (TracIn's weight).
    pub lr: f32,
    /// The source row of each example.
    pub rows: Vec<u64>,
    /// `rows.len() × dims`, row-major.
    pub vectors: Vec<f32>,
}

/// One training example's influence on a query ([`InfluenceTable::scores`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Influence {
    /// TracIn's score (summed over checkpoints by the caller).
    pub score: f64,
    /// Cosine of the query's gradient and the example's centred one, in [-1, 1].
    pub similarity: f64,
}

impl InfluenceTable {
    /// Every example's influence on `query`: `score = lr · ⟨query, u − ū⟩`,
    /// where `u` is the example's gradient scaled to unit length and `ū` the
    /// mean of them all — TracIn with each example's gradient normalised, so
    /// examples the model fits badly (large gradients) do not outweigh the
    /// relevant ones, and centred, so what every example shares (the answer
    /// format, the end of turn) credits no one: an example counts by how much
    /// more it points the query's way than the average example does. And
    /// `similarity`, the cosine of `query` and `u − ū`, which tells a real
    /// resemblance from the noise of unrelated gradients.
    pub fn scores(&self, query: &[f32]) -> Vec<Influence> {
        let d = self.projector.dims.max(1);
        let units: Vec<Vec<f64>> = self
            .vectors
            .chunks(d)
            .map(|g| {
                let norm = g.iter().map(|a| *a as f64 * *a as f64).sum::<f64>().sqrt();
                let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                g.iter().map(|a| *a as f64 * scale).collect()
            })
            .collect();
        // The mean of the others' (one example alone has none to compare with).
        let mut mean = vec![0f64; d];
        if units.len() > 1 {
            for u in &units {
                for (m, x) in mean.iter_mut().zip(u) {
                    *m += x / units.len() as f64;
                }
            }
        }
        let qn = query.iter().map(|a| *a as f64 * *a as f64).sum::<f64>().sqrt();
        units
            .iter()
            .map(|u| {
                let (mut dot, mut norm) = (0f64, 0f64);
                for ((x, m), q) in u.iter().zip(&mean).zip(query) {
                    dot += (x - m) * *q as f64;
                    norm += (x - m) * (x - m);
                }
                let norm = norm.sqrt();
                let similarity = if norm > 0.0 && qn > 0.0 { dot / (norm * qn) } else { 0.0 };
                Influence { score: self.lr as f64 * dot, similarity }
            })
            .collect()
    }

    /// Writes the table to `path` atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), InfluenceError> {
        let io = |source| InfluenceError::Io { path: path.display().to_string(), source };
        let tmp = path.with_extension("tmp");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        f.write_all(MAGIC).map_err(io)?;
        for n in [self.projector.dims as u64, self.projector.seed, self.rows.len() as u64] {
            f.write_all(&n.to_le_bytes()).map_err(io)?;
        }
        f.write_all(&self.lr.to_le_bytes()).map_err(io)?;
        for r in &self.rows {
            f.write_all(&r.to_le_bytes()).map_err(io)?;
        }
        for v in &self.vectors {
            f.write_all(&v.to_le_bytes()).map_err(io)?;
        }
        let f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a table written by [`InfluenceTable::save`], checking its sizes.
    pub fn load(path: &Path) -> Result<InfluenceTable, InfluenceError> {
        let p = path.display().to_string();
        let bad = |reason: &str| InfluenceError::Format { path: p.clone(), reason: reason.to_string() };
        let bytes = std::fs::read(path).map_err(|source| InfluenceError::Io { path: p.clone(), source })?;
        if bytes.len() < 36 || &bytes[..8] != MAGIC {
            return Err(bad("not a Merit influence table"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
        let (dims, seed, n) = (u64_at(8) as usize, u64_at(16), u64_at(24) as usize);
        let lr = f32::from_le_bytes(bytes[32..36].try_into().unwrap_or([0; 4]));
        let body = &bytes[36..];
        if dims == 0 || n.checked_mul(8 + 4 * dims) != Some(body.len()) {
            return Err(bad("sizes do not match the header (truncated or corrupt)"));
        }
        let rows = body[..n * 8].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
        let vectors =
            body[n * 8..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4]))).collect();
        Ok(InfluenceTable { projector: Projector { dims, seed }, lr, rows, vectors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Inner products survive the projection (JL): within a loose bound at 2048 dims.
        #[test]
        fn projection_keeps_inner_products(
            a in proptest::collection::vec(-1f32..1.0, 3000),
            b in proptest::collection::vec(-1f32..1.0, 3000),
            seed in 0u64..1000,
        ) {
            let p = Projector { dims: 2048, seed };
            let (mut pa, mut pb) = (vec![0f32; 2048], vec![0f32; 2048]);
            p.add("w", &a, &mut pa);
            p.add("w", &b, &mut pb);
            let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(x, y)| (x * y) as f64).sum::<f64>();
            let norm = (dot(&a, &a) * dot(&b, &b)).sqrt();
            prop_assert!((dot(&pa, &pb) - dot(&a, &b)).abs() < 0.15 * norm, "{} vs {}", dot(&pa, &pb), dot(&a, &b));
            prop_assert!((dot(&pa, &pa) / dot(&a, &a) - 1.0).abs() < 0.15);
        }
    }

    #[test]
    fn projection_is_linear_and_named() {
        let p = Projector { dims: 64, seed: 7 };
        let (mut one, mut two) = (vec![0f32; 64], vec![0f32; 64]);
        p.add("x", &[1.0, 2.0], &mut one);
        p.add("x", &[2.0, 4.0], &mut two);
        assert!(one.iter().zip(&two).all(|(a, b)| (2.0 * a - b).abs() < 1e-6));
        let mut other = vec![0f32; 64];
        p.add("y", &[1.0, 2.0], &mut other);
        assert_ne!(one, other, "another tensor name projects elsewhere");
    }

    #[test]
    fn tables_round_trip_and_bad_files_are_named() {
        let t = InfluenceTable {
            projector: Projector { dims: 3, seed: 9 },
            lr: 0.5,
            rows: vec![4, 7],
            vectors: vec![1.0, 0.0, 2.0, -1.0, 1.0, 0.0],
        };
        // Units (1, 0, 2)/√5 and (−1, 1, 0)/√2, centred on their mean: ±(a − b)/2.
        let (a, b) = ([1.0 / 5f64.sqrt(), 0.0, 2.0 / 5f64.sqrt()], [-1.0 / 2f64.sqrt(), 1.0 / 2f64.sqrt(), 0.0]);
        let half: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x - y) / 2.0).collect();
        let s = t.scores(&[1.0, 1.0, 1.0]);
        let dot: f64 = half.iter().sum();
        let norm = half.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((s[0].score - 0.5 * dot).abs() < 1e-9 && (s[1].score + 0.5 * dot).abs() < 1e-9, "{s:?}");
        assert!((s[0].similarity - dot / (norm * 3f64.sqrt())).abs() < 1e-9, "{s:?}");
        assert!((s[0].similarity + s[1].similarity).abs() < 1e-12);
        // What every example shares credits no one.
        let same = InfluenceTable { rows: vec![1, 2], vectors: vec![1.0, 1.0, 0.0, 2.0, 2.0, 0.0], ..t.clone() };
        assert!(same.scores(&[1.0, 1.0, 0.0]).iter().all(|i| i.score.abs() < 1e-12 && i.similarity == 0.0));
        // One example alone is not centred away.
        let one = InfluenceTable { rows: vec![1], vectors: vec![3.0, 4.0, 0.0], ..t.clone() };
        let i = one.scores(&[3.0, 4.0, 0.0])[0];
        assert!((i.score - 0.5 * 5.0).abs() < 1e-9 && (i.similarity - 1.0).abs() < 1e-12, "{i:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("influence.mrt");
        t.save(&path).unwrap();
        assert_eq!(InfluenceTable::load(&path).unwrap(), t);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(InfluenceTable::load(&path).unwrap_err().to_string().contains("truncated"));
        std::fs::write(&path, b"nothing").unwrap();
        assert!(InfluenceTable::load(&path).unwrap_err().to_string().contains("not a Merit influence table"));
    }
}
