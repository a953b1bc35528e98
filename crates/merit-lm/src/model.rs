//! The one decoder. Every family is this stack — embedding, N × (norm,
//! attention, norm, MLP), norm, LM head — with options from
//! [`DecoderConfig`]. Every op is built from candle's differentiable
//! primitives (no fused kernels without a backward), so the same code trains.

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor, Var, D};

use rand::{Rng, SeedableRng};

use crate::config::DecoderConfig;
use crate::fused;
use crate::linear::{forward_many, Dropout, Linear, Lora, LoraRows, Weight};
use crate::LmError;

type CResult<T> = candle_core::Result<T>;

/// The largest LoRA rank [`Decoder::add_lora`] takes (a bound on what a
/// caller can make the engine allocate; PEFT's ranks are 4 to 256).
pub const MAX_LORA_RANK: usize = 1024;

/// Which layers get LoRA adapters, and how big.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Scale by α/√r (rsLoRA) instead of α/r.
    pub rslora: bool,
    /// Family-neutral layer names, or "all".
    pub targets: Vec<String>,
    /// Dropout on the adapters' input while training (0 for none).
    pub dropout: f64,
    pub seed: u64,
}

/// RMS norm or LayerNorm over the last dimension.
#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    /// LayerNorm's bias; `None` for RMS norm.
    bias: Option<Tensor>,
    layer_norm: bool,
    eps: f64,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        if fused::fast(x) {
            return fused::norm(x, &self.weight, self.bias.as_ref(), self.layer_norm, self.eps);
        }
        if fused::cpu_float(x) {
            return fused::train::norm(x, &self.weight, self.bias.as_ref(), self.layer_norm, self.eps);
        }
        let x = if self.layer_norm { x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)? } else { x.clone() };
        let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(mean_sq + self.eps)?.sqrt()?)?.broadcast_mul(&self.weight)?;
        match &self.bias {
            Some(b) => normed.broadcast_add(b),
            None => Ok(normed),
        }
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
}

#[derive(Debug, Clone)]
struct Mlp {
    /// `None` for the plain GELU MLP.
    gate: Option<Linear>,
    up: Linear,
    down: Linear,
}

fn silu(x: &Tensor) -> CResult<Tensor> {
    // x · σ(x), from primitives that all have a backward.
    let sigmoid = (x.neg()?.exp()? + 1.0)?.recip()?;
    x.mul(&sigmoid)
}

/// GELU, tanh approximation (GPT-2's `gelu_new`, BLOOM's `bloom_gelu`).
fn gelu_tanh(x: &Tensor) -> CResult<Tensor> {
    let inner = ((x.powf(3.0)? * 0.044715)? + x)? * (2.0 / std::f64::consts::PI).sqrt();
    ((inner?.tanh()? + 1.0)? * 0.5)?.mul(x)
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let hidden = match &self.gate {
            Some(gate) => {
                let [g, u] = forward_many([gate, &self.up], x)?;
                if fused::fast(&g) && fused::fast(&u) {
                    fused::silu_mul(&g, &u)?
                } else if fused::cpu_float(&g) && fused::cpu_float(&u) {
                    fused::train::silu_mul(&g, &u)?
                } else {
                    silu(&g)?.mul(&u)?
                }
            }
            None => {
                let u = self.up.forward(x)?;
                if fused::fast(&u) {
                    fused::gelu_tanh(&u)?
                } else {
                    gelu_tanh(&u)?
                }
            }
        };
        self.down.forward(&hidden)
    }
}

/// One of a layer's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// Which rows of a fused module's B a split layer uses.
#[derive(Debug, Clone)]
enum RowSel {
    All,
    Range(usize, usize),
    Index(Vec<usize>),
}

/// A LoRA module as PEFT names it.
struct LoraModule {
    layer: usize,
    /// Hugging Face module path (`model.layers.0.self_attn.q_proj`).
    path: String,
    /// The name in `target_modules`.
    suffix: &'static str,
    /// Family-neutral names that select it.
    neutral: &'static [&'static str],
    parts: Vec<(Slot, RowSel)>,
}

impl Layer {
    fn slot(&self, s: Slot) -> Option<&Linear> {
        match s {
            Slot::Q => Some(&self.attn.q),
            Slot::K => Some(&self.attn.k),
            Slot::V => Some(&self.attn.v),
            Slot::O => Some(&self.attn.o),
            Slot::Gate => self.mlp.gate.as_ref(),
            Slot::Up => Some(&self.mlp.up),
            Slot::Down => Some(&self.mlp.down),
        }
    }

    fn slot_mut(&mut self, s: Slot) -> Option<&mut Linear> {
        match s {
            Slot::Q => Some(&mut self.attn.q),
            Slot::K => Some(&mut self.attn.k),
            Slot::V => Some(&mut self.attn.v),
            Slot::O => Some(&mut self.attn.o),
            Slot::Gate => self.mlp.gate.as_mut(),
            Slot::Up => Some(&mut self.mlp.up),
            Slot::Down => Some(&mut self.mlp.down),
        }
    }

    fn linears(&self) -> impl Iterator<Item = &Linear> {
        let a = &self.attn;
        [&a.q, &a.k, &a.v, &a.o, &self.mlp.up, &self.mlp.down].into_iter().chain(self.mlp.gate.as_ref())
    }

    fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        let a = &mut self.attn;
        [&mut a.q, &mut a.k, &mut a.v, &mut a.o, &mut self.mlp.up, &mut self.mlp.down]
            .into_iter()
            .chain(self.mlp.gate.as_mut())
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_norm: Norm,
    attn: Attention,
    post_norm: Norm,
    mlp: Mlp,
    /// GLM-4's norms on the attention and MLP outputs.
    post_attn_out_norm: Option<Norm>,
    post_mlp_out_norm: Option<Norm>,
}

/// The LoRA adapters of a model, one entry per linear layer (see
/// [`Decoder::adapters`]); the default is no adapter anywhere.
#[derive(Debug, Clone, Default)]
pub struct Adapters(Vec<Option<Lora>>);

impl Adapters {
    /// Bytes of adapter weights held (shared A/B counted once).
    pub fn size_in_bytes(&self) -> usize {
        let mut seen = Vec::new();
        let mut bytes = 0;
        for l in self.0.iter().flatten() {
            for v in [&l.a, &l.b] {
                let id = v.as_tensor().id();
                if !seen.contains(&id) {
                    seen.push(id);
                    bytes += v.elem_count() * v.dtype().size_in_bytes();
                }
            }
        }
        bytes
    }

    /// The same adapters with their weights in `dtype` (new variables; A and
    /// B shared between layers stay shared).
    pub fn to_dtype(&self, dtype: DType) -> CResult<Adapters> {
        let mut made: Vec<(candle_core::TensorId, Var)> = Vec::new();
        let mut convert = |v: &Var| -> CResult<Var> {
            let id = v.as_tensor().id();
            if let Some((_, done)) = made.iter().find(|(k, _)| *k == id) {
                return Ok(done.clone());
            }
            let new = Var::from_tensor(&v.as_tensor().to_dtype(dtype)?)?;
            made.push((id, new.clone()));
            Ok(new)
        };
        let mut out = Vec::with_capacity(self.0.len());
        for l in &self.0 {
            out.push(match l {
                Some(l) => Some(Lora { a: convert(&l.a)?, b: convert(&l.b)?, ..l.clone() }),
                None => None,
            });
        }
        Ok(Adapters(out))
    }
}

/// Keys and values of the positions seen so far, per layer.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    kv: Vec<Option<KvBuf>>,
    /// Left padding of each batch row, when prompts of different lengths share a batch.
    pads: Vec<usize>,
    /// How many positions the cache holds.
    pub len: usize,
}

impl Cache {
    /// A cache for a batch whose rows are left-padded by `pads` tokens.
    pub fn padded(pads: Vec<usize>) -> Cache {
        Cache { pads, ..Cache::default() }
    }

    /// Batch rows held (those of [`Cache::padded`] before the first pass).
    pub fn rows(&self) -> usize {
        if !self.pads.is_empty() {
            return self.pads.len();
        }
        self.kv.iter().flatten().next().and_then(|b| b.k.dim(0).ok()).unwrap_or(0)
    }

    /// Each row's left padding.
    fn row_pads(&self) -> Vec<usize> {
        if self.pads.is_empty() {
            vec![0; self.rows()]
        } else {
            self.pads.clone()
        }
    }

    /// Keeps the batch rows `keep` (in that order) and drops the left
    /// padding they all share: a continuous batch lets finished rows go.
    pub fn retain_rows(&mut self, keep: &[usize]) -> CResult<()> {
        let all = self.row_pads();
        let pads = keep
            .iter()
            .map(|&r| all.get(r).copied().ok_or_else(|| candle_core::Error::msg(format!("no batch row {r}"))))
            .collect::<CResult<Vec<usize>>>()?;
        if keep.is_empty() {
            *self = Cache::default();
            return Ok(());
        }
        let shared = pads.iter().copied().min().unwrap_or(0).min(self.len);
        for buf in self.kv.iter_mut().flatten() {
            let ix = Tensor::from_vec(keep.iter().map(|&r| r as u32).collect::<Vec<_>>(), keep.len(), buf.k.device())?;
            let used = buf.len - shared;
            let k = buf.k.index_select(&ix, 0)?.narrow(2, shared, used)?;
            let v = buf.v.index_select(&ix, 0)?.narrow(2, shared, used)?;
            *buf = KvBuf::holding(&k, &v)?;
        }
        self.pads = pads.iter().map(|p| p - shared).collect();
        self.len -= shared;
        Ok(())
    }

    /// Appends the rows of `other` (a cache of the same model) after these:
    /// the one holding fewer positions is left-padded to the other's length,
    /// so new requests join a running batch between decoding steps.
    pub fn append_rows(&mut self, other: Cache) -> CResult<()> {
        if self.rows() == 0 {
            *self = other;
            return Ok(());
        }
        if other.rows() == 0 {
            return Ok(());
        }
        if self.kv.len() != other.kv.len() {
            candle_core::bail!("the caches hold {} and {} layers", self.kv.len(), other.kv.len());
        }
        let len = self.len.max(other.len);
        let (grow_a, grow_b) = (len - self.len, len - other.len);
        let pads: Vec<usize> =
            self.row_pads().iter().map(|p| p + grow_a).chain(other.row_pads().iter().map(|p| p + grow_b)).collect();
        for (a, b) in self.kv.iter_mut().zip(other.kv) {
            let (Some(a), Some(b)) = (a.as_mut(), b) else { candle_core::bail!("a cache has an empty layer") };
            let part = |buf: &KvBuf, x: &Tensor, grow: usize| -> CResult<Tensor> {
                let x = x.narrow(2, 0, buf.len)?;
                if grow == 0 {
                    return Ok(x);
                }
                let (n, h, _, d) = x.dims4()?;
                Tensor::cat(&[&Tensor::zeros((n, h, grow, d), x.dtype(), x.device())?, &x], 2)
            };
            let k = Tensor::cat(&[&part(a, &a.k, grow_a)?, &part(&b, &b.k, grow_b)?], 0)?;
            let v = Tensor::cat(&[&part(a, &a.v, grow_a)?, &part(&b, &b.v, grow_b)?], 0)?;
            *a = KvBuf::holding(&k, &v)?;
        }
        self.pads = pads;
        self.len = len;
        Ok(())
    }
}

/// A loaded decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub config: DecoderConfig,
    /// Token embeddings (vocab × hidden); quantized ones are dequantized a row at a time.
    embed: Weight,
    embed_norm: Option<Norm>,
    /// Learned position table (GPT-2).
    positions: Option<Tensor>,
    /// ALiBi slopes, one per head (BLOOM).
    alibi: Option<Tensor>,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Linear,
    inv_freq: Vec<f64>,
    dtype: DType,
    device: Device,
}

/// Takes named tensors out of a checkpoint, naming what is missing or misshapen.
struct Weights {
    map: HashMap<String, Weight>,
    layer_norm: bool,
    eps: f64,
    dtype: DType,
}

impl Weights {
    /// A weight as stored (quantized ones stay quantized), dense ones in the compute dtype.
    fn take_weight(&mut self, name: &str, shape: &[usize]) -> Result<Weight, LmError> {
        let w = self.map.remove(name).ok_or_else(|| LmError::Weights(format!("tensor `{name}` is missing")))?;
        let dims = match &w {
            Weight::Dense(t) => t.dims().to_vec(),
            Weight::Quant(q) => vec![q.rows, q.cols],
            Weight::Nf4(q) => vec![q.rows, q.cols],
        };
        if dims != shape {
            return Err(LmError::Weights(format!("tensor `{name}` has shape {dims:?}, expected {shape:?}")));
        }
        Ok(match w {
            Weight::Dense(t) => Weight::Dense(t.to_dtype(self.dtype)?),
            q => q,
        })
    }

    /// A dense tensor (norms, biases, position tables).
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, LmError> {
        Ok(self.take_weight(name, shape)?.dequantize()?.to_dtype(self.dtype)?)
    }

    fn linear(&mut self, prefix: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear, LmError> {
        let weight = self.take_weight(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias = if bias { Some(self.take(&format!("{prefix}.bias"), &[out_dim])?) } else { None };
        Ok(Linear::plain(weight, bias))
    }

    /// A GPT-2 Conv1D layer: weight stored in × out (as in Hugging Face
    /// checkpoints; GGUF files store it out × in like every other linear).
    fn conv1d(&mut self, prefix: &str, in_dim: usize, out_dim: usize) -> Result<Linear, LmError> {
        let name = format!("{prefix}.weight");
        let weight = match self.map.get(&name) {
            Some(Weight::Quant(q)) if q.rows == out_dim && q.cols == in_dim => {
                self.take_weight(&name, &[out_dim, in_dim])?
            }
            _ => Weight::Dense(self.take(&name, &[in_dim, out_dim])?.t()?.contiguous()?),
        };
        let bias = Some(self.take(&format!("{prefix}.bias"), &[out_dim])?);
        Ok(Linear::plain(weight, bias))
    }

    fn norm(&mut self, prefix: &str, dim: usize) -> Result<Norm, LmError> {
        let weight = self.take(&format!("{prefix}.weight"), &[dim])?;
        let bias = if self.layer_norm { Some(self.take(&format!("{prefix}.bias"), &[dim])?) } else { None };
        Ok(Norm { weight, bias, layer_norm: self.layer_norm, eps: self.eps })
    }
}

/// Splits a fused linear layer's output rows into consecutive parts.
fn split_rows(fused: &Linear, sizes: &[usize]) -> CResult<Vec<Linear>> {
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for &n in sizes {
        let bias = match &fused.bias {
            Some(b) => Some(b.narrow(0, start, n)?.contiguous()?),
            None => None,
        };
        out.push(Linear::plain(fused.weight.narrow_rows(start, n)?, bias));
        start += n;
    }
    Ok(out)
}

/// ALiBi slopes for `n` heads (Press et al.), as BLOOM lays them out: with
/// `c` the largest power of two ≤ n, `2^(-8i/c)` for i = 1..=c, then
/// `2^(-4(2i-1)/c)` for the remaining heads.
fn alibi_slopes(n: usize) -> Vec<f32> {
    let c = 1usize << (usize::BITS - 1 - n.leading_zeros());
    let base = 2f64.powf(-8.0 / c as f64);
    let mut slopes: Vec<f32> = (1..=c).map(|i| base.powi(i as i32) as f32).collect();
    let extra_base = 2f64.powf(-4.0 / c as f64);
    slopes.extend((0..n - c).map(|i| extra_base.powi((2 * i + 1) as i32) as f32));
    slopes
}

impl Decoder {
    /// Builds the decoder from Hugging Face-named tensors.
    pub fn load(config: DecoderConfig, tensors: HashMap<String, Tensor>, device: &Device) -> Result<Decoder, LmError> {
        Decoder::load_as(config, tensors, device, DType::F32)
    }

    /// Builds the decoder computing in `dtype` (F32 normally; F64 for gradient checks).
    pub fn load_as(
        config: DecoderConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Decoder, LmError> {
        let weights = tensors.into_iter().map(|(k, t)| (k, Weight::Dense(t))).collect();
        Decoder::load_weights(config, weights, device, dtype)
    }

    /// Builds the decoder from weights that may be quantized: those stay
    /// quantized (linear layers, embeddings), the rest is dequantized.
    pub fn load_weights(
        config: DecoderConfig,
        tensors: HashMap<String, Weight>,
        device: &Device,
        dtype: DType,
    ) -> Result<Decoder, LmError> {
        use crate::config::{Family, MlpKind, NormKind, Positions};
        let c = &config;
        let layer_norm = c.norm == NormKind::Layer;
        let mut w = Weights { map: tensors, layer_norm, eps: c.norm_eps, dtype };
        let (h, q_dim, kv_dim, inter) =
            (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size);
        // GPT-2 and BLOOM checkpoints come with or without the `transformer.` prefix.
        let root = match c.family {
            Family::Gpt2 | Family::Bloom => {
                let probe = if c.family == Family::Gpt2 {
                    "transformer.wte.weight"
                } else {
                    "transformer.word_embeddings.weight"
                };
                if w.map.contains_key(probe) {
                    "transformer."
                } else {
                    ""
                }
            }
            _ => "model.",
        };
        let embed_name = match c.family {
            Family::Gpt2 => format!("{root}wte.weight"),
            Family::Bloom => format!("{root}word_embeddings.weight"),
            _ => format!("{root}embed_tokens.weight"),
        };
        let embed = w.take_weight(&embed_name, &[c.vocab_size, h])?;
        let embed_norm =
            if c.embed_norm { Some(w.norm(&format!("{root}word_embeddings_layernorm"), h)?) } else { None };
        let positions = match c.positions {
            Positions::Learned { max } => Some(w.take(&format!("{root}wpe.weight"), &[max, h])?),
            _ => None,
        };
        let alibi = match c.positions {
            Positions::Alibi => {
                Some(Tensor::from_vec(alibi_slopes(c.num_heads), (c.num_heads, 1, 1), device)?.to_dtype(dtype)?)
            }
            _ => None,
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let layer = match c.family {
                Family::Gpt2 => {
                    let p = format!("{root}h.{i}");
                    let fused = w.conv1d(&format!("{p}.attn.c_attn"), h, 3 * h)?;
                    let [q, k, v]: [Linear; 3] = split_rows(&fused, &[h, h, h])?
                        .try_into()
                        .map_err(|_| LmError::Weights("c_attn split".into()))?;
                    Layer {
                        input_norm: w.norm(&format!("{p}.ln_1"), h)?,
                        attn: Attention {
                            q,
                            k,
                            v,
                            o: w.conv1d(&format!("{p}.attn.c_proj"), h, h)?,
                            q_norm: None,
                            k_norm: None,
                        },
                        post_norm: w.norm(&format!("{p}.ln_2"), h)?,
                        mlp: Mlp {
                            gate: None,
                            up: w.conv1d(&format!("{p}.mlp.c_fc"), h, inter)?,
                            down: w.conv1d(&format!("{p}.mlp.c_proj"), inter, h)?,
                        },
                        post_attn_out_norm: None,
                        post_mlp_out_norm: None,
                    }
                }
                Family::Bloom => {
                    let p = format!("{root}h.{i}");
                    // query_key_value rows are laid out per head: [head][q|k|v][head_dim].
                    let fused = w.linear(&format!("{p}.self_attention.query_key_value"), 3 * h, h, true)?;
                    let (nh, d) = (c.num_heads, c.head_dim);
                    let bias = fused
                        .bias
                        .as_ref()
                        .ok_or_else(|| LmError::Weights("query_key_value.bias is missing".into()))?;
                    let pick = |j: usize| -> CResult<Linear> {
                        let rows: Vec<usize> =
                            (0..nh).flat_map(|head| (0..d).map(move |i| (head * 3 + j) * d + i)).collect();
                        let index =
                            Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), device)?;
                        Ok(Linear::plain(fused.weight.select_rows(&rows)?, Some(bias.index_select(&index, 0)?)))
                    };
                    Layer {
                        input_norm: w.norm(&format!("{p}.input_layernorm"), h)?,
                        attn: Attention {
                            q: pick(0)?,
                            k: pick(1)?,
                            v: pick(2)?,
                            o: w.linear(&format!("{p}.self_attention.dense"), h, h, true)?,
                            q_norm: None,
                            k_norm: None,
                        },
                        post_norm: w.norm(&format!("{p}.post_attention_layernorm"), h)?,
                        mlp: Mlp {
                            gate: None,
                            up: w.linear(&format!("{p}.mlp.dense_h_to_4h"), inter, h, true)?,
                            down: w.linear(&format!("{p}.mlp.dense_4h_to_h"), h, inter, true)?,
                        },
                        post_attn_out_norm: None,
                        post_mlp_out_norm: None,
                    }
                }
                _ => {
                    let p = format!("{root}layers.{i}");
                    let (q_norm, k_norm) = if c.qk_norm {
                        (
                            Some(w.norm(&format!("{p}.self_attn.q_norm"), c.head_dim)?),
                            Some(w.norm(&format!("{p}.self_attn.k_norm"), c.head_dim)?),
                        )
                    } else {
                        (None, None)
                    };
                    let attn = Attention {
                        q: w.linear(&format!("{p}.self_attn.q_proj"), q_dim, h, c.qkv_bias)?,
                        k: w.linear(&format!("{p}.self_attn.k_proj"), kv_dim, h, c.qkv_bias)?,
                        v: w.linear(&format!("{p}.self_attn.v_proj"), kv_dim, h, c.qkv_bias)?,
                        o: w.linear(&format!("{p}.self_attn.o_proj"), h, q_dim, c.o_bias)?,
                        q_norm,
                        k_norm,
                    };
                    let mlp = if matches!(c.family, Family::Glm | Family::Glm4) {
                        let fused = w.linear(&format!("{p}.mlp.gate_up_proj"), 2 * inter, h, c.mlp_bias)?;
                        let [gate, up]: [Linear; 2] = split_rows(&fused, &[inter, inter])?
                            .try_into()
                            .map_err(|_| LmError::Weights("gate_up split".into()))?;
                        Mlp {
                            gate: Some(gate),
                            up,
                            down: w.linear(&format!("{p}.mlp.down_proj"), h, inter, c.mlp_bias)?,
                        }
                    } else {
                        debug_assert_eq!(c.mlp, MlpKind::SwiGlu);
                        Mlp {
                            gate: Some(w.linear(&format!("{p}.mlp.gate_proj"), inter, h, c.mlp_bias)?),
                            up: w.linear(&format!("{p}.mlp.up_proj"), inter, h, c.mlp_bias)?,
                            down: w.linear(&format!("{p}.mlp.down_proj"), h, inter, c.mlp_bias)?,
                        }
                    };
                    let sandwich = |w: &mut Weights, name: &str| -> Result<Option<Norm>, LmError> {
                        if c.sandwich_norms {
                            Ok(Some(w.norm(&format!("{p}.{name}"), h)?))
                        } else {
                            Ok(None)
                        }
                    };
                    Layer {
                        input_norm: w.norm(&format!("{p}.input_layernorm"), h)?,
                        attn,
                        post_norm: w.norm(&format!("{p}.post_attention_layernorm"), h)?,
                        mlp,
                        post_attn_out_norm: sandwich(&mut w, "post_self_attn_layernorm")?,
                        post_mlp_out_norm: sandwich(&mut w, "post_mlp_layernorm")?,
                    }
                }
            };
            layers.push(layer);
        }
        let norm = match c.family {
            Family::Gpt2 | Family::Bloom => w.norm(&format!("{root}ln_f"), h)?,
            _ => w.norm(&format!("{root}norm"), h)?,
        };
        let lm_head = Linear::plain(
            if c.tie_word_embeddings && !w.map.contains_key("lm_head.weight") {
                embed.clone()
            } else {
                w.take_weight("lm_head.weight", &[c.vocab_size, h])?
            },
            None,
        );
        Ok(Decoder {
            inv_freq: c.inv_freq(),
            config,
            embed,
            embed_norm,
            positions,
            alibi,
            layers,
            norm,
            lm_head,
            dtype,
            device: device.clone(),
        })
    }

    /// The LoRA modules of this family, as PEFT sees them: one per Hugging
    /// Face linear layer, fused ones (GPT-2's `c_attn`, BLOOM's
    /// `query_key_value`, GLM's `gate_up_proj`) covering several of our split
    /// layers with one A and one B.
    fn lora_modules(&self) -> Vec<LoraModule> {
        use crate::config::Family;
        let c = &self.config;
        let (h, inter, nh, d) = (c.hidden_size, c.intermediate_size, c.num_heads, c.head_dim);
        let mut out = Vec::new();
        for i in 0..self.layers.len() {
            let m =
                |path: String, suffix: &'static str, neutral: &'static [&'static str], parts: Vec<(Slot, RowSel)>| {
                    LoraModule { layer: i, path, suffix, neutral, parts }
                };
            match c.family {
                Family::Gpt2 => {
                    let p = format!("transformer.h.{i}");
                    out.push(m(
                        format!("{p}.attn.c_attn"),
                        "attn.c_attn",
                        &["q_proj", "k_proj", "v_proj"],
                        vec![
                            (Slot::Q, RowSel::Range(0, h)),
                            (Slot::K, RowSel::Range(h, h)),
                            (Slot::V, RowSel::Range(2 * h, h)),
                        ],
                    ));
                    out.push(m(format!("{p}.attn.c_proj"), "attn.c_proj", &["o_proj"], vec![(Slot::O, RowSel::All)]));
                    out.push(m(format!("{p}.mlp.c_fc"), "mlp.c_fc", &["up_proj"], vec![(Slot::Up, RowSel::All)]));
                    out.push(m(
                        format!("{p}.mlp.c_proj"),
                        "mlp.c_proj",
                        &["down_proj"],
                        vec![(Slot::Down, RowSel::All)],
                    ));
                }
                Family::Bloom => {
                    let p = format!("transformer.h.{i}");
                    // query_key_value rows: [head][q|k|v][head_dim].
                    let rows = |j: usize| -> RowSel {
                        RowSel::Index((0..nh).flat_map(|hd| (0..d).map(move |x| (hd * 3 + j) * d + x)).collect())
                    };
                    out.push(m(
                        format!("{p}.self_attention.query_key_value"),
                        "query_key_value",
                        &["q_proj", "k_proj", "v_proj"],
                        vec![(Slot::Q, rows(0)), (Slot::K, rows(1)), (Slot::V, rows(2))],
                    ));
                    out.push(m(
                        format!("{p}.self_attention.dense"),
                        "self_attention.dense",
                        &["o_proj"],
                        vec![(Slot::O, RowSel::All)],
                    ));
                    out.push(m(
                        format!("{p}.mlp.dense_h_to_4h"),
                        "dense_h_to_4h",
                        &["up_proj"],
                        vec![(Slot::Up, RowSel::All)],
                    ));
                    out.push(m(
                        format!("{p}.mlp.dense_4h_to_h"),
                        "dense_4h_to_h",
                        &["down_proj"],
                        vec![(Slot::Down, RowSel::All)],
                    ));
                }
                family => {
                    let p = format!("model.layers.{i}");
                    let attn = |name: &'static str, slot: Slot, neutral: &'static [&'static str]| {
                        m(format!("{p}.self_attn.{name}"), name, neutral, vec![(slot, RowSel::All)])
                    };
                    out.push(attn("q_proj", Slot::Q, &["q_proj"]));
                    out.push(attn("k_proj", Slot::K, &["k_proj"]));
                    out.push(attn("v_proj", Slot::V, &["v_proj"]));
                    out.push(attn("o_proj", Slot::O, &["o_proj"]));
                    if matches!(family, Family::Glm | Family::Glm4) {
                        out.push(m(
                            format!("{p}.mlp.gate_up_proj"),
                            "gate_up_proj",
                            &["gate_proj", "up_proj"],
                            vec![(Slot::Gate, RowSel::Range(0, inter)), (Slot::Up, RowSel::Range(inter, inter))],
                        ));
                    } else {
                        out.push(m(
                            format!("{p}.mlp.gate_proj"),
                            "gate_proj",
                            &["gate_proj"],
                            vec![(Slot::Gate, RowSel::All)],
                        ));
                        out.push(m(format!("{p}.mlp.up_proj"), "up_proj", &["up_proj"], vec![(Slot::Up, RowSel::All)]));
                    }
                    out.push(m(
                        format!("{p}.mlp.down_proj"),
                        "down_proj",
                        &["down_proj"],
                        vec![(Slot::Down, RowSel::All)],
                    ));
                }
            }
        }
        out
    }

    /// Attaches LoRA adapters to the layers named in `cfg.targets`:
    /// family-neutral names (q_proj, k_proj, v_proj, o_proj, gate_proj,
    /// up_proj, down_proj — on a fused module, any of its parts selects the
    /// whole module), the family's own PEFT module names (`c_attn`,
    /// `query_key_value`, `gate_up_proj`, `attn.c_proj`, …), or "all". A
    /// starts uniform in ±1/√in (PEFT's default), B at zero, so the model is
    /// unchanged until trained. Returns the trainable variables by PEFT name.
    pub fn add_lora(&mut self, cfg: &LoraConfig) -> Result<Vec<(String, Var)>, LmError> {
        if cfg.rank == 0 || cfg.rank > MAX_LORA_RANK {
            return Err(LmError::Config(format!("LoRA rank must be 1 to {MAX_LORA_RANK}, got {}", cfg.rank)));
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(LmError::Config(format!("LoRA dropout {} is not in [0, 1)", cfg.dropout)));
        }
        let modules = self.lora_modules();
        let all = cfg.targets.iter().any(|t| t == "all");
        let matches =
            |m: &LoraModule, t: &str| m.neutral.contains(&t) || m.suffix == t || m.path.ends_with(&format!(".{t}"));
        if let Some(bad) = cfg.targets.iter().find(|t| *t != "all" && !modules.iter().any(|m| matches(m, t))) {
            return Err(LmError::Config(format!(
                "LoRA target `{bad}` is not a layer of this model (use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, {} or all)",
                self.lora_target_names().join(", ")
            )));
        }
        let scale = if cfg.rslora { cfg.alpha / (cfg.rank as f64).sqrt() } else { cfg.alpha / cfg.rank as f64 };
        let dtype = self.dtype;
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
        let mut vars = Vec::new();
        for module in &modules {
            if !all && !cfg.targets.iter().any(|t| matches(module, t)) {
                continue;
            }
            let layer = &mut self.layers[module.layer];
            let in_dim = layer.slot(module.parts[0].0).map(|l| l.weight.dims2()).transpose()?.map_or(0, |d| d.1);
            let out_dim: usize = module
                .parts
                .iter()
                .map(|(slot, sel)| match sel {
                    RowSel::All => layer.slot(*slot).map_or(Ok(0), |l| l.weight.dims2().map(|d| d.0)),
                    RowSel::Range(_, n) => Ok(*n),
                    RowSel::Index(ix) => Ok(ix.len()),
                })
                .sum::<CResult<usize>>()?;
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a: Vec<f64> = (0..cfg.rank * in_dim).map(|_| rng.random_range(-bound..bound)).collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.rank, in_dim), &self.device)?.to_dtype(dtype)?)?;
            let b = Var::from_tensor(&Tensor::zeros((out_dim, cfg.rank), dtype, &self.device)?)?;
            let dropout = (cfg.dropout > 0.0).then(|| Dropout::new(cfg.dropout, rng.random()));
            for (slot, sel) in &module.parts {
                let rows = match sel {
                    RowSel::All => None,
                    RowSel::Range(start, n) => Some(LoraRows::Range(*start, *n)),
                    RowSel::Index(ix) => Some(LoraRows::Index(Tensor::from_vec(
                        ix.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                        ix.len(),
                        &self.device,
                    )?)),
                };
                if let Some(lin) = layer.slot_mut(*slot) {
                    lin.lora = Some(Lora { a: a.clone(), b: b.clone(), scale, dropout: dropout.clone(), rows });
                }
            }
            let prefix = format!("base_model.model.{}", module.path);
            vars.push((format!("{prefix}.lora_A.weight"), a));
            vars.push((format!("{prefix}.lora_B.weight"), b));
        }
        Ok(vars)
    }

    /// PEFT `target_modules` for every LoRA module of this family.
    pub fn lora_target_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for m in self.lora_modules() {
            if !names.contains(&m.suffix) {
                names.push(m.suffix);
            }
        }
        names
    }

    /// PEFT `target_modules` for the given targets (family-neutral or native names, or "all").
    pub fn lora_targets_for(&self, targets: &[String]) -> Vec<&'static str> {
        let all = targets.iter().any(|t| t == "all");
        let mut names: Vec<&'static str> = Vec::new();
        for m in self.lora_modules() {
            let hit = all
                || targets
                    .iter()
                    .any(|t| m.neutral.contains(&t.as_str()) || m.suffix == t || m.path.ends_with(&format!(".{t}")));
            if hit && !names.contains(&m.suffix) {
                names.push(m.suffix);
            }
        }
        names
    }

    /// cos and sin tables (t × rotary_dim) for positions `[start, start + t)`:
    /// `[f0 … fn, f0 … fn]` for rotate-half, `[f0, f0, f1, f1 …]` when interleaved.
    fn rope_tables(&self, inv_freq: &[f64], positions: &[usize], interleaved: bool) -> CResult<(Tensor, Tensor)> {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half * 2);
        let mut sin = Vec::with_capacity(positions.len() * half * 2);
        for &pos in positions {
            // Angles rounded to f32 as transformers computes them.
            let angles: Vec<f64> = inv_freq.iter().map(|f| (pos as f64 * f) as f32 as f64).collect();
            let order: Vec<f64> = if interleaved {
                angles.iter().flat_map(|a| [*a, *a]).collect()
            } else {
                angles.iter().chain(angles.iter()).copied().collect()
            };
            cos.extend(order.iter().map(|a| a.cos() as f32));
            sin.extend(order.iter().map(|a| a.sin() as f32));
        }
        let d = half * 2;
        let dtype = self.dtype;
        Ok((
            Tensor::from_vec(cos, (positions.len(), d), &self.device)?.to_dtype(dtype)?,
            Tensor::from_vec(sin, (positions.len(), d), &self.device)?.to_dtype(dtype)?,
        ))
    }

    /// Additive attention mask (rows × 1 × t × total; one row when nothing is
    /// padded): causal, windowed where the family slides, and blind to the
    /// left padding of each batch row (a padding query sees only itself).
    fn mask(&self, start: usize, t: usize, pads: &[usize]) -> CResult<Tensor> {
        let total = start + t;
        let window = self.config.sliding_window;
        let rows = if pads.iter().all(|&p| p == 0) { &[0][..] } else { pads };
        let mut m = vec![0f32; rows.len() * t * total];
        for (r, &pad) in rows.iter().enumerate() {
            for i in 0..t {
                let qpos = start + i;
                let row = &mut m[(r * t + i) * total..(r * t + i + 1) * total];
                for (j, slot) in row.iter_mut().enumerate() {
                    let future = j > qpos;
                    let too_old = window.is_some_and(|w| j + w <= qpos);
                    let padding = j < pad && j != qpos;
                    if future || too_old || padding {
                        *slot = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Tensor::from_vec(m, (rows.len(), 1, t, total), &self.device)?.to_dtype(self.dtype)
    }

    /// Logits (batch × t × vocab) for token ids (batch × t), continuing `cache` if given.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut Cache>) -> CResult<Tensor> {
        let x = self.hidden(ids, cache)?;
        self.lm_head.forward(&self.norm.forward(&x)?)
    }

    /// Logits of the last position only (batch × vocab): what generation
    /// needs, without the LM head's cost for every prompt position.
    pub fn forward_last(&self, ids: &Tensor, cache: Option<&mut Cache>) -> CResult<Tensor> {
        let x = self.hidden(ids, cache)?;
        let t = x.dim(1)?;
        let last = x.narrow(1, t - 1, 1)?.squeeze(1)?;
        self.lm_head.forward(&self.norm.forward(&last)?)
    }

    /// The last layer's output (batch × t × hidden), before the final norm.
    fn hidden(&self, ids: &Tensor, mut cache: Option<&mut Cache>) -> CResult<Tensor> {
        let t = ids.dim(1)?;
        let (mut x, rope, bias) = self.prelude(ids, cache.as_deref())?;
        if let Some(cache) = cache.as_deref_mut() {
            cache.kv.resize(self.layers.len(), None);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|c| &mut c.kv[i]);
            x = self.layer_forward(layer, &x, rope.as_ref(), &bias, kv)?;
        }
        if let Some(cache) = cache {
            cache.len += t;
        }
        Ok(x)
    }

    /// The input of the first layer (embeddings, learned positions), the
    /// rotary tables and the attention bias of a forward pass.
    fn prelude(&self, ids: &Tensor, cache: Option<&Cache>) -> CResult<(Tensor, Option<Rope>, Tensor)> {
        use crate::config::Positions;
        let (b, t) = ids.dims2()?;
        let c = &self.config;
        let start = cache.map_or(0, |c| c.len);
        let pads: Vec<usize> = match cache {
            Some(c) if !c.pads.is_empty() => {
                if c.pads.len() != b {
                    candle_core::bail!("the cache was padded for {} rows, the batch has {b}", c.pads.len());
                }
                c.pads.clone()
            }
            _ => vec![0; b],
        };
        let padded = pads.iter().any(|&p| p > 0);
        // Each row's positions, counted from its first real token.
        let positions: Vec<usize> = if padded {
            pads.iter().flat_map(|&p| (start..start + t).map(move |i| i.saturating_sub(p))).collect()
        } else {
            (start..start + t).collect()
        };
        let mut x = self.embed_rows(ids)?.reshape((b, t, c.hidden_size))?;
        if let Some(table) = &self.positions {
            if start + t > table.dim(0)? {
                candle_core::bail!("sequence of {} positions is longer than the model's {}", start + t, table.dim(0)?);
            }
            let index = Tensor::from_vec(
                positions.iter().map(|&p| p as u32).collect::<Vec<_>>(),
                positions.len(),
                &self.device,
            )?;
            let rows = table.index_select(&index, 0)?;
            x = x.broadcast_add(&rows.reshape((if padded { b } else { 1 }, t, c.hidden_size))?)?;
        }
        if let Some(n) = &self.embed_norm {
            x = n.forward(&x)?;
        }
        let rope = match c.positions {
            Positions::Rope { rotary_dim, interleaved } => {
                // Dynamic scaling recomputes the frequencies for the length so far.
                let dynamic;
                let inv_freq = if c.rope_is_dynamic() {
                    dynamic = c.inv_freq_at(start + t);
                    &dynamic
                } else {
                    &self.inv_freq
                };
                let (cos, sin) = self.rope_tables(inv_freq, &positions, interleaved)?;
                let (cos, sin) = if padded {
                    (cos.reshape((b, 1, t, rotary_dim))?, sin.reshape((b, 1, t, rotary_dim))?)
                } else {
                    (cos, sin)
                };
                Some(Rope { cos, sin, rotary_dim, interleaved })
            }
            _ => None,
        };
        let mut bias = self.mask(start, t, &pads)?;
        if let Some(slopes) = &self.alibi {
            // ALiBi counts key positions from each row's first real token.
            let rows = if padded { &pads[..] } else { &[0][..] };
            let key_pos: Vec<f32> =
                rows.iter().flat_map(|&p| (0..start + t).map(move |j| j.saturating_sub(p) as f32)).collect();
            let key_pos =
                Tensor::from_vec(key_pos, (rows.len(), 1, 1, start + t), &self.device)?.to_dtype(self.dtype)?;
            bias = bias.broadcast_add(&slopes.unsqueeze(0)?.broadcast_mul(&key_pos)?)?;
        }
        Ok((x, rope, bias))
    }

    /// One decoder layer.
    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        rope: Option<&Rope>,
        bias: &Tensor,
        kv: Option<&mut Option<KvBuf>>,
    ) -> CResult<Tensor> {
        let mut h = layer.input_norm.forward(x)?;
        h = self.attention(&layer.attn, &h, rope, bias, kv)?;
        if let Some(n) = &layer.post_attn_out_norm {
            h = n.forward(&h)?;
        }
        let x = (x + h)?;
        let mut h = layer.mlp.forward(&layer.post_norm.forward(&x)?)?;
        if let Some(n) = &layer.post_mlp_out_norm {
            h = n.forward(&h)?;
        }
        x + h
    }

    /// Gradient checkpointing: the summed next-token loss of `ids` (b × t)
    /// against `targets` weighted by `weights` (b × (t − 1) each, as
    /// [`crate::fused::cross_entropy`]), and the gradient of `scale · loss`
    /// for every LoRA parameter, by id. The forward pass keeps only each
    /// layer's input; the backward pass runs one layer again at a time (with
    /// the same dropout masks: `dropout_seed` as given to
    /// [`Decoder::reseed_dropout`]) and the LM head in chunks of rows, so one
    /// layer's activations are alive at a time instead of all of them.
    pub fn loss_grads_checkpointed(
        &self,
        ids: &Tensor,
        targets: &[u32],
        weights: &[f32],
        scale: f64,
        dropout_seed: u64,
    ) -> CResult<(f64, HashMap<candle_core::TensorId, Tensor>)> {
        let (b, t) = ids.dims2()?;
        if t < 2 || targets.len() != b * (t - 1) || weights.len() != targets.len() {
            candle_core::bail!("checkpointed loss: {b} × {t} ids need {} targets and weights", b * (t.max(1) - 1));
        }
        self.reseed_dropout(dropout_seed);
        let (x0, rope, bias) = self.prelude(ids, None)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = x0.detach();
        crate::linear::no_grad(|| -> CResult<()> {
            for layer in &self.layers {
                let next = self.layer_forward(layer, &x, rope.as_ref(), &bias, None)?;
                inputs.push(std::mem::replace(&mut x, next.detach()));
            }
            Ok(())
        })?;
        // The head, a chunk of rows at a time: logits are vocabulary-wide.
        let hidden = self.config.hidden_size;
        let rows = x.narrow(1, 0, t - 1)?.reshape((b * (t - 1), hidden))?;
        drop(x);
        let chunk = 128;
        let mut loss = 0f64;
        let mut grad_rows = Vec::with_capacity(rows.dim(0)?.div_ceil(chunk));
        let mut grads: HashMap<candle_core::TensorId, Tensor> = HashMap::new();
        let mut start = 0;
        while start < rows.dim(0)? {
            let n = chunk.min(rows.dim(0)? - start);
            let h = candle_core::Var::from_tensor(&rows.narrow(0, start, n)?)?;
            let logits = self.lm_head.forward(&self.norm.forward(h.as_tensor())?)?;
            let nll = crate::fused::cross_entropy(&logits, &targets[start..start + n], &weights[start..start + n])?
                .sum_all()?;
            loss += nll.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let g = (nll * scale)?.backward()?;
            grad_rows.push(match g.get(h.as_tensor()) {
                Some(g) => g.clone(),
                None => h.zeros_like()?,
            });
            start += n;
        }
        let mut grad = Tensor::cat(&grad_rows, 0)?.reshape((b, t - 1, hidden))?;
        grad = Tensor::cat(&[grad, Tensor::zeros((b, 1, hidden), grad_rows[0].dtype(), &self.device)?], 1)?;
        drop(grad_rows);
        // Layers below the first adapter need no backward pass.
        let first = self.layers.iter().position(|l| l.linears().any(|lin| lin.lora.is_some())).unwrap_or(usize::MAX);
        for i in (0..self.layers.len()).rev() {
            if i < first {
                break;
            }
            self.reseed_dropout(dropout_seed);
            let xv = candle_core::Var::from_tensor(&inputs[i])?;
            let out = self.layer_forward(&self.layers[i], xv.as_tensor(), rope.as_ref(), &bias, None)?;
            let g = (out * &grad)?.sum_all()?.backward()?;
            // Layers split from one fused module share their adapter: count it once.
            let mut seen = Vec::new();
            for lin in self.layers[i].linears() {
                if let Some(l) = &lin.lora {
                    for v in [&l.a, &l.b] {
                        let id = v.as_tensor().id();
                        if seen.contains(&id) {
                            continue;
                        }
                        seen.push(id);
                        if let Some(gv) = g.get(v.as_tensor()) {
                            let sum = match grads.remove(&id) {
                                Some(acc) => (acc + gv)?,
                                None => gv.clone(),
                            };
                            grads.insert(id, sum);
                        }
                    }
                }
            }
            grad = match g.get(xv.as_tensor()) {
                Some(gx) => gx.clone(),
                None => break,
            };
        }
        Ok((loss, grads))
    }

    /// Embedding rows for `ids` (any shape), flattened to (n × hidden).
    fn embed_rows(&self, ids: &Tensor) -> CResult<Tensor> {
        let flat = ids.flatten_all()?;
        match &self.embed {
            Weight::Dense(t) => t.index_select(&flat, 0),
            packed => {
                let vocab = packed.dims2()?.0;
                let rows: Vec<usize> = flat.to_vec1::<u32>()?.into_iter().map(|i| i as usize).collect();
                if let Some(bad) = rows.iter().find(|&&i| i >= vocab) {
                    candle_core::bail!("token id {bad} is outside the vocabulary of {vocab}");
                }
                packed.select_rows(&rows)?.dequantize()?.to_device(&self.device)?.to_dtype(self.dtype)
            }
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Reseeds every LoRA dropout: layer `i` of the list draws from `seed + i`.
    pub fn reseed_dropout(&self, seed: u64) {
        let mut i = 0u64;
        for layer in &self.layers {
            for lin in layer.linears() {
                if let Some(d) = lin.lora.as_ref().and_then(|l| l.dropout.as_ref()) {
                    d.reseed(seed.wrapping_add(i));
                    i += 1;
                }
            }
        }
    }

    /// QLoRA on a Hugging Face base: every dense linear weight of the decoder
    /// layers becomes NF4 with double-quantized maxima (block 64, as in the
    /// QLoRA paper); embeddings, norms and the output head stay as they are.
    /// Returns the bytes of the weights before and after.
    pub fn quantize_nf4(&mut self) -> Result<(usize, usize), LmError> {
        let (mut before, mut after) = (0, 0);
        for layer in &mut self.layers {
            for lin in layer.linears_mut() {
                if let Weight::Dense(w) = &lin.weight {
                    before += w.elem_count() * w.dtype().size_in_bytes();
                    let mut q = crate::nf4::Nf4Weight::quantize(w)?;
                    if !self.device.is_cpu() {
                        q = q.on_device(&self.device, self.dtype)?;
                    }
                    after += q.size_in_bytes();
                    lin.weight = Weight::Nf4(q);
                }
            }
        }
        Ok((before, after))
    }

    /// Stores the dense decoder weights that are wider than tall (in > out,
    /// such as `down_proj`) transposed: the same matrix as a strided view of
    /// in × out storage. gemm packs such a weight about twice as fast for
    /// the forward product, and the backward product stays fast, so a
    /// training step gets quicker at no cost in memory.
    pub fn layout_for_training(&mut self) -> Result<(), LmError> {
        for layer in &mut self.layers {
            for lin in layer.linears_mut() {
                if let Weight::Dense(w) = &lin.weight {
                    let (out, inp) = w.dims2()?;
                    if inp > out && w.is_contiguous() {
                        lin.weight = Weight::Dense(w.t()?.contiguous()?.t()?);
                    }
                }
            }
        }
        Ok(())
    }

    /// The adapters attached to every linear layer (cheap: tensors are
    /// shared), so a server can keep several adapters for one loaded base
    /// and swap them with [`Decoder::set_adapters`].
    pub fn adapters(&self) -> Adapters {
        Adapters(self.layers.iter().flat_map(|l| l.linears().map(|lin| lin.lora.clone())).collect())
    }

    /// Attaches `adapters` (from [`Decoder::adapters`] of this model), or
    /// removes every adapter with `Adapters::default()`.
    pub fn set_adapters(&mut self, adapters: &Adapters) -> Result<(), LmError> {
        let slots: usize = self.layers.iter().map(|l| l.linears().count()).sum();
        if !adapters.0.is_empty() && adapters.0.len() != slots {
            return Err(LmError::Config(format!(
                "these adapters cover {} layers, the model has {slots}",
                adapters.0.len()
            )));
        }
        let mut it = adapters.0.iter();
        for layer in &mut self.layers {
            for lin in layer.linears_mut() {
                lin.lora = it.next().cloned().flatten();
                lin.row_loras.clear();
                lin.row_pack = None;
            }
        }
        Ok(())
    }

    /// Serves several adapters in one forward pass: `groups` pairs batch
    /// rows with the adapters (from [`Decoder::adapters`] of this model) they
    /// use; every linear layer runs its frozen product once for the whole
    /// batch and adds each group's low-rank delta to that group's rows only
    /// (gathered and scattered back, as Punica's SGMV). Rows in no group run
    /// the base model. [`Decoder::set_adapters`] ends it.
    pub fn set_row_adapters(&mut self, groups: &[(Vec<usize>, &Adapters)]) -> Result<(), LmError> {
        let slots: usize = self.layers.iter().map(|l| l.linears().count()).sum();
        let mut seen = std::collections::HashSet::new();
        for (rows, a) in groups {
            if !a.0.is_empty() && a.0.len() != slots {
                return Err(LmError::Config(format!(
                    "these adapters cover {} layers, the model has {slots}",
                    a.0.len()
                )));
            }
            if let Some(r) = rows.iter().find(|r| !seen.insert(**r)) {
                return Err(LmError::Config(format!("batch row {r} is in two adapter groups")));
            }
        }
        let index = |rows: &[usize]| {
            Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), &self.device)
        };
        let indexes: Vec<Tensor> = groups.iter().map(|(rows, _)| index(rows)).collect::<CResult<_>>()?;
        let batch = groups.iter().flat_map(|(rows, _)| rows.iter()).max().map_or(0, |r| r + 1);
        let mut slot = 0;
        for layer in &mut self.layers {
            for lin in layer.linears_mut() {
                lin.lora = None;
                lin.row_loras = groups
                    .iter()
                    .zip(&indexes)
                    .filter(|((rows, _), _)| !rows.is_empty())
                    .filter_map(|((_, a), ix)| {
                        a.0.get(slot).cloned().flatten().map(|lora| crate::linear::RowLora { rows: ix.clone(), lora })
                    })
                    .collect();
                lin.row_pack = match (&self.device, lin.row_loras.is_empty()) {
                    (Device::Cpu, false) => {
                        Some(std::sync::Arc::new(crate::linear::RowPack::new(&lin.row_loras, batch)?))
                    }
                    _ => None,
                };
                slot += 1;
            }
        }
        Ok(())
    }

    /// Switches LoRA dropout on (training) or off (evaluation, generation).
    pub fn set_training(&self, on: bool) {
        for layer in &self.layers {
            for lin in layer.linears() {
                if let Some(d) = lin.lora.as_ref().and_then(|l| l.dropout.as_ref()) {
                    d.set_training(on);
                }
            }
        }
    }

    fn attention(
        &self,
        a: &Attention,
        x: &Tensor,
        rope: Option<&Rope>,
        bias: &Tensor,
        kv_cache: Option<&mut Option<KvBuf>>,
    ) -> CResult<Tensor> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let [q, k, v] = forward_many([&a.q, &a.k, &a.v], x)?;
        let train = fused::cpu_float(&q) && (q.track_op() || k.track_op() || v.track_op());
        if train && kv_cache.is_none() && a.q_norm.is_none() && a.k_norm.is_none() {
            // Training: one op from the projections to o_proj's input.
            let rope = rope.map(|r| (&r.cos, &r.sin, r.rotary_dim, r.interleaved));
            let out = crate::attention::attention_block(&q, &k, &v, bias, (nh, nkv, d), 1.0 / (d as f64).sqrt(), rope)?;
            return a.o.forward(&out);
        }
        let mut q = q.reshape((b, t, nh, d))?;
        let mut k = k.reshape((b, t, nkv, d))?;
        let v = v.reshape((b, t, nkv, d))?.transpose(1, 2)?.contiguous()?;
        if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let mut q = q.transpose(1, 2)?.contiguous()?;
        let mut k = k.transpose(1, 2)?.contiguous()?;
        if let Some(r) = rope {
            q = r.apply(&q)?;
            k = r.apply(&k)?;
        }
        let (k, v) = match kv_cache {
            Some(slot) => append_kv(slot, &k, &v)?,
            None => (k, v),
        };
        let total = k.dim(2)?;
        let rep = nh / nkv;
        // Grouped heads share their key/value head without copying it: the
        // `rep` query heads of a group become extra rows of one product.
        let q = q.reshape((b, nkv, rep * t, d))?;
        if t <= 4 && fused::fast(&q) && fused::fast(&k) && fused::fast(&v) {
            let bias = bias.broadcast_as((b, nh, t, total))?;
            let out = fused::attention(&q, &k, &v, &bias, (1.0 / (d as f64).sqrt()) as f32)?;
            let out = out.reshape((b, nh, t, d))?.transpose(1, 2)?.reshape((b, t, nh * d))?;
            return a.o.forward(&out);
        }
        if fused::cpu_float(&q) && q.track_op() {
            // Training: one op that keeps no probabilities between the passes.
            let out = fused::train::attention(&q, &k, &v, bias, nh, 1.0 / (d as f64).sqrt())?;
            let out = out.reshape((b, nh, t, d))?.transpose(1, 2)?.reshape((b, t, nh * d))?;
            return a.o.forward(&out);
        }
        let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.reshape((b, nh, t, total))?;
        let scores = scores.broadcast_add(bias)?;
        let probs = softmax_last(&scores)?.reshape((b, nkv, rep * t, total))?;
        let out = probs.matmul(&v)?.reshape((b, nh, t, d))?.transpose(1, 2)?.reshape((b, t, nh * d))?;
        a.o.forward(&out)
    }

    /// Greedy continuation of `prompt`: `max_new` tokens, stopping early at an EOS id.
    pub fn greedy(&self, prompt: &[u32], max_new: usize, use_cache: bool) -> CResult<Vec<u32>> {
        let mut tokens = prompt.to_vec();
        let mut out = Vec::new();
        let mut cache = Cache::default();
        for step in 0..max_new {
            let logits = if use_cache {
                let new: &[u32] = if step == 0 { &tokens } else { &tokens[tokens.len() - 1..] };
                let ids = Tensor::new(new, &self.device)?.unsqueeze(0)?;
                self.forward(&ids, Some(&mut cache))?
            } else {
                let ids = Tensor::new(tokens.as_slice(), &self.device)?.unsqueeze(0)?;
                self.forward(&ids, None)?
            };
            let last = logits.i((0, logits.dim(1)? - 1))?;
            let next = last.argmax(D::Minus1)?.to_scalar::<u32>()?;
            out.push(next);
            tokens.push(next);
            if self.config.eos_token_ids.contains(&next) {
                break;
            }
        }
        Ok(out)
    }
}

/// Appends this step's keys and values (b × kv heads × t × d) to a layer's
/// cache, in place: the buffers grow by doubling, so a step copies only its
/// own rows. Returns views of every cached position.
fn append_kv(slot: &mut Option<KvBuf>, k: &Tensor, v: &Tensor) -> CResult<(Tensor, Tensor)> {
    let (b, nkv, t, d) = k.dims4()?;
    let (k, v) = (k.detach(), v.detach());
    let len = slot.as_ref().map_or(0, |s| s.len);
    let cap = slot.as_ref().map_or(0, |s| s.k.dim(2).unwrap_or(0));
    if len + t > cap {
        let new_cap = (len + t).max(cap * 2).max(64);
        let nk = Tensor::zeros((b, nkv, new_cap, d), k.dtype(), k.device())?;
        let nv = Tensor::zeros((b, nkv, new_cap, d), v.dtype(), v.device())?;
        if let Some(old) = slot.as_ref() {
            nk.slice_set(&old.k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            nv.slice_set(&old.v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
        }
        *slot = Some(KvBuf { k: nk, v: nv, len });
    }
    let Some(buf) = slot.as_mut() else { candle_core::bail!("kv cache slot is empty") };
    buf.k.slice_set(&k.contiguous()?, 2, len)?;
    buf.v.slice_set(&v.contiguous()?, 2, len)?;
    buf.len = len + t;
    Ok((buf.k.narrow(2, 0, buf.len)?, buf.v.narrow(2, 0, buf.len)?))
}

/// One layer's cached keys and values: buffers with room to grow, `len` used.
#[derive(Debug, Clone)]
struct KvBuf {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvBuf {
    /// A buffer holding `k` and `v` (b × kv heads × len × d), with room to grow.
    fn holding(k: &Tensor, v: &Tensor) -> CResult<KvBuf> {
        let (b, h, len, d) = k.dims4()?;
        // Room for 64 more steps; past that `append_kv` doubles it.
        let cap = len + 64;
        let nk = Tensor::zeros((b, h, cap, d), k.dtype(), k.device())?;
        let nv = Tensor::zeros((b, h, cap, d), v.dtype(), v.device())?;
        nk.slice_set(&k.contiguous()?, 2, 0)?;
        nv.slice_set(&v.contiguous()?, 2, 0)?;
        Ok(KvBuf { k: nk, v: nv, len })
    }
}

/// Rotary tables for one forward pass.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    rotary_dim: usize,
    interleaved: bool,
}

impl Rope {
    /// Rotates the first `rotary_dim` dimensions of `x` (b × heads × t × head_dim); the rest pass through.
    fn apply(&self, x: &Tensor) -> CResult<Tensor> {
        if fused::fast(x) {
            return fused::rope(x, &self.cos, &self.sin, self.rotary_dim, self.interleaved);
        }
        if fused::cpu_float(x) {
            return fused::train::rope(x, &self.cos, &self.sin, self.rotary_dim, self.interleaved);
        }
        let d = x.dim(D::Minus1)?;
        let r = self.rotary_dim;
        let (rot, pass) =
            if r < d { (x.narrow(D::Minus1, 0, r)?, Some(x.narrow(D::Minus1, r, d - r)?)) } else { (x.clone(), None) };
        let rotated = if self.interleaved {
            // Pairs (x0, x1), (x2, x3)… become (-x1, x0), (-x3, x2)…
            let dims = rot.dims().to_vec();
            let mut paired = dims.clone();
            paired.pop();
            paired.extend([r / 2, 2]);
            let p = rot.reshape(paired)?;
            let even = p.narrow(D::Minus1, 0, 1)?;
            let odd = p.narrow(D::Minus1, 1, 1)?;
            Tensor::cat(&[&odd.neg()?, &even], D::Minus1)?.reshape(dims)?
        } else {
            let x1 = rot.narrow(D::Minus1, 0, r / 2)?;
            let x2 = rot.narrow(D::Minus1, r / 2, r / 2)?;
            Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?
        };
        let out = (rot.broadcast_mul(&self.cos)? + rotated.broadcast_mul(&self.sin)?)?;
        match pass {
            Some(p) => Tensor::cat(&[&out, &p], D::Minus1),
            None => Ok(out),
        }
    }
}

/// Softmax over the last dimension from differentiable primitives.
fn softmax_last(x: &Tensor) -> CResult<Tensor> {
    if fused::fast(x) {
        return fused::softmax_last(x);
    }
    if fused::cpu_float(x) {
        return fused::train::softmax_last(x);
    }
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}
