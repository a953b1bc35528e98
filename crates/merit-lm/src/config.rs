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
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
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
            other => return Err(LmError::Config(format!("config.json: model_type `{other}` is not supported yet"))),
        };
        let hidden_size = usize_key(v, "hidden_size")?;
        let num_heads = usize_key(v, "num_attention_heads")?;
        let num_kv_heads = get(v, "num_key_value_heads").and_then(Value::as_u64).map_or(num_heads, |n| n as usize);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(LmError::Config(format!(
                "config.json: {num_heads} attention heads cannot share {num_kv_heads} key/value heads"
            )));
        }
        let head_dim = get(v, "head_dim").and_then(Value::as_u64).map_or(hidden_size / num_heads, |n| n as usize);
        // Rope: nested `rope_parameters` (transformers 5) or classic keys.
        let rope = get(v, "rope_parameters").or_else(|| get(v, "rope_scaling"));
        let rope_theta = match get(v, "rope_parameters").and_then(|r| get(r, "rope_theta")) {
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
        let sliding_window = match family {
            Family::Mistral => get(v, "sliding_window").and_then(Value::as_u64).map(|n| n as usize),
            // Qwen only slides when asked to.
            Family::Qwen2 | Family::Qwen3 if bool_key(v, "use_sliding_window", false) => {
                get(v, "sliding_window").and_then(Value::as_u64).map(|n| n as usize)
            }
            _ => None,
        };
        let eos_token_ids = match get(v, "eos_token_id") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|n| n as u32).collect(),
            Some(x) => x.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            None => Vec::new(),
        };
        let attention_bias = bool_key(v, "attention_bias", false);
        Ok(DecoderConfig {
            family,
            vocab_size: usize_key(v, "vocab_size")?,
            hidden_size,
            num_layers: usize_key(v, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size: usize_key(v, "intermediate_size")?,
            rms_norm_eps: f64_key(v, "rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_scaling,
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: attention_bias && family != Family::Qwen2,
            mlp_bias: bool_key(v, "mlp_bias", false),
            qk_norm: family == Family::Qwen3,
            sliding_window,
            tie_word_embeddings: bool_key(v, "tie_word_embeddings", false),
            eos_token_ids,
        })
    }

    /// Inverse rotary frequencies, one per pair of dimensions, after scaling.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
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
