//! The decoder against Hugging Face transformers on tiny random models:
//! logits within 1e-4 and the same greedy tokens, with and without the cache.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;

fn fixture(family: &str) -> (PathBuf, Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(family);
    let reference: Value = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    (dir, reference)
}

/// Largest |Δ| between logits rows and reference rows (JSON numbers).
fn max_logit_diff(logits: &[Vec<f32>], want: &Value) -> f32 {
    let mut max_diff = 0f32;
    for (row, want_row) in logits.iter().zip(want.as_array().unwrap()) {
        for (a, b) in row.iter().zip(want_row.as_array().unwrap()) {
            max_diff = max_diff.max((a - b.as_f64().unwrap() as f32).abs());
        }
    }
    max_diff
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check(family: &str) {
    let (dir, r) = fixture(family);
    let model = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
    let prompt = ids(&r["prompt_token_ids"]);
    let input = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits: Vec<Vec<f32>> = model.forward(&input, None).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    assert_eq!(logits.len(), r["logits"].as_array().unwrap().len());
    let max_diff = max_logit_diff(&logits, &r["logits"]);
    assert!(max_diff <= 1e-4, "{family}: max |Δ logit| = {max_diff}");
    let greedy = &r["greedy"];
    let n = greedy["max_new_tokens"].as_u64().unwrap() as usize;
    assert_eq!(
        model.greedy(&prompt, n, false).unwrap(),
        ids(&greedy["new_token_ids_without_cache"]),
        "{family} without cache"
    );
    assert_eq!(
        model.greedy(&prompt, n, true).unwrap(),
        ids(&greedy["new_token_ids_with_cache"]),
        "{family} with cache"
    );
    eprintln!("{family}: max |Δ logit| = {max_diff:e}");
}

#[test]
fn llama3_with_rope_scaling() {
    check("llama");
}

#[test]
fn llama2() {
    check("llama2");
}

#[test]
fn smollm_tied_embeddings() {
    check("smollm");
}

#[test]
fn mistral_sliding_window() {
    check("mistral");
}

#[test]
fn qwen2_qkv_bias() {
    check("qwen2");
}

#[test]
fn qwen3_qk_norm() {
    check("qwen3");
}

#[test]
fn deepseek_r1_distill() {
    check("deepseek");
}

#[test]
fn glm_partial_interleaved_rotary() {
    check("glm");
}

#[test]
fn glm4_sandwich_norms() {
    check("glm4");
}

#[test]
fn bloom_alibi_fused_qkv() {
    check("bloom");
}

#[test]
fn gpt2_learned_positions_conv1d() {
    check("gpt2");
}

#[test]
fn bad_model_folders_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let err = merit_lm::loader::load_hf_dir(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
    let (src, _) = fixture("qwen2");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let err = merit_lm::loader::load_hf_dir(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("missing"), "{err}");
    std::fs::write(dir.path().join("model.safetensors"), b"truncated").unwrap();
    let err = merit_lm::loader::load_hf_dir(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("not a readable safetensors"), "{err}");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    cfg["model_type"] = "rwkv".into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = merit_lm::loader::load_hf_dir(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("rwkv"), "{err}");
}

/// A truncated or foreign GGUF file, or one missing a tensor, is refused
/// with the file and the missing piece named.
#[test]
fn bad_gguf_files_name_the_problem() {
    let (src, _) = fixture("qwen2");
    let bytes = std::fs::read(src.join("model.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = merit_lm::gguf::load_gguf(&cut, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("cut.gguf") || err.contains("GGUF"), "{err}");
    let foreign = dir.path().join("foreign.gguf");
    std::fs::write(&foreign, b"GGUF but not really").unwrap();
    let err = merit_lm::gguf::load_gguf(&foreign, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("foreign.gguf") && err.contains("GGUF"), "{err}");
    let missing = merit_lm::gguf::load_gguf(&dir.path().join("absent.gguf"), &Device::Cpu).unwrap_err().to_string();
    assert!(missing.contains("absent.gguf"), "{missing}");
}

#[test]
fn tokenizers_and_chat_templates_match_transformers() {
    for family in ["llama", "llama2", "smollm", "mistral", "qwen2", "qwen3", "deepseek", "bloom", "glm", "glm4", "gpt2"]
    {
        let (dir, r) = fixture(family);
        let tok = merit_lm::TextTokenizer::from_hf_dir(&dir).unwrap();
        assert_eq!(
            tok.encode(r["prompt"].as_str().unwrap(), true).unwrap(),
            ids(&r["prompt_token_ids"]),
            "{family} prompt"
        );
        let chat = &r["chat"];
        let messages: Vec<merit_lm::Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
        let text = tok.apply_chat_template(&messages, chat["add_generation_prompt"].as_bool().unwrap()).unwrap();
        assert_eq!(text, chat["text"].as_str().unwrap(), "{family} chat template");
        assert_eq!(tok.encode(&text, false).unwrap(), ids(&chat["token_ids"]), "{family} chat ids");
    }
}

#[test]
fn generate_streams_greedy_text_without_splitting_characters() {
    for family in ["llama", "gpt2", "qwen3"] {
        let (dir, r) = fixture(family);
        let model = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
        let tok = merit_lm::TextTokenizer::from_hf_dir(&dir).unwrap();
        let prompt = ids(&r["prompt_token_ids"]);
        let want = ids(&r["greedy"]["new_token_ids_with_cache"]);
        let mut pieces = String::new();
        let g = merit_lm::generate(&model, &tok, &prompt, &Default::default(), want.len(), &[], |p| pieces.push_str(p))
            .unwrap();
        assert_eq!(g.token_ids, want, "{family}");
        assert_eq!(pieces, g.text);
        // A stop string cuts the text before it.
        if let Some(stop) = g.text.chars().nth(2).map(String::from) {
            let g2 = merit_lm::generate(
                &model,
                &tok,
                &prompt,
                &Default::default(),
                want.len(),
                std::slice::from_ref(&stop),
                |_| {},
            )
            .unwrap();
            assert!(!g2.text.contains(&stop), "{family}: {:?} still holds {stop:?}", g2.text);
            assert_eq!(g2.stop_reason, merit_lm::StopReason::Stop);
        }
    }
}

#[test]
fn text_stream_holds_back_partial_characters() {
    for family in ["llama", "mistral", "gpt2"] {
        let (dir, _) = fixture(family);
        let tok = merit_lm::TextTokenizer::from_hf_dir(&dir).unwrap();
        let text = "Crème brûlée — 東京 🍞!";
        let ids = tok.encode(text, false).unwrap();
        assert!(ids.len() > text.chars().count() / 2, "{family}: byte tokens expected");
        let mut stream = merit_lm::TextStream::default();
        let mut out = String::new();
        for id in ids {
            if let Some(piece) = stream.push(&tok, id).unwrap() {
                assert!(!piece.contains('\u{FFFD}'), "{family}: split character in {piece:?}");
                out.push_str(&piece);
            }
        }
        assert_eq!(out.trim_start(), text, "{family}");
    }
}

#[test]
fn nll_matches_the_reference_logits() {
    for family in ["llama", "bloom", "glm4"] {
        let (dir, r) = fixture(family);
        let model = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
        let prompt = ids(&r["prompt_token_ids"]);
        let (sum, n) = merit_lm::nll(&model, &prompt).unwrap();
        // The same quantity straight from transformers' logits.
        let mut want = 0.0f64;
        for (row, &next) in r["logits"].as_array().unwrap().iter().zip(&prompt[1..]) {
            let row: Vec<f64> = row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let log_z = max + row.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
            want += log_z - row[next as usize];
        }
        assert_eq!(n, prompt.len() - 1);
        assert!((sum - want).abs() / want.abs() < 1e-5, "{family}: {sum} vs {want}");
    }
}

/// Mean next-token cross-entropy of `ids`, from differentiable ops.
fn loss(model: &merit_lm::Decoder, ids: &[u32]) -> Tensor {
    let dev = Device::Cpu;
    let input = Tensor::new(&ids[..ids.len() - 1], &dev).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&input, None).unwrap().squeeze(0).unwrap();
    let (n, v) = logits.dims2().unwrap();
    let max = logits.max_keepdim(1).unwrap();
    let shifted = logits.broadcast_sub(&max).unwrap();
    let log_z = shifted.exp().unwrap().sum_keepdim(1).unwrap().log().unwrap();
    let logp = shifted.broadcast_sub(&log_z).unwrap();
    let mut onehot = vec![0f64; n * v];
    for (i, &t) in ids[1..].iter().enumerate() {
        onehot[i * v + t as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (n, v), &dev).unwrap();
    (logp.mul(&onehot).unwrap().sum_all().unwrap() * (-1.0 / n as f64)).unwrap()
}

/// Every family of the decoder, by fixture name.
const FAMILIES: [&str; 11] =
    ["llama", "llama2", "smollm", "mistral", "qwen2", "qwen3", "deepseek", "glm", "glm4", "bloom", "gpt2"];

/// A fixture model in f64 with rank-2 LoRA on every linear layer.
fn f64_with_lora(
    dir: &std::path::Path,
    dropout: f64,
    seed: u64,
) -> (merit_lm::Decoder, Vec<(String, candle_core::Var)>) {
    let mut model = merit_lm::loader::load_hf_dir_as(dir, &Device::Cpu, candle_core::DType::F64).unwrap();
    let cfg = merit_lm::LoraConfig { rank: 2, alpha: 4.0, rslora: false, targets: vec!["all".into()], dropout, seed };
    let vars = model.add_lora(&cfg).unwrap();
    (model, vars)
}

/// Sets every LoRA B (f64) to seeded values in ±0.2, so gradients are not trivial.
fn randomize_lora_b(vars: &[(String, candle_core::Var)], seed: u64) {
    let mut x = seed;
    for (name, v) in vars {
        if name.ends_with("lora_B.weight") {
            let vals: Vec<f64> = (0..v.elem_count())
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x % 2001) as f64 / 1000.0 - 1.0) * 0.2
                })
                .collect();
            v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap()).unwrap();
        }
    }
}

#[test]
fn lora_gradients_match_finite_differences() {
    use candle_core::DType;
    for family in FAMILIES {
        let (dir, r) = fixture(family);
        let (model, vars) = f64_with_lora(&dir, 0.0, 1);
        assert!(!vars.is_empty());
        // Untrained adapters (B = 0) leave the model as it was.
        let prompt = ids(&r["prompt_token_ids"]);
        let base = merit_lm::loader::load_hf_dir_as(&dir, &Device::Cpu, DType::F64).unwrap();
        let l0 = loss(&model, &prompt).to_scalar::<f64>().unwrap();
        assert!((l0 - loss(&base, &prompt).to_scalar::<f64>().unwrap()).abs() < 1e-12, "{family}");
        // Random B so that every gradient is non-trivial.
        randomize_lora_b(&vars, 0x2545_F491_4F6C_DD1D);
        let grads = loss(&model, &prompt).backward().unwrap();
        let eps = 1e-5;
        let mut checked = 0;
        for (name, v) in vars.iter().step_by(3) {
            let g: Vec<f64> = grads.get(v.as_tensor()).expect("gradient").flatten_all().unwrap().to_vec1().unwrap();
            let orig: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for k in [0, orig.len() / 2, orig.len() - 1] {
                let at = |delta: f64| {
                    let mut vals = orig.clone();
                    vals[k] += delta;
                    v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap()).unwrap();
                    loss(&model, &prompt).to_scalar::<f64>().unwrap()
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                v.set(&Tensor::from_vec(orig.clone(), v.shape(), &Device::Cpu).unwrap()).unwrap();
                let err = (g[k] - fd).abs() / fd.abs().max(1e-6);
                assert!(err < 1e-3, "{family} {name}[{k}]: autograd {} vs finite difference {fd}", g[k]);
                checked += 1;
            }
        }
        eprintln!("{family}: {checked} LoRA gradient entries match finite differences");
    }
}

#[test]
fn peft_adapters_match_transformers() {
    for family in ["llama", "qwen3", "gpt2", "bloom", "glm", "glm4", "qwen2", "mistral"] {
        let (dir, _) = fixture(family);
        let r: Value = serde_json::from_slice(&std::fs::read(dir.join("adapter/reference.json")).unwrap()).unwrap();
        let mut model = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
        merit_lm::adapter::load_peft(&mut model, &dir.join("adapter")).unwrap();
        let prompt = ids(&r["prompt_token_ids"]);
        let input = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits: Vec<Vec<f32>> = model.forward(&input, None).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let max_diff = max_logit_diff(&logits, &r["logits"]);
        assert!(max_diff <= 1e-4, "{family} with adapter: max |Δ logit| = {max_diff}");
        // The adapter matters: the base model's logits differ.
        let base: Vec<Vec<f32>> = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu)
            .unwrap()
            .forward(&input, None)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert!(base[0].iter().zip(&logits[0]).any(|(a, b)| (a - b).abs() > 1e-2), "{family}");
    }
    // A wrong adapter is named.
    let (dir, _) = fixture("gpt2");
    let mut model = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
    let err = merit_lm::adapter::load_peft(&mut model, &fixture("qwen3").0.join("adapter")).unwrap_err().to_string();
    assert!(err.contains("gate_proj") || err.contains("missing") || err.contains("shape"), "{err}");
}

/// Prompts of different lengths in one left-padded batch get exactly the
/// tokens each gets alone, for every family (padding is masked, positions
/// — RoPE, learned or ALiBi — count from each prompt's first token).
#[test]
fn batched_prompts_of_different_lengths_match_one_by_one() {
    let families =
        ["llama", "llama2", "smollm", "mistral", "qwen2", "qwen3", "deepseek", "glm", "glm4", "bloom", "gpt2"];
    for family in families {
        let (dir, r) = fixture(family);
        if !dir.exists() {
            panic!("fixture {family} is missing");
        }
        let model = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
        let tok = merit_lm::TextTokenizer::from_hf_dir(&dir).unwrap();
        let prompt = ids(&r["prompt_token_ids"]);
        let prompts = vec![prompt.clone(), prompt[..prompt.len() / 2].to_vec(), prompt[prompt.len() - 3..].to_vec()];
        let params = merit_lm::SamplingParams::default();
        let batch = merit_lm::generate_batch(&model, &tok, &prompts, &params, 12, &[], |_, _| {}).unwrap();
        for (p, b) in prompts.iter().zip(&batch) {
            let alone = merit_lm::generate(&model, &tok, p, &params, 12, &[], |_| {}).unwrap();
            assert_eq!(b.token_ids, alone.token_ids, "{family}: prompt of {} tokens", p.len());
            assert_eq!(b.text, alone.text);
        }
    }
}

/// GGUF files converted from the fixtures (scripts/fixtures/make_gguf.py;
/// llama.cpp itself agrees with them, see check_gguf_llamacpp.py): the
/// same logits as transformers, and the tokenizer and chat template rebuilt
/// from GGUF metadata — byte-level BPE (`gpt2`) and SentencePiece-style
/// (`llama`, llama2 fixture) — give the same ids and text.
#[test]
fn gguf_files_match_transformers() {
    for family in ["llama2", "qwen2", "qwen3", "gpt2", "bloom", "glm", "glm4"] {
        let (dir, r) = fixture(family);
        let (model, tok) = merit_lm::gguf::load_gguf(&dir.join("model.gguf"), &Device::Cpu).unwrap();
        let prompt = ids(&r["prompt_token_ids"]);
        let input = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits: Vec<Vec<f32>> = model.forward(&input, None).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let max_diff = max_logit_diff(&logits, &r["logits"]);
        assert!(max_diff <= 1e-4, "{family} GGUF: max |Δ logit| = {max_diff}");
        let n = r["greedy"]["max_new_tokens"].as_u64().unwrap() as usize;
        assert_eq!(model.greedy(&prompt, n, true).unwrap(), ids(&r["greedy"]["new_token_ids_with_cache"]), "{family}");
        assert_eq!(tok.encode(r["prompt"].as_str().unwrap(), true).unwrap(), prompt, "{family} GGUF tokenizer");
        // (GLM prompts start with the special tokens "[gMASK]<sop>", which decoding skips.)
        let text = r["prompt"].as_str().unwrap().replace("[gMASK]<sop>", "");
        assert_eq!(tok.decode(&prompt, true).unwrap().trim(), text.trim(), "{family}");
        let chat = &r["chat"];
        let messages: Vec<merit_lm::Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
        let text = tok.apply_chat_template(&messages, chat["add_generation_prompt"].as_bool().unwrap()).unwrap();
        assert_eq!(text, chat["text"].as_str().unwrap(), "{family} GGUF chat template");
        assert_eq!(tok.encode(&text, false).unwrap(), ids(&chat["token_ids"]), "{family} GGUF chat ids");
    }
}

/// Quantized GGUF (Q8_0, Q4_1) on Merit's kernels gives the logits of the
/// same file expanded to f32 (the kernels keep activations at 16 bits), and
/// the same greedy tokens.
#[test]
fn quantized_gguf_kernels_match_the_dequantized_model() {
    for file in ["model-q8_0.gguf", "model-q4_1.gguf"] {
        let (dir, r) = fixture("llama");
        let path = dir.join(file);
        let (quant, _) = merit_lm::gguf::load_gguf_as(&path, &Device::Cpu, false).unwrap();
        let (dense, _) = merit_lm::gguf::load_gguf_as(&path, &Device::Cpu, true).unwrap();
        let prompt = ids(&r["prompt_token_ids"]);
        let input = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let a = quant.forward(&input, None).unwrap();
        let b = dense.forward(&input, None).unwrap();
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-3 * scale.max(1.0), "{file}: max |Δ logit| {diff} (scale {scale})");
        assert_eq!(quant.greedy(&prompt, 12, true).unwrap(), dense.greedy(&prompt, 12, true).unwrap(), "{file}");
    }
}

/// Dynamic NTK rope scaling, with a prompt longer than max_position_embeddings.
#[test]
fn llama_with_dynamic_rope_scaling() {
    check("llama_dynamic");
}

/// The other direction: adapters trained by `merit train`, loaded by Python
/// PEFT on the transformers base (scripts/fixtures/make_merit_adapters.py),
/// give the logits Merit gives with the same folder — every family.
#[test]
fn merit_adapters_match_peft() {
    for family in ["llama", "llama2", "smollm", "mistral", "qwen2", "qwen3", "deepseek", "glm", "glm4", "bloom", "gpt2"]
    {
        let (dir, _) = fixture(family);
        let adapter = dir.join("merit-adapter");
        let r: Value = serde_json::from_slice(&std::fs::read(adapter.join("reference.json")).unwrap()).unwrap();
        let mut model = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
        merit_lm::adapter::load_peft(&mut model, &adapter).unwrap();
        let prompt = ids(&r["prompt_token_ids"]);
        let input = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits: Vec<Vec<f32>> = model.forward(&input, None).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let max_diff = max_logit_diff(&logits, &r["logits"]);
        assert!(max_diff <= 1e-4, "{family}: Merit's adapter read by PEFT differs by {max_diff}");
        let base = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
        let moved = (base.forward(&input, None).unwrap().squeeze(0).unwrap()
            - Tensor::new(logits.clone(), &Device::Cpu).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!(moved > 1e-3, "{family}: the trained adapter changes nothing ({moved})");
        let cfg: Value = serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(cfg["fan_in_fan_out"], family == "gpt2", "{family}");
    }
}

/// Gradient checkpointing gives the loss and LoRA gradients of the plain
/// backward pass (f64, with LoRA dropout on), for every family.
#[test]
fn checkpointed_gradients_match_the_plain_backward_pass() {
    for family in FAMILIES {
        let (dir, r) = fixture(family);
        let (model, vars) = f64_with_lora(&dir, 0.2, 3);
        randomize_lora_b(&vars, 0x9E37_79B9_7F4A_7C15);
        model.set_training(true);
        // Two rows, the second shorter (padding weighted 0), more rows than one head chunk.
        let prompt = ids(&r["prompt_token_ids"]);
        let t = prompt.len();
        let mut rows = prompt.clone();
        rows.extend(prompt.iter().rev().copied());
        let input = Tensor::from_vec(rows.clone(), (2, t), &Device::Cpu).unwrap();
        let mut targets = Vec::new();
        let mut weights = Vec::new();
        for row in 0..2 {
            for i in 1..t {
                targets.push(rows[row * t + i]);
                weights.push(if row == 1 && i > t / 2 { 0.0 } else { 1.0 });
            }
        }
        let seed = 11;
        model.reseed_dropout(seed);
        let logits = model.forward(&input, None).unwrap().narrow(1, 0, t - 1).unwrap();
        let nll = merit_lm::fused::cross_entropy(&logits, &targets, &weights).unwrap().sum_all().unwrap();
        let want_loss = nll.to_scalar::<f64>().unwrap();
        let plain = (nll * 0.5).unwrap().backward().unwrap();
        let (loss, grads) = model.loss_grads_checkpointed(&input, &targets, &weights, 0.5, seed).unwrap();
        assert!((loss - want_loss).abs() < 1e-9 * want_loss.abs(), "{family}: loss {loss} vs {want_loss}");
        for (name, v) in &vars {
            let want = plain.get(v.as_tensor()).expect("plain gradient");
            let got = grads.get(&v.as_tensor().id()).unwrap_or_else(|| panic!("{family} {name}: no gradient"));
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1e-12);
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(diff <= 1e-9 * scale, "{family} {name}: differs by {diff} (scale {scale})");
        }
    }
}

/// A cancelled generation stops at its next token.
#[test]
fn cancelled_generation_stops_at_the_next_token() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (dir, r) = fixture("smollm");
    let model = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
    let tok = merit_lm::TextTokenizer::from_hf_dir(&dir).unwrap();
    let prompt = ids(&r["prompt_token_ids"]);
    let cancel = AtomicBool::new(true);
    let g =
        merit_lm::generate_cancellable(&model, &tok, &prompt, &Default::default(), 20, &[], &cancel, |_| {}).unwrap();
    assert_eq!((g.token_ids.len(), g.stop_reason), (0, merit_lm::StopReason::Cancelled));
    let cancel = AtomicBool::new(false);
    let mut pieces = 0;
    let g = merit_lm::generate_cancellable(&model, &tok, &prompt, &Default::default(), 20, &[], &cancel, |_| {
        pieces += 1;
        if pieces == 2 {
            cancel.store(true, Ordering::Relaxed);
        }
    })
    .unwrap();
    assert_eq!(g.stop_reason, merit_lm::StopReason::Cancelled);
    assert!(g.token_ids.len() < 20, "{} tokens", g.token_ids.len());
    // The fixture's config.json says max_position_embeddings = 256.
    assert_eq!(model.config.context_length, Some(256));
}

/// One loaded base serves several adapters: they are taken off and put
/// back without reloading, with the same logits as loading them.
#[test]
fn adapters_swap_on_one_loaded_base() {
    let (dir, r) = fixture("llama");
    let prompt = Tensor::new(ids(&r["prompt_token_ids"]).as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits =
        |m: &merit_lm::Decoder| m.forward(&prompt, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut m = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
    let base = logits(&m);
    merit_lm::adapter::load_peft(&mut m, &dir.join("adapter")).unwrap();
    let tuned = logits(&m);
    assert_ne!(base, tuned);
    let adapter = m.adapters();
    assert!(adapter.size_in_bytes() > 0);
    m.set_adapters(&merit_lm::Adapters::default()).unwrap();
    assert_eq!(logits(&m), base);
    m.set_adapters(&adapter).unwrap();
    assert_eq!(logits(&m), tuned);
}

/// Continuous batching: requests join a running batch at different steps,
/// each with its own prompt, sampling, stop string, budget and adapter (or
/// none), and leave as they finish; every one gets exactly the tokens and
/// text it gets alone with its adapter. Every family, f64 and (through the
/// packed CPU kernel) f32.
#[test]
fn continuous_batch_matches_each_request_alone() {
    use merit_lm::{Batch, BatchEvent, BatchRequest, SamplingParams};
    use std::sync::Arc;
    for family in FAMILIES {
        let (dir, r) = fixture(family);
        let tok = merit_lm::TextTokenizer::from_hf_dir(&dir).unwrap();
        let (m64, vars) = f64_with_lora(&dir, 0.0, 3);
        randomize_lora_b(&vars, 11);
        let (other, vars2) = f64_with_lora(&dir, 0.0, 5);
        randomize_lora_b(&vars2, 29);
        let (first64, second64) = (m64.adapters(), other.adapters());
        let m32 = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
        let f32 = candle_core::DType::F32;
        let (first32, second32) = (first64.to_dtype(f32).unwrap(), second64.to_dtype(f32).unwrap());
        let runs = [(m64, first64, second64, "f64"), (m32, first32, second32, "f32")];
        for (mut m, first, second, dtype) in runs {
            let (first, second) = (Arc::new(first), Arc::new(second));
            let prompt = ids(&r["prompt_token_ids"]);
            let n = prompt.len();
            let sampled =
                |t: f64, p: f64, seed: u64| SamplingParams { temperature: t, top_p: p, seed, ..Default::default() };
            // (joins before step, request)
            let mut plan: Vec<(usize, BatchRequest)> = vec![
                (
                    0,
                    BatchRequest {
                        prompt: prompt.clone(),
                        params: SamplingParams::default(),
                        max_new: 10,
                        stop: vec![],
                        adapter: Some(first.clone()),
                    },
                ),
                (
                    0,
                    BatchRequest {
                        prompt: prompt[..3].to_vec(),
                        params: sampled(0.9, 1.0, 7),
                        max_new: 6,
                        stop: vec![],
                        adapter: Some(second.clone()),
                    },
                ),
                (
                    2,
                    BatchRequest {
                        prompt: prompt[2..].to_vec(),
                        params: SamplingParams::default(),
                        max_new: 12,
                        stop: vec![],
                        adapter: None,
                    },
                ),
                (
                    4,
                    BatchRequest {
                        prompt: prompt[1..n.min(5)].to_vec(),
                        params: sampled(1.3, 0.9, 3),
                        max_new: 8,
                        stop: vec![],
                        adapter: Some(first.clone()),
                    },
                ),
                (
                    4,
                    BatchRequest {
                        prompt: prompt[..1].to_vec(),
                        params: SamplingParams::default(),
                        max_new: 0,
                        stop: vec![],
                        adapter: None,
                    },
                ),
                (
                    7,
                    BatchRequest {
                        prompt: prompt[n / 2..].to_vec(),
                        params: SamplingParams::default(),
                        max_new: 9,
                        stop: vec![],
                        adapter: Some(second.clone()),
                    },
                ),
            ];
            let alone = |m: &mut merit_lm::Decoder, q: &BatchRequest| {
                m.set_adapters(q.adapter.as_deref().unwrap_or(&merit_lm::Adapters::default())).unwrap();
                merit_lm::generate(m, &tok, &q.prompt, &q.params, q.max_new, &q.stop, |_| {}).unwrap()
            };
            // A stop string from the middle of one answer.
            let text = alone(&mut m, &plan[2].1).text;
            let chars: Vec<char> = text.chars().collect();
            if chars.len() >= 6 {
                plan[2].1.stop = vec![chars[3..5].iter().collect()];
            }
            let mut batch = Batch::new();
            let mut streamed = vec![String::new(); plan.len()];
            let mut done: Vec<Option<merit_lm::Generation>> = vec![None; plan.len()];
            let mut widest = 0;
            for step in 0.. {
                let joining: Vec<(u64, BatchRequest)> = plan
                    .iter()
                    .enumerate()
                    .filter(|(_, (at, _))| *at == step)
                    .map(|(i, (_, q))| (i as u64, q.clone()))
                    .collect();
                let mut on = |id: u64, e: BatchEvent| match e {
                    BatchEvent::Text(t) => streamed[id as usize].push_str(t),
                    BatchEvent::Done(g) => done[id as usize] = Some(g),
                };
                batch.join(&mut m, &tok, joining, &mut on).unwrap();
                widest = widest.max(batch.len());
                if batch.is_empty() && plan.iter().all(|(at, _)| *at <= step) {
                    break;
                }
                batch.step(&mut m, &tok, &mut on).unwrap();
            }
            assert!(widest >= 3, "{family}: requests should overlap in the batch");
            for (i, (_, q)) in plan.iter().enumerate() {
                let want = alone(&mut m, q);
                let got = done[i].as_ref().unwrap_or_else(|| panic!("{family} {dtype}: request {i} never finished"));
                assert_eq!(got.token_ids, want.token_ids, "{family} {dtype}: request {i}");
                assert_eq!(got.text, want.text, "{family} {dtype}: request {i}");
                assert_eq!(got.stop_reason, want.stop_reason, "{family} {dtype}: request {i}");
                assert_eq!(streamed[i], want.text, "{family} {dtype}: request {i} streamed");
            }
            // Cancelling ends a request at once; the others go on.
            let mut on_done = Vec::new();
            let mut on = |id: u64, e: BatchEvent| {
                if let BatchEvent::Done(g) = e {
                    on_done.push((id, g.stop_reason));
                }
            };
            let joining = vec![(0, plan[0].1.clone()), (1, plan[2].1.clone())];
            batch.join(&mut m, &tok, joining, &mut on).unwrap();
            batch.cancel(|id| id == 0, &mut on);
            assert_eq!(batch.ids().collect::<Vec<_>>(), vec![1]);
            batch.step(&mut m, &tok, &mut on).unwrap();
            assert_eq!(on_done[0], (0, merit_lm::StopReason::Cancelled));
        }
    }
}

/// One forward pass serves rows with different adapters (and rows with
/// none): each row's logits equal a forward pass of that row alone with its
/// adapter; so does greedy batched generation. Every family, f64.
#[test]
fn one_batch_serves_several_adapters() {
    for family in FAMILIES {
        let (dir, r) = fixture(family);
        let (mut m, vars) = f64_with_lora(&dir, 0.0, 3);
        randomize_lora_b(&vars, 11);
        let first = m.adapters();
        // A second adapter (its own variables) from another load of the same base.
        let (other, vars2) = f64_with_lora(&dir, 0.0, 5);
        randomize_lora_b(&vars2, 29);
        let second = other.adapters();
        let prompt = ids(&r["prompt_token_ids"]);
        let p = &prompt[..prompt.len().min(6)];
        let batch = Tensor::from_vec(p.repeat(4), (4, p.len()), &Device::Cpu).unwrap();
        let alone = |m: &mut merit_lm::Decoder, a: &merit_lm::Adapters| -> Vec<f64> {
            m.set_adapters(a).unwrap();
            let one = Tensor::new(p, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            m.forward(&one, None).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let want = [alone(&mut m, &first), alone(&mut m, &second), alone(&mut m, &merit_lm::Adapters::default())];
        m.set_row_adapters(&[(vec![0, 3], &first), (vec![1], &second)]).unwrap();
        let logits: Vec<Vec<f64>> = m
            .forward(&batch, None)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (row, which) in [(0, 0), (1, 1), (2, 2), (3, 0)] {
            let d = logits[row].iter().zip(&want[which]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(d < 1e-9, "{family}: row {row} differs from its adapter alone by {d}");
        }
        assert!(m.set_row_adapters(&[(vec![0], &first), (vec![0], &second)]).is_err(), "a row in two groups");
        // In f32 on the CPU the rows go through one packed kernel instead of gathers.
        let f32_of = |a: &merit_lm::Adapters| {
            let mut m32 = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
            m32.set_adapters(a).unwrap();
            m32.adapters()
        };
        let mut m32 = merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap();
        let (f1, f2) = (f32_of(&first), f32_of(&second));
        m32.set_row_adapters(&[(vec![0, 3], &f1), (vec![1], &f2)]).unwrap();
        let got: Vec<Vec<f32>> = m32.forward(&batch, None).unwrap().flatten_from(1).unwrap().to_vec2().unwrap();
        for (row, which) in [(0, 0), (1, 1), (2, 2), (3, 0)] {
            let d = got[row].iter().zip(&want[which]).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(d < 1e-3, "{family} f32: row {row} differs by {d}");
        }
    }
}
