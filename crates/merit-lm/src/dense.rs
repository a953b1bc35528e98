//! Dense products for training, run straight through `gemm` on candle's
//! storage: no copies of the input or output, and a LoRA layer's whole
//! product `x Wᵀ + s·(x Aᵀ) Bᵀ` written into one buffer ([`LoraProduct`]),
//! where candle's ops would allocate a tensor for every step of it (and in
//! the backward pass again for every gradient).
//!
//! A frozen weight may be stored transposed (a strided view, see
//! [`crate::model::Decoder::layout_for_training`]): gemm packs a row-major
//! right-hand side much faster than a transposed one for some shapes, and
//! [`Mat`] reads either.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};

use crate::fused::train::Float;
use crate::linear::Weight;

type CResult<T> = candle_core::Result<T>;

/// A matrix in a slice: element (i, j) at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// `data` as a row-major `rows × cols` matrix.
    pub(crate) fn rows(data: &'a [T], rows: usize, cols: usize) -> CResult<Mat<'a, T>> {
        Mat { data, rows, cols, rs: cols, cs: 1 }.checked()
    }

    /// `rows × cols` of `data` with element (i, j) at `i * rs + j * cs`.
    pub(crate) fn strided(data: &'a [T], rows: usize, cols: usize, rs: usize, cs: usize) -> CResult<Mat<'a, T>> {
        Mat { data, rows, cols, rs, cs }.checked()
    }

    /// The transpose (a view).
    pub(crate) fn t(self) -> Mat<'a, T> {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// Every element the strides reach lies inside `data`.
    fn checked(self) -> CResult<Self> {
        let last = match (self.rows, self.cols) {
            (0, _) | (_, 0) => 0,
            (r, c) => (r - 1) * self.rs + (c - 1) * self.cs + 1,
        };
        if last > self.data.len() {
            candle_core::bail!("dense product: a {}×{} matrix does not fit its storage", self.rows, self.cols);
        }
        Ok(self)
    }
}

/// Runs `f` on a 2-D CPU tensor as a [`Mat`] of its own strides (no copy).
pub(crate) fn with_mat<T: Float, R>(t: &Tensor, f: impl FnOnce(Mat<'_, T>) -> CResult<R>) -> CResult<R> {
    let (rows, cols) = t.dims2()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("dense product: CPU tensors only") };
    let data = T::slice(cpu).ok_or_else(|| candle_core::Error::msg("dense product: dtype mismatch"))?;
    let stride = layout.stride();
    let m = Mat { data: &data[layout.start_offset()..], rows, cols, rs: stride[0], cs: stride[1] };
    f(m.checked()?)
}

/// Runs `f` on a tensor made contiguous, as a row-major matrix of its last
/// dimension (… × d → rows × d).
fn with_rows<T: Float, R>(t: &Tensor, f: impl FnOnce(Mat<'_, T>) -> CResult<R>) -> CResult<R> {
    let t = t.contiguous()?;
    let d = t.dim(candle_core::D::Minus1)?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("dense product: CPU tensors only") };
    f(storage_rows(cpu, layout, d)?)
}

/// A contiguous op input as a row-major matrix of its last dimension `d`.
fn storage_rows<'a, T: Float>(s: &'a CpuStorage, l: &Layout, d: usize) -> CResult<Mat<'a, T>> {
    let (start, end) =
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::msg("dense product: not contiguous"))?;
    let data = &T::slice(s).ok_or_else(|| candle_core::Error::msg("dense product: dtype mismatch"))?[start..end];
    Mat::rows(data, data.len() / d.max(1), d)
}

/// `out = (accumulate ? out : 0) + beta · a b`, `out` row-major
/// `a.rows × b.cols`.
pub(crate) fn gemm_into<T: Float>(out: &mut [T], accumulate: bool, a: Mat<T>, b: Mat<T>, beta: T) -> CResult<()> {
    if out.len() != a.rows * b.cols {
        candle_core::bail!("dense product: {}×{} result into {} values", a.rows, b.cols, out.len());
    }
    let parallel = a.rows * a.cols * b.cols >= 1 << 18;
    // SAFETY: `out` holds exactly the a.rows × b.cols row-major values written.
    unsafe { gemm_raw(out.as_mut_ptr(), b.cols, accumulate, a, b, beta, parallel) }
}

/// [`gemm_into`] into rows `out_rs` apart, on this thread unless `parallel`.
///
/// # Safety
/// `out` must be valid for writes (and reads, when accumulating) at
/// `i * out_rs + j` for every i < a.rows, j < b.cols, and no one else may
/// touch those elements meanwhile.
pub(crate) unsafe fn gemm_raw<T: Float>(
    out: *mut T,
    out_rs: usize,
    accumulate: bool,
    a: Mat<T>,
    b: Mat<T>,
    beta: T,
    parallel: bool,
) -> CResult<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        candle_core::bail!("dense product: {m}×{k} · {}×{n}", b.rows);
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if parallel && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: `Mat::checked` bounds every index the strides reach (m, k in
    // `a`; k, n in `b`), the caller vouches for `out`, and gemm supports f32
    // and f64 (the only `Float` types).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            out_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::of(1.0),
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// `x Wᵀ` for a row-major `x` (m × in) and a weight `w` (out × in).
pub(crate) fn product<T: Float>(x: Mat<T>, w: Mat<T>) -> CResult<Vec<T>> {
    let mut out = vec![T::of(0.0); x.rows * w.rows];
    gemm_into(&mut out, false, x, w.t(), T::of(1.0))?;
    Ok(out)
}

/// The output shape of a product: `x`'s with its last dimension `n`.
fn out_shape(x: &Layout, n: usize) -> Shape {
    let mut dims = x.shape().dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Shape::from(dims)
}

/// `x Wᵀ` of a dense frozen weight, reading the op's input in place.
pub(crate) fn frozen_forward(w: &Tensor, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
    fn run<T: Float>(w: &Tensor, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        with_mat::<T, _>(w, |wm| {
            let x = storage_rows::<T>(s, l, wm.cols)?;
            Ok((T::storage(product(x, wm)?), out_shape(l, wm.rows)))
        })
    }
    match s {
        CpuStorage::F32(_) => run::<f32>(w, s, l),
        CpuStorage::F64(_) => run::<f64>(w, s, l),
        _ => candle_core::bail!("frozen linear: only f32 and f64 inputs are supported"),
    }
}

/// `x Wᵀ + scale · (x Aᵀ) Bᵀ` for a dense frozen `W` (out × in) and a LoRA
/// pair `A` (r × in), `B` (out × r), as one op of `(x, A, B)` whose
/// backward gives the gradients of x, A and B (never of W).
pub(crate) struct LoraProduct {
    pub weight: Weight,
    pub scale: f64,
}

impl LoraProduct {
    fn fwd<T: Float>(&self, x: Mat<T>, a: Mat<T>, b: Mat<T>) -> CResult<Vec<T>> {
        let mut y = match &self.weight {
            Weight::Dense(w) => with_mat::<T, _>(w, |w| product(x, w))?,
            // Packed weights: their own chunked product on a tensor of x.
            packed => {
                let xt = Tensor::from_slice(&x.data[..x.rows * x.cols], (x.rows, x.cols), &candle_core::Device::Cpu)?;
                packed.product(&xt)?.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1()?
            }
        };
        let u = product(x, a)?;
        gemm_into(&mut y, true, Mat::rows(&u, x.rows, a.rows)?, b.t(), T::of(self.scale))?;
        Ok(y)
    }

    /// (dx, dA, dB) for the output gradient `g` (m × out); `dx_frozen`:
    /// `g W` when the weight is packed (computed by its own kernels).
    fn grads<T: Float>(
        &self,
        x: Mat<T>,
        (a, b): (Mat<T>, Mat<T>),
        g: Mat<T>,
        dx_frozen: Option<Vec<T>>,
    ) -> CResult<[Vec<T>; 3]> {
        let (m, r, s) = (x.rows, a.rows, T::of(self.scale));
        let zeros = |n: usize| vec![T::of(0.0); n];
        // g B (m × r) and x Aᵀ (m × r): the low-rank sides of both gradients.
        let mut gb = zeros(m * r);
        gemm_into(&mut gb, false, g, b, T::of(1.0))?;
        let gb = Mat::rows(&gb, m, r)?;
        let u = product(x, a)?;
        let u = Mat::rows(&u, m, r)?;
        let mut dx = match (&self.weight, dx_frozen) {
            (_, Some(dx)) => dx,
            (Weight::Dense(w), None) => {
                let mut dx = zeros(m * x.cols);
                with_mat::<T, _>(w, |w| gemm_into(&mut dx, false, g, w, T::of(1.0)))?;
                dx
            }
            (_, None) => candle_core::bail!("lora linear: no input gradient for the packed weight"),
        };
        gemm_into(&mut dx, true, gb, a, s)?;
        let mut da = zeros(r * x.cols);
        gemm_into(&mut da, false, gb.t(), x, s)?;
        let mut db = zeros(b.rows * r);
        gemm_into(&mut db, false, g.t(), u, s)?;
        Ok([dx, da, db])
    }
}

impl CustomOp3 for LoraProduct {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        fn run<T: Float>(
            op: &LoraProduct,
            (xs, xl): (&CpuStorage, &Layout),
            (as_, al): (&CpuStorage, &Layout),
            (bs, bl): (&CpuStorage, &Layout),
        ) -> CResult<(CpuStorage, Shape)> {
            let a = storage_rows::<T>(as_, al, al.dims().last().copied().unwrap_or(0))?;
            let b = storage_rows::<T>(bs, bl, bl.dims().last().copied().unwrap_or(0))?;
            let x = storage_rows::<T>(xs, xl, a.cols)?;
            Ok((T::storage(op.fwd(x, a, b)?), out_shape(xl, b.rows)))
        }
        match xs {
            CpuStorage::F32(_) => run::<f32>(self, (xs, xl), (as_, al), (bs, bl)),
            CpuStorage::F64(_) => run::<f64>(self, (xs, xl), (as_, al), (bs, bl)),
            _ => candle_core::bail!("lora linear: only f32 and f64 inputs are supported"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        fn run<T: Float>(
            op: &LoraProduct,
            x: &Tensor,
            a: &Tensor,
            b: &Tensor,
            g: &Tensor,
        ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let dx_frozen = match &op.weight {
                Weight::Dense(_) => None,
                packed => Some(packed.input_grad(g)?.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1()?),
            };
            let [dx, da, db] = with_rows::<T, _>(x, |xm| {
                with_mat::<T, _>(a, |am| {
                    with_mat::<T, _>(b, |bm| with_rows::<T, _>(g, |gm| op.grads(xm, (am, bm), gm, dx_frozen)))
                })
            })?;
            let dev = x.device();
            Ok((
                Some(Tensor::from_vec(dx, x.shape(), dev)?),
                Some(Tensor::from_vec(da, a.shape(), dev)?),
                Some(Tensor::from_vec(db, b.shape(), dev)?),
            ))
        }
        match x.dtype() {
            candle_core::DType::F32 => run::<f32>(self, x, a, b, g),
            candle_core::DType::F64 => run::<f64>(self, x, a, b, g),
            dt => candle_core::bail!("lora linear: {dt:?} is not supported"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    /// The fused op gives candle's own forward and gradients, for a weight
    /// stored row-major and transposed, and a batched input.
    #[test]
    fn lora_product_matches_candle_ops() {
        let dev = Device::Cpu;
        for transposed in [false, true] {
            let w = Tensor::randn(0f64, 1.0, (7, 13), &dev).unwrap();
            let w = if transposed { w.t().unwrap().contiguous().unwrap().t().unwrap() } else { w };
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 5, 13), &dev).unwrap()).unwrap();
            let a = Var::from_tensor(&Tensor::randn(0f64, 1.0, (3, 13), &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, (7, 3), &dev).unwrap()).unwrap();
            let weights = Tensor::randn(0f64, 1.0, (2, 5, 7), &dev).unwrap();
            let op = LoraProduct { weight: Weight::Dense(w.clone()), scale: 0.75 };
            let y = x.as_tensor().apply_op3(a.as_tensor(), b.as_tensor(), op).unwrap();
            let want = (x.broadcast_matmul(&w.t().unwrap()).unwrap()
                + (x.broadcast_matmul(&a.t().unwrap()).unwrap().broadcast_matmul(&b.t().unwrap()).unwrap() * 0.75)
                    .unwrap())
            .unwrap();
            assert!(max_diff(&y, &want) < 1e-12);
            let g = (y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let gw = (want * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &a, &b] {
                let d = max_diff(g.get(v).unwrap(), gw.get(v).unwrap());
                assert!(d < 1e-12, "{d}");
            }
            let weight_shaped = g.get_ids().filter_map(|id| g.get_id(*id)).filter(|t| t.dims() == [7, 13]);
            assert_eq!(weight_shaped.count(), 0, "a gradient for the frozen weight was computed");
        }
    }

    #[test]
    fn frozen_forward_reads_any_weight_layout() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (9, 4), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        for w in [w.clone(), w.t().unwrap().contiguous().unwrap().t().unwrap()] {
            let (s, l) = x.storage_and_layout();
            let Storage::Cpu(cpu) = &*s else { unreachable!() };
            let (out, shape) = frozen_forward(&w, cpu, l).unwrap();
            assert_eq!(shape.dims(), [3, 9]);
            let CpuStorage::F32(v) = out else { unreachable!() };
            let got = Tensor::from_vec(v, (3, 9), &dev).unwrap();
            let d = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "{d}");
        }
    }

    #[test]
    fn mismatched_shapes_and_short_storage_are_errors() {
        let v = [1f32; 6];
        assert!(Mat::rows(&v, 3, 3).is_err());
        let a = Mat::rows(&v, 2, 3).unwrap();
        let mut out = vec![0f32; 4];
        assert!(gemm_into(&mut out, false, a, a, 1.0).is_err());
        assert!(gemm_into(&mut out, false, a, a.t(), 1.0).is_ok());
        assert_eq!(out, [3.0; 4]);
    }
}
