//! Quantized weights kept quantized: matrix products straight from the
//! GGUF blocks, and dequantization a few rows at a time for the backward
//! pass (QLoRA), so the full f32 base is never materialised.
//!
//! Q4_0, Q4_1 and Q8_0 — the formats llama.cpp users share most, and the
//! ones candle has no (Q4_1) or only a single-row SIMD dot product for —
//! run on our own kernels: activations are quantized to 16 bits per block
//! of 32 with an f32 scale and block sum, and the dot products use AVX2
//! (`madd_epi16`) or AVX-512 VNNI (`dpwssd`) chosen at run time, with a
//! scalar fallback elsewhere. (llama.cpp quantizes activations to 8 bits;
//! on SmolLM2 Q4_1 that alone flips its answer to "What is the capital of
//! France?" from Paris to nonsense. 16 bits keep the result within float
//! rounding of the dequantized model at the same memory traffic.) Other block types (K-quants, Q5_*) go through
//! candle's `QMatMul`. Rows of work are spread over candle's CPU pool, so
//! the thread count is the one candle uses (`CANDLE_NUM_THREADS`).

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};

type CResult<T> = candle_core::Result<T>;

/// Values per quantization block for the formats with our own kernels.
const QK: usize = 32;

/// A frozen weight matrix (out × in, Hugging Face layout) in GGUF blocks.
#[derive(Debug, Clone)]
pub struct QWeight {
    pub rows: usize,
    pub cols: usize,
    pub dtype: GgmlDType,
    /// Row-major GGUF blocks.
    data: Arc<Vec<u8>>,
    /// candle's matmul for the block types without our own kernel.
    fallback: Option<Arc<QMatMul>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl Kernel {
    fn of(dtype: GgmlDType) -> Option<Kernel> {
        match dtype {
            GgmlDType::Q4_0 => Some(Kernel::Q4_0),
            GgmlDType::Q4_1 => Some(Kernel::Q4_1),
            GgmlDType::Q8_0 => Some(Kernel::Q8_0),
            _ => None,
        }
    }

    const fn from_u8(k: u8) -> Kernel {
        match k {
            0 => Kernel::Q4_0,
            1 => Kernel::Q4_1,
            _ => Kernel::Q8_0,
        }
    }

    /// Bytes per block of 32 weights.
    const fn block_bytes(self) -> usize {
        match self {
            Kernel::Q4_0 => 18,
            Kernel::Q4_1 => 20,
            Kernel::Q8_0 => 34,
        }
    }
}

/// An activation block: 32 values as `d · qs[i]` (16-bit), and `s = d · Σ qs`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct A16 {
    d: f32,
    s: f32,
    qs: [i16; QK],
}

impl A16 {
    const ZERO: A16 = A16 { d: 0.0, s: 0.0, qs: [0; QK] };
}

fn quantize_row(x: &[f32], out: &mut [A16]) {
    for (chunk, block) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 32767.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in block.qs.iter_mut().zip(chunk) {
            let r = (v * inv).round() as i32;
            *q = r as i16;
            sum += r;
        }
        block.d = d;
        block.s = d * sum as f32;
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// One row of blocks to f32.
fn dequantize_row(kind: Kernel, w: &[u8], out: &mut [f32]) {
    let bb = kind.block_bytes();
    for (blk, o) in w.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        match kind {
            Kernel::Q4_0 | Kernel::Q4_1 => {
                let (qs, m) =
                    if kind == Kernel::Q4_0 { (&blk[2..18], -8.0 * d) } else { (&blk[4..20], f16_at(blk, 2)) };
                let (lo, hi) = o.split_at_mut(QK / 2);
                for ((q, l), h) in qs.iter().zip(lo.iter_mut()).zip(hi.iter_mut()) {
                    *l = (q & 0x0F) as f32 * d + m;
                    *h = (q >> 4) as f32 * d + m;
                }
            }
            Kernel::Q8_0 => {
                for (q, x) in blk[2..34].iter().zip(o.iter_mut()) {
                    *x = (*q as i8) as f32 * d;
                }
            }
        }
    }
}

/// Scalar dot product of one weight row with one activation row.
fn dot_scalar(kind: Kernel, w: &[u8], a: &[A16]) -> f32 {
    let bb = kind.block_bytes();
    let mut total = 0f32;
    for (blk, act) in w.chunks_exact(bb).zip(a) {
        let d = f16_at(blk, 0);
        match kind {
            Kernel::Q4_0 | Kernel::Q4_1 => {
                let qs = &blk[if kind == Kernel::Q4_0 { 2 } else { 4 }..];
                let mut sum = 0i32;
                let (lo, hi) = act.qs.split_at(QK / 2);
                for ((q, a), b) in qs[..QK / 2].iter().zip(lo).zip(hi) {
                    sum += (q & 0x0F) as i32 * *a as i32 + (q >> 4) as i32 * *b as i32;
                }
                let m = if kind == Kernel::Q4_0 { -8.0 * d } else { f16_at(blk, 2) };
                total += d * act.d * sum as f32 + m * act.s;
            }
            Kernel::Q8_0 => {
                let sum: i32 = blk[2..].iter().zip(&act.qs).map(|(w, a)| (*w as i8) as i32 * *a as i32).sum();
                total += d * act.d * sum as f32;
            }
        }
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Kernel, A16, PREFETCH, QK};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn f16(b: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*b, *b.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// The 32 weights of a block as two vectors of 16-bit integers:
    /// unsigned nibbles for Q4_*, signed bytes for Q8_0.
    #[inline(always)]
    unsafe fn unpack(kind: Kernel, blk: *const u8) -> (__m256i, __m256i) {
        match kind {
            Kernel::Q4_0 | Kernel::Q4_1 => {
                let off = if kind == Kernel::Q4_0 { 2 } else { 4 };
                let q = _mm_loadu_si128(blk.add(off) as *const __m128i);
                let mask = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(q, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
                (_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi))
            }
            Kernel::Q8_0 => {
                let lo = _mm_loadu_si128(blk.add(2) as *const __m128i);
                let hi = _mm_loadu_si128(blk.add(18) as *const __m128i);
                (_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi))
            }
        }
    }

    /// Σ w·a over a block, as 8 lane sums (i32 converted to f32).
    #[inline(always)]
    unsafe fn block_dot<const VNNI: bool>(w: (__m256i, __m256i), a: *const i16) -> __m256 {
        let a_lo = _mm256_loadu_si256(a as *const __m256i);
        let a_hi = _mm256_loadu_si256(a.add(16) as *const __m256i);
        let sum = if VNNI {
            _mm256_dpwssd_epi32(_mm256_dpwssd_epi32(_mm256_setzero_si256(), w.0, a_lo), w.1, a_hi)
        } else {
            _mm256_add_epi32(_mm256_madd_epi16(w.0, a_lo), _mm256_madd_epi16(w.1, a_hi))
        };
        _mm256_cvtepi32_ps(sum)
    }

    #[inline(always)]
    unsafe fn hsum(x: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// W weight rows against R activation rows: each weight block is
    /// unpacked once for the R rows, each activation block loaded once for
    /// the W rows.
    #[inline(always)]
    unsafe fn dot_tile<const W: usize, const R: usize, const VNNI: bool, const KIND: u8>(
        ws: [&[u8]; W],
        acts: [&[A16]; R],
        nb: usize,
        out: &mut [[f32; R]; W],
    ) {
        let kind = Kernel::from_u8(KIND);
        let bb = kind.block_bytes();
        let mut acc = [[[_mm256_setzero_ps(); 2]; R]; W];
        let mut acc_m = [[[0f32; 2]; R]; W];
        for b in 0..nb {
            let mut wq = [(_mm256_setzero_si256(), _mm256_setzero_si256()); W];
            let mut d = [0f32; W];
            let mut m = [0f32; W];
            for w in 0..W {
                let blk = ws[w].as_ptr().add(b * bb);
                if PREFETCH > 0 {
                    _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH) as *const i8);
                }
                d[w] = f16(blk);
                m[w] = match kind {
                    Kernel::Q4_0 => -8.0 * d[w],
                    Kernel::Q4_1 => f16(blk.add(2)),
                    Kernel::Q8_0 => 0.0,
                };
                wq[w] = unpack(kind, blk);
            }
            for r in 0..R {
                let act = acts[r].get_unchecked(b);
                for w in 0..W {
                    let p = block_dot::<VNNI>(wq[w], act.qs.as_ptr());
                    // Two accumulator sets, alternating by block, halve the dependency chains.
                    let slot = b & 1;
                    acc[w][r][slot] = _mm256_fmadd_ps(p, _mm256_set1_ps(d[w] * act.d), acc[w][r][slot]);
                    acc_m[w][r][slot] += m[w] * act.s;
                }
            }
        }
        for w in 0..W {
            for r in 0..R {
                let [a0, a1] = acc[w][r];
                out[w][r] = hsum(_mm256_add_ps(a0, a1)) + acc_m[w][r][0] + acc_m[w][r][1];
            }
        }
    }

    macro_rules! entry {
        ($name:ident, $features:literal, $vnni:literal) => {
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const W: usize, const R: usize>(
                kind: Kernel,
                ws: [&[u8]; W],
                acts: [&[A16]; R],
                nb: usize,
                out: &mut [[f32; R]; W],
            ) {
                debug_assert!(ws.iter().all(|w| w.len() >= nb * kind.block_bytes()));
                debug_assert!(acts.iter().all(|a| a.len() >= nb));
                let _ = QK;
                match kind {
                    Kernel::Q4_0 => dot_tile::<W, R, $vnni, 0>(ws, acts, nb, out),
                    Kernel::Q4_1 => dot_tile::<W, R, $vnni, 1>(ws, acts, nb, out),
                    Kernel::Q8_0 => dot_tile::<W, R, $vnni, 2>(ws, acts, nb, out),
                }
            }
        };
    }
    entry!(dot_avx2, "avx2,fma,f16c", false);
    entry!(dot_vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", true);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        if std::env::var("MERIT_KERNELS").as_deref() == Ok("scalar") {
            return Isa::Scalar;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            // 256-bit VNNI: measured faster here than 512-bit registers.
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && std::env::var("MERIT_KERNELS").as_deref() != Ok("avx2")
            {
                return Isa::Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    })
}

/// The instruction set the quantized kernels use on this machine.
pub fn kernel_isa() -> &'static str {
    match isa() {
        Isa::Scalar => "scalar",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "avx2",
        #[cfg(target_arch = "x86_64")]
        Isa::Vnni => "avx512-vnni",
    }
}

fn dot_n<const W: usize, const R: usize>(
    isa: Isa,
    kind: Kernel,
    ws: [&[u8]; W],
    acts: [&[A16]; R],
    nb: usize,
) -> [[f32; R]; W] {
    let mut out = [[0f32; R]; W];
    match isa {
        Isa::Scalar => {
            for w in 0..W {
                for r in 0..R {
                    out[w][r] = dot_scalar(kind, ws[w], acts[r]);
                }
            }
        }
        // SAFETY: the features were detected at run time; the slices hold `nb` blocks.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::dot_avx2::<W, R>(kind, ws, acts, nb, &mut out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Vnni => unsafe { x86::dot_vnni::<W, R>(kind, ws, acts, nb, &mut out) },
    }
    out
}

/// How far ahead of the current weight block to prefetch, in bytes.
const PREFETCH: usize = 512;

/// Activation rows handled together against one weight row.
const ROW_TILE: usize = 4;

/// From this many activation rows on (training sequences, long prompts),
/// products dequantize chunks of weight rows and run dense f32 products: on
/// 2 AVX-512 cores faster than the block kernels from about 256 rows
/// (`merit bench train --method qlora`), slower below (`merit bench generate`).
const DEQUANT_ROWS: usize = 256;

impl QWeight {
    /// Takes a 2-D quantized tensor (out × in).
    pub fn from_qtensor(q: QTensor) -> CResult<QWeight> {
        let (rows, cols) = q.shape().dims2()?;
        let dtype = q.dtype();
        let data = Arc::new(q.data()?.into_owned());
        let fallback = match Kernel::of(dtype) {
            Some(_) if cols % QK == 0 => None,
            _ => Some(Arc::new(QMatMul::from_qtensor(q)?)),
        };
        Ok(QWeight { rows, cols, dtype, data, fallback })
    }

    /// Quantizes a dense (out × in) tensor.
    pub fn quantize(w: &Tensor, dtype: GgmlDType) -> CResult<QWeight> {
        QWeight::from_qtensor(QTensor::quantize(&w.to_dtype(candle_core::DType::F32)?, dtype)?)
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// Bytes held.
    pub fn size_in_bytes(&self) -> usize {
        self.data.len()
    }

    /// The rows `[start, start + n)` as their own weight.
    pub fn narrow_rows(&self, start: usize, n: usize) -> CResult<QWeight> {
        let rb = self.row_bytes();
        self.with_rows(self.data[start * rb..(start + n) * rb].to_vec(), n)
    }

    /// The rows at `index`, in that order.
    pub fn select_rows(&self, index: &[usize]) -> CResult<QWeight> {
        let rb = self.row_bytes();
        let mut bytes = Vec::with_capacity(index.len() * rb);
        for &i in index {
            bytes.extend_from_slice(&self.data[i * rb..(i + 1) * rb]);
        }
        self.with_rows(bytes, index.len())
    }

    fn with_rows(&self, bytes: Vec<u8>, rows: usize) -> CResult<QWeight> {
        let q = QTensor::new(QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, self.dtype)?, (rows, self.cols))?;
        QWeight::from_qtensor(q)
    }

    /// Rows `[start, start + n)` in f32 (n × in).
    pub fn dequantize_rows(&self, start: usize, n: usize) -> CResult<Tensor> {
        let rb = self.row_bytes();
        let bytes = &self.data[start * rb..(start + n) * rb];
        if let (Some(kind), None) = (Kernel::of(self.dtype), &self.fallback) {
            // Our block types: a plain loop the compiler vectorizes, rows in parallel.
            let mut out = vec![0f32; n * self.cols];
            let ptr = SendPtr(out.as_mut_ptr());
            let cols = self.cols;
            let work = |range: std::ops::Range<usize>| {
                let ptr = &ptr;
                for r in range {
                    // SAFETY: each row writes its own slice.
                    let dst = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(r * cols), cols) };
                    dequantize_row(kind, &bytes[r * rb..(r + 1) * rb], dst);
                }
            };
            if n * cols < 1 << 16 {
                work(0..n);
            } else {
                candle_core::utils::barrier_pool().execute_chunked(n, work);
            }
            return Tensor::from_vec(out, (n, self.cols), &Device::Cpu);
        }
        let q = QTensor::new(QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, self.dtype)?, (n, self.cols))?;
        q.dequantize(&Device::Cpu)
    }

    /// The whole matrix in f32.
    pub fn dequantize(&self) -> CResult<Tensor> {
        self.dequantize_rows(0, self.rows)
    }

    /// `x Wᵀ` for f32 rows `x` (m × in, row-major) into `m × out`.
    pub fn matmul_rows(&self, x: &[f32], m: usize) -> CResult<Vec<f32>> {
        let mut out = QWeight::matmul_many(&[self], x, m)?;
        out.pop().ok_or_else(|| candle_core::Error::msg("quantized matmul: no output"))
    }

    /// `x Wᵢᵀ` for several weights with the same input width — q, k and v,
    /// or gate and up — quantizing `x` once and sharing one pass of the
    /// thread pool.
    pub fn matmul_many(ws: &[&QWeight], x: &[f32], m: usize) -> CResult<Vec<Vec<f32>>> {
        let k = x.len() / m.max(1);
        if let Some(w) = ws.iter().find(|w| w.cols != k || x.len() != m * w.cols) {
            candle_core::bail!("quantized matmul: input has {} values, expected {m} × {}", x.len(), w.cols);
        }
        if m >= DEQUANT_ROWS {
            // Many rows (a prompt, a training batch): a dense product on a few
            // hundred kilobytes of dequantized weight rows at a time is faster
            // than the block kernels, and exact in f32.
            let xt = Tensor::from_slice(x, (m, k), &Device::Cpu)?;
            return ws.iter().map(|w| w.matmul_dequantized(&xt)).collect();
        }
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; m * w.rows]).collect();
        let mut jobs = Vec::new();
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            match (&w.fallback, Kernel::of(w.dtype)) {
                (None, Some(kind)) => jobs.push((*w, kind, SendPtr(out.as_mut_ptr()))),
                (Some(f), _) => {
                    let t = Tensor::from_slice(x, (m, k), &Device::Cpu)?;
                    *out = f.forward(&t)?.flatten_all()?.to_vec1::<f32>()?;
                }
                (None, None) => candle_core::bail!("quantized matmul: no kernel for {:?}", w.dtype),
            }
        }
        if jobs.is_empty() {
            return Ok(outs);
        }
        let nb = k / QK;
        let mut acts = vec![A16::ZERO; m * nb];
        for (row, blocks) in x.chunks_exact(k).zip(acts.chunks_exact_mut(nb)) {
            quantize_row(row, blocks);
        }
        let isa = isa();
        let row_tiles = m.div_ceil(ROW_TILE);
        // Work items: per weight, (tile of activation rows, quad of weight
        // rows), activation-tile major so a worker keeps one tile's quantized
        // rows hot while it walks the weights.
        let mut first_item = Vec::with_capacity(jobs.len() + 1);
        let mut items = 0;
        for (w, _, _) in &jobs {
            first_item.push(items);
            items += row_tiles * w.rows.div_ceil(4);
        }
        first_item.push(items);
        let work = |range: std::ops::Range<usize>| {
            let act = |r: usize| &acts[r * nb..(r + 1) * nb];
            for item in range {
                let wi = first_item.partition_point(|&f| f <= item) - 1;
                let (w, kind, out_ptr) = &jobs[wi];
                let (n, rb, data) = (w.rows, w.row_bytes(), &w.data[..]);
                let wrow = |j: usize| &data[j * rb..(j + 1) * rb];
                // SAFETY: every (row, column) pair belongs to exactly one work item.
                let write = |r: usize, j: usize, v: f32| unsafe { *out_ptr.0.add(r * n + j) = v };
                let local = item - first_item[wi];
                let quads = n.div_ceil(4);
                let (r0, j0) = ((local / quads) * ROW_TILE, (local % quads) * 4);
                for j in j0..n.min(j0 + 4) {
                    if r0 + ROW_TILE <= m {
                        let [v] = dot_n::<1, ROW_TILE>(
                            isa,
                            *kind,
                            [wrow(j)],
                            [act(r0), act(r0 + 1), act(r0 + 2), act(r0 + 3)],
                            nb,
                        );
                        for (i, v) in v.into_iter().enumerate() {
                            write(r0 + i, j, v);
                        }
                    } else {
                        for r in r0..m {
                            write(r, j, dot_n::<1, 1>(isa, *kind, [wrow(j)], [act(r)], nb)[0][0]);
                        }
                    }
                }
            }
        };
        let total: usize = jobs.iter().map(|(w, _, _)| w.rows).sum();
        if m * total * k < 1 << 16 {
            work(0..items);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(items, work);
        }
        Ok(outs)
    }

    /// `x Wᵀ` (m × in → m × out, row-major) through dense products on chunks
    /// of dequantized rows.
    fn matmul_dequantized(&self, x: &Tensor) -> CResult<Vec<f32>> {
        crate::chunked::forward(x, (self.rows, self.cols), |start, n| self.dequantize_rows(start, n))?
            .flatten_all()?
            .to_vec1::<f32>()
    }

    /// `x Wᵀ` for a tensor `x` (… × in) on the CPU.
    pub fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        let m = x.elem_count() / k.max(1);
        let flat = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let out = self.matmul_rows(&flat, m)?;
        let mut shape = dims;
        if let Some(last) = shape.last_mut() {
            *last = self.rows;
        }
        Tensor::from_vec(out, shape, x.device())?.to_dtype(x.dtype())
    }

    /// `g W` (… × out → … × in) without materialising W: the rows are
    /// dequantized a few MiB at a time.
    pub fn backward_input(&self, g: &Tensor) -> CResult<Tensor> {
        crate::chunked::input_grad(g, (self.rows, self.cols), |start, n| self.dequantize_rows(start, n))
    }
}

/// A pointer the pool's workers write disjoint elements through.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: workers write disjoint elements; the buffer outlives the pool call.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn weights(rows: usize, cols: usize, seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    /// Our kernels against the dequantized matrix times the input, for
    /// every kernel type and every instruction set this machine has.
    #[test]
    fn kernels_match_dequantized_matmul() {
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            let (out, inp) = (37, 256);
            let q = QWeight::quantize(&weights(out, inp, 1), dtype).unwrap();
            let dense = q.dequantize().unwrap();
            // 300 rows: the dequantized path, exact up to f32 rounding.
            for m in [1, 3, 4, 9, 300] {
                let x = weights(m, inp, 2);
                let want = x.matmul(&dense.t().unwrap()).unwrap();
                let got = q.forward(&x).unwrap();
                let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let err = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                // Our kernels (16-bit activations): float rounding. candle's
                // K-quant kernels quantize activations to 8 bits: about 1%.
                let tolerance = if Kernel::of(dtype).is_some() || m >= DEQUANT_ROWS { 2e-4 } else { 2e-2 };
                assert!(err <= tolerance * scale, "{dtype:?} m={m}: error {err} vs scale {scale}");
            }
        }
    }

    #[test]
    fn simd_and_scalar_agree() {
        for kind in [Kernel::Q4_0, Kernel::Q4_1, Kernel::Q8_0] {
            let dtype = match kind {
                Kernel::Q4_0 => GgmlDType::Q4_0,
                Kernel::Q4_1 => GgmlDType::Q4_1,
                Kernel::Q8_0 => GgmlDType::Q8_0,
            };
            let q = QWeight::quantize(&weights(5, 128, 3), dtype).unwrap();
            let x = weights(1, 128, 4).flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut a = vec![A16::ZERO; 4];
            quantize_row(&x, &mut a);
            let rb = q.row_bytes();
            for j in 0..5 {
                let w = &q.data[j * rb..(j + 1) * rb];
                let s = dot_scalar(kind, w, &a);
                let v = dot_n::<1, 1>(isa(), kind, [w], [&a], 4)[0][0];
                assert!((s - v).abs() <= 1e-4 * s.abs().max(1.0), "{kind:?} row {j}: {s} vs {v}");
            }
        }
    }

    #[test]
    fn own_dequantization_matches_candle() {
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QWeight::quantize(&weights(300, 128, 9), dtype).unwrap();
            let ours = q.dequantize_rows(5, 290).unwrap();
            let rb = q.row_bytes();
            let bytes = q.data[5 * rb..295 * rb].to_vec();
            let candle = QTensor::new(QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype).unwrap(), (290, 128))
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap();
            let diff = (ours - candle).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-6, "{dtype:?}: {diff}");
        }
    }

    #[test]
    fn backward_input_is_g_times_w() {
        let q = QWeight::quantize(&weights(300, 64, 5), GgmlDType::Q4_1).unwrap();
        let g = weights(6, 300, 6).reshape((2, 3, 300)).unwrap();
        let want = g.broadcast_matmul(&q.dequantize().unwrap()).unwrap();
        let got = q.backward_input(&g).unwrap();
        assert_eq!(got.dims(), &[2, 3, 64]);
        let err = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-3, "{err}");
    }

    #[test]
    fn rows_narrow_and_select() {
        let w = weights(8, 64, 7);
        let q = QWeight::quantize(&w, GgmlDType::Q8_0).unwrap();
        let all = q.dequantize().unwrap();
        let part = q.narrow_rows(2, 3).unwrap().dequantize().unwrap();
        let diff = (part - all.narrow(0, 2, 3).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let sel = q.select_rows(&[7, 0]).unwrap().dequantize().unwrap();
        let want = Tensor::cat(&[all.narrow(0, 7, 1).unwrap(), all.narrow(0, 0, 1).unwrap()], 0).unwrap();
        assert_eq!((sel - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}
