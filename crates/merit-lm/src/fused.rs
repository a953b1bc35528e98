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
fn dot(a: &[f32], b: &[f32]) -> f32 {
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
