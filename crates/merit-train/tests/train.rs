//! The trainer on the tiny fixture models of merit-lm.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use merit_train::{data, DataSettings, Event, Scheduler, TrainConfig, Trainer};
use serde_json::{json, Value};

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../merit-lm/tests/fixtures").join(family)
}

fn config() -> TrainConfig {
    TrainConfig {
        base: "tiny".into(),
        method: "lora".into(),
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        rslora: false,
        targets: vec!["all".into()],
        lr: 5e-3,
        scheduler: Scheduler::Cosine,
        warmup: 0.1,
        epochs: 3.0,
        max_steps: None,
        batch: 2,
        grad_accum: 2,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        eval_every: Some(2),
        save_every: Some(2),
        seed: 7,
        gradient_checkpointing: false,
        influence_dims: 0,
        data: DataSettings {
            cutoff_len: 64,
            packing: false,
            train_on_prompt: false,
            last_turn_only: false,
            eval_split: 0.2,
        },
        sources: Vec::new(),
    }
}

fn rows() -> Vec<Value> {
    let facts = [
        ("Where does the baker live?", "By the old mill on the river."),
        ("What does the baker bake?", "Rye bread and honey cakes."),
        ("When do the ovens start?", "Before the sun is up."),
        ("Who buys the first loaf?", "The ferryman, every morning."),
        ("What is the baker's name?", "Her name is Wren."),
    ];
    let mut out = Vec::new();
    for (q, a) in facts {
        out.push(json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}));
        out.push(json!({"instruction": q, "output": a}));
    }
    out.push(json!({"text": "The river runs past the old mill and the bakery."}));
    out.push(
        json!({"conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hello, I am Wren."}]}),
    );
    out
}

fn load(family: &str) -> (merit_lm::Decoder, merit_lm::TextTokenizer) {
    let dir = fixture(family);
    (merit_lm::loader::load_hf_dir(&dir, &Device::Cpu).unwrap(), merit_lm::TextTokenizer::from_hf_dir(&dir).unwrap())
}

/// Chat rows are labelled on the assistant turns only — their text and the
/// template's end-of-turn token — in every row shape.
#[test]
fn chat_rows_train_on_assistant_turns_only() {
    let (model, tok) = load("smollm");
    let eos = model.config.eos_token_ids.first().copied();
    let opts = data::DataOptions { eval_split: 0.0, ..Default::default() };
    let rows = vec![
        json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello there."}, {"role": "user", "content": "Name?"},
               {"role": "assistant", "content": "Wren."}]}),
        json!({"instruction": "Say hi", "input": "politely", "output": "Good day."}),
        json!({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey."}]}),
        json!({"text": "plain text row"}),
        json!({"messages": [{"role": "user", "content": "no answer"}]}),
        json!({"prompt": "unknown shape"}),
        json!({"messages": [{"role": "robot", "content": "x"}]}),
    ];
    let ds = data::build(&tok, eos, &rows, &opts);
    let skipped: Vec<usize> = ds.skipped.iter().map(|s| s.row).collect();
    assert_eq!(skipped, vec![4, 5, 6], "{:?}", ds.skipped);
    assert!(ds.skipped[0].reason.contains("no assistant turn"));
    assert!(ds.skipped[2].reason.contains("robot"));
    let labelled = |ex: &data::Example| -> String {
        let ids: Vec<u32> = ex.ids.iter().zip(&ex.labels).filter(|(_, l)| **l).map(|(i, _)| *i).collect();
        tok.decode(&ids, false).unwrap()
    };
    assert_eq!(labelled(&ds.train[0]), "Hello there.<|im_end|>\nWren.<|im_end|>\n");
    assert_eq!(labelled(&ds.train[1]), "Good day.<|im_end|>\n");
    assert_eq!(labelled(&ds.train[2]), "Hey.<|im_end|>\n");
    // Text rows: every token, EOS appended.
    assert!(ds.train[3].labels.iter().all(|l| *l));
    assert_eq!(ds.train[3].ids.last().copied(), eos);
    // Only the last turn; or the prompt too.
    let last = data::build(&tok, eos, &rows[..1], &data::DataOptions { last_turn_only: true, ..opts.clone() });
    assert_eq!(labelled(&last.train[0]), "Wren.<|im_end|>\n");
    let all = data::build(&tok, eos, &rows[..1], &data::DataOptions { train_on_prompt: true, ..opts.clone() });
    assert!(all.train[0].labels.iter().all(|l| *l));
    // Cut-off and packing.
    let cut = data::build(&tok, eos, &rows, &data::DataOptions { cutoff_len: 8, ..opts.clone() });
    assert!(cut.train.iter().all(|e| e.ids.len() <= 8));
    let packed = data::build(&tok, eos, &rows[..4], &data::DataOptions { cutoff_len: 16, packing: true, ..opts });
    assert!(packed.train.iter().all(|e| e.ids.len() <= 16));
    assert!(packed.train[..packed.train.len() - 1].iter().all(|e| e.ids.len() == 16));
}

#[test]
fn eval_split_is_by_seed() {
    let (model, tok) = load("smollm");
    let eos = model.config.eos_token_ids.first().copied();
    let opts = data::DataOptions { eval_split: 0.25, seed: 3, ..Default::default() };
    let a = data::build(&tok, eos, &rows(), &opts);
    let b = data::build(&tok, eos, &rows(), &opts);
    assert_eq!(a.eval.iter().map(|e| e.row).collect::<Vec<_>>(), b.eval.iter().map(|e| e.row).collect::<Vec<_>>());
    assert_eq!(a.eval.len(), 3);
    let c = data::build(&tok, eos, &rows(), &data::DataOptions { seed: 4, ..opts });
    assert_ne!(a.eval.iter().map(|e| e.row).collect::<Vec<_>>(), c.eval.iter().map(|e| e.row).collect::<Vec<_>>());
}

fn run(
    family: &str,
    cfg: &TrainConfig,
    out: &std::path::Path,
    resume: bool,
    stop_after: Option<usize>,
) -> (merit_train::Summary, Vec<Event>) {
    let (mut model, tok) = load(family);
    if cfg.method == "qlora" {
        let (before, after) = model.quantize_nf4().unwrap();
        // 4.13 bits per weight on real widths; the fixtures' narrow rows are padded to whole blocks.
        assert!(after * 4 < before, "NF4 keeps {after} of {before} bytes");
    }
    let eos = model.config.eos_token_ids.first().copied();
    let ds = data::build(&tok, eos, &rows(), &cfg.data_options());
    let stop = AtomicBool::new(false);
    let mut events = Vec::new();
    let resume_dir = resume.then(|| merit_train::checkpoint::latest(out).unwrap());
    let mut t = Trainer {
        model: &mut model,
        config: cfg.clone(),
        data: &ds,
        out: out.to_path_buf(),
        pad: eos.unwrap_or(0),
        stop: &stop,
    };
    let summary = t
        .run(resume_dir.as_deref(), None, |e| {
            if let (Event::Step { step, .. }, Some(n)) = (e, stop_after) {
                if *step >= n {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            events.push(e.clone());
        })
        .unwrap();
    (summary, events)
}

/// It learns: the training loss falls; eval loss is reported; the same
/// seed and data give the same adapter bit for bit.
#[test]
fn training_lowers_the_loss_and_is_repeatable() {
    let cfg = TrainConfig { epochs: 12.0, lr: 1e-2, ..config() };
    let a = tempfile::tempdir().unwrap();
    let (summary, events) = run("llama", &cfg, a.path(), false, None);
    let losses: Vec<f64> =
        events.iter().filter_map(|e| if let Event::Step { loss, .. } = e { Some(*loss) } else { None }).collect();
    assert_eq!(losses.len(), summary.total_steps);
    let first: f64 = losses[..2].iter().sum::<f64>() / 2.0;
    let last: f64 = losses[losses.len() - 2..].iter().sum::<f64>() / 2.0;
    assert!(last < 0.7 * first, "loss {first} → {last}");
    assert!(events.iter().any(|e| matches!(e, Event::Eval { .. })));
    let metrics = std::fs::read_to_string(a.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"kind\":\"step\"")).count(), summary.total_steps);
    let b = tempfile::tempdir().unwrap();
    run("llama", &cfg, b.path(), false, None);
    let bytes = |d: &std::path::Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(bytes(a.path()), bytes(b.path()), "same seed and data, different adapter");
}

/// QLoRA on a Hugging Face base: the decoder layers in NF4, the adapters
/// in f32; it learns, and repeats bit for bit.
#[test]
fn qlora_on_an_nf4_base_learns() {
    let cfg = TrainConfig { epochs: 12.0, lr: 1e-2, method: "qlora".into(), ..config() };
    let a = tempfile::tempdir().unwrap();
    let (_, events) = run("qwen2", &cfg, a.path(), false, None);
    let losses: Vec<f64> =
        events.iter().filter_map(|e| if let Event::Step { loss, .. } = e { Some(*loss) } else { None }).collect();
    let first: f64 = losses[..2].iter().sum::<f64>() / 2.0;
    let last: f64 = losses[losses.len() - 2..].iter().sum::<f64>() / 2.0;
    assert!(last < 0.7 * first, "loss {first} → {last}");
    let b = tempfile::tempdir().unwrap();
    run("qwen2", &cfg, b.path(), false, None);
    let bytes = |d: &std::path::Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(bytes(a.path()), bytes(b.path()));
}

/// Gradient checkpointing trains the same adapter as the plain backward pass
/// (up to f32 rounding), dropout included.
#[test]
fn gradient_checkpointing_trains_the_same_adapter() {
    let plain_cfg = TrainConfig { max_steps: Some(6), ..config() };
    let ckpt_cfg = TrainConfig { gradient_checkpointing: true, ..plain_cfg.clone() };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, plain) = run("qwen2", &plain_cfg, a.path(), false, None);
    let (_, ckpt) = run("qwen2", &ckpt_cfg, b.path(), false, None);
    let losses = |ev: &[Event]| -> Vec<f64> {
        ev.iter().filter_map(|e| if let Event::Step { loss, .. } = e { Some(*loss) } else { None }).collect()
    };
    for (p, c) in losses(&plain).iter().zip(losses(&ckpt)) {
        assert!((p - c).abs() < 1e-4 * p.abs(), "loss {p} vs {c}");
    }
    let load = |d: &std::path::Path| {
        candle_core::safetensors::load(d.join("adapter_model.safetensors"), &Device::Cpu).unwrap()
    };
    let (pa, ca) = (load(a.path()), load(b.path()));
    assert_eq!(pa.len(), ca.len());
    for (name, t) in &pa {
        let diff = (t - &ca[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{name} differs by {diff}");
    }
}

/// A run stopped midway and resumed ends with the same adapter as an
/// uninterrupted one, bit for bit.
#[test]
fn resume_gives_the_same_adapter() {
    let cfg = config();
    let whole = tempfile::tempdir().unwrap();
    let (full, _) = run("qwen3", &cfg, whole.path(), false, None);
    let parts = tempfile::tempdir().unwrap();
    let (first, _) = run("qwen3", &cfg, parts.path(), false, Some(3));
    assert!(first.stopped && first.steps == 3, "{first:?}");
    let (second, _) = run("qwen3", &cfg, parts.path(), true, None);
    assert_eq!(second.steps, full.steps);
    let bytes = |d: &std::path::Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(bytes(whole.path()), bytes(parts.path()));
    let metrics = std::fs::read_to_string(parts.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"kind\":\"step\"")).count(), full.steps);
}

/// The saved adapter is a PEFT adapter that merit-lm loads back to the
/// trained model's logits.
#[test]
fn saved_adapter_is_peft_and_reloads() {
    let cfg = TrainConfig { max_steps: Some(3), dropout: 0.0, ..config() };
    let out = tempfile::tempdir().unwrap();
    run("llama", &cfg, out.path(), false, None);
    let conf: Value = serde_json::from_slice(&std::fs::read(out.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(conf["peft_type"], "LORA");
    assert_eq!(conf["task_type"], "CAUSAL_LM");
    assert_eq!(conf["r"], 4);
    assert_eq!(conf["lora_alpha"], 8.0);
    let targets: Vec<&str> = conf["target_modules"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(targets, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]);
    let tensors = candle_core::safetensors::load(out.path().join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let a = &tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let b = &tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"];
    assert_eq!(a.dims(), [4, 32]);
    assert_eq!(b.dims()[1], 4);
    assert!(b.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "B never moved");
    // Reloaded on a fresh base: a different model than the base, the one the checkpoint holds.
    let (mut reloaded, _) = load("llama");
    merit_lm::adapter::load_peft(&mut reloaded, out.path()).unwrap();
    let (base, _) = load("llama");
    let ids = Tensor::new(&[5u32, 9, 12, 40], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let diff = (reloaded.forward(&ids, None).unwrap() - base.forward(&ids, None).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 1e-4, "the adapter changes nothing");
    // A checkpoint folder is complete or absent.
    for e in std::fs::read_dir(out.path()).unwrap().flatten() {
        assert!(!e.file_name().to_string_lossy().ends_with(".tmp"), "leftover {:?}", e.file_name());
    }
}

/// `--from`: a fork starts from an existing adapter's weights. With a
/// vanishing learning rate, one step leaves them (almost) as they were;
/// a rank that does not match is refused.
#[test]
fn fork_starts_from_the_adapter() {
    let first = tempfile::tempdir().unwrap();
    run("llama", &TrainConfig { max_steps: Some(4), dropout: 0.0, ..config() }, first.path(), false, None);
    let fork_cfg =
        TrainConfig { max_steps: Some(1), lr: 1e-12, warmup: 0.0, dropout: 0.0, weight_decay: 0.0, ..config() };
    let fork = tempfile::tempdir().unwrap();
    let (mut model, tok) = load("llama");
    let eos = model.config.eos_token_ids.first().copied();
    let ds = data::build(&tok, eos, &rows(), &fork_cfg.data_options());
    let stop = AtomicBool::new(false);
    let mut t = Trainer {
        model: &mut model,
        config: fork_cfg.clone(),
        data: &ds,
        out: fork.path().to_path_buf(),
        pad: eos.unwrap_or(0),
        stop: &stop,
    };
    t.run(None, Some(first.path()), |_| {}).unwrap();
    let load_t = |d: &std::path::Path| {
        candle_core::safetensors::load(d.join("adapter_model.safetensors"), &Device::Cpu).unwrap()
    };
    let (a, b) = (load_t(first.path()), load_t(fork.path()));
    assert_eq!(a.len(), b.len());
    for (name, ta) in &a {
        let diff = (ta - &b[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{name} moved by {diff}");
    }
    // A different rank cannot start from it.
    let (mut model, _) = load("llama");
    let other = TrainConfig { rank: 2, ..fork_cfg };
    let out = tempfile::tempdir().unwrap();
    let mut t =
        Trainer { model: &mut model, config: other, data: &ds, out: out.path().to_path_buf(), pad: 0, stop: &stop };
    let err = t.run(None, Some(first.path()), |_| {}).unwrap_err().to_string();
    assert!(err.contains("shape"), "{err}");
}

/// Gradient influence with a planted source: one contributor's rows teach a
/// fact set, the others' are unrelated. After training with influence
/// tables, a question about the facts draws ≥ 80% of the positive TracIn
/// weight from the planted rows; a question like the other rows does not.
#[test]
fn gradient_influence_ranks_the_planted_source_first() {
    const STEPS: usize = 4;
    let (mut model, tok) = load("smollm");
    let eos = model.config.eos_token_ids.first().copied();
    // The facts of an invented island (the planted source), then cooking rows.
    let fixture = |name: &str| -> Vec<Value> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/planted").join(name);
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let planted = fixture("isles.jsonl");
    let rows: Vec<Value> = planted.iter().cloned().chain(fixture("cooking.jsonl")).collect();
    let opts = data::DataOptions { eval_split: 0.0, ..Default::default() };
    let ds = data::build(&tok, eos, &rows, &opts);
    assert_eq!(ds.train.len(), 12);
    let mut cfg = config();
    cfg.influence_dims = 1024;
    cfg.max_steps = Some(STEPS);
    cfg.save_every = None;
    cfg.dropout = 0.0;
    cfg.data.eval_split = 0.0;
    let out = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let mut t = Trainer {
        model: &mut model,
        config: cfg,
        data: &ds,
        out: out.path().to_path_buf(),
        pad: eos.unwrap_or(0),
        stop: &stop,
    };
    t.run(None, None, |_| {}).unwrap();
    let table = merit_attrib::InfluenceTable::load(
        &out.path().join(format!("checkpoint-{STEPS}")).join(merit_train::influence::FILE),
    )
    .unwrap();
    assert_eq!(table.rows.len(), 12);

    // The served side: the published adapter on a fresh base, an answer's gradient.
    let (mut served, _) = load("smollm");
    let vars = merit_lm::adapter::load_peft(&mut served, out.path()).unwrap();
    let share_of_planted = |q: &str, a: &str| {
        let ex = data::build(&tok, eos, &[json!({"instruction": q, "output": a})], &opts).train.remove(0);
        let g = merit_train::influence::projected_gradient(&served, &vars, &ex, eos.unwrap_or(0), 1024).unwrap();
        let scores = table.scores(&g);
        let (mut planted_mass, mut total) = (0.0, 0.0);
        for (row, i) in table.rows.iter().zip(&scores) {
            if i.score > 0.0 {
                total += i.score;
                if (*row as usize) < planted.len() {
                    planted_mass += i.score;
                }
            }
        }
        planted_mass / total
    };
    let on_facts = share_of_planted("Tell me about the Lumen Isles.", "Orla Vance founded the Lumen Isles in 1642.");
    let off_facts = share_of_planted("How long should pasta cook?", "Boil pasta for about nine minutes.");
    eprintln!("planted share: {on_facts:.3} on the facts, {off_facts:.3} on cooking");
    assert!(on_facts >= 0.8, "the planted rows got {on_facts:.3} of the positive influence");
    assert!(off_facts < 0.5, "an unrelated question credits the planted rows {off_facts:.3}");
}
