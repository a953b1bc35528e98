//! NF4: the 4-bit NormalFloat format of QLoRA (Dettmers et al., 2023) for
//! frozen bases loaded from Hugging Face folders.
//!
//! Every row is cut into blocks of [`BLOCK`] weights (the last one padded
//! with zeros); a weight is stored as the 4-bit index of the nearest of the
//! 16 [`NF4`] values after dividing its block by the block's absolute
//! maximum. Double quantization, as in the paper: the block maxima (all
//! positive) minus their mean are stored as 8-bit floats (E4M3) in groups of
//! [`GROUP`] blocks, each group with one f32 scale. About 4.13 bits per
//! weight. Products dequantize a few rows at a time and never hold the f32
//! matrix.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::quant::SendPtr;

type CResult<T> = candle_core::Result<T>;

/// Weights per first-level block.
pub const BLOCK: usize = 64;
/// Blocks per second-level group (the quantized block maxima).
pub const GROUP: usize = 256;

/// The 16 NF4 values: quantiles of N(0, 1) scaled to [-1, 1], with an exact zero.
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The nearest NF4 index of `v` in [-1, 1] (ties to the lower index).
fn nf4_index(v: f32) -> u8 {
    let mut lo = 0usize;
    // The midpoints between neighbours split the line into 16 intervals.
    for i in 0..15 {
        if v > 0.5 * (NF4[i] + NF4[i + 1]) {
            lo = i + 1;
        }
    }
    lo as u8
}

/// E4M3 8-bit floats (bias 7, no infinities), scaled so the largest is 1:
/// the 256 values and their order.
struct Fp8 {
    values: [f32; 256],
    /// Codes sorted by value, and those values, for the nearest search.
    sorted: Vec<(f32, u8)>,
}

fn fp8() -> &'static Fp8 {
    static TABLE: std::sync::OnceLock<Fp8> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut values = [0f32; 256];
        for (code, v) in values.iter_mut().enumerate() {
            let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
            let exp = ((code >> 3) & 0xf) as i32;
            let man = (code & 7) as f32;
            let mag = if exp == 0 { man / 8.0 * 2f32.powi(-6) } else { (1.0 + man / 8.0) * 2f32.powi(exp - 7) };
            // 0x7f / 0xff are NaN in E4M3; here they are the largest magnitude.
            *v = sign * mag / 480.0;
        }
        let mut sorted: Vec<(f32, u8)> = values.iter().enumerate().map(|(c, &v)| (v, c as u8)).collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        Fp8 { values, sorted }
    })
}

fn fp8_encode(v: f32) -> u8 {
    let t = fp8();
    let i = t.sorted.partition_point(|(x, _)| *x < v);
    let pick = match (i.checked_sub(1).map(|j| t.sorted[j]), t.sorted.get(i)) {
        (Some(a), Some(b)) => {
            if (v - a.0).abs() <= (b.0 - v).abs() {
                a
            } else {
                *b
            }
        }
        (Some(a), None) => a,
        (None, Some(b)) => *b,
        (None, None) => (0.0, 0),
    };
    pick.1
}

/// A frozen weight matrix (out × in) in NF4 with double-quantized block maxima.
#[derive(Debug, Clone)]
pub struct Nf4Weight {
    pub rows: usize,
    pub cols: usize,
    /// Two indices per byte, low nibble first; rows padded to whole blocks.
    codes: Arc<Vec<u8>>,
    /// Per block: its maximum minus `mean`, as E4M3 relative to its group's scale.
    absmax: Arc<Vec<u8>>,
    /// Per group of [`GROUP`] blocks.
    scales: Arc<Vec<f32>>,
    mean: f32,
    /// The same weight on a device (a GPU), dequantized there a layer at a time.
    on_device: Option<Arc<OnDevice>>,
}

/// An NF4 weight's device-resident form: the 4-bit codes as stored (two per
/// byte), the block maxima expanded once (one value per 64 weights: half a
/// bit per weight more than the double-quantized form), and a 256-entry
/// table from a code byte to its two NF4 values. A product dequantizes the
/// matrix on the device with one gather and one multiply, in the compute
/// dtype, into a buffer that lives for that product only.
#[derive(Debug)]
struct OnDevice {
    /// (rows · blocks · BLOCK / 2) code bytes.
    codes: Tensor,
    /// (rows, blocks, 1).
    maxima: Tensor,
    /// (256, 2): byte → (value of the low nibble, value of the high nibble).
    pairs: Tensor,
}

impl Nf4Weight {
    fn blocks_per_row(cols: usize) -> usize {
        cols.div_ceil(BLOCK)
    }

    /// Quantizes a dense (out × in) matrix.
    pub fn quantize(w: &Tensor) -> CResult<Nf4Weight> {
        let (rows, cols) = w.dims2()?;
        let w = w.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let bpr = Self::blocks_per_row(cols);
        let nblocks = rows * bpr;
        let mut maxima = vec![0f32; nblocks];
        let mut codes = vec![0u8; nblocks * BLOCK / 2];
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            for b in 0..bpr {
                let vals = &row[b * BLOCK..((b + 1) * BLOCK).min(cols)];
                let m = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
                maxima[r * bpr + b] = m;
                let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
                let base = (r * bpr + b) * BLOCK / 2;
                for (i, v) in vals.iter().enumerate() {
                    let q = nf4_index(v * inv);
                    codes[base + i / 2] |= if i % 2 == 0 { q } else { q << 4 };
                }
                // Padding: index 7 is 0.0.
                for i in vals.len()..BLOCK {
                    codes[base + i / 2] |= if i % 2 == 0 { 7 } else { 7 << 4 };
                }
            }
        }
        let mean =
            if nblocks == 0 { 0.0 } else { (maxima.iter().map(|&m| m as f64).sum::<f64>() / nblocks as f64) as f32 };
        let mut absmax = vec![0u8; nblocks];
        let mut scales = vec![0f32; nblocks.div_ceil(GROUP)];
        for (g, scale) in scales.iter_mut().enumerate() {
            let range = g * GROUP..((g + 1) * GROUP).min(nblocks);
            let s = maxima[range.clone()].iter().fold(0f32, |s, m| s.max((m - mean).abs()));
            *scale = s;
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            for i in range {
                absmax[i] = fp8_encode((maxima[i] - mean) * inv);
            }
        }
        Ok(Nf4Weight {
            rows,
            cols,
            codes: Arc::new(codes),
            absmax: Arc::new(absmax),
            scales: Arc::new(scales),
            mean,
            on_device: None,
        })
    }

    /// This weight with a copy on `device` that products use, computing in
    /// `dtype` (the device-generic path; on a GPU the matrix never crosses
    /// to the host again).
    pub fn on_device(mut self, device: &Device, dtype: DType) -> CResult<Nf4Weight> {
        let bpr = Self::blocks_per_row(self.cols);
        let maxima: Vec<f32> = (0..self.rows * bpr).map(|i| self.block_max(i)).collect();
        let pairs: Vec<f32> = (0..256usize).flat_map(|b| [NF4[b & 15], NF4[b >> 4]]).collect();
        self.on_device = Some(Arc::new(OnDevice {
            codes: Tensor::from_slice(self.codes.as_slice(), self.codes.len(), device)?,
            maxima: Tensor::from_vec(maxima, (self.rows, bpr, 1), device)?.to_dtype(dtype)?,
            pairs: Tensor::from_vec(pairs, (256, 2), device)?.to_dtype(dtype)?,
        }));
        Ok(self)
    }

    /// The whole matrix (rows × cols) on the device, from the device form.
    fn dequantize_on(&self, d: &OnDevice) -> CResult<Tensor> {
        let bpr = Self::blocks_per_row(self.cols);
        // u32 ids: candle reads the largest id of a type (255 for u8) as "no row" (zeros).
        let ids = d.codes.to_dtype(DType::U32)?;
        let w = d.pairs.index_select(&ids, 0)?.reshape((self.rows, bpr, BLOCK))?.broadcast_mul(&d.maxima)?;
        let w = w.reshape((self.rows, bpr * BLOCK))?;
        if bpr * BLOCK == self.cols {
            Ok(w)
        } else {
            w.narrow(1, 0, self.cols)
        }
    }

    /// Bytes held.
    pub fn size_in_bytes(&self) -> usize {
        self.codes.len() + self.absmax.len() + 4 * self.scales.len()
    }

    /// The dequantized maximum of block `i`.
    fn block_max(&self, i: usize) -> f32 {
        fp8().values[self.absmax[i] as usize] * self.scales[i / GROUP] + self.mean
    }

    /// Row `r` into `out` (`cols` values).
    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let bpr = Self::blocks_per_row(self.cols);
        for b in 0..bpr {
            let blk = r * bpr + b;
            let m = self.block_max(blk);
            let table: [f32; 16] = std::array::from_fn(|i| NF4[i] * m);
            let codes = &self.codes[blk * BLOCK / 2..(blk + 1) * BLOCK / 2];
            let start = b * BLOCK;
            let end = (start + BLOCK).min(self.cols);
            let dst = &mut out[start..end];
            if dst.len() == BLOCK {
                for (pair, &c) in dst.chunks_exact_mut(2).zip(codes) {
                    pair[0] = table[(c & 15) as usize];
                    pair[1] = table[(c >> 4) as usize];
                }
            } else {
                for (i, v) in dst.iter_mut().enumerate() {
                    let c = codes[i / 2];
                    *v = table[if i % 2 == 0 { c & 15 } else { c >> 4 } as usize];
                }
            }
        }
    }

    /// Rows `[start, start + n)` in f32 (n × in), rows in parallel.
    pub fn dequantize_rows(&self, start: usize, n: usize) -> CResult<Tensor> {
        if start + n > self.rows {
            candle_core::bail!("nf4: rows {start}..{} of {}", start + n, self.rows);
        }
        let cols = self.cols;
        let mut out = vec![0f32; n * cols];
        let ptr = SendPtr(out.as_mut_ptr());
        let work = |range: std::ops::Range<usize>| {
            let ptr = &ptr;
            for r in range {
                // SAFETY: each row writes its own slice.
                let dst = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(r * cols), cols) };
                self.dequantize_row(start + r, dst);
            }
        };
        if n * cols < 1 << 16 {
            work(0..n);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(n, work);
        }
        Tensor::from_vec(out, (n, cols), &Device::Cpu)
    }

    /// The whole matrix in f32.
    pub fn dequantize(&self) -> CResult<Tensor> {
        self.dequantize_rows(0, self.rows)
    }

    /// `x Wᵀ` (… × in → … × out), a chunk of rows of W at a time.
    pub fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        if let Some(d) = &self.on_device {
            let w = self.dequantize_on(d)?;
            return x.to_dtype(w.dtype())?.broadcast_matmul(&w.t()?)?.to_dtype(x.dtype());
        }
        crate::chunked::forward(x, (self.rows, self.cols), |start, n| self.dequantize_rows(start, n))
    }

    /// `g W` (… × out → … × in): the gradient of `x Wᵀ` with respect to `x`.
    pub fn backward_input(&self, g: &Tensor) -> CResult<Tensor> {
        if let Some(d) = &self.on_device {
            let w = self.dequantize_on(d)?;
            return g.to_dtype(w.dtype())?.broadcast_matmul(&w)?.to_dtype(g.dtype());
        }
        crate::chunked::input_grad(g, (self.rows, self.cols), |start, n| self.dequantize_rows(start, n))
    }

    /// Bytes held on the device (0 when products run on the host).
    pub fn device_bytes(&self) -> usize {
        self.on_device
            .as_ref()
            .map_or(0, |d| d.codes.elem_count() + d.maxima.elem_count() * d.maxima.dtype().size_in_bytes())
    }

    /// The rows `[start, start + n)`, requantized as their own weight.
    pub fn narrow_rows(&self, start: usize, n: usize) -> CResult<Nf4Weight> {
        Nf4Weight::quantize(&self.dequantize_rows(start, n)?)
    }

    /// The rows at `index`, requantized as their own weight.
    pub fn select_rows(&self, index: &[usize]) -> CResult<Nf4Weight> {
        let mut rows = Vec::with_capacity(index.len());
        for &i in index {
            rows.push(self.dequantize_rows(i, 1)?);
        }
        Nf4Weight::quantize(&Tensor::cat(&rows, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded N(0, 0.02²) weights (xorshift + Box-Muller).
    fn normal(rows: usize, cols: usize, seed: u64) -> Tensor {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uniform = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| {
                let (u1, u2) = (uniform(), uniform());
                (0.02 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn nearest_value_and_round_trip() {
        for (i, &v) in NF4.iter().enumerate() {
            assert_eq!(nf4_index(v) as usize, i);
            assert!(nf4_index(v * 0.999 + 0.0001).abs_diff(i as u8) <= 1);
        }
        assert_eq!(nf4_index(0.03), 7);
        assert_eq!(nf4_index(0.05), 8);
        // E4M3 round trip of its own values.
        for c in 0..=255u8 {
            let v = fp8().values[c as usize];
            assert_eq!(fp8().values[fp8_encode(v) as usize], v);
        }
        // Rows not a multiple of the block, several second-level groups.
        let w = normal(300, 100, 1);
        let q = Nf4Weight::quantize(&w).unwrap();
        assert_eq!(q.absmax.len(), 600);
        assert_eq!(q.scales.len(), 3);
        let back = q.dequantize().unwrap();
        let err = (&back - &w).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        let rms = w.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        // NF4 on normal weights: about 10% relative RMS error.
        assert!(err / rms < 0.12, "relative error {}", err / rms);
        // The maxima survive double quantization to within E4M3's 3 mantissa bits.
        let wv = w.to_vec2::<f32>().unwrap();
        for r in [0, 150, 299] {
            for b in 0..2 {
                let end = ((b + 1) * BLOCK).min(100);
                let m = wv[r][b * BLOCK..end].iter().fold(0f32, |m, v| m.max(v.abs()));
                let got = q.block_max(r * 2 + b);
                assert!((got - m).abs() <= 0.07 * m + 1e-4, "max {m} became {got}");
            }
        }
        // 4 bits per weight plus about 0.13 for the maxima.
        let q = Nf4Weight::quantize(&normal(512, 512, 2)).unwrap();
        let bits = 8.0 * q.size_in_bytes() as f64 / (512.0 * 512.0);
        assert!((4.1..4.2).contains(&bits), "{bits} bits per weight");
    }

    #[test]
    fn the_device_form_gives_the_host_products() {
        // The path a GPU takes, run on the CPU: same products as the host kernels.
        let w = normal(70, 150, 7);
        let host = Nf4Weight::quantize(&w).unwrap();
        let dev = host.clone().on_device(&Device::Cpu, DType::F32).unwrap();
        assert!(dev.device_bytes() > 0 && host.device_bytes() == 0);
        let on = dev.dequantize_on(dev.on_device.as_ref().unwrap()).unwrap();
        let d =
            (on - host.dequantize().unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d == 0.0, "dequantized: {d} (every code byte, 255 too)");
        let x = normal(3, 150, 8).reshape((1, 3, 150)).unwrap();
        let g = normal(5, 70, 9);
        for (a, b) in [
            (host.forward(&x).unwrap(), dev.forward(&x).unwrap()),
            (host.backward_input(&g).unwrap(), dev.backward_input(&g).unwrap()),
        ] {
            assert_eq!(a.dims(), b.dims());
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "{d}");
        }
    }

    #[test]
    fn products_match_the_dequantized_matrix() {
        let w = normal(1000, 192, 3);
        let q = Nf4Weight::quantize(&w).unwrap();
        let d = q.dequantize().unwrap();
        let x = (normal(10, 192, 4) * 50.0).unwrap().reshape((2, 5, 192)).unwrap();
        let want = x.broadcast_matmul(&d.t().unwrap()).unwrap();
        let got = q.forward(&x).unwrap();
        assert_eq!(got.dims(), &[2, 5, 1000]);
        let diff = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");
        let g = (normal(10, 1000, 5) * 50.0).unwrap().reshape((2, 5, 1000)).unwrap();
        let want = g.broadcast_matmul(&d).unwrap();
        let got = q.backward_input(&g).unwrap();
        let diff = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{diff}");
        let part = q.narrow_rows(10, 3).unwrap().dequantize().unwrap();
        let want = d.narrow(0, 10, 3).unwrap();
        let diff = (&part - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 2e-3, "{diff}");
    }
}
