//! `merit bench adapters`: many adapters on one base, through the batcher
//! `merit serve` uses. N requests arrive at once from N client threads,
//! first all for one adapter, then spread over K adapters; the batcher
//! serves them continuously, each forward pass carrying rows of several
//! adapters (`Decoder::set_row_adapters`). Prints both throughputs, their
//! ratio and the cold-load latency of an adapter from disk. After a warm-up
//! the two alternate three times and the best of each is reported.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use merit_lm::candle_core::{DType, Tensor};
use serde_json::json;

use crate::model;

/// Random adapters: rank `rank` on q and v, B ~ N(0, 0.02) so answers change a little.
fn random_adapter(
    m: &mut merit_lm::Decoder,
    rank: usize,
    seed: u64,
) -> Result<Vec<(String, merit_lm::candle_core::Var)>> {
    let cfg = merit_lm::LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        rslora: false,
        targets: vec!["q_proj".into(), "v_proj".into()],
        dropout: 0.0,
        seed,
    };
    let vars = m.add_lora(&cfg)?;
    for (name, v) in &vars {
        if name.ends_with("lora_B.weight") {
            let t = Tensor::randn(0f32, 0.02, v.shape(), v.device())?.to_dtype(v.dtype())?;
            v.set(&t)?;
        }
    }
    Ok(vars)
}

pub fn bench(
    data_dir: &Path,
    name: &str,
    requests: usize,
    adapters: usize,
    new_tokens: usize,
    json_out: bool,
) -> Result<()> {
    if requests == 0 || adapters == 0 || new_tokens == 0 {
        bail!("--requests, --adapters and --new-tokens must be at least 1");
    }
    let (mut m, tok) = model::load(data_dir, name, None)?;
    let mut sets = Vec::with_capacity(adapters);
    let mut first_vars = Vec::new();
    for k in 0..adapters {
        let vars = random_adapter(&mut m, 8, 1000 + k as u64)?;
        if k == 0 {
            first_vars = vars;
        }
        sets.push(m.adapters());
    }
    // Cold load: the first adapter written in PEFT's format, then read back.
    let dir = tempfile::tempdir()?;
    let tensors: HashMap<String, Tensor> = first_vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().to_dtype(DType::F32)))
        .map(|(n, t)| Ok((n, t?)))
        .collect::<Result<_>>()?;
    merit_lm::candle_core::safetensors::save(&tensors, dir.path().join("adapter_model.safetensors"))?;
    let cfg = json!({ "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16.0,
                      "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": name });
    std::fs::write(dir.path().join("adapter_config.json"), cfg.to_string())?;
    m.set_adapters(&merit_lm::Adapters::default())?;
    let t = Instant::now();
    merit_lm::adapter::load_peft(&mut m, dir.path()).context("loading the adapter back")?;
    let cold_ms = t.elapsed().as_secs_f64() * 1e3;

    let prompts: Vec<Vec<u32>> = (0..requests)
        .map(|i| {
            let msg =
                merit_lm::Message { role: "user".into(), content: format!("Request {i}: tell me about the sea.") };
            let text = tok.apply_chat_template(&[msg], true)?;
            Ok(tok.encode(&text, false)?)
        })
        .collect::<Result<_>>()?;
    let params = merit_lm::SamplingParams { temperature: 0.0, ..Default::default() };
    let sets: Vec<std::sync::Arc<merit_lm::Adapters>> = sets.into_iter().map(std::sync::Arc::new).collect();
    m.set_adapters(&merit_lm::Adapters::default())?;
    let batcher = crate::serve::Batcher::start(m, std::sync::Arc::new(tok), requests);
    // All requests at once, request i with adapter `pick(i)`: tokens per second and tokens.
    let run = |pick: &dyn Fn(usize) -> usize| -> Result<(f64, usize)> {
        let start = std::sync::Barrier::new(requests);
        let t = Instant::now();
        let tokens = std::thread::scope(|s| {
            let handles: Vec<_> = prompts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let req = merit_lm::BatchRequest {
                        prompt: p.clone(),
                        params: params.clone(),
                        max_new: new_tokens,
                        stop: Vec::new(),
                        adapter: Some(sets[pick(i)].clone()),
                    };
                    let (batcher, start) = (&batcher, &start);
                    s.spawn(move || {
                        start.wait();
                        batcher.run(req, Default::default(), &mut |_| {})
                    })
                })
                .collect();
            handles.into_iter().try_fold(0, |n, h| match h.join() {
                Ok(Ok(g)) => Ok(n + g.token_ids.len()),
                Ok(Err(e)) => Err(anyhow::anyhow!("a request failed: {e:?}")),
                Err(_) => Err(anyhow::anyhow!("a client thread panicked")),
            })
        })?;
        Ok((tokens as f64 / t.elapsed().as_secs_f64(), tokens))
    };
    let (single, spread) = (|_: usize| 0, |i: usize| i % adapters);
    // Alternating, after a warm-up, best of three each: the machine's noise hits both alike.
    run(&single)?;
    let (mut one, mut many, mut one_tokens, mut many_tokens) = (0f64, 0f64, 0, 0);
    for _ in 0..3 {
        let (tps, n) = run(&single)?;
        (one, one_tokens) = if tps > one { (tps, n) } else { (one, one_tokens) };
        let (tps, n) = run(&spread)?;
        (many, many_tokens) = if tps > many { (tps, n) } else { (many, many_tokens) };
    }
    let ratio = many / one;
    if json_out {
        println!(
            "{}",
            json!({ "model": name, "requests": requests, "adapters": adapters, "new_tokens": new_tokens,
                    "one_adapter_tokens_per_s": one, "many_adapters_tokens_per_s": many, "ratio": ratio,
                    "tokens": [one_tokens, many_tokens], "cold_load_ms": cold_ms })
        );
    } else {
        println!(
            "{name}: {requests} concurrent requests, continuously batched, {new_tokens} new tokens each (greedy): one adapter {one:.1} tokens/s, \
             {adapters} adapters {many:.1} tokens/s ({ratio:.2}x); adapter cold load {cold_ms:.1} ms"
        );
    }
    Ok(())
}
