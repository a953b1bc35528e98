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
    load_gguf_as(path, device, std::env::var_os("MERIT_DEQUANTIZE").is_some())
}

/// Loads a GGUF model; with `dequantize`, quantized matrices are expanded to
/// f32 at load instead of running on the quantized kernels.
pub fn load_gguf_as(path: &Path, device: &Device, dequantize: bool) -> Result<(Decoder, TextTokenizer), LmError> {
    let io = |source| LmError::Io { path: path.display().to_string(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let content = Content::read(&mut file)
        .map_err(|e| LmError::Weights(format!("{}: not a readable GGUF file: {e}", path.display())))?;
    let arch = meta(&content, "general.architecture")?
        .to_string()
        .map_err(|_| LmError::Config("general.architecture is not a string".into()))?
        .clone();
    let family = match arch.as_str() {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        "qwen3" => Family::Qwen3,
        "gpt2" => Family::Gpt2,
        "bloom" => Family::Bloom,
        "chatglm" => Family::Glm,
        "glm4" => Family::Glm4,
        other => {
            return Err(LmError::Config(format!(
            "GGUF architecture `{other}` is not supported yet (llama, qwen2, qwen3, chatglm, glm4, gpt2 and bloom are)"
        )))
        }
    };
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
    let bos = meta_u64(&content, "tokenizer.ggml.bos_token_id").ok().map(|x| x as u32);
    let mut eos_ids: Vec<u32> =
        meta_u64(&content, "tokenizer.ggml.eos_token_id").ok().map(|x| x as u32).into_iter().collect();
    if let Ok(eot) = meta_u64(&content, "tokenizer.ggml.eot_token_id") {
        eos_ids.push(eot as u32);
    }
    for special in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"] {
        if let Some(i) = tokens.iter().position(|t| t == special) {
            if !eos_ids.contains(&(i as u32)) && Some(i as u32) != bos {
                eos_ids.push(i as u32);
            }
        }
    }
    let head_dim = meta_u64(&content, &k("attention.key_length")).map_or(hidden / heads, |d| d as usize);
    let layer_norm = matches!(family, Family::Gpt2 | Family::Bloom);
    let norm_eps = if layer_norm {
        meta_f64(&content, &k("attention.layer_norm_epsilon"), 1e-5)?
    } else {
        meta_f64(&content, &k("attention.layer_norm_rms_epsilon"), 1e-5)?
    };
    let rope_scaling = match content.metadata.get(&k("rope.scaling.type")).and_then(|v| v.to_string().ok()) {
        Some(t) if t == "linear" => RopeScaling::Linear { factor: meta_f64(&content, &k("rope.scaling.factor"), 1.0)? },
        Some(t) if t != "none" => {
            return Err(LmError::Config(format!("GGUF rope scaling `{t}` is not supported yet (linear is)")))
        }
        _ => RopeScaling::None,
    };
    let positions = match family {
        Family::Gpt2 => Positions::Learned { max: meta_u64(&content, &k("context_length"))? as usize },
        Family::Bloom => Positions::Alibi,
        // llama.cpp permutes LLaMA's q and k rows for pairwise rotary (GLM is
        // pairwise already); the Qwen families keep Hugging Face's rotate-half layout.
        _ => Positions::Rope {
            rotary_dim: meta_u64(&content, &k("rope.dimension_count")).map_or(head_dim, |d| d as usize),
            interleaved: matches!(family, Family::Llama | Family::Glm | Family::Glm4),
        },
    };
    let config = DecoderConfig {
        family,
        vocab_size: tokens.len(),
        hidden_size: hidden,
        num_layers: meta_u64(&content, &k("block_count"))? as usize,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        intermediate_size: meta_u64(&content, &k("feed_forward_length"))? as usize,
        norm_eps,
        rope_theta: meta_f64(&content, &k("rope.freq_base"), 10_000.0)?,
        rope_scaling,
        positions,
        norm: if layer_norm { NormKind::Layer } else { NormKind::Rms },
        mlp: if layer_norm { MlpKind::Gelu } else { MlpKind::SwiGlu },
        embed_norm: family == Family::Bloom,
        sandwich_norms: content.tensor_infos.contains_key("blk.0.post_attention_norm.weight"),
        qkv_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        o_bias: content.tensor_infos.contains_key("blk.0.attn_output.bias"),
        mlp_bias: content.tensor_infos.contains_key("blk.0.ffn_up.bias")
            || content.tensor_infos.contains_key("blk.0.ffn_down.bias"),
        qk_norm: content.tensor_infos.contains_key("blk.0.attn_q_norm.weight"),
        sliding_window: None,
        tie_word_embeddings: !has_output,
        context_length: meta_u64(&content, &k("context_length")).ok().map(|n| n as usize),
        eos_token_ids: eos_ids,
    };
    let mut tensors = HashMap::new();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    let mut rope_freqs = None;
    for name in names {
        let q = content
            .tensor(&mut file, &name, device)
            .map_err(|e| LmError::Weights(format!("GGUF tensor `{name}`: {e}")))?;
        if name == "rope_freqs.weight" {
            rope_freqs = Some(q.dequantize(device)?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?);
            continue;
        }
        let Some(hf) = hf_name(family, &name) else { continue };
        let quantized = !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let mut weight = if quantized && q.rank() == 2 && device.is_cpu() && !dequantize {
            Weight::Quant(QWeight::from_qtensor(q)?)
        } else {
            Weight::Dense(q.dequantize(device)?)
        };
        // GPT-2's Hugging Face Conv1D weights are in × out; GGUF stores them out × in.
        if family == Family::Gpt2 && name.starts_with("blk.") && name.ends_with(".weight") {
            if let Weight::Dense(t) = &weight {
                if t.rank() == 2 {
                    weight = Weight::Dense(t.t()?.contiguous()?);
                }
            }
        }
        // BLOOM's fused qkv: GGUF has all q rows, then k, then v; Hugging Face interleaves them per head.
        if family == Family::Bloom && name.contains(".attn_qkv.") {
            let d = head_dim;
            let rows: Vec<usize> = (0..heads)
                .flat_map(|h| (0..3).flat_map(move |j| (0..d).map(move |i| j * heads * d + h * d + i)))
                .collect();
            weight = match weight {
                Weight::Dense(t) if t.rank() == 1 => {
                    let index = candle_core::Tensor::from_vec(
                        rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                        rows.len(),
                        device,
                    )?;
                    Weight::Dense(t.index_select(&index, 0)?)
                }
                w => w.select_rows(&rows)?,
            };
        }
        tensors.insert(hf, weight);
    }
    let mut config = config;
    if let Some(factors) = rope_freqs {
        config.rope_scaling = RopeScaling::Factors(factors);
    }
    let decoder = Decoder::load_weights(config, tensors, device, candle_core::DType::F32)?;
    let tokenizer = gguf_tokenizer(&content, tokens)?;
    Ok((decoder, tokenizer))
}

/// Token types (`tokenizer.ggml.token_type`): 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte.
fn token_types(c: &Content, n: usize) -> Vec<i32> {
    match c.metadata.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
        Some(v) => v.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
        None => vec![1; n],
    }
}

/// Builds a SentencePiece-style tokenizer (`tokenizer.ggml.model = "llama"`):
/// BPE with byte fallback whose merges come from the piece scores — the
/// pair whose union scores highest merges first, as in llama.cpp — with
/// spaces as `▁` and an optional leading space.
fn sentencepiece_tokenizer(c: &Content, tokens: Vec<String>) -> Result<TextTokenizer, LmError> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::models::bpe::BPE;
    use tokenizers::normalizers::{Prepend, Replace};
    use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};
    let scores: Vec<f32> = match c.metadata.get("tokenizer.ggml.scores").and_then(|v| v.to_vec().ok()) {
        Some(v) => v.iter().map(|x| x.to_f32().unwrap_or(0.0)).collect(),
        None => vec![0.0; tokens.len()],
    };
    let types = token_types(c, tokens.len());
    let id_of: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f32, usize, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types.get(id).copied().unwrap_or(1) != 1 {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(at);
            if id_of.contains_key(a) && id_of.contains_key(b) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id, a.to_string(), b.to_string()));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges: Vec<(String, String)> = merges.into_iter().map(|(_, _, a, b)| (a, b)).collect();
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    let unk = meta_u64(c, "tokenizer.ggml.unknown_token_id").ok().and_then(|i| tokens.get(i as usize).cloned());
    if let Some(u) = &unk {
        builder = builder.unk_token(u.clone());
    }
    let bpe = builder.build().map_err(|e| LmError::Tokenizer(format!("GGUF SentencePiece vocabulary: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let space_prefix = c.metadata.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.to_bool().ok()).unwrap_or(true);
    let replace = Replace::new(" ", "▁").map_err(|e| LmError::Tokenizer(e.to_string()))?;
    let mut normalizers = Vec::new();
    if space_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new("▁".into())));
    }
    normalizers.push(NormalizerWrapper::Replace(replace));
    tok.with_normalizer(Some(tokenizers::normalizers::Sequence::new(normalizers)))
        .map_err(|e| LmError::Tokenizer(format!("GGUF normalizer: {e}")))?;
    let space = Replace::new("▁", " ").map_err(|e| LmError::Tokenizer(e.to_string()))?;
    let mut decoders = vec![
        DecoderWrapper::Replace(space),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 2 || t == 3 || t == 4)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(specials).map_err(|e| LmError::Tokenizer(format!("GGUF special tokens: {e}")))?;
    finish_tokenizer(c, tok, &tokens)
}

/// Adds BOS (when the file asks for it) and the chat template.
fn finish_tokenizer(c: &Content, mut tok: tokenizers::Tokenizer, tokens: &[String]) -> Result<TextTokenizer, LmError> {
    let token_at = |key: &str| meta_u64(c, key).ok().and_then(|i| tokens.get(i as usize).cloned().map(|t| (t, i)));
    let bos = token_at("tokenizer.ggml.bos_token_id");
    let add_bos = c.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
    if let (true, Some((b, id))) = (add_bos, &bos) {
        let post = tokenizers::processors::template::TemplateProcessing::builder()
            .try_single(format!("{b} $A"))
            .and_then(|t| t.try_pair(format!("{b} $A {b} $B")))
            .map_err(|e| LmError::Tokenizer(format!("GGUF BOS: {e}")))?
            .special_tokens(vec![(b.clone(), *id as u32)])
            .build()
            .map_err(|e| LmError::Tokenizer(format!("GGUF BOS: {e}")))?;
        tok.with_post_processor(Some(post));
    }
    let template = c.metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok().cloned());
    Ok(TextTokenizer::from_parts(
        tok,
        template,
        bos.map(|(t, _)| t),
        token_at("tokenizer.ggml.eos_token_id").map(|(t, _)| t),
    ))
}

/// Builds a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) from GGUF metadata.
fn gguf_tokenizer(c: &Content, tokens: Vec<String>) -> Result<TextTokenizer, LmError> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::{AddedToken, PreTokenizerWrapper};
    let model = meta(c, "tokenizer.ggml.model")?.to_string().cloned().unwrap_or_default();
    if model == "llama" {
        return sentencepiece_tokenizer(c, tokens);
    }
    if model != "gpt2" {
        return Err(LmError::Tokenizer(format!(
            "GGUF tokenizer model `{model}` is not supported yet (gpt2 and llama are)"
        )));
    }
    let merges: Vec<(String, String)> = strings(c, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let types = token_types(c, tokens.len());
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
    finish_tokenizer(c, tok, &tokens)
}
/// The Hugging Face name of a GGUF tensor, for the decoder's loader.
fn hf_name(family: Family, gguf: &str) -> Option<String> {
    let gpt = matches!(family, Family::Gpt2 | Family::Bloom);
    let direct = match (gguf, gpt) {
        ("token_embd.weight", false) => Some("model.embed_tokens.weight"),
        ("output_norm.weight", false) => Some("model.norm.weight"),
        ("output.weight", _) => Some("lm_head.weight"),
        ("token_embd.weight", true) => {
            Some(if family == Family::Gpt2 { "transformer.wte.weight" } else { "transformer.word_embeddings.weight" })
        }
        ("position_embd.weight", true) => Some("transformer.wpe.weight"),
        ("token_embd_norm.weight", true) => Some("transformer.word_embeddings_layernorm.weight"),
        ("token_embd_norm.bias", true) => Some("transformer.word_embeddings_layernorm.bias"),
        ("output_norm.weight", true) => Some("transformer.ln_f.weight"),
        ("output_norm.bias", true) => Some("transformer.ln_f.bias"),
        _ => None,
    };
    if let Some(d) = direct {
        return Some(d.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (i, name) = rest.split_once('.')?;
    let (part, kind) = name.rsplit_once('.')?;
    let hf = match (family, part) {
        (Family::Gpt2, "attn_norm") => "ln_1",
        (Family::Gpt2, "attn_qkv") => "attn.c_attn",
        (Family::Gpt2, "attn_output") => "attn.c_proj",
        (Family::Gpt2, "ffn_norm") => "ln_2",
        (Family::Gpt2, "ffn_up") => "mlp.c_fc",
        (Family::Gpt2, "ffn_down") => "mlp.c_proj",
        (Family::Bloom, "attn_norm") => "input_layernorm",
        (Family::Bloom, "attn_qkv") => "self_attention.query_key_value",
        (Family::Bloom, "attn_output") => "self_attention.dense",
        (Family::Bloom, "ffn_norm") => "post_attention_layernorm",
        (Family::Bloom, "ffn_up") => "mlp.dense_h_to_4h",
        (Family::Bloom, "ffn_down") => "mlp.dense_4h_to_h",
        (_, "attn_norm") => "input_layernorm",
        (_, "attn_q") => "self_attn.q_proj",
        (_, "attn_k") => "self_attn.k_proj",
        (_, "attn_v") => "self_attn.v_proj",
        (_, "attn_output") => "self_attn.o_proj",
        (_, "attn_q_norm") => "self_attn.q_norm",
        (_, "attn_k_norm") => "self_attn.k_norm",
        (_, "ffn_norm") => "post_attention_layernorm",
        (_, "ffn_gate") => "mlp.gate_proj",
        (Family::Glm | Family::Glm4, "ffn_up") => "mlp.gate_up_proj",
        (_, "post_attention_norm") => "post_self_attn_layernorm",
        (_, "post_ffw_norm") => "post_mlp_layernorm",
        (_, "ffn_up") => "mlp.up_proj",
        (_, "ffn_down") => "mlp.down_proj",
        _ => return None,
    };
    let root = if gpt { "transformer.h" } else { "model.layers" };
    Some(format!("{root}.{i}.{hf}.{kind}"))
}
