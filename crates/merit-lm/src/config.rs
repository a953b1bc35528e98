//! Family configs (Hugging Face `config.json`) resolved to one [`DecoderConfig`].
//!
//! Both dialects of `config.json` are read: the Hub's classic keys
//! (`rope_theta`, `rope_scaling`) and the nested `rope_parameters` that
//! transformers 5 writes.

use serde_json::Value;

use crate::LmError;

/// The model families Merit maps onto its decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// LLaMA 1/2/3.x, SmolLM2, the DeepSeek LLaMA distills.
    Llama,
    /// Mistral (sliding-window attention).
    Mistral,
    /// Qwen2 / Qwen2.5 and the DeepSeek Qwen distills (qkv bias).
    Qwen2,
    /// Qwen3 (q/k RMS norm).
    Qwen3,
    /// GLM (transformers' `glm`): partial interleaved rotary, fused gate-up.
    Glm,
    /// GLM-4 (`glm4`): as GLM, plus norms after attention and after the MLP.
    Glm4,
    /// BLOOM: ALiBi, fused per-head qkv, LayerNorm, embedding LayerNorm.
    Bloom,
    /// GPT-2: learned positions, Conv1D (in × out) weights, fused qkv.
    Gpt2,
}

/// How the model knows positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Positions {
    /// Rotary embedding on the first `rotary_dim` dimensions of each head,
    /// rotate-half (`interleaved = false`) or pairwise (`true`).
    Rope { rotary_dim: usize, interleaved: bool },
    /// A learned table of `max` positions added to the embeddings.
    Learned { max: usize },
    /// ALiBi: a per-head linear bias on key positions.
    Alibi,
}

/// Normalisation layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    Rms,
    /// LayerNorm with bias.
    Layer,
}

/// The MLP's activation and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(silu(gate(x)) · up(x))`.
    SwiGlu,
    /// `down(gelu_tanh(up(x)))`.
    Gelu,
}

/// How rotary frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// LLaMA 3.x: low frequencies divided by `factor`, high ones kept, a smooth band between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Dynamic NTK: past `max_position_embeddings` the base grows with the
    /// sequence length (recomputed each forward pass, as transformers does).
    Dynamic {
        factor: f64,
        max_position_embeddings: f64,
    },
    /// Each frequency divided by its own factor (GGUF's `rope_freqs` tensor).
    Factors(Vec<f64>),
}

/// The decoder's shape and options, independent of the family.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub positions: Positions,
    pub norm: NormKind,
    pub mlp: MlpKind,
    /// A norm right after the token embedding (BLOOM).
    pub embed_norm: bool,
    /// Norms after attention and after the MLP, before the residual add (GLM-4).
    pub sandwich_norms: bool,
    /// Bias on the q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// RMS norm over each head of q and k before rotary embedding (Qwen3).
    pub qk_norm: bool,
    /// Attend only to the last `n` positions (Mistral).
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
    /// The context the model was trained for (`max_position_embeddings`,
    /// GPT-2's `n_positions`, GGUF's `context_length`), when it is known.
    pub context_length: Option<usize>,
    /// End-of-sequence token ids.
    pub eos_token_ids: Vec<u32>,
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn usize_key(v: &Value, key: &str) -> Result<usize, LmError> {
    get(v, key)
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| LmError::Config(format!("config.json: `{key}` is missing or not a whole number")))
}

fn f64_key(v: &Value, key: &str, default: f64) -> Result<f64, LmError> {
    match get(v, key) {
        None => Ok(default),
        Some(x) => x.as_f64().ok_or_else(|| LmError::Config(format!("config.json: `{key}` is not a number"))),
    }
}

fn bool_key(v: &Value, key: &str, default: bool) -> bool {
    get(v, key).and_then(Value::as_bool).unwrap_or(default)
}

impl DecoderConfig {
    /// Resolves a Hugging Face `config.json`.
    pub fn from_hf(v: &Value) -> Result<DecoderConfig, LmError> {
        let model_type = get(v, "model_type").and_then(Value::as_str).unwrap_or_default();
        let family = match model_type {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "glm" => Family::Glm,
            "glm4" => Family::Glm4,
            "bloom" => Family::Bloom,
            "gpt2" => Family::Gpt2,
            other => return Err(LmError::Config(format!("config.json: model_type `{other}` is not supported yet"))),
        };
        // GPT-2 and BLOOM use their own key names.
        let key = |classic: &'static str, gpt2: &'static str, bloom: &'static str| match family {
            Family::Gpt2 => gpt2,
            Family::Bloom => bloom,
            _ => classic,
        };
        let hidden_size = usize_key(v, key("hidden_size", "n_embd", "hidden_size"))?;
        let num_heads = usize_key(v, key("num_attention_heads", "n_head", "n_head"))?;
        let num_layers = usize_key(v, key("num_hidden_layers", "n_layer", "n_layer"))?;
        let num_kv_heads = get(v, "num_key_value_heads").and_then(Value::as_u64).map_or(num_heads, |n| n as usize);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 || hidden_size % num_heads != 0 {
            return Err(LmError::Config(format!(
                "config.json: {num_heads} attention heads cannot share {num_kv_heads} key/value heads over hidden size {hidden_size}"
            )));
        }
        let head_dim = get(v, "head_dim").and_then(Value::as_u64).map_or(hidden_size / num_heads, |n| n as usize);
        let intermediate_size = match family {
            Family::Gpt2 => get(v, "n_inner").and_then(Value::as_u64).map_or(4 * hidden_size, |n| n as usize),
            Family::Bloom => 4 * hidden_size,
            _ => usize_key(v, "intermediate_size")?,
        };
        // Rope: nested `rope_parameters` (transformers 5) or classic keys.
        let params = get(v, "rope_parameters");
        let rope = params.or_else(|| get(v, "rope_scaling"));
        let rope_theta = match params.and_then(|r| get(r, "rope_theta")) {
            Some(t) => t
                .as_f64()
                .ok_or_else(|| LmError::Config("config.json: rope_parameters.rope_theta is not a number".into()))?,
            None => f64_key(v, "rope_theta", 10_000.0)?,
        };
        let rope_scaling = match rope {
            None => RopeScaling::None,
            Some(r) => {
                let kind = get(r, "rope_type").or_else(|| get(r, "type")).and_then(Value::as_str).unwrap_or("default");
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: f64_key(r, "factor", 1.0)? },
                    "dynamic" => RopeScaling::Dynamic {
                        factor: f64_key(r, "factor", 1.0)?,
                        max_position_embeddings: match get(r, "original_max_position_embeddings") {
                            Some(_) => f64_key(r, "original_max_position_embeddings", 2048.0)?,
                            None => f64_key(v, "max_position_embeddings", 2048.0)?,
                        },
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: f64_key(r, "factor", 8.0)?,
                        low_freq_factor: f64_key(r, "low_freq_factor", 1.0)?,
                        high_freq_factor: f64_key(r, "high_freq_factor", 4.0)?,
                        original_max_position_embeddings: f64_key(r, "original_max_position_embeddings", 8192.0)?,
                    },
                    other => {
                        return Err(LmError::Config(format!("config.json: rope type `{other}` is not supported yet")))
                    }
                }
            }
        };
        let partial = match params.and_then(|r| get(r, "partial_rotary_factor")) {
            Some(x) => x.as_f64().unwrap_or(1.0),
            None => f64_key(v, "partial_rotary_factor", 1.0)?,
        };
        let positions = match family {
            Family::Gpt2 => Positions::Learned { max: usize_key(v, "n_positions")? },
            Family::Bloom => Positions::Alibi,
            Family::Glm | Family::Glm4 => {
                Positions::Rope { rotary_dim: (head_dim as f64 * partial) as usize, interleaved: true }
            }
            _ => Positions::Rope { rotary_dim: head_dim, interleaved: false },
        };
        if let Positions::Rope { rotary_dim, .. } = positions {
            if rotary_dim == 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim {
                return Err(LmError::Config(format!(
                    "config.json: rotary dimension {rotary_dim} does not fit head_dim {head_dim}"
                )));
            }
        }
        let sliding_window = match family {
            Family::Mistral => get(v, "sliding_window").and_then(Value::as_u64).map(|n| n as usize),
            // Qwen only slides when asked to.
            Family::Qwen2 | Family::Qwen3 if bool_key(v, "use_sliding_window", false) => {
                return Err(LmError::Config(
                    "config.json: Qwen sliding-window attention (use_sliding_window = true) is not supported yet"
                        .into(),
                ))
            }
            _ => None,
        };
        let eos_token_ids = match get(v, "eos_token_id") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|n| n as u32).collect(),
            Some(x) => x.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            None => Vec::new(),
        };
        let attention_bias = bool_key(v, "attention_bias", false);
        let (norm, eps_key) = match family {
            Family::Gpt2 | Family::Bloom => (NormKind::Layer, "layer_norm_epsilon"),
            _ => (NormKind::Rms, "rms_norm_eps"),
        };
        let biased = matches!(family, Family::Gpt2 | Family::Bloom);
        let tie_default = matches!(family, Family::Gpt2 | Family::Bloom);
        Ok(DecoderConfig {
            family,
            vocab_size: usize_key(v, "vocab_size")?,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size,
            norm_eps: f64_key(v, eps_key, 1e-6)?,
            rope_theta,
            rope_scaling,
            positions,
            norm,
            mlp: if biased { MlpKind::Gelu } else { MlpKind::SwiGlu },
            embed_norm: family == Family::Bloom,
            sandwich_norms: family == Family::Glm4,
            qkv_bias: biased || family == Family::Qwen2 || attention_bias,
            o_bias: biased || (attention_bias && !matches!(family, Family::Qwen2 | Family::Glm | Family::Glm4)),
            mlp_bias: biased || bool_key(v, "mlp_bias", false),
            qk_norm: family == Family::Qwen3,
            sliding_window,
            tie_word_embeddings: bool_key(v, "tie_word_embeddings", tie_default),
            context_length: ["max_position_embeddings", "n_positions", "seq_length"]
                .iter()
                .find_map(|k| get(v, k).and_then(Value::as_u64))
                .map(|n| n as usize),
            eos_token_ids,
        })
    }

    /// Inverse rotary frequencies, one per pair of dimensions, after scaling.
    pub fn inv_freq(&self) -> Vec<f64> {
        self.inv_freq_at(0)
    }

    /// Whether the rotary frequencies depend on the sequence length.
    pub fn rope_is_dynamic(&self) -> bool {
        matches!(self.rope_scaling, RopeScaling::Dynamic { .. })
    }

    /// Rotary frequencies for a forward pass over `seq_len` positions
    /// (the length matters only for dynamic scaling).
    pub fn inv_freq_at(&self, seq_len: usize) -> Vec<f64> {
        let d = match self.positions {
            Positions::Rope { rotary_dim, .. } => rotary_dim,
            _ => return Vec::new(),
        };
        let theta = match &self.rope_scaling {
            RopeScaling::Dynamic { factor, max_position_embeddings } if seq_len as f64 > *max_position_embeddings => {
                let grow = factor * seq_len as f64 / max_position_embeddings - (factor - 1.0);
                self.rope_theta * grow.powf(d as f64 / (d as f64 - 2.0))
            }
            _ => self.rope_theta,
        };
        // As transformers: base ** (arange(0, d, 2) / d) in f32, then 1 / that.
        let base: Vec<f64> =
            (0..d / 2).map(|i| (1.0 / (theta as f32).powf((2 * i) as f32 / d as f32)) as f64).collect();
        match &self.rope_scaling {
            RopeScaling::None | RopeScaling::Dynamic { .. } => base,
            RopeScaling::Factors(f) => {
                base.iter().zip(f.iter().chain(std::iter::repeat(&1.0))).map(|(b, f)| b / f).collect()
            }
            RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let low_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_wavelen = original_max_position_embeddings / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}
