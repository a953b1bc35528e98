//! The one decoder. Every family is this stack — embedding, N × (norm,
//! attention, norm, MLP), norm, LM head — with options from
//! [`DecoderConfig`]. Every op is built from candle's differentiable
//! primitives (no fused kernels without a backward), so the same code trains.

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor, D};

use crate::config::DecoderConfig;
use crate::LmError;

type CResult<T> = candle_core::Result<T>;

/// A linear layer `y = x Wᵀ + b`, weights in Hugging Face layout (out × in).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let y = x.broadcast_matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Root-mean-square norm over the last dimension.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(mean_sq + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
}

#[derive(Debug, Clone)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

fn silu(x: &Tensor) -> CResult<Tensor> {
    // x · σ(x), from primitives that all have a backward.
    let sigmoid = (x.neg()?.exp()? + 1.0)?.recip()?;
    x.mul(&sigmoid)
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let gated = silu(&self.gate.forward(x)?)?.mul(&self.up.forward(x)?)?;
        self.down.forward(&gated)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    mlp: Mlp,
}

/// Keys and values of the positions seen so far, per layer.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    /// How many positions the cache holds.
    pub len: usize,
}

/// A loaded decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub config: DecoderConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Tensor,
    inv_freq: Vec<f64>,
    device: Device,
}

/// Takes named tensors out of a checkpoint, naming what is missing or misshapen.
struct Weights {
    map: HashMap<String, Tensor>,
}

impl Weights {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, LmError> {
        let t = self.map.remove(name).ok_or_else(|| LmError::Weights(format!("tensor `{name}` is missing")))?;
        if t.dims() != shape {
            return Err(LmError::Weights(format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.dims())));
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    fn linear(&mut self, prefix: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear, LmError> {
        let weight = self.take(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias = if bias { Some(self.take(&format!("{prefix}.bias"), &[out_dim])?) } else { None };
        Ok(Linear { weight, bias })
    }

    fn norm(&mut self, name: &str, dim: usize, eps: f64) -> Result<RmsNorm, LmError> {
        Ok(RmsNorm { weight: self.take(name, &[dim])?, eps })
    }
}

impl Decoder {
    /// Builds the decoder from Hugging Face-named tensors.
    pub fn load(config: DecoderConfig, tensors: HashMap<String, Tensor>, device: &Device) -> Result<Decoder, LmError> {
        let c = &config;
        let mut w = Weights { map: tensors };
        let (h, q_dim, kv_dim) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let embed = w.take("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let qk_norm = |w: &mut Weights, which: &str| -> Result<Option<RmsNorm>, LmError> {
                if c.qk_norm {
                    Ok(Some(w.norm(&format!("{p}.self_attn.{which}.weight"), c.head_dim, c.rms_norm_eps)?))
                } else {
                    Ok(None)
                }
            };
            let attn = Attention {
                q: w.linear(&format!("{p}.self_attn.q_proj"), q_dim, h, c.qkv_bias)?,
                k: w.linear(&format!("{p}.self_attn.k_proj"), kv_dim, h, c.qkv_bias)?,
                v: w.linear(&format!("{p}.self_attn.v_proj"), kv_dim, h, c.qkv_bias)?,
                o: w.linear(&format!("{p}.self_attn.o_proj"), h, q_dim, c.o_bias)?,
                q_norm: qk_norm(&mut w, "q_norm")?,
                k_norm: qk_norm(&mut w, "k_norm")?,
            };
            let mlp = Mlp {
                gate: w.linear(&format!("{p}.mlp.gate_proj"), c.intermediate_size, h, c.mlp_bias)?,
                up: w.linear(&format!("{p}.mlp.up_proj"), c.intermediate_size, h, c.mlp_bias)?,
                down: w.linear(&format!("{p}.mlp.down_proj"), h, c.intermediate_size, c.mlp_bias)?,
            };
            layers.push(Layer {
                input_norm: w.norm(&format!("{p}.input_layernorm.weight"), h, c.rms_norm_eps)?,
                attn,
                post_norm: w.norm(&format!("{p}.post_attention_layernorm.weight"), h, c.rms_norm_eps)?,
                mlp,
            });
        }
        let norm = w.norm("model.norm.weight", h, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings && !w.map.contains_key("lm_head.weight") {
            embed.clone()
        } else {
            w.take("lm_head.weight", &[c.vocab_size, h])?
        };
        Ok(Decoder { inv_freq: c.inv_freq(), config, embed, layers, norm, lm_head, device: device.clone() })
    }

    /// cos and sin tables (t × head_dim) for positions `[start, start + t)`.
    fn rope_tables(&self, start: usize, t: usize) -> CResult<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half * 2);
        let mut sin = Vec::with_capacity(t * half * 2);
        for pos in start..start + t {
            for _ in 0..2 {
                for f in &self.inv_freq {
                    let angle = (pos as f64 * f) as f32 as f64;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let d = half * 2;
        Ok((Tensor::from_vec(cos, (t, d), &self.device)?, Tensor::from_vec(sin, (t, d), &self.device)?))
    }

    /// Additive attention mask (t × total): causal, and windowed where the family slides.
    fn mask(&self, start: usize, t: usize) -> CResult<Tensor> {
        let total = start + t;
        let window = self.config.sliding_window;
        let mut m = vec![0f32; t * total];
        for i in 0..t {
            let qpos = start + i;
            for (j, slot) in m[i * total..(i + 1) * total].iter_mut().enumerate() {
                let future = j > qpos;
                let too_old = window.is_some_and(|w| qpos - j.min(qpos) >= w);
                if future || too_old {
                    *slot = f32::NEG_INFINITY;
                }
            }
        }
        Tensor::from_vec(m, (t, total), &self.device)
    }

    /// Logits (batch × t × vocab) for token ids (batch × t), continuing `cache` if given.
    pub fn forward(&self, ids: &Tensor, mut cache: Option<&mut Cache>) -> CResult<Tensor> {
        let (b, t) = ids.dims2()?;
        let c = &self.config;
        let start = cache.as_ref().map_or(0, |c| c.len);
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, c.hidden_size))?;
        let (cos, sin) = self.rope_tables(start, t)?;
        let mask = self.mask(start, t)?;
        if let Some(cache) = cache.as_deref_mut() {
            cache.kv.resize(self.layers.len(), None);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let h = layer.input_norm.forward(&x)?;
            let kv = cache.as_deref_mut().map(|c| &mut c.kv[i]);
            let h = self.attention(&layer.attn, &h, &cos, &sin, &mask, kv)?;
            x = (residual + h)?;
            let residual = x.clone();
            let h = layer.mlp.forward(&layer.post_norm.forward(&x)?)?;
            x = (residual + h)?;
        }
        if let Some(cache) = cache {
            cache.len += t;
        }
        let x = self.norm.forward(&x)?;
        x.broadcast_matmul(&self.lm_head.t()?)
    }

    fn attention(
        &self,
        a: &Attention,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        kv_cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> CResult<Tensor> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let mut q = a.q.forward(x)?.reshape((b, t, nh, d))?;
        let mut k = a.k.forward(x)?.reshape((b, t, nkv, d))?;
        let v = a.v.forward(x)?.reshape((b, t, nkv, d))?.transpose(1, 2)?.contiguous()?;
        if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = rope(&q.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let k = rope(&k.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let (k, v) = match kv_cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let total = k.dim(2)?;
        let rep = nh / nkv;
        let k = k.unsqueeze(2)?.expand((b, nkv, rep, total, d))?.reshape((b, nh, total, d))?;
        let v = v.unsqueeze(2)?.expand((b, nkv, rep, total, d))?.reshape((b, nh, total, d))?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
        let scores = scores.broadcast_add(mask)?;
        let probs = softmax_last(&scores)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * d))?;
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

/// Rotary embedding, rotate-half layout (Hugging Face's LLaMA convention).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// Softmax over the last dimension from differentiable primitives.
fn softmax_last(x: &Tensor) -> CResult<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}
