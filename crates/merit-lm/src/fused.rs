//! Fused CPU kernels for inference: RMS/LayerNorm, softmax, rotary
//! embedding, SiLU-gate and GELU, each one pass over f32 rows instead of
//! five to eight candle ops (every op allocates and walks memory; at one
//! token per step that overhead is most of a small model's time).
//!
//! They run only on f32 CPU tensors that carry no gradient ([`fast`]); the
//! training path keeps the differentiable primitives in `model.rs`. Tests
//! compare both paths, and the transformers fixtures exercise this one.

use candle_core::{DType, Storage, Tensor};

type CResult<T> = candle_core::Result<T>;

/// Whether `x` can take the fused path: f32, on the CPU, no gradient.
pub fn fast(x: &Tensor) -> bool {
    !x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32
}

/// Whether `x` can take an op of [`train`]: f32 or f64 on the CPU.
pub fn cpu_float(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Runs `f` on the values of `t` (made contiguous) as one f32 slice.
pub fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("fused kernels run on the CPU");
    };
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::msg("not contiguous"))?;
    f(&cpu.as_slice::<f32>()?[start..end])
}

/// Applies `f(row_index, input_row, output_row)` to every row (last dimension) of `x`.
fn map_rows(x: &Tensor, f: impl Fn(usize, &[f32], &mut [f32])) -> CResult<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    let out = with_slice(x, |xs| {
        let mut out = vec![0f32; xs.len()];
        for (i, (src, dst)) in xs.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
            f(i, src, dst);
        }
        Ok(out)
    })?;
    Tensor::from_vec(out, x.shape(), x.device())
}

/// RMS norm (`bias` None) or LayerNorm over the last dimension.
pub fn norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, layer_norm: bool, eps: f64) -> CResult<Tensor> {
    let w = weight.to_vec1::<f32>()?;
    let b = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    let eps = eps as f32;
    map_rows(x, |_, src, dst| {
        let n = src.len() as f32;
        let mean = if layer_norm { src.iter().sum::<f32>() / n } else { 0.0 };
        let var = src.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        for (i, (o, v)) in dst.iter_mut().zip(src).enumerate() {
            *o = (v - mean) * inv * w[i] + b.as_ref().map_or(0.0, |b| b[i]);
        }
    })
}

/// Softmax over the last dimension (−∞ entries get zero weight).
pub fn softmax_last(x: &Tensor) -> CResult<Tensor> {
    map_rows(x, |_, src, dst| {
        let max = src.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        let mut sum = 0f32;
        for (o, v) in dst.iter_mut().zip(src) {
            *o = (v - max).exp();
            sum += *o;
        }
        let inv = 1.0 / sum;
        dst.iter_mut().for_each(|o| *o *= inv);
    })
}

/// `silu(gate) · up`.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
    let out = with_slice(gate, |g| {
        with_slice(up, |u| {
            if g.len() != u.len() {
                candle_core::bail!("silu_mul: {} vs {} values", g.len(), u.len());
            }
            Ok(g.iter().zip(u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect::<Vec<f32>>())
        })
    })?;
    Tensor::from_vec(out, gate.shape(), gate.device())
}

/// GELU, tanh approximation.
pub fn gelu_tanh(x: &Tensor) -> CResult<Tensor> {
    let c = (2.0 / std::f32::consts::PI).sqrt();
    map_rows(x, |_, src, dst| {
        for (o, v) in dst.iter_mut().zip(src) {
            *o = 0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh());
        }
    })
}

/// Rotary embedding of the first `rotary_dim` dimensions of `x`
/// (b × heads × t × head_dim) with cos/sin tables (t × rotary_dim), laid
/// out rotate-half (`[f0 … fn, f0 … fn]`) or interleaved (`[f0, f0, f1, f1 …]`).
///
/// The tables may also be per batch row (b × 1 × t × rotary_dim), for
/// left-padded batches.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, rotary_dim: usize, interleaved: bool) -> CResult<Tensor> {
    let (_, heads, t, _) = x.dims4()?;
    let per_row = cos.rank() == 4;
    let (cos, sin) = (cos.flatten_all()?.to_vec1::<f32>()?, sin.flatten_all()?.to_vec1::<f32>()?);
    let r = rotary_dim;
    let half = r / 2;
    map_rows(x, |row, src, dst| {
        let pos = if per_row { (row / (heads * t)) * t + row % t } else { row % t };
        let (c, s) = (&cos[pos * r..(pos + 1) * r], &sin[pos * r..(pos + 1) * r]);
        if interleaved {
            for j in 0..half {
                let (a, b) = (src[2 * j], src[2 * j + 1]);
                dst[2 * j] = a * c[2 * j] - b * s[2 * j];
                dst[2 * j + 1] = b * c[2 * j + 1] + a * s[2 * j + 1];
            }
        } else {
            for j in 0..half {
                let (a, b) = (src[j], src[j + half]);
                dst[j] = a * c[j] - b * s[j];
                dst[j + half] = b * c[j + half] + a * s[j + half];
            }
        }
        dst[r..].copy_from_slice(&src[r..]);
    })
}

/// Attention for a few query positions against the cached keys and values:
/// `softmax(q kᵀ · scale + bias) v` in one pass per query row, reading the
/// cache in place (k, v may be strided views).
///
/// q: b × kv heads × (rep · t) × d, the `rep` query heads of each group
/// stacked; k, v: b × kv heads × total × d; bias: b × heads × t × total.
/// Returns b × kv heads × (rep · t) × d.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f32) -> CResult<Tensor> {
    let (b, nkv, g, d) = q.dims4()?;
    let total = k.dim(2)?;
    let (bb, nh, t, btotal) = bias.dims4()?;
    let rep = nh / nkv.max(1);
    if bb != b || btotal != total || nh != nkv * rep || g != rep * t {
        candle_core::bail!("attention: bias {:?} does not fit queries {:?}", bias.dims(), q.dims());
    }
    let bias = bias.contiguous()?;
    let strided = |x: &Tensor| -> CResult<(usize, [usize; 4])> {
        let l = x.layout();
        let s = l.stride();
        if s.len() != 4 || s[3] != 1 {
            candle_core::bail!("attention: keys/values must be rank 4 with unit last stride");
        }
        Ok((l.start_offset(), [s[0], s[1], s[2], s[3]]))
    };
    let (k_off, ks) = strided(k)?;
    let (v_off, vs) = strided(v)?;
    let (ks_guard, _) = k.storage_and_layout();
    let (vs_guard, _) = v.storage_and_layout();
    let (Storage::Cpu(kc), Storage::Cpu(vc)) = (&*ks_guard, &*vs_guard) else {
        candle_core::bail!("fused kernels run on the CPU");
    };
    let (kd, vd) = (kc.as_slice::<f32>()?, vc.as_slice::<f32>()?);
    let out = with_slice(q, |qs| {
        with_slice(&bias, |bs| {
            let mut out = vec![0f32; qs.len()];
            let out_ptr = crate::quant::SendPtr(out.as_mut_ptr());
            // One work item per (batch, kv head, query row).
            let work = |range: std::ops::Range<usize>| {
                let out_ptr = &out_ptr;
                let mut scores = vec![0f32; total];
                for item in range {
                    let (bh, row) = (item / g, item % g);
                    let (bi, h) = (bh / nkv, bh % nkv);
                    let kbase = k_off + bi * ks[0] + h * ks[1];
                    let vbase = v_off + bi * vs[0] + h * vs[1];
                    let (r, ti) = (row / t, row % t);
                    let qrow = &qs[item * d..][..d];
                    let brow = &bs[((bi * nh + h * rep + r) * t + ti) * total..][..total];
                    let mut max = f32::NEG_INFINITY;
                    for (pos, sc) in scores.iter_mut().enumerate() {
                        *sc = dot(qrow, &kd[kbase + pos * ks[2]..][..d]) * scale + brow[pos];
                        max = max.max(*sc);
                    }
                    let mut sum = 0f32;
                    for sc in scores.iter_mut() {
                        *sc = (*sc - max).exp();
                        sum += *sc;
                    }
                    // SAFETY: each item owns its output row.
                    let orow = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(item * d), d) };
                    for (pos, p) in scores.iter().enumerate() {
                        let w = p / sum;
                        if w != 0.0 {
                            orow.iter_mut().zip(&vd[vbase + pos * vs[2]..][..d]).for_each(|(o, v)| *o += w * v);
                        }
                    }
                }
            };
            let items = b * nkv * g;
            if items * total * d < 1 << 15 {
                work(0..items);
            } else {
                candle_core::utils::barrier_pool().execute_chunked(items, work);
            }
            Ok(out)
        })
    })?;
    Tensor::from_vec(out, (b, nkv, g, d), q.device())
}

/// A dot product in eight independent lanes, so it vectorizes.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Token cross-entropy as one op with its own backward, so training keeps
/// no vocabulary-sized intermediates besides the logits:
/// `nll[r] = weight[r] · (logsumexp(logits[r]) − logits[r][target[r]])`.
/// `logits`: rows × vocab (any leading shape, contiguous last dimension);
/// returns one value per row. Backward: `(softmax − onehot) · weight · grad`.
pub fn cross_entropy(logits: &Tensor, targets: &[u32], weights: &[f32]) -> CResult<Tensor> {
    let vocab = logits.dim(candle_core::D::Minus1)?;
    let rows = logits.elem_count() / vocab.max(1);
    if targets.len() != rows || weights.len() != rows {
        candle_core::bail!("cross_entropy: {rows} rows, {} targets, {} weights", targets.len(), weights.len());
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross_entropy: target {t} is outside the vocabulary of {vocab}");
    }
    let mut shape = logits.dims().to_vec();
    shape.pop();
    if !cpu_float(logits) {
        return cross_entropy_ops(logits, targets, weights, (rows, vocab))?.reshape(shape);
    }
    let op = CrossEntropy { targets: targets.to_vec(), weights: weights.to_vec(), vocab };
    logits.contiguous()?.apply_op1(op)?.reshape(shape)
}

/// [`cross_entropy`] from candle's differentiable primitives, on any device
/// (a GPU): log-sum-exp with the row maximum held constant, minus the
/// target's logit, in f32; one value per row.
fn cross_entropy_ops(
    logits: &Tensor,
    targets: &[u32],
    weights: &[f32],
    (rows, vocab): (usize, usize),
) -> CResult<Tensor> {
    let dev = logits.device();
    let x = logits.reshape((rows, vocab))?.to_dtype(DType::F32)?;
    let max = x.max_keepdim(1)?.detach();
    let lse = (x.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + max)?.squeeze(1)?;
    let picked = x.gather(&Tensor::from_slice(targets, (rows, 1), dev)?, 1)?.squeeze(1)?;
    (lse - picked)? * Tensor::from_slice(weights, rows, dev)?
}

struct CrossEntropy {
    targets: Vec<u32>,
    weights: Vec<f32>,
    vocab: usize,
}

/// Runs `f(row, logits_row)` over rows of a contiguous f32 or f64 storage, as f64.
fn ce_rows<T: candle_core::WithDType + Into<f64>>(xs: &[T], vocab: usize, mut f: impl FnMut(usize, &[T])) {
    for (r, row) in xs.chunks_exact(vocab).enumerate() {
        f(r, row);
    }
}

/// `buf ← exp(row − max(row))`; returns (max, Σ buf) with the sum in f64.
fn shifted_exp32(row: &[f32], buf: &mut [f32]) -> (f32, f64) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    for (b, v) in buf.iter_mut().zip(row) {
        *b = v - max;
    }
    crate::vmath::exp_in_place(buf);
    (max, buf.iter().map(|v| *v as f64).sum())
}

fn logsumexp<T: Copy + Into<f64>>(row: &[T]) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max((*v).into()));
    max + row.iter().map(|v| ((*v).into() - max).exp()).sum::<f64>().ln()
}

impl candle_core::CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> CResult<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let (a, b) =
            layout.contiguous_offsets().ok_or_else(|| candle_core::Error::msg("cross_entropy: not contiguous"))?;
        let rows = (b - a) / self.vocab.max(1);
        macro_rules! go {
            ($xs:expr, $out:expr) => {
                ce_rows(&$xs[a..b], self.vocab, |r, row| {
                    let w = self.weights[r] as f64;
                    if w != 0.0 {
                        let picked: f64 = row[self.targets[r] as usize].into();
                        $out[r] = w * (logsumexp(row) - picked);
                    }
                })
            };
        }
        let storage = match storage {
            CpuStorage::F32(xs) => {
                // f32 logits: rows in parallel, f32 exponentials, f64 sums.
                let xs = &xs[a..b];
                let mut out32 = vec![0f32; rows];
                let ptr = crate::quant::SendPtr(out32.as_mut_ptr());
                let v = self.vocab;
                candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
                    let ptr = &ptr;
                    let mut buf = vec![0f32; v];
                    for r in range {
                        let w = self.weights[r];
                        if w == 0.0 {
                            continue;
                        }
                        let row = &xs[r * v..(r + 1) * v];
                        let (max, sum) = shifted_exp32(row, &mut buf);
                        let nll = w as f64 * (max as f64 + sum.ln() - row[self.targets[r] as usize] as f64);
                        // SAFETY: each row writes its own element.
                        unsafe { *ptr.0.add(r) = nll as f32 };
                    }
                });
                CpuStorage::F32(out32)
            }
            CpuStorage::F64(xs) => {
                let mut out = vec![0f64; rows];
                go!(xs, out);
                CpuStorage::F64(out)
            }
            _ => candle_core::bail!("cross_entropy: f32 or f64 logits"),
        };
        Ok((storage, candle_core::Shape::from(rows)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> CResult<Option<Tensor>> {
        let g: Vec<f64> = grad_res.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let logits = arg.contiguous()?;
        let grad = match logits.dtype() {
            DType::F64 => {
                let xs: Vec<f64> = logits.flatten_all()?.to_vec1()?;
                let mut out = vec![0f64; xs.len()];
                self.grad_rows(&xs, &g, |i, val| out[i] = val);
                Tensor::from_vec(out, logits.shape(), logits.device())?
            }
            _ => {
                let v = self.vocab;
                let out = with_slice(&logits.to_dtype(DType::F32)?, |xs| {
                    let rows = xs.len() / v.max(1);
                    let mut out = vec![0f32; xs.len()];
                    let ptr = crate::quant::SendPtr(out.as_mut_ptr());
                    candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
                        let ptr = &ptr;
                        for r in range {
                            let scale = (self.weights[r] as f64 * g[r]) as f32;
                            if scale == 0.0 {
                                continue;
                            }
                            // SAFETY: each row writes its own slice.
                            let o = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(r * v), v) };
                            // softmax · scale = exp(x − max) · scale / Σ exp(x − max).
                            let (_, sum) = shifted_exp32(&xs[r * v..(r + 1) * v], o);
                            let k = (scale as f64 / sum) as f32;
                            o.iter_mut().for_each(|o| *o *= k);
                            o[self.targets[r] as usize] -= scale;
                        }
                    });
                    Ok(out)
                })?;
                Tensor::from_vec(out, logits.shape(), logits.device())?.to_dtype(logits.dtype())?
            }
        };
        Ok(Some(grad))
    }
}

impl CrossEntropy {
    fn grad_rows<T: Copy + Into<f64>>(&self, xs: &[T], g: &[f64], mut set: impl FnMut(usize, f64)) {
        let v = self.vocab;
        for (r, row) in xs.chunks_exact(v).enumerate() {
            let scale = self.weights[r] as f64 * g[r];
            if scale == 0.0 {
                continue;
            }
            let lse = logsumexp(row);
            for (j, x) in row.iter().enumerate() {
                let p = ((*x).into() - lse).exp();
                let onehot = if j == self.targets[r] as usize { 1.0 } else { 0.0 };
                set(r * v + j, (p - onehot) * scale);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// The fused cross-entropy against log-softmax from primitives: values
    /// and gradients, masked rows contributing nothing.
    /// The device-generic path (a GPU's) gives the fused op's values and gradients.
    #[test]
    fn cross_entropy_from_primitives_matches_the_fused_op() {
        let x = Var::from_tensor(&Tensor::randn(0f32, 3.0, (2, 3, 11), &Device::Cpu).unwrap()).unwrap();
        let targets = [3u32, 0, 10, 7, 7, 1];
        let weights = [1.0f32, 0.0, 0.5, 1.0, 2.0, 1.0];
        let fused = cross_entropy(x.as_tensor(), &targets, &weights).unwrap();
        let ops = cross_entropy_ops(x.as_tensor(), &targets, &weights, (6, 11)).unwrap().reshape((2, 3)).unwrap();
        let (a, b) = (
            fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            ops.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        let ga = fused.sum_all().unwrap().backward().unwrap().get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let gb = ops.sum_all().unwrap().backward().unwrap().get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let (ga, gb) = (ga.to_vec1::<f32>().unwrap(), gb.to_vec1::<f32>().unwrap());
        for (a, b) in ga.iter().zip(&gb) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn cross_entropy_matches_log_softmax() {
        let x = Var::from_tensor(&Tensor::randn(0f64, 2.0, (2, 3, 11), &Device::Cpu).unwrap()).unwrap();
        let targets = [3u32, 0, 10, 7, 7, 1];
        let weights = [1f32, 0.0, 1.0, 1.0, 0.5, 1.0];
        let fused = cross_entropy(x.as_tensor(), &targets, &weights).unwrap();
        let loss = fused.sum_all().unwrap();
        let g1 = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
        let lse = x.exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap();
        let t = Tensor::new(&targets, &Device::Cpu).unwrap().reshape((2, 3, 1)).unwrap();
        let picked = x.gather(&t, D::Minus1).unwrap();
        let w = Tensor::new(&weights, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().reshape((2, 3, 1)).unwrap();
        let reference = ((lse - picked).unwrap() * w).unwrap();
        let r = reference.sum_all().unwrap();
        let g2 = r.backward().unwrap().get(x.as_tensor()).unwrap().clone();
        let g1_keep = g1.clone();
        let dv = (fused.flatten_all().unwrap() - reference.flatten_all().unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(dv.to_scalar::<f64>().unwrap() < 1e-12);
        let dg = (g1 - g2).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(dg < 1e-12, "{dg}");
        let g1 = g1_keep;
        assert!(cross_entropy(x.as_tensor(), &[11, 0, 0, 0, 0, 0], &weights).is_err());
        // The f32 path (parallel rows, f32 exponentials) agrees.
        let x32 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
        let f32_loss = cross_entropy(x32.as_tensor(), &targets, &weights).unwrap().sum_all().unwrap();
        let g32 = f32_loss.backward().unwrap().get(x32.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
        let dl = (f32_loss.to_dtype(DType::F64).unwrap() - r).unwrap().abs().unwrap().to_scalar::<f64>().unwrap();
        assert!(dl < 1e-4, "{dl}");
        let dg = (g32 - g1).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(dg < 1e-5, "{dg}");
    }

    /// Each training op in f32 (parallel rows, native precision) agrees
    /// with its f64 run, forward and backward.
    #[test]
    fn training_ops_agree_in_f32_and_f64() {
        use super::train;
        let dev = Device::Cpu;
        let x64 = Tensor::randn(0f64, 1.0, (2, 3, 40, 16), &dev).unwrap();
        let w64 = Tensor::randn(0f64, 1.0, (2, 3, 40, 16), &dev).unwrap();
        let norm_w = Tensor::randn(1f64, 0.2, 16, &dev).unwrap();
        let cos = Tensor::randn(0f64, 1.0, (40, 16), &dev).unwrap();
        let sin = Tensor::randn(0f64, 1.0, (40, 16), &dev).unwrap();
        type Op<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;
        let ops: Vec<(&str, Op)> = vec![
            ("norm", Box::new(|x: &Tensor| train::norm(x, &norm_w, None, false, 1e-5).unwrap())),
            ("layer_norm", Box::new(|x: &Tensor| train::norm(x, &norm_w, Some(&norm_w), true, 1e-5).unwrap())),
            ("softmax", Box::new(|x: &Tensor| train::softmax_last(x).unwrap())),
            ("silu_mul", Box::new(|x: &Tensor| train::silu_mul(x, &(x * 0.5).unwrap()).unwrap())),
            ("rope", Box::new(|x: &Tensor| train::rope(x, &cos, &sin, 16, false).unwrap())),
            ("rope_interleaved", Box::new(|x: &Tensor| train::rope(x, &cos, &sin, 8, true).unwrap())),
        ];
        for (name, op) in ops {
            let run = |dtype: DType| -> (Tensor, Tensor) {
                let x = Var::from_tensor(&x64.to_dtype(dtype).unwrap()).unwrap();
                let y = op(x.as_tensor());
                let loss = (y.clone() * w64.to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap();
                let g = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
                (y.to_dtype(DType::F64).unwrap(), g.to_dtype(DType::F64).unwrap())
            };
            let (y32, g32) = run(DType::F32);
            let (y64, g64) = run(DType::F64);
            let max = |t: Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(max((y32 - y64).unwrap()) < 1e-4, "{name} forward");
            assert!(max((g32 - g64).unwrap()) < 1e-3, "{name} backward");
        }
    }
}

/// Ops with their own backward for the training path (CPU, f32 or f64): one
/// graph node each instead of five to eight, so a training step keeps far
/// fewer intermediates alive and walks memory fewer times. Rows run in
/// parallel on candle's CPU pool, in the input's own precision.
pub mod train {
    use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

    type CResult<T> = candle_core::Result<T>;

    /// f32 or f64.
    pub trait Float:
        Copy
        + Send
        + Sync
        + PartialOrd
        + std::ops::Add<Output = Self>
        + std::ops::Sub<Output = Self>
        + std::ops::Mul<Output = Self>
        + std::ops::Div<Output = Self>
        + std::ops::Neg<Output = Self>
        + std::ops::MulAssign
        + std::ops::SubAssign
        + std::ops::AddAssign
        + candle_core::WithDType
    {
        fn exp(self) -> Self;
        fn sqrt(self) -> Self;
        fn of(x: f64) -> Self;
        fn slice(s: &CpuStorage) -> Option<&[Self]>;
        fn storage(v: Vec<Self>) -> CpuStorage;
        /// `x ← eˣ` for every element (vectorised for f32, see [`crate::vmath`]).
        fn exp_in_place(xs: &mut [Self]);
    }

    macro_rules! float {
        ($t:ty, $variant:ident, $exp:expr) => {
            impl Float for $t {
                fn exp(self) -> Self {
                    <$t>::exp(self)
                }
                fn sqrt(self) -> Self {
                    <$t>::sqrt(self)
                }
                fn of(x: f64) -> Self {
                    x as $t
                }
                fn slice(s: &CpuStorage) -> Option<&[Self]> {
                    match s {
                        CpuStorage::$variant(v) => Some(v),
                        _ => None,
                    }
                }
                fn storage(v: Vec<Self>) -> CpuStorage {
                    CpuStorage::$variant(v)
                }
                fn exp_in_place(xs: &mut [Self]) {
                    $exp(xs)
                }
            }
        };
    }
    float!(f32, F32, crate::vmath::exp_in_place);
    float!(f64, F64, |xs: &mut [f64]| xs.iter_mut().for_each(|x| *x = x.exp()));

    /// `o ← softmax(o)` given the row's maximum: exponentials summed in f64.
    pub(crate) fn normalize_exp<T: Float>(o: &mut [T], max: T) {
        o.iter_mut().for_each(|v| *v -= max);
        T::exp_in_place(o);
        let sum: f64 = o.iter().map(|v| v.to_f64()).sum();
        let inv = T::of(1.0 / sum);
        o.iter_mut().for_each(|v| *v *= inv);
    }

    /// σ(x) for every element of `xs`, into `out`.
    fn sigmoid_into<T: Float>(xs: &[T], out: &mut [T]) {
        for (o, x) in out.iter_mut().zip(xs) {
            *o = -*x;
        }
        T::exp_in_place(out);
        out.iter_mut().for_each(|o| *o = T::of(1.0) / (T::of(1.0) + *o));
    }

    /// Applies `f(row_index, out_row)` to every row of an output of `n` rows × `d`, rows in parallel.
    pub(crate) fn par_rows<T: Float>(n: usize, d: usize, f: impl Fn(usize, &mut [T]) + Sync) -> Vec<T> {
        let mut out = vec![T::of(0.0); n * d];
        let ptr = Ptr(out.as_mut_ptr());
        let work = |range: std::ops::Range<usize>| {
            let ptr = &ptr;
            for r in range {
                // SAFETY: each row owns its slice of the output.
                f(r, unsafe { std::slice::from_raw_parts_mut(ptr.0.add(r * d), d) });
            }
        };
        if n * d < 1 << 14 {
            work(0..n);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(n, work);
        }
        out
    }

    pub(crate) struct Ptr<T>(pub(crate) *mut T);

    impl<T> Ptr<T> {
        /// The element `n` places on (no access; a closure calling this
        /// captures the whole `Ptr`, which is `Sync`, not its raw field).
        pub(crate) fn at(&self, n: usize) -> *mut T {
            self.0.wrapping_add(n)
        }
    }
    // SAFETY: workers write disjoint rows; the buffer outlives the pool call.
    unsafe impl<T> Sync for Ptr<T> {}
    unsafe impl<T> Send for Ptr<T> {}

    pub(crate) fn contiguous<'a, T: Float>(s: &'a CpuStorage, l: &Layout) -> CResult<&'a [T]> {
        let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::msg("fused op: not contiguous"))?;
        Ok(&T::slice(s).ok_or_else(|| candle_core::Error::msg("fused op: dtype mismatch"))?[a..b])
    }

    /// Runs `f` on a tensor's values as `&[T]` with T its dtype (f32 or f64).
    macro_rules! dispatch {
        ($t:expr, |$xs:ident: $ty:ident| $body:expr) => {{
            let t = $t.contiguous()?;
            let (storage, layout) = t.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else { candle_core::bail!("fused op: CPU only") };
            match cpu {
                CpuStorage::F32(_) => {
                    type $ty = f32;
                    let $xs: &[$ty] = contiguous(cpu, layout)?;
                    $body
                }
                CpuStorage::F64(_) => {
                    type $ty = f64;
                    let $xs: &[$ty] = contiguous(cpu, layout)?;
                    $body
                }
                _ => candle_core::bail!("fused op: f32 or f64 only"),
            }
        }};
    }

    /// The forward computation of a one-input op, in either precision.
    trait Forward {
        fn fwd<T: Float>(&self, xs: &[T]) -> Vec<T>;
    }

    impl Forward for Norm {
        fn fwd<T: Float>(&self, xs: &[T]) -> Vec<T> {
            self.norm_fwd(xs)
        }
    }

    impl Forward for Softmax {
        fn fwd<T: Float>(&self, xs: &[T]) -> Vec<T> {
            self.softmax_fwd(xs)
        }
    }

    impl Forward for Rope {
        fn fwd<T: Float>(&self, xs: &[T]) -> Vec<T> {
            self.rotate(xs, 1.0)
        }
    }

    /// `CustomOp1::cpu_fwd` for a [`Forward`] op: f32 or f64 in, same out.
    fn cpu_forward<O: Forward>(op: &O, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => f32::storage(op.fwd(contiguous::<f32>(s, l)?)),
            _ => f64::storage(op.fwd(contiguous::<f64>(s, l)?)),
        };
        Ok((out, l.shape().clone()))
    }

    pub(crate) fn vec_f64(t: &Tensor) -> CResult<Vec<f64>> {
        t.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1()
    }

    /// RMS norm or LayerNorm over the last dimension with a frozen weight
    /// (and bias); the backward gives the input gradient only.
    pub fn norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, layer_norm: bool, eps: f64) -> CResult<Tensor> {
        let op = Norm { w: vec_f64(weight)?, b: bias.map(vec_f64).transpose()?, layer_norm, eps };
        x.contiguous()?.apply_op1(op)
    }

    struct Norm {
        w: Vec<f64>,
        b: Option<Vec<f64>>,
        layer_norm: bool,
        eps: f64,
    }

    impl Norm {
        /// (mean, 1/σ) of a row.
        fn stats<T: Float>(&self, row: &[T]) -> (T, T) {
            let n = row.len() as f64;
            let mean = if self.layer_norm { row.iter().map(|v| v.to_f64()).sum::<f64>() / n } else { 0.0 };
            let var = row.iter().map(|v| (v.to_f64() - mean) * (v.to_f64() - mean)).sum::<f64>() / n;
            (T::of(mean), T::of(1.0 / (var + self.eps).sqrt()))
        }

        fn norm_fwd<T: Float>(&self, xs: &[T]) -> Vec<T> {
            let d = self.w.len();
            let w: Vec<T> = self.w.iter().map(|v| T::of(*v)).collect();
            let b: Option<Vec<T>> = self.b.as_ref().map(|b| b.iter().map(|v| T::of(*v)).collect());
            par_rows(xs.len() / d, d, |r, o| {
                let row = &xs[r * d..(r + 1) * d];
                let (mean, inv) = self.stats(row);
                for i in 0..d {
                    o[i] = (row[i] - mean) * inv * w[i] + b.as_ref().map_or(T::of(0.0), |b| b[i]);
                }
            })
        }

        fn bwd<T: Float>(&self, xs: &[T], gs: &[T]) -> Vec<T> {
            let d = self.w.len();
            let w: Vec<T> = self.w.iter().map(|v| T::of(*v)).collect();
            par_rows(xs.len() / d, d, |r, o| {
                let (row, g) = (&xs[r * d..(r + 1) * d], &gs[r * d..(r + 1) * d]);
                let (mean, inv) = self.stats(row);
                let (mut sum_gy, mut sum_gy_xhat) = (0f64, 0f64);
                for i in 0..d {
                    let gy = (g[i] * w[i]).to_f64();
                    sum_gy += gy;
                    sum_gy_xhat += gy * ((row[i] - mean) * inv).to_f64();
                }
                let mean_gy = T::of(if self.layer_norm { sum_gy / d as f64 } else { 0.0 });
                let mean_gy_xhat = T::of(sum_gy_xhat / d as f64);
                for i in 0..d {
                    let xhat = (row[i] - mean) * inv;
                    o[i] = inv * (g[i] * w[i] - mean_gy - xhat * mean_gy_xhat);
                }
            })
        }
    }

    impl CustomOp1 for Norm {
        fn name(&self) -> &'static str {
            "norm"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
            cpu_forward(self, s, l)
        }

        fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
            let g = grad.to_dtype(arg.dtype())?.contiguous()?;
            let out = dispatch!(arg, |xs: T| {
                let gs: Vec<T> = g.flatten_all()?.to_vec1()?;
                Tensor::from_vec(self.bwd(xs, &gs), arg.shape(), arg.device())?
            });
            Ok(Some(out))
        }
    }

    /// `silu(gate) · up` with both gradients.
    pub fn silu_mul(gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
    }

    struct SiluMul;

    /// Elements per parallel work item of [`SiluMul`].
    const SILU_CHUNK: usize = 4096;

    impl CustomOp2 for SiluMul {
        fn name(&self) -> &'static str {
            "silu-mul"
        }

        fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
            fn go<T: Float>(g: &[T], u: &[T]) -> Vec<T> {
                let n = g.len();
                let mut out = par_rows(n.div_ceil(SILU_CHUNK), SILU_CHUNK, |c, o| {
                    let at = c * SILU_CHUNK;
                    let len = SILU_CHUNK.min(n - at);
                    let (g, u, o) = (&g[at..at + len], &u[at..at + len], &mut o[..len]);
                    sigmoid_into(g, o);
                    for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                        *o = *g * *o * *u;
                    }
                });
                out.truncate(n);
                out
            }
            let out = match s1 {
                CpuStorage::F32(_) => f32::storage(go(contiguous::<f32>(s1, l1)?, contiguous::<f32>(s2, l2)?)),
                _ => f64::storage(go(contiguous::<f64>(s1, l1)?, contiguous::<f64>(s2, l2)?)),
            };
            Ok((out, l1.shape().clone()))
        }

        fn bwd(
            &self,
            a: &Tensor,
            b: &Tensor,
            _res: &Tensor,
            grad: &Tensor,
        ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
            let u = b.to_dtype(a.dtype())?.contiguous()?;
            let dy = grad.to_dtype(a.dtype())?.contiguous()?;
            let (dg, du) = dispatch!(a, |g: T| {
                let (u, dy) = (&*u.flatten_all()?.to_vec1::<T>()?, &*dy.flatten_all()?.to_vec1::<T>()?);
                let n = g.len();
                let mut dg = vec![T::of(0.0); n];
                let mut du = vec![T::of(0.0); n];
                let (pg, pu) = (Ptr(dg.as_mut_ptr()), Ptr(du.as_mut_ptr()));
                let work = |chunks: std::ops::Range<usize>| {
                    let (pg, pu) = (&pg, &pu);
                    let mut s = vec![T::of(0.0); SILU_CHUNK];
                    for c in chunks {
                        let at = c * SILU_CHUNK;
                        let len = SILU_CHUNK.min(n - at);
                        // SAFETY: each chunk owns its range of both outputs.
                        let (dg, du) = unsafe {
                            (
                                std::slice::from_raw_parts_mut(pg.0.add(at), len),
                                std::slice::from_raw_parts_mut(pu.0.add(at), len),
                            )
                        };
                        let s = &mut s[..len];
                        sigmoid_into(&g[at..at + len], s);
                        for i in 0..len {
                            let (x, s, dy) = (g[at + i], s[i], dy[at + i]);
                            du[i] = dy * x * s;
                            dg[i] = dy * u[at + i] * s * (T::of(1.0) + x * (T::of(1.0) - s));
                        }
                    }
                };
                let chunks = n.div_ceil(SILU_CHUNK);
                if chunks < 2 {
                    work(0..chunks);
                } else {
                    candle_core::utils::barrier_pool().execute_chunked(chunks, work);
                }
                (Tensor::from_vec(dg, a.shape(), a.device())?, Tensor::from_vec(du, a.shape(), a.device())?)
            });
            Ok((Some(dg), Some(du.to_dtype(b.dtype())?)))
        }
    }

    /// Softmax over the last dimension; −∞ entries get zero weight.
    pub fn softmax_last(x: &Tensor) -> CResult<Tensor> {
        let d = x.dim(candle_core::D::Minus1)?;
        x.contiguous()?.apply_op1(Softmax(d))
    }

    struct Softmax(usize);

    impl Softmax {
        fn softmax_fwd<T: Float>(&self, xs: &[T]) -> Vec<T> {
            let d = self.0;
            par_rows(xs.len() / d, d, |r, o| {
                let row = &xs[r * d..(r + 1) * d];
                let max = row.iter().fold(T::of(f64::NEG_INFINITY), |m, v| if *v > m { *v } else { m });
                o.copy_from_slice(row);
                normalize_exp(o, max);
            })
        }

        fn bwd<T: Float>(&self, ys: &[T], gs: &[T]) -> Vec<T> {
            let d = self.0;
            par_rows(ys.len() / d, d, |r, o| {
                let (y, g) = (&ys[r * d..(r + 1) * d], &gs[r * d..(r + 1) * d]);
                let dot = T::of(y.iter().zip(g).map(|(a, b)| (*a * *b).to_f64()).sum::<f64>());
                for i in 0..d {
                    o[i] = y[i] * (g[i] - dot);
                }
            })
        }
    }

    impl CustomOp1 for Softmax {
        fn name(&self) -> &'static str {
            "softmax"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
            cpu_forward(self, s, l)
        }

        fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
            let g = grad.to_dtype(res.dtype())?.contiguous()?;
            let out = dispatch!(res, |ys: T| {
                let gs: Vec<T> = g.flatten_all()?.to_vec1()?;
                Tensor::from_vec(self.bwd(ys, &gs), res.shape(), res.device())?
            });
            Ok(Some(out))
        }
    }

    /// Rotary embedding (as [`super::rope`]) whose backward rotates the
    /// gradient back by the same angles.
    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, rotary_dim: usize, interleaved: bool) -> CResult<Tensor> {
        let (_, heads, t, d) = x.dims4()?;
        let op = Rope {
            cos: vec_f64(cos)?,
            sin: vec_f64(sin)?,
            r: rotary_dim,
            interleaved,
            per_row: cos.rank() == 4,
            heads,
            t,
            d,
            token_major: false,
        };
        x.contiguous()?.apply_op1(op)
    }

    /// Rotary tables and the layout of the rows they rotate: b × heads × t
    /// × d, or b × t × heads × d when `token_major`.
    pub(crate) struct Rope {
        pub(crate) cos: Vec<f64>,
        pub(crate) sin: Vec<f64>,
        pub(crate) r: usize,
        pub(crate) interleaved: bool,
        /// One table per batch row (b × t positions) rather than per position.
        pub(crate) per_row: bool,
        pub(crate) heads: usize,
        pub(crate) t: usize,
        pub(crate) d: usize,
        pub(crate) token_major: bool,
    }

    impl Rope {
        /// Rotates every row by +θ (`sign` 1) or −θ (`sign` −1).
        pub(crate) fn rotate<T: Float>(&self, xs: &[T], sign: f64) -> Vec<T> {
            let (r, half, t, d) = (self.r, self.r / 2, self.t, self.d);
            let cos: Vec<T> = self.cos.iter().map(|v| T::of(*v)).collect();
            let sin: Vec<T> = self.sin.iter().map(|v| T::of(*v * sign)).collect();
            par_rows(xs.len() / d, d, |row, dst| {
                let src = &xs[row * d..(row + 1) * d];
                dst.copy_from_slice(src);
                // The token (b · t + position) this row belongs to.
                let token = if self.token_major { row / self.heads } else { (row / (self.heads * t)) * t + row % t };
                let pos = if self.per_row { token } else { token % t };
                let (c, s) = (&cos[pos * r..(pos + 1) * r], &sin[pos * r..(pos + 1) * r]);
                for j in 0..half {
                    let (i0, i1) = if self.interleaved { (2 * j, 2 * j + 1) } else { (j, j + half) };
                    let (a, b) = (src[i0], src[i1]);
                    dst[i0] = a * c[i0] - b * s[i0];
                    dst[i1] = b * c[i1] + a * s[i1];
                }
            })
        }
    }

    impl CustomOp1 for Rope {
        fn name(&self) -> &'static str {
            "rope"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
            cpu_forward(self, s, l)
        }

        fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
            let g = grad.to_dtype(arg.dtype())?;
            let out = dispatch!(g, |gs: T| Tensor::from_vec(self.rotate(gs, -1.0), arg.shape(), arg.device())?);
            Ok(Some(out))
        }
    }

    /// Attention for training: `softmax(q kᵀ · scale + bias) v` where the
    /// `rep` query heads of a group are extra rows of `q` (b × kv heads ×
    /// rep·t × d) and `bias` (no gradient) broadcasts to b × heads × t × total.
    /// Only q, k and v are kept for the backward pass, which recomputes the
    /// probabilities one layer at a time: no b × heads × t × total tensor
    /// stays alive between the passes.
    pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, heads: usize, scale: f64) -> CResult<Tensor> {
        let (t, total) = (q.dim(2)? * q.dim(1)? / heads, k.dim(2)?);
        let mut dims = bias.dims().to_vec();
        while dims.len() < 4 {
            dims.insert(0, 1);
        }
        let (bb, bh) = (dims[0], dims[1]);
        let bias = bias.reshape(dims)?.broadcast_as((bb, bh, t, total))?.to_dtype(candle_core::DType::F64)?;
        let op = Attention { bias: bias.flatten_all()?.to_vec1()?, bb, bh, heads, t, total, scale };
        q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
    }

    struct Attention {
        /// bb × bh × t × total, bb ∈ {1, b}, bh ∈ {1, heads}.
        bias: Vec<f64>,
        bb: usize,
        bh: usize,
        heads: usize,
        t: usize,
        total: usize,
        scale: f64,
    }

    /// A contiguous CPU storage as an untracked tensor.
    fn tensor_of(s: &CpuStorage, l: &Layout) -> CResult<Tensor> {
        let dev = candle_core::Device::Cpu;
        match s {
            CpuStorage::F32(_) => Tensor::from_slice(contiguous::<f32>(s, l)?, l.shape(), &dev),
            _ => Tensor::from_slice(contiguous::<f64>(s, l)?, l.shape(), &dev),
        }
    }

    impl Attention {
        /// The bias row of score row `r` (rows ordered b, head, query).
        fn bias_row(&self, r: usize) -> &[f64] {
            let (bi, h, i) = (r / (self.heads * self.t), (r / self.t) % self.heads, r % self.t);
            let (bi, h) = (if self.bb == 1 { 0 } else { bi }, if self.bh == 1 { 0 } else { h });
            let at = ((bi * self.bh + h) * self.t + i) * self.total;
            &self.bias[at..at + self.total]
        }

        /// The attention probabilities (b × kv heads × rep·t × total): scale,
        /// bias and softmax in one pass over the raw scores.
        fn probs<T: Float>(&self, q: &Tensor, k: &Tensor) -> CResult<Tensor> {
            let raw = q.matmul(&k.t()?)?;
            let shape = raw.shape().clone();
            let raw: Vec<T> = raw.flatten_all()?.to_vec1()?;
            let n = self.total;
            let scale = T::of(self.scale);
            let out = par_rows(raw.len() / n, n, |r, o| {
                let bias = self.bias_row(r);
                let mut max = T::of(f64::NEG_INFINITY);
                for ((o, x), b) in o.iter_mut().zip(&raw[r * n..(r + 1) * n]).zip(bias) {
                    *o = *x * scale + T::of(*b);
                    if *o > max {
                        max = *o;
                    }
                }
                if max == T::of(f64::NEG_INFINITY) {
                    // A row that sees no key attends to nothing.
                    o.iter_mut().for_each(|v| *v = T::of(0.0));
                    return;
                }
                normalize_exp(o, max);
            });
            Tensor::from_vec(out, shape, q.device())
        }

        fn backward<T: Float>(&self, q: &Tensor, k: &Tensor, v: &Tensor, g: &Tensor) -> CResult<[Tensor; 3]> {
            let p = self.probs::<T>(q, k)?;
            let dv = p.t()?.matmul(g)?;
            let dp = g.matmul(&v.t()?)?;
            let shape = dp.shape().clone();
            let (pv, dpv): (Vec<T>, Vec<T>) = (p.flatten_all()?.to_vec1()?, dp.flatten_all()?.to_vec1()?);
            drop((p, dp));
            let n = self.total;
            let scale = T::of(self.scale);
            // dS = P ⊙ (dP − rowsum(dP ⊙ P)), with the scale of the scores folded in.
            let ds = par_rows(pv.len() / n, n, |r, o| {
                let (p, dp) = (&pv[r * n..(r + 1) * n], &dpv[r * n..(r + 1) * n]);
                let dot = T::of(p.iter().zip(dp).map(|(a, b)| (*a * *b).to_f64()).sum::<f64>());
                for ((o, p), dp) in o.iter_mut().zip(p).zip(dp) {
                    *o = *p * (*dp - dot) * scale;
                }
            });
            drop((pv, dpv));
            let ds = Tensor::from_vec(ds, shape, q.device())?;
            Ok([ds.matmul(k)?, ds.t()?.matmul(q)?, dv])
        }
    }

    impl candle_core::CustomOp3 for Attention {
        fn name(&self) -> &'static str {
            "attention"
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
            let (q, k, v) = (tensor_of(s1, l1)?, tensor_of(s2, l2)?, tensor_of(s3, l3)?);
            let (storage, out) = match s1 {
                CpuStorage::F32(_) => {
                    let out = self.probs::<f32>(&q, &k)?.matmul(&v)?;
                    (f32::storage(out.flatten_all()?.to_vec1()?), out)
                }
                _ => {
                    let out = self.probs::<f64>(&q, &k)?.matmul(&v)?;
                    (f64::storage(out.flatten_all()?.to_vec1()?), out)
                }
            };
            Ok((storage, out.shape().clone()))
        }

        fn bwd(
            &self,
            q: &Tensor,
            k: &Tensor,
            v: &Tensor,
            _res: &Tensor,
            grad: &Tensor,
        ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let (q, k, v) = (q.detach(), k.detach(), v.detach());
            let g = grad.detach().to_dtype(q.dtype())?.contiguous()?;
            let [dq, dk, dv] = match q.dtype() {
                candle_core::DType::F32 => self.backward::<f32>(&q, &k, &v, &g)?,
                _ => self.backward::<f64>(&q, &k, &v, &g)?,
            };
            Ok((Some(dq), Some(dk), Some(dv)))
        }
    }
}
