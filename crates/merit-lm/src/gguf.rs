//! GGUF files (llama.cpp): architecture metadata, weights (quantized
//! matrices stay quantized, see [`crate::quant`]) and the tokenizer and chat
//! template from the metadata.
//!
//! llama.cpp stores LLaMA's q and k projections permuted for pairwise
//! (GPT-J style) rotary embedding, so GGUF LLaMA models run the decoder with
//! interleaved rotary rather than un-permuting the weights.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;

use crate::config::{DecoderConfig, Family, MlpKind, NormKind, Positions, RopeScaling};
use crate::{Decoder, LmError, QWeight, TextTokenizer, Weight};

fn meta<'a>(c: &'a Content, key: &str) -> Result<&'a Value, LmError> {
    c.metadata.get(key).ok_or_else(|| LmError::Config(format!("GGUF metadata `{key}` is missing")))
}

fn meta_u64(c: &Content, key: &str) -> Result<u64, LmError> {
    let v = meta(c, key)?;
    v.to_u64()
        .or_else(|_| v.to_u32().map(u64::from))
        .or_else(|_| v.to_i32().map(|x| x as u64))
        .map_err(|_| LmError::Config(format!("GGUF metadata `{key}` is not a whole number")))
}

fn meta_f64(c: &Content, key: &str, default: f64) -> Result<f64, LmError> {
    match c.metadata.get(key) {
        None => Ok(default),
        Some(v) => v
            .to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .map_err(|_| LmError::Config(format!("GGUF metadata `{key}` is not a number"))),
    }
}

fn strings(c: &Content, key: &str) -> Result<Vec<String>, LmError> {
    let v = meta(c, key)?.to_vec().map_err(|_| LmError::Config(format!("GGUF metadata `{key}` is not a list")))?;
    v.iter()
        .map(|x| {
            x.to_string().cloned().map_err(|_| LmError::Config(format!("GGUF metadata `{key}` holds a non-string")))
        })
        .collect()
}

/// Loads a GGUF model and its tokenizer.
pub fn load_gguf(path: &Path, device: &Device) -> Result<(Decoder, TextTokenizer), LmError> {
    let io = |source| LmError::Io { path: path.display().to_string(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let content = Content::read(&mut file)
        .map_err(|e| LmError::Weights(format!("{}: not a readable GGUF file: {e}", path.display())))?;
    let arch = meta(&content, "general.architecture")?
        .to_string()
        .map_err(|_| LmError::Config("general.architecture is not a string".into()))?
        .clone();
    if arch != "llama" {
        return Err(LmError::Config(format!("GGUF architecture `{arch}` is not supported yet (llama is)")));
    }
    let k = |name: &str| format!("{arch}.{name}");
    let hidden = meta_u64(&content, &k("embedding_length"))? as usize;
    let heads = meta_u64(&content, &k("attention.head_count"))? as usize;
    let kv_heads = meta_u64(&content, &k("attention.head_count_kv")).unwrap_or(heads as u64) as usize;
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || !hidden.is_multiple_of(heads) {
        return Err(LmError::Config(format!(
            "GGUF: {heads} heads cannot share {kv_heads} key/value heads over {hidden}"
        )));
    }
    let tokens = strings(&content, "tokenizer.ggml.tokens")?;
    let has_output = content.tensor_infos.contains_key("output.weight");
    let eos = meta_u64(&content, "tokenizer.ggml.eos_token_id").ok().map(|x| x as u32);
    let mut eos_ids: Vec<u32> = eos.into_iter().collect();
    for special in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"] {
        if let Some(i) = tokens.iter().position(|t| t == special) {
            if !eos_ids.contains(&(i as u32))
                && Some(i as u32) != meta_u64(&content, "tokenizer.ggml.bos_token_id").ok().map(|x| x as u32)
            {
                eos_ids.push(i as u32);
            }
        }
    }
    let head_dim = hidden / heads;
    let config = DecoderConfig {
        family: Family::Llama,
        vocab_size: tokens.len(),
        hidden_size: hidden,
        num_layers: meta_u64(&content, &k("block_count"))? as usize,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        intermediate_size: meta_u64(&content, &k("feed_forward_length"))? as usize,
        norm_eps: meta_f64(&content, &k("attention.layer_norm_rms_epsilon"), 1e-5)?,
        rope_theta: meta_f64(&content, &k("rope.freq_base"), 10_000.0)?,
        rope_scaling: RopeScaling::None,
        positions: Positions::Rope {
            rotary_dim: meta_u64(&content, &k("rope.dimension_count")).map_or(head_dim, |d| d as usize),
            interleaved: true,
        },
        norm: NormKind::Rms,
        mlp: MlpKind::SwiGlu,
        embed_norm: false,
        sandwich_norms: false,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        sliding_window: None,
        tie_word_embeddings: !has_output,
        eos_token_ids: eos_ids,
    };
    let rename = |gguf: &str| -> Option<String> {
        let direct = match gguf {
            "token_embd.weight" => Some("model.embed_tokens.weight"),
            "output_norm.weight" => Some("model.norm.weight"),
            "output.weight" => Some("lm_head.weight"),
            _ => None,
        };
        if let Some(d) = direct {
            return Some(d.to_string());
        }
        let rest = gguf.strip_prefix("blk.")?;
        let (i, name) = rest.split_once('.')?;
        let hf = match name {
            "attn_norm.weight" => "input_layernorm.weight",
            "attn_q.weight" => "self_attn.q_proj.weight",
            "attn_k.weight" => "self_attn.k_proj.weight",
            "attn_v.weight" => "self_attn.v_proj.weight",
            "attn_output.weight" => "self_attn.o_proj.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            "ffn_gate.weight" => "mlp.gate_proj.weight",
            "ffn_up.weight" => "mlp.up_proj.weight",
            "ffn_down.weight" => "mlp.down_proj.weight",
            _ => return None,
        };
        Some(format!("model.layers.{i}.{hf}"))
    };
    let mut tensors = HashMap::new();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    for name in names {
        let Some(hf) = rename(&name) else { continue };
        let q = content
            .tensor(&mut file, &name, device)
            .map_err(|e| LmError::Weights(format!("GGUF tensor `{name}`: {e}")))?;
        let quantized = !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let weight = if quantized && q.rank() == 2 && device.is_cpu() && std::env::var_os("MERIT_DEQUANTIZE").is_none()
        {
            Weight::Quant(QWeight::from_qtensor(q)?)
        } else {
            Weight::Dense(q.dequantize(device)?)
        };
        tensors.insert(hf, weight);
    }
    let decoder = Decoder::load_weights(config, tensors, device, candle_core::DType::F32)?;
    let tokenizer = gguf_tokenizer(&content, tokens)?;
    Ok((decoder, tokenizer))
}

/// Builds a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) from GGUF metadata.
fn gguf_tokenizer(c: &Content, tokens: Vec<String>) -> Result<TextTokenizer, LmError> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::{AddedToken, PreTokenizerWrapper};
    let model = meta(c, "tokenizer.ggml.model")?.to_string().cloned().unwrap_or_default();
    if model != "gpt2" {
        return Err(LmError::Tokenizer(format!("GGUF tokenizer model `{model}` is not supported yet (gpt2 is)")));
    }
    let merges: Vec<(String, String)> = strings(c, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let types: Vec<i32> = match c.metadata.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
        Some(v) => v.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| LmError::Tokenizer(format!("GGUF BPE: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let pre = meta(c, "tokenizer.ggml.pre").ok().and_then(|v| v.to_string().ok().cloned()).unwrap_or_default();
    let byte_level = ByteLevel::new(false, true, true);
    if pre == "smollm" {
        tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level),
        ]))));
    } else {
        tok.with_pre_tokenizer(Some(byte_level));
    }
    tok.with_decoder(Some(byte_level));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(specials).map_err(|e| LmError::Tokenizer(format!("GGUF special tokens: {e}")))?;
    let template = c.metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok().cloned());
    let token_at = |key: &str| meta_u64(c, key).ok().and_then(|i| tokens.get(i as usize).cloned());
    Ok(TextTokenizer::from_parts(
        tok,
        template,
        token_at("tokenizer.ggml.bos_token_id"),
        token_at("tokenizer.ggml.eos_token_id"),
    ))
}
