//! Self-attention for training as one op from the q, k, v projections
//! (b × t × heads·d, as the linear layers give them) to the output
//! (b × t × heads·d, as `o_proj` takes it): rotary embedding, grouped
//! heads, scores, softmax and the weighted values inside, with no
//! transposed copies and no graph nodes between the projections.
//!
//! Work is split into (batch, head, block of query rows) items run in
//! parallel, each with single-threaded gemm on strided views of q, k and v.
//! A block multiplies only the keys its rows can see (up to the last key
//! whose bias is finite: half the work of a causal mask). The backward pass
//! recomputes the probabilities (nothing of size heads × t × t is kept
//! between the passes) and then gathers the key and value gradients per
//! (batch, kv head, block of keys).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::dense::{gemm_raw, Mat};
use crate::fused::train::{contiguous as slice, normalize_exp, Float, Ptr, Rope};

type CResult<T> = candle_core::Result<T>;

/// Query rows (or keys) per work item.
const BLOCK: usize = 32;

struct AttentionBlock {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub b: usize,
    pub t: usize,
    pub scale: f64,
    /// bb × bh × t × t, bb ∈ {1, b}, bh ∈ {1, heads}.
    pub bias: Vec<f64>,
    pub bb: usize,
    pub bh: usize,
    /// Per bias row: one past its last finite entry (the keys it can see).
    lim: Vec<usize>,
    /// Rotary embedding of q and k (token-major rows), when the family has one.
    pub q_rope: Option<Rope>,
    pub k_rope: Option<Rope>,
}

/// `softmax(rope(q) rope(k)ᵀ · scale + bias) v` for q: b × t × heads·d and
/// k, v: b × t × kv_heads·d (contiguous projections); `bias` broadcasts to
/// b × heads × t × t; `rope` = (cos, sin, rotary dims, interleaved) as
/// [`crate::fused::train::rope`] takes them. Returns b × t × heads·d.
#[allow(clippy::too_many_arguments)]
pub fn attention_block(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    (heads, kv_heads, head_dim): (usize, usize, usize),
    scale: f64,
    rope: Option<(&Tensor, &Tensor, usize, bool)>,
) -> CResult<Tensor> {
    let (b, t, w) = q.dims3()?;
    if w != heads * head_dim || k.dims3()? != (b, t, kv_heads * head_dim) || v.dims() != k.dims() {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit {heads} heads of {head_dim}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if kv_heads == 0 || heads % kv_heads != 0 {
        candle_core::bail!("attention: {heads} heads do not group into {kv_heads} kv heads");
    }
    let mut dims = bias.dims().to_vec();
    while dims.len() < 4 {
        dims.insert(0, 1);
    }
    let (bb, bh) = (dims[0], dims[1]);
    let bias: Vec<f64> = bias
        .reshape(dims)?
        .broadcast_as((bb, bh, t, t))?
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let lim = bias.chunks(t.max(1)).map(|row| row.iter().rposition(|v| v.is_finite()).map_or(0, |p| p + 1)).collect();
    let table = |heads: usize| -> CResult<Option<Rope>> {
        rope.map(|(cos, sin, r, interleaved)| {
            Ok(Rope {
                cos: crate::fused::train::vec_f64(cos)?,
                sin: crate::fused::train::vec_f64(sin)?,
                r,
                interleaved,
                per_row: cos.rank() == 4,
                heads,
                t,
                d: head_dim,
                token_major: true,
            })
        })
        .transpose()
    };
    let op = AttentionBlock {
        heads,
        kv_heads,
        head_dim,
        b,
        t,
        scale,
        bias,
        bb,
        bh,
        lim,
        q_rope: table(heads)?,
        k_rope: table(kv_heads)?,
    };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// Runs `work` over `items` on candle's CPU pool.
fn par_items(items: usize, work: impl Fn(std::ops::Range<usize>) + Sync) {
    if items < 2 {
        work(0..items);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(items, work);
    }
}

/// Runs `f(item, scratch)` for every item on candle's CPU pool, with one
/// scratch value per worker; returns the first error.
fn par_try<S: Default>(items: usize, f: impl Fn(usize, &mut S) -> CResult<()> + Sync) -> CResult<()> {
    let err = std::sync::Mutex::new(None);
    par_items(items, |range| {
        let mut scratch = S::default();
        for item in range {
            if let Err(e) = f(item, &mut scratch) {
                err.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            }
        }
    });
    match err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl AttentionBlock {
    /// Query work item `item` of b × heads × blocks: (batch row, head, its
    /// query rows, how many keys they see).
    fn query_block(&self, item: usize) -> (usize, usize, std::ops::Range<usize>, usize) {
        let blocks = self.t.div_ceil(BLOCK);
        let (bi, h, blk) = (item / (self.heads * blocks), (item / blocks) % self.heads, item % blocks);
        let rows = blk * BLOCK..((blk + 1) * BLOCK).min(self.t);
        let kn = self.visible(bi, h, rows.clone());
        (bi, h, rows, kn)
    }

    /// The bias row of query `i` of head `h` in batch row `bi`.
    fn bias_row(&self, bi: usize, h: usize, i: usize) -> &[f64] {
        let (bi, h) = (if self.bb == 1 { 0 } else { bi }, if self.bh == 1 { 0 } else { h });
        let at = ((bi * self.bh + h) * self.t + i) * self.t;
        &self.bias[at..at + self.t]
    }

    /// How many leading keys rows `rows` of (bi, h) can see: one past the
    /// last finite bias entry of any of them.
    fn visible(&self, bi: usize, h: usize, rows: std::ops::Range<usize>) -> usize {
        let (bi, h) = (if self.bb == 1 { 0 } else { bi }, if self.bh == 1 { 0 } else { h });
        let at = (bi * self.bh + h) * self.t;
        self.lim[at + rows.start..at + rows.end].iter().copied().max().unwrap_or(0)
    }

    fn rotated<'a, T: Float>(rope: &Option<Rope>, xs: &'a [T]) -> std::borrow::Cow<'a, [T]> {
        match rope {
            Some(r) => std::borrow::Cow::Owned(r.rotate(xs, 1.0)),
            None => std::borrow::Cow::Borrowed(xs),
        }
    }

    /// Head `h` of batch row `bi`, rows `rows`, in a token-major buffer of `heads` heads.
    fn head<'a, T>(
        &self,
        xs: &'a [T],
        heads: usize,
        bi: usize,
        h: usize,
        rows: std::ops::Range<usize>,
    ) -> CResult<Mat<'a, T>> {
        let (d, w) = (self.head_dim, heads * self.head_dim);
        let at = (bi * self.t + rows.start) * w + h * d;
        Mat::strided(&xs[at.min(xs.len())..], rows.len(), d, w, 1)
    }

    /// Probabilities of query rows `rows` of (bi, h) over the first `kn`
    /// keys, into `p` (rows × kn).
    fn probs<T: Float>(
        &self,
        (q, k): (&[T], &[T]),
        (bi, h): (usize, usize),
        rows: std::ops::Range<usize>,
        kn: usize,
        p: &mut [T],
    ) -> CResult<()> {
        let g = h / (self.heads / self.kv_heads);
        let qm = self.head(q, self.heads, bi, h, rows.clone())?;
        let km = self.head(k, self.kv_heads, bi, g, 0..kn)?;
        // SAFETY: `p` holds rows × kn values, written by this call only.
        unsafe { gemm_raw(p.as_mut_ptr(), kn, false, qm, km.t(), T::of(1.0), false)? };
        let scale = T::of(self.scale);
        for (r, i) in rows.enumerate() {
            let row = &mut p[r * kn..(r + 1) * kn];
            let mut max = T::of(f64::NEG_INFINITY);
            for (o, b) in row.iter_mut().zip(self.bias_row(bi, h, i)) {
                *o = *o * scale + T::of(*b);
                if *o > max {
                    max = *o;
                }
            }
            if max == T::of(f64::NEG_INFINITY) {
                row.iter_mut().for_each(|v| *v = T::of(0.0));
            } else {
                normalize_exp(row, max);
            }
        }
        Ok(())
    }

    fn fwd<T: Float>(&self, q: &[T], k: &[T], v: &[T]) -> CResult<Vec<T>> {
        let (t, d, nh) = (self.t, self.head_dim, self.heads);
        let rep = nh / self.kv_heads;
        let (q, k) = (Self::rotated(&self.q_rope, q), Self::rotated(&self.k_rope, k));
        let mut out = vec![T::of(0.0); self.b * t * nh * d];
        let out_ptr = Ptr(out.as_mut_ptr());
        par_try(self.b * nh * t.div_ceil(BLOCK), |item, p: &mut Vec<T>| {
            let (bi, h, rows, kn) = self.query_block(item);
            if kn == 0 {
                return Ok(());
            }
            p.resize(rows.len() * kn, T::of(0.0));
            self.probs((&q, &k), (bi, h), rows.clone(), kn, p)?;
            let vm = self.head(v, self.kv_heads, bi, h / rep, 0..kn)?;
            let at = (bi * t + rows.start) * nh * d + h * d;
            let pm = Mat::rows(p, rows.len(), kn)?;
            // SAFETY: this item alone writes head h of these rows.
            unsafe { gemm_raw(out_ptr.at(at), nh * d, false, pm, vm, T::of(1.0), false) }
        })?;
        Ok(out)
    }

    /// (dq, dk, dv) for the output gradient `go`.
    fn grads<T: Float>(&self, q: &[T], k: &[T], v: &[T], go: &[T]) -> CResult<[Vec<T>; 3]> {
        let (b, t, d, nh, nkv) = (self.b, self.t, self.head_dim, self.heads, self.kv_heads);
        let rep = nh / nkv;
        let (q, k) = (Self::rotated(&self.q_rope, q), Self::rotated(&self.k_rope, k));
        let blocks = t.div_ceil(BLOCK);
        // P and dS of every head, t × t each (zero where masked), for the key pass.
        let mut p_all = vec![T::of(0.0); b * nh * t * t];
        let mut ds_all = vec![T::of(0.0); b * nh * t * t];
        let mut dq = vec![T::of(0.0); q.len()];
        let (pp, dsp, dqp) = (Ptr(p_all.as_mut_ptr()), Ptr(ds_all.as_mut_ptr()), Ptr(dq.as_mut_ptr()));
        // Query pass: P, dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale, dQ = dS K.
        par_try(b * nh * blocks, |item, (p, dp): &mut (Vec<T>, Vec<T>)| {
            let (bi, h, rows, kn) = self.query_block(item);
            if kn == 0 {
                return Ok(());
            }
            let n = rows.len();
            p.resize(n * kn, T::of(0.0));
            dp.resize(n * kn, T::of(0.0));
            self.probs((&q, &k), (bi, h), rows.clone(), kn, p)?;
            let gm = self.head(go, nh, bi, h, rows.clone())?;
            let vm = self.head(v, nkv, bi, h / rep, 0..kn)?;
            let km = self.head(&k, nkv, bi, h / rep, 0..kn)?;
            // SAFETY: `dp` holds n × kn values.
            unsafe { gemm_raw(dp.as_mut_ptr(), kn, false, gm, vm.t(), T::of(1.0), false)? };
            let scale = T::of(self.scale);
            for r in 0..n {
                let (pr, dpr) = (&p[r * kn..(r + 1) * kn], &mut dp[r * kn..(r + 1) * kn]);
                let dot = T::of(pr.iter().zip(dpr.iter()).map(|(a, b)| (*a * *b).to_f64()).sum::<f64>());
                for (o, p) in dpr.iter_mut().zip(pr) {
                    *o = *p * (*o - dot) * scale;
                }
            }
            let base = (bi * nh + h) * t * t;
            for (r, i) in rows.clone().enumerate() {
                // SAFETY: rows of head (bi, h) belong to this item.
                unsafe {
                    std::ptr::copy_nonoverlapping(p[r * kn..].as_ptr(), pp.at(base + i * t), kn);
                    std::ptr::copy_nonoverlapping(dp[r * kn..].as_ptr(), dsp.at(base + i * t), kn);
                }
            }
            let at = (bi * t + rows.start) * nh * d + h * d;
            // SAFETY: this item alone writes head h of these rows of dq.
            unsafe { gemm_raw(dqp.at(at), nh * d, false, Mat::rows(dp, n, kn)?, km, T::of(1.0), false) }
        })?;
        // Key pass: dK = Σ_heads dSᵀ Q, dV = Σ_heads Pᵀ dO over the group's query heads.
        let mut dk = vec![T::of(0.0); k.len()];
        let mut dv = vec![T::of(0.0); v.len()];
        let (dkp, dvp) = (Ptr(dk.as_mut_ptr()), Ptr(dv.as_mut_ptr()));
        let (p_all, ds_all) = (&p_all, &ds_all);
        par_try(b * nkv * blocks, |item, _: &mut ()| {
            let (bi, g, blk) = (item / (nkv * blocks), (item / blocks) % nkv, item % blocks);
            let keys = blk * BLOCK..((blk + 1) * BLOCK).min(t);
            let at = (bi * t + keys.start) * nkv * d + g * d;
            for h in g * rep..(g + 1) * rep {
                // Queries before the first one that sees these keys contribute zeros.
                let from = (0..t).find(|&i| self.visible(bi, h, i..i + 1) > keys.start).unwrap_or(t);
                if from == t {
                    continue;
                }
                let base = (bi * nh + h) * t * t + from * t + keys.start;
                let pm = Mat::strided(&p_all[base..], t - from, keys.len(), t, 1)?;
                let dsm = Mat::strided(&ds_all[base..], t - from, keys.len(), t, 1)?;
                let qm = self.head(&q, nh, bi, h, from..t)?;
                let gm = self.head(go, nh, bi, h, from..t)?;
                // SAFETY: this item alone writes kv head g of these keys.
                unsafe {
                    gemm_raw(dkp.at(at), nkv * d, true, dsm.t(), qm, T::of(1.0), false)?;
                    gemm_raw(dvp.at(at), nkv * d, true, pm.t(), gm, T::of(1.0), false)?;
                }
            }
            Ok(())
        })?;
        let unrotate = |rope: &Option<Rope>, g: Vec<T>| match rope {
            Some(r) => r.rotate(&g, -1.0),
            None => g,
        };
        Ok([unrotate(&self.q_rope, dq), unrotate(&self.k_rope, dk), dv])
    }
}

impl CustomOp3 for AttentionBlock {
    fn name(&self) -> &'static str {
        "attention-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let storage = match s1 {
            CpuStorage::F32(_) => f32::storage(self.fwd(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?)?),
            CpuStorage::F64(_) => f64::storage(self.fwd(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?)?),
            _ => candle_core::bail!("attention: f32 or f64 only"),
        };
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        fn run<T: Float>(op: &AttentionBlock, q: &Tensor, k: &Tensor, v: &Tensor, g: &Tensor) -> CResult<[Tensor; 3]> {
            let vecs = |x: &Tensor| -> CResult<Vec<T>> { x.detach().to_dtype(T::DTYPE)?.flatten_all()?.to_vec1() };
            let (qs, ks, vs, gs) = (vecs(q)?, vecs(k)?, vecs(v)?, vecs(g)?);
            let [dq, dk, dv] = op.grads(&qs, &ks, &vs, &gs)?;
            let dev = q.device();
            Ok([
                Tensor::from_vec(dq, q.shape(), dev)?,
                Tensor::from_vec(dk, k.shape(), dev)?,
                Tensor::from_vec(dv, v.shape(), dev)?,
            ])
        }
        let [dq, dk, dv] = match q.dtype() {
            candle_core::DType::F32 => run::<f32>(self, q, k, v, grad)?,
            _ => run::<f64>(self, q, k, v, grad)?,
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    /// The same attention from plain candle ops (b × t × heads·d in and out).
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, (nh, nkv, d): (usize, usize, usize)) -> Tensor {
        let (b, t, _) = q.dims3().unwrap();
        let rep = nh / nkv;
        let heads = |x: &Tensor, n: usize| x.reshape((b, t, n, d)).unwrap().transpose(1, 2).unwrap();
        let (q, k, v) = (heads(q, nh), heads(k, nkv), heads(v, nkv));
        // Repeat each kv head for its group of query heads.
        let expand = |x: Tensor| {
            let parts: Vec<Tensor> = (0..nh).map(|h| x.narrow(1, h / rep, 1).unwrap()).collect();
            Tensor::cat(&parts, 1).unwrap().contiguous().unwrap()
        };
        let (k, v) = (expand(k), expand(v));
        let s = (q.contiguous().unwrap().matmul(&k.t().unwrap()).unwrap() * (1.0 / (d as f64).sqrt())).unwrap();
        let s = s.broadcast_add(bias).unwrap();
        let max = s.max_keepdim(D::Minus1).unwrap();
        let e = s.broadcast_sub(&max).unwrap().exp().unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        p.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((b, t, nh * d)).unwrap()
    }

    /// Several query blocks, grouped heads, a causal mask with left padding
    /// in one batch row: output and all three gradients match plain ops.
    #[test]
    fn matches_plain_ops_across_blocks_and_padding() {
        let dev = Device::Cpu;
        let (b, t, nh, nkv, d) = (2, 70, 4, 2, 8);
        let mut bias = vec![0f64; b * t * t];
        for bi in 0..b {
            for i in 0..t {
                for j in 0..t {
                    // Causal; batch row 1 has 5 padding positions at the start.
                    let padded = bi == 1 && j < 5 && i >= 5;
                    if j > i || padded {
                        bias[(bi * t + i) * t + j] = f64::NEG_INFINITY;
                    }
                }
            }
        }
        let bias = Tensor::from_vec(bias, (b, 1, t, t), &dev).unwrap();
        let var = |w: usize| Var::from_tensor(&Tensor::randn(0f64, 1.0, (b, t, w), &dev).unwrap()).unwrap();
        let (q, k, v) = (var(nh * d), var(nkv * d), var(nkv * d));
        let weights = Tensor::randn(0f64, 1.0, (b, t, nh * d), &dev).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let got = attention_block(&q, &k, &v, &bias, (nh, nkv, d), scale, None).unwrap();
        let want = reference(&q, &k, &v, &bias, (nh, nkv, d));
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
        };
        assert!(diff(&got, &want) < 1e-12, "output differs by {}", diff(&got, &want));
        let g1 = (got * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (want * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
            let e = diff(g1.get(x).unwrap(), g2.get(x).unwrap());
            assert!(e < 1e-10, "d{name} differs by {e}");
        }
        // f32 gives the same within f32 precision.
        let f = |x: &Var| x.as_tensor().to_dtype(DType::F32).unwrap();
        let got32 = attention_block(&f(&q), &f(&k), &f(&v), &bias, (nh, nkv, d), scale, None).unwrap();
        let want = reference(&q, &k, &v, &bias, (nh, nkv, d));
        assert!(diff(&got32.to_dtype(DType::F64).unwrap(), &want) < 1e-5);
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let dev = Device::Cpu;
        let z = |w: usize| Tensor::zeros((1, 3, w), DType::F32, &dev).unwrap();
        let bias = Tensor::zeros((3, 3), DType::F32, &dev).unwrap();
        assert!(attention_block(&z(8), &z(4), &z(4), &bias, (2, 1, 4), 1.0, None).is_ok());
        assert!(attention_block(&z(8), &z(4), &z(4), &bias, (3, 1, 4), 1.0, None).is_err());
        assert!(attention_block(&z(8), &z(4), &z(6), &bias, (2, 1, 4), 1.0, None).is_err());
        assert!(attention_block(&z(12), &z(8), &z(8), &bias, (3, 2, 4), 1.0, None).is_err());
    }
}
