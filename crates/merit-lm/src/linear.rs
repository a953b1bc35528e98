//! Linear layers with a frozen base weight and an optional trainable LoRA
//! adapter.
//!
//! The base weight is never trained, so its product runs as a custom op
//! ([`Frozen`]) whose backward computes only the input gradient `g W`:
//! candle's own matmul backward would also compute the (unused) weight
//! gradient, which doubles the cost of a LoRA backward pass, and its
//! quantized matmul has no backward at all. Quantized weights
//! ([`QWeight`]) stay quantized in both directions.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::nf4::Nf4Weight;
use crate::quant::QWeight;

type CResult<T> = candle_core::Result<T>;

/// A frozen weight matrix, out × in (Hugging Face layout).
#[derive(Debug, Clone)]
pub enum Weight {
    Dense(Tensor),
    /// GGUF blocks, as stored.
    Quant(QWeight),
    /// NF4 with double-quantized maxima (QLoRA on a Hugging Face base).
    Nf4(Nf4Weight),
}

impl Weight {
    /// (out, in).
    pub fn dims2(&self) -> CResult<(usize, usize)> {
        match self {
            Weight::Dense(t) => t.dims2(),
            Weight::Quant(q) => Ok((q.rows, q.cols)),
            Weight::Nf4(q) => Ok((q.rows, q.cols)),
        }
    }

    /// The matrix in f32 (or the dense weight's own dtype).
    pub fn dequantize(&self) -> CResult<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.clone()),
            Weight::Quant(q) => q.dequantize(),
            Weight::Nf4(q) => q.dequantize(),
        }
    }

    /// Rows `[start, start + n)`.
    pub fn narrow_rows(&self, start: usize, n: usize) -> CResult<Weight> {
        Ok(match self {
            Weight::Dense(t) => Weight::Dense(t.narrow(0, start, n)?.contiguous()?),
            Weight::Quant(q) => Weight::Quant(q.narrow_rows(start, n)?),
            Weight::Nf4(q) => Weight::Nf4(q.narrow_rows(start, n)?),
        })
    }

    /// The rows at `rows`, in that order.
    pub fn select_rows(&self, rows: &[usize]) -> CResult<Weight> {
        Ok(match self {
            Weight::Dense(t) => {
                let index =
                    Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), t.device())?;
                Weight::Dense(t.index_select(&index, 0)?)
            }
            Weight::Quant(q) => Weight::Quant(q.select_rows(rows)?),
            Weight::Nf4(q) => Weight::Nf4(q.select_rows(rows)?),
        })
    }

    /// `x Wᵀ`, no gradient tracking.
    pub(crate) fn product(&self, x: &Tensor) -> CResult<Tensor> {
        match self {
            Weight::Dense(w) => x.broadcast_matmul(&w.t()?),
            Weight::Quant(q) => with_f32_rows(x, |rows, m| q.matmul_rows(rows, m), q.rows),
            Weight::Nf4(q) => q.forward(x),
        }
    }

    /// `g W`: the gradient of `x Wᵀ` with respect to `x`.
    pub(crate) fn input_grad(&self, g: &Tensor) -> CResult<Tensor> {
        match self {
            Weight::Dense(w) => g.broadcast_matmul(w),
            Weight::Quant(q) => q.backward_input(g),
            Weight::Nf4(q) => q.backward_input(g),
        }
    }
}

/// Runs `f` on the rows of `x` (… × in) as one f32 slice and shapes its
/// output (rows × out) back to … × out.
fn with_f32_rows(x: &Tensor, f: impl FnOnce(&[f32], usize) -> CResult<Vec<f32>>, out_dim: usize) -> CResult<Tensor> {
    let mut shape = x.dims().to_vec();
    let k = shape.pop().unwrap_or(1);
    let m = x.elem_count() / k.max(1);
    let out = crate::fused::with_slice(&x.to_dtype(DType::F32)?, |rows| f(rows, m))?;
    shape.push(out_dim);
    Tensor::from_vec(out, shape, x.device())?.to_dtype(x.dtype())
}

thread_local! {
    /// Set inside [`no_grad`]: adapters run detached, so nothing is recorded for a backward pass.
    static NO_GRAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with adapters detached from their variables: a forward pass that
/// builds no graph (gradient checkpointing runs each layer once like this
/// and again, with a graph, in the backward pass).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_GRAD.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(NO_GRAD.with(|g| g.replace(true)));
    f()
}

/// The frozen product `x Wᵀ` as an op with an input-only backward.
struct Frozen(Weight);

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CResult<(CpuStorage, Shape)> {
        if let Weight::Dense(w) = &self.0 {
            return crate::dense::frozen_forward(w, storage, layout);
        }
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::msg("frozen linear: input not contiguous"))?;
        let dims = layout.shape().dims();
        let x = match storage {
            CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
            _ => candle_core::bail!("frozen linear: only f32 and f64 inputs are supported"),
        };
        let y = self.0.product(&x)?;
        let shape = y.shape().clone();
        let flat = y.flatten_all()?;
        let out = match y.dtype() {
            DType::F64 => CpuStorage::F64(flat.to_vec1()?),
            _ => CpuStorage::F32(flat.to_vec1()?),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(self.0.input_grad(grad_res)?))
    }
}

/// A linear layer `y = x Wᵀ + b (+ LoRA)`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
    /// A trainable low-rank update, when one is attached.
    pub lora: Option<Lora>,
    /// Adapters of some rows of a batch each (serving several adapters in
    /// one forward pass, see [`crate::Decoder::set_row_adapters`]).
    pub row_loras: Vec<RowLora>,
    /// `row_loras` packed for the CPU kernel (set with them, on the CPU).
    pub row_pack: Option<std::sync::Arc<RowPack>>,
}

/// An adapter applied to the batch rows `rows` (u32 indices) only.
#[derive(Debug, Clone)]
pub struct RowLora {
    pub rows: Tensor,
    pub lora: Lora,
}

/// The row adapters of a layer packed for the CPU kernel [`RowPack::delta`]:
/// per batch row its adapter (if any) as f32 A (r × in) and scale·B (out × r).
#[derive(Debug, Clone)]
pub struct RowPack {
    /// Index into `adapters` of each batch row.
    pub slot: Vec<Option<usize>>,
    /// (rank, A, scale · B) per adapter.
    pub adapters: Vec<(usize, Vec<f32>, Vec<f32>)>,
    pub out_dim: usize,
}

impl RowPack {
    /// Packs `groups` (CPU f32 copies; B sliced and scaled as [`Lora`] uses it).
    pub fn new(groups: &[RowLora], batch: usize) -> CResult<RowPack> {
        let mut slot = vec![None; batch];
        let mut adapters = Vec::with_capacity(groups.len());
        let mut out_dim = 0;
        for (k, g) in groups.iter().enumerate() {
            let l = &g.lora;
            let a = l.a.as_tensor().to_dtype(DType::F32)?;
            let b = match &l.rows {
                None => l.b.as_tensor().clone(),
                Some(LoraRows::Range(start, n)) => l.b.narrow(0, *start, *n)?,
                Some(LoraRows::Index(ix)) => l.b.index_select(ix, 0)?,
            };
            let b = (b.to_dtype(DType::F64)? * l.scale)?.to_dtype(DType::F32)?;
            let (rank, out) = (a.dim(0)?, b.dim(0)?);
            out_dim = out;
            adapters.push((rank, a.flatten_all()?.to_vec1()?, b.flatten_all()?.to_vec1()?));
            for r in g.rows.to_vec1::<u32>()? {
                match slot.get_mut(r as usize) {
                    Some(s) => *s = Some(k),
                    None => candle_core::bail!("adapter row {r} is outside the batch of {batch}"),
                }
            }
        }
        Ok(RowPack { slot, adapters, out_dim })
    }

    /// The low-rank delta of every row of `x` (b × t × in, f32 contiguous):
    /// b × t × out, zero for rows without an adapter.
    fn delta(&self, x: &[f32], (b, t, inp): (usize, usize, usize)) -> Vec<f32> {
        let out = self.out_dim;
        let mut y = vec![0f32; b * t * out];
        let mut u = Vec::new();
        for (row, slot) in self.slot.iter().enumerate().take(b) {
            let Some((rank, a, bm)) = slot.map(|k| &self.adapters[k]) else { continue };
            for j in 0..t {
                let at = row * t + j;
                let xv = &x[at * inp..(at + 1) * inp];
                u.clear();
                u.extend((0..*rank).map(|k| crate::fused::dot(&a[k * inp..(k + 1) * inp], xv)));
                for (o, yo) in y[at * out..(at + 1) * out].iter_mut().enumerate() {
                    *yo = crate::fused::dot(&bm[o * rank..(o + 1) * rank], &u);
                }
            }
        }
        y
    }
}

/// A LoRA adapter on a linear layer: `y += scale · (dropout(x) Aᵀ) Bᵀ`,
/// A: r × in, B: out × r.
#[derive(Debug, Clone)]
pub struct Lora {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    /// Dropout on the adapter's input while training (PEFT's `lora_dropout`).
    pub dropout: Option<Dropout>,
    /// The rows of B this layer uses, when one adapter spans a fused module
    /// split into several layers (GPT-2's `c_attn`: q, k and v share A and B).
    pub rows: Option<LoraRows>,
}

/// A slice of a fused adapter's B rows.
#[derive(Debug, Clone)]
pub enum LoraRows {
    Range(usize, usize),
    Index(Tensor),
}

/// Inverted dropout with its own seeded generator, so a training run is
/// repeatable; it is active only while [`Dropout::set_training`] is on.
#[derive(Debug, Clone)]
pub struct Dropout {
    pub p: f64,
    state: Arc<Mutex<(bool, rand::rngs::StdRng)>>,
}

impl Dropout {
    pub fn new(p: f64, seed: u64) -> Dropout {
        Dropout { p, state: Arc::new(Mutex::new((false, rand::rngs::StdRng::seed_from_u64(seed)))) }
    }

    pub fn set_training(&self, on: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.0 = on;
        }
    }

    /// Restarts the generator from `seed` (a trainer reseeds every step, so a
    /// resumed run draws the same masks as an uninterrupted one).
    pub fn reseed(&self, seed: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.1 = rand::rngs::StdRng::seed_from_u64(seed);
        }
    }

    fn apply(&self, x: &Tensor) -> CResult<Tensor> {
        let Ok(mut state) = self.state.lock() else { return Ok(x.clone()) };
        if !state.0 || self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let rng = &mut state.1;
        let mask: Vec<f32> =
            (0..x.elem_count()).map(|_| if rng.random::<f64>() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x.mul(&mask)
    }
}

/// Applies several layers to the same input; when they are all quantized
/// and carry no adapter (inference), one shared pass computes them all.
pub fn forward_many<const N: usize>(layers: [&Linear; N], x: &Tensor) -> CResult<[Tensor; N]> {
    let quantized: Option<Vec<&QWeight>> = if crate::fused::fast(x) {
        layers
            .iter()
            .map(|l| match (&l.weight, &l.lora) {
                (Weight::Quant(q), None) if l.row_loras.is_empty() => Some(q),
                _ => None,
            })
            .collect()
    } else {
        None
    };
    let outs: Vec<Tensor> = match quantized {
        Some(qs) => {
            let mut shape = x.dims().to_vec();
            let k = shape.pop().unwrap_or(1);
            let m = x.elem_count() / k.max(1);
            let rows = crate::fused::with_slice(x, |xs| QWeight::matmul_many(&qs, xs, m))?;
            let mut outs = Vec::with_capacity(N);
            for ((l, q), out) in layers.iter().zip(&qs).zip(rows) {
                let mut s = shape.clone();
                s.push(q.rows);
                let y = Tensor::from_vec(out, s, x.device())?;
                outs.push(match &l.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                });
            }
            outs
        }
        None => layers.iter().map(|l| l.forward(x)).collect::<CResult<_>>()?,
    };
    outs.try_into().map_err(|_| candle_core::Error::msg("forward_many: wrong number of outputs"))
}

impl Linear {
    pub fn plain(weight: Weight, bias: Option<Tensor>) -> Linear {
        Linear { weight, bias, lora: None, row_loras: Vec::new(), row_pack: None }
    }

    pub fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        if let Some(y) = self.fused_lora(x)? {
            return match &self.bias {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            };
        }
        let mut y = if x.track_op() && x.device().is_cpu() {
            x.contiguous()?.apply_op1(Frozen(self.weight.clone()))?
        } else {
            self.weight.product(x)?
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            y = (y + l.delta(x)?)?;
        }
        // Several adapters in one pass: on the CPU one kernel computes every
        // row's delta with its own adapter (BGMV-style); elsewhere each
        // group's rows are gathered and their delta added back (SGMV-style).
        if let (Some(pack), true) = (&self.row_pack, x.rank() == 3 && crate::fused::fast(x)) {
            let dims = x.dims3()?;
            let d = crate::fused::with_slice(&x.to_dtype(DType::F32)?, |xs| Ok(pack.delta(xs, dims)))?;
            let d = Tensor::from_vec(d, (dims.0, dims.1, pack.out_dim), x.device())?;
            let d = d.to_dtype(y.dtype())?;
            return y + d;
        }
        for g in &self.row_loras {
            let delta = g.lora.delta(&x.index_select(&g.rows, 0)?)?;
            y = y.index_add(&g.rows, &delta.to_dtype(y.dtype())?, 0)?;
        }
        Ok(y)
    }
}

impl Lora {
    /// `scale · (dropout(x) Aᵀ) Bᵀ`, B's rows sliced for a split fused module.
    fn delta(&self, x: &Tensor) -> CResult<Tensor> {
        let input = match &self.dropout {
            Some(d) => d.apply(x)?,
            None => x.clone(),
        };
        let tracked = !NO_GRAD.with(|g| g.get());
        let var = |v: &Var| if tracked { v.as_tensor().clone() } else { v.as_tensor().detach() };
        let (a, b) = (var(&self.a), var(&self.b));
        let b = match &self.rows {
            None => b,
            Some(LoraRows::Range(start, n)) => b.narrow(0, *start, *n)?,
            Some(LoraRows::Index(ix)) => b.index_select(ix, 0)?,
        };
        input.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)? * self.scale
    }
}

impl Linear {
    /// Training on the CPU with a plain adapter (no dropout, no row slice):
    /// the whole product as one op, [`crate::dense::LoraProduct`].
    fn fused_lora(&self, x: &Tensor) -> CResult<Option<Tensor>> {
        let Some(l) = &self.lora else { return Ok(None) };
        if !self.row_loras.is_empty() {
            return Ok(None);
        }
        let dtype_ok = matches!(x.dtype(), DType::F32 | DType::F64)
            && match &self.weight {
                Weight::Dense(w) => w.dtype() == x.dtype(),
                Weight::Quant(_) | Weight::Nf4(_) => true,
            };
        let detached = NO_GRAD.with(|g| g.get());
        if detached || !x.device().is_cpu() || !dtype_ok || l.dropout.is_some() || l.rows.is_some() {
            return Ok(None);
        }
        let op = crate::dense::LoraProduct { weight: self.weight.clone(), scale: l.scale };
        Ok(Some(x.contiguous()?.apply_op3(l.a.as_tensor(), l.b.as_tensor(), op)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    fn lin(weight: Weight) -> (Linear, Var) {
        let (out, inp) = weight.dims2().unwrap();
        let a = Var::from_tensor(&Tensor::randn(0f32, 0.5, (2, inp), &Device::Cpu).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, (out, 2), &Device::Cpu).unwrap()).unwrap();
        let mut l = Linear::plain(weight, None);
        l.lora = Some(Lora { a: a.clone(), b, scale: 2.0, dropout: None, rows: None });
        (l, a)
    }

    /// The frozen op gives the same input gradient as a plain matmul, and
    /// leaves no gradient for the base weight (a plain matmul would).
    #[test]
    fn frozen_weight_gets_no_gradient() {
        let w = Tensor::randn(0f32, 1.0, (6, 64), &Device::Cpu).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 64), &Device::Cpu).unwrap()).unwrap();
        let (l, a) = lin(Weight::Dense(w.clone()));
        let grads = l.forward(x.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let weight_shaped = |g: &candle_core::backprop::GradStore| {
            g.get_ids().filter_map(|id| g.get_id(*id)).filter(|t| t.dims() == [64, 6] || t.dims() == [6, 64]).count()
        };
        assert_eq!(weight_shaped(&grads), 0, "a gradient for the base weight was computed");
        assert!(grads.get(&a).is_some());
        let gx = grads.get(&x).unwrap();
        // The same loss through a plain matmul: same input gradient, but a weight gradient too.
        let lora = l.lora.as_ref().unwrap();
        let delta =
            x.broadcast_matmul(&lora.a.t().unwrap()).unwrap().broadcast_matmul(&lora.b.t().unwrap()).unwrap() * 2.0;
        let wt = w.t().unwrap();
        let plain = (x.broadcast_matmul(&wt).unwrap() + delta.unwrap()).unwrap();
        let pg = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(pg.get(&wt).is_some(), "candle's matmul computes the weight gradient");
        assert_eq!(weight_shaped(&pg), 1);
        let diff = (pg.get(&x).unwrap() - gx).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-3, "{diff}");
    }

    /// QLoRA: the quantized base (GGUF blocks or NF4) passes gradients to
    /// the adapter and input, and gets none itself.
    #[test]
    fn quantized_base_trains_the_adapter() {
        let w = Tensor::randn(0f32, 1.0, (8, 64), &Device::Cpu).unwrap();
        let weights = [
            Weight::Quant(QWeight::quantize(&w, GgmlDType::Q4_1).unwrap()),
            Weight::Nf4(Nf4Weight::quantize(&w).unwrap()),
        ];
        for weight in weights {
            let deq = weight.dequantize().unwrap();
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 64), &Device::Cpu).unwrap()).unwrap();
            let (l, a) = lin(weight);
            let grads = l.forward(x.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(grads.get(&a).is_some());
            let weight_shaped = grads.get_ids().filter_map(|id| grads.get_id(*id)).filter(|t| t.dims() == [8, 64]);
            assert_eq!(weight_shaped.count(), 0);
            // d(sum(x Wᵀ + …))/dx = column sums of W plus the adapter's part.
            let lora = l.lora.as_ref().unwrap();
            let ones = Tensor::ones((2, 8), DType::F32, &Device::Cpu).unwrap();
            let want = (ones.matmul(&deq).unwrap()
                + (ones.matmul(lora.b.as_tensor()).unwrap().matmul(lora.a.as_tensor()).unwrap() * 2.0).unwrap())
            .unwrap();
            let diff =
                (grads.get(&x).unwrap() - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-3, "{diff}");
        }
    }

    #[test]
    fn dropout_is_seeded_and_only_on_while_training() {
        let x = Tensor::ones((4, 100), DType::F32, &Device::Cpu).unwrap();
        let d = Dropout::new(0.25, 7);
        assert_eq!(d.apply(&x).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 400.0);
        d.set_training(true);
        let a = d.apply(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let zeros = a.iter().filter(|v| **v == 0.0).count();
        assert!((50..150).contains(&zeros), "{zeros} of 400 dropped at p = 0.25");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-6));
        let e = Dropout::new(0.25, 7);
        e.set_training(true);
        assert_eq!(e.apply(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), a);
    }
}
