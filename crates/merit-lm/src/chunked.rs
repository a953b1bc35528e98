//! Products with a packed frozen weight (out × in) whose rows are
//! dequantized on demand: 4 MiB of f32 rows at a time, large enough for
//! efficient dense products, never the whole matrix. Shared by the GGUF
//! block formats ([`crate::quant`]) and NF4 ([`crate::nf4`]).

use candle_core::{DType, Device, Tensor};

type CResult<T> = candle_core::Result<T>;

/// Rows per chunk: 4 MiB of f32.
fn chunk_rows(rows: usize, cols: usize) -> usize {
    ((4 << 20) / (4 * cols.max(1))).clamp(1, rows.max(1))
}

/// `x Wᵀ` (… × in → … × out), where `rows(start, n)` dequantizes rows of W.
pub(crate) fn forward(
    x: &Tensor,
    (out, inp): (usize, usize),
    rows: impl Fn(usize, usize) -> CResult<Tensor>,
) -> CResult<Tensor> {
    let dims = x.dims().to_vec();
    let x2 = x.reshape(((), inp))?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let chunk = chunk_rows(out, inp);
    let mut parts = Vec::with_capacity(out.div_ceil(chunk));
    let mut start = 0;
    while start < out {
        let n = chunk.min(out - start);
        parts.push(x2.matmul(&rows(start, n)?.t()?)?);
        start += n;
    }
    let y = if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 1)? };
    let mut shape = dims;
    if let Some(last) = shape.last_mut() {
        *last = out;
    }
    y.reshape(shape)?.to_device(x.device())?.to_dtype(x.dtype())
}

/// `g W` (… × out → … × in): the gradient of `x Wᵀ` with respect to `x`.
pub(crate) fn input_grad(
    g: &Tensor,
    (out, inp): (usize, usize),
    rows: impl Fn(usize, usize) -> CResult<Tensor>,
) -> CResult<Tensor> {
    let dims = g.dims().to_vec();
    let g2 = g.reshape(((), out))?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let chunk = chunk_rows(out, inp);
    let mut acc: Option<Tensor> = None;
    let mut start = 0;
    while start < out {
        let n = chunk.min(out - start);
        let part = g2.narrow(1, start, n)?.contiguous()?.matmul(&rows(start, n)?)?;
        acc = Some(match acc {
            Some(a) => (a + part)?,
            None => part,
        });
        start += n;
    }
    let mut shape = dims;
    if let Some(last) = shape.last_mut() {
        *last = inp;
    }
    acc.unwrap_or(Tensor::zeros((0, inp), DType::F32, &Device::Cpu)?)
        .reshape(shape)?
        .to_device(g.device())?
        .to_dtype(g.dtype())
}
