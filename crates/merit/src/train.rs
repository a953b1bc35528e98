//! `merit train`: fine-tune a LoRA / QLoRA adapter on datanet versions or a
//! local file, with a progress bar, `metrics.jsonl`, checkpoints and resume.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use merit_train::{DataSettings, Event, TrainConfig, Trainer};
use serde_json::Value;

use crate::model;

#[derive(Args, Clone)]
pub struct TrainArgs {
    /// Base model: registered name, Hugging Face folder or GGUF file
    #[arg(long, required_unless_present = "resume")]
    base: Option<String>,
    /// Train on a datanet's accepted rows: NAME (newest version) or NAME@VERSION; repeatable
    #[arg(long = "datanet", value_name = "NAME[@VERSION]")]
    datanets: Vec<String>,
    /// Train on a local file: JSON lines, a JSON list, or Parquet
    #[arg(long)]
    data: Option<PathBuf>,
    /// lora (f32 base) or qlora (the base stays quantized: a GGUF base as stored)
    #[arg(long, default_value = "lora")]
    method: String,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Scale adapters by alpha/√rank (rsLoRA) instead of alpha/rank
    #[arg(long)]
    rslora: bool,
    /// Layers to adapt: comma-separated q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj, or all
    #[arg(long, default_value = "all")]
    targets: String,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// constant, linear or cosine
    #[arg(long, default_value = "cosine")]
    scheduler: String,
    /// Warmup, as a fraction of the steps
    #[arg(long, default_value_t = 0.03)]
    warmup: f64,
    #[arg(long, default_value_t = 3.0, conflicts_with = "max_steps")]
    epochs: f64,
    /// Stop after this many optimizer steps (instead of --epochs)
    #[arg(long)]
    max_steps: Option<usize>,
    /// Examples per micro-batch
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Micro-batches per optimizer step
    #[arg(long, default_value_t = 8)]
    grad_accum: usize,
    /// Longest example in tokens
    #[arg(long, default_value_t = 1024)]
    cutoff_len: usize,
    /// Concatenate examples into --cutoff-len sequences
    #[arg(long)]
    packing: bool,
    /// Fraction of rows held out for evaluation
    #[arg(long, default_value_t = 0.1)]
    eval_split: f64,
    /// Evaluate every N steps (and at the end)
    #[arg(long)]
    eval_every: Option<usize>,
    /// Checkpoint every N steps (and at the end)
    #[arg(long)]
    save_every: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Train on the prompt tokens of chat rows too
    #[arg(long)]
    train_on_prompt: bool,
    /// Train only on the last assistant turn of each conversation
    #[arg(long)]
    last_turn_only: bool,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip gradients to this global norm (0: no clipping)
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Start from this adapter's weights (a fork: same rank and targets, other settings free)
    #[arg(long, value_name = "ADAPTER_DIR")]
    from: Option<PathBuf>,
    /// Continue the run in this folder (its newest complete checkpoint), with its own settings
    #[arg(long, value_name = "DIR", conflicts_with_all = ["base", "data", "datanets", "from"])]
    resume: Option<PathBuf>,
    /// Output folder: the adapter, checkpoint-N folders and metrics.jsonl
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Print every step and eval as a JSON line instead of the progress bar
    #[arg(long)]
    json: bool,
    #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
    data_dir: PathBuf,
    #[arg(long, env = "MERIT_DATABASE_URL")]
    database_url: Option<String>,
}

/// Where rows come from, as recorded in the run's settings.
fn describe_sources(args: &TrainArgs, resolved: &[(String, i64)]) -> Result<Vec<String>> {
    let mut out: Vec<String> = resolved.iter().map(|(n, v)| format!("datanet:{n}@{v}")).collect();
    if let Some(f) = &args.data {
        let abs = std::fs::canonicalize(f).with_context(|| format!("--data {}", f.display()))?;
        out.push(format!("file:{}", abs.display()));
    }
    Ok(out)
}

async fn datanet_rows(args_db: (&Path, Option<&str>), spec: &str) -> Result<(Vec<Value>, (String, i64))> {
    let (name, version) = match spec.split_once('@') {
        Some((n, v)) => (n, Some(v.parse::<i64>().with_context(|| format!("--datanet {spec}: bad version"))?)),
        None => (spec, None),
    };
    let store = match args_db.1 {
        Some(url) => merit_store::Store::open(url, args_db.0).await,
        None => merit_store::Store::open_local(args_db.0).await,
    }
    .with_context(|| format!("opening the store in {}", args_db.0.display()))?;
    let d = store.datanet(name).await?.with_context(|| format!("no datanet `{name}`"))?;
    let v = match version {
        Some(n) => store.version(&d, n).await?.with_context(|| format!("datanet `{name}` has no version {n}"))?,
        None => {
            store.latest_version(&d).await?.with_context(|| format!("datanet `{name}` has no accepted rows yet"))?
        }
    };
    let mut rows = Vec::new();
    let page = 1000;
    loop {
        let got = store.rows(&d, &v, rows.len() as i64, page, None).await?;
        let n = got.len();
        rows.extend(got.into_iter().map(|r| r.content));
        if (n as i64) < page {
            break;
        }
    }
    Ok((rows, (name.to_string(), v.number)))
}

/// Reads the rows of every source.
async fn read_sources(sources: &[String], data_dir: &Path, db: Option<&str>) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for s in sources {
        if let Some(f) = s.strip_prefix("file:") {
            rows.extend(merit_train::data::read_rows(Path::new(f)).map_err(anyhow::Error::msg)?);
        } else if let Some(d) = s.strip_prefix("datanet:") {
            rows.extend(datanet_rows((data_dir, db), d).await?.0);
        } else {
            bail!("unknown data source `{s}`");
        }
    }
    Ok(rows)
}

pub async fn run(args: TrainArgs) -> Result<()> {
    let db = args.database_url.clone();
    let (config, out, resume_dir) = match &args.resume {
        Some(dir) => {
            let ck = merit_train::checkpoint::latest(dir)?;
            let state = merit_train::checkpoint::read_state(&ck)?;
            eprintln!("resuming {} from step {} of {}", dir.display(), state.step, state.total_steps);
            (state.config, dir.clone(), Some(ck))
        }
        None => {
            if args.data.is_none() && args.datanets.is_empty() {
                bail!("give the training rows: --data FILE or --datanet NAME[@VERSION]");
            }
            let mut resolved = Vec::new();
            for spec in &args.datanets {
                // Resolve "newest" to a number now, so the run names exact versions.
                resolved.push(datanet_rows((&args.data_dir, db.as_deref()), spec).await?.1);
            }
            let config = TrainConfig {
                base: args.base.clone().unwrap_or_default(),
                method: args.method.clone(),
                rank: args.rank,
                alpha: args.alpha,
                dropout: args.dropout,
                rslora: args.rslora,
                targets: args.targets.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
                lr: args.lr,
                scheduler: args.scheduler.parse().map_err(anyhow::Error::msg).context("--scheduler")?,
                warmup: args.warmup,
                epochs: args.epochs,
                max_steps: args.max_steps,
                batch: args.batch,
                grad_accum: args.grad_accum,
                weight_decay: args.weight_decay,
                max_grad_norm: args.max_grad_norm,
                eval_every: args.eval_every,
                save_every: args.save_every,
                seed: args.seed,
                data: DataSettings {
                    cutoff_len: args.cutoff_len,
                    packing: args.packing,
                    train_on_prompt: args.train_on_prompt,
                    last_turn_only: args.last_turn_only,
                    eval_split: args.eval_split,
                },
                sources: describe_sources(&args, &resolved)?,
            };
            let out = args.out.clone().context("--out is required")?;
            (config, out, None)
        }
    };
    config.check()?;
    let rows = read_sources(&config.sources, &args.data_dir, db.as_deref()).await?;
    let data_dir = args.data_dir.clone();
    let from = args.from.clone();
    let json = args.json;
    let stop = Arc::new(AtomicBool::new(false));
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping after this step (a checkpoint is written)…");
            ctrl_c.store(true, Ordering::Relaxed);
        }
    });
    let summary = tokio::task::spawn_blocking(move || -> Result<merit_train::Summary> {
        let quantized = config.method == "qlora";
        if quantized && !model::is_gguf(&data_dir, &config.base)? {
            bail!(
                "--method qlora keeps the base quantized as stored, which needs a GGUF base; \
                 NF4 quantization of Hugging Face bases is not there yet (use --method lora)"
            );
        }
        let (mut m, tok) = model::load_base_as(&data_dir, &config.base, !quantized)?;
        let eos = m.config.eos_token_ids.first().copied();
        let ds = merit_train::data::build(&tok, eos, &rows, &config.data_options());
        for s in ds.skipped.iter().take(20) {
            eprintln!("skipped row {}: {}", s.row, s.reason);
        }
        if ds.skipped.len() > 20 {
            eprintln!("… {} rows skipped in all", ds.skipped.len());
        }
        eprintln!(
            "{} training and {} held-out examples from {} rows; base {} ({}), LoRA r={} α={} on {}",
            ds.train.len(),
            ds.eval.len(),
            rows.len(),
            config.base,
            config.method,
            config.rank,
            config.alpha,
            config.targets.join(",")
        );
        let mut trainer = Trainer {
            model: &mut m,
            config: config.clone(),
            data: &ds,
            out: out.clone(),
            pad: eos.unwrap_or(0),
            stop: &stop,
        };
        let total = trainer.total_steps() as u64;
        let bar = (!json).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} step {pos}/{len}  {msg}  [{elapsed_precise} < {eta_precise}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        let summary = trainer.run(resume_dir.as_deref(), from.as_deref(), |e| match (&bar, e) {
            (Some(b), Event::Step { step, loss, lr, tokens_per_s, .. }) => {
                b.set_position(*step as u64);
                b.set_message(format!("loss {loss:.4}  lr {lr:.2e}  {tokens_per_s:.0} tok/s"));
            }
            (Some(b), Event::Eval { step, eval_loss, eval_perplexity, .. }) => {
                b.println(format!("step {step}: eval loss {eval_loss:.4} (perplexity {eval_perplexity:.2})"));
            }
            (Some(_), Event::Checkpoint { .. }) => {}
            (None, e) => println!("{}", serde_json::to_string(e).unwrap_or_default()),
        })?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(summary)
    })
    .await??;
    eprintln!(
        "{} after {} of {} steps; adapter in {}{}",
        if summary.stopped { "stopped" } else { "done" },
        summary.steps,
        summary.total_steps,
        summary.out.display(),
        summary.eval_loss.map(|l| format!(", eval loss {l:.4}")).unwrap_or_default()
    );
    Ok(())
}

/// `merit bench train`: optimizer steps on one synthetic sequence (batch 1),
/// timed after a warm-up step; prints tokens/s and the process's peak memory.
pub fn bench(
    data_dir: &Path,
    base: &str,
    tokens: usize,
    steps: usize,
    targets: &str,
    method: &str,
    json: bool,
) -> Result<()> {
    if tokens < 2 || steps == 0 {
        bail!("--tokens must be at least 2 and --steps at least 1");
    }
    let quantized = match method {
        "lora" => false,
        "qlora" => true,
        other => bail!("--method `{other}` is not lora or qlora"),
    };
    if quantized && !model::is_gguf(data_dir, base)? {
        bail!("--method qlora needs a GGUF base");
    }
    let (mut m, _tok) = model::load_base_as(data_dir, base, !quantized)?;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let vocab = m.config.vocab_size as u64;
    let ids: Vec<u32> = (0..tokens)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (100 + rng % (vocab.saturating_sub(100).max(1))) as u32
        })
        .collect();
    let ex = merit_train::Example { labels: vec![true; ids.len()], ids, row: 0 };
    let data = merit_train::Dataset { train: vec![ex; steps + 1], eval: Vec::new(), skipped: Vec::new() };
    let config = TrainConfig {
        base: base.to_string(),
        method: method.to_string(),
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        rslora: false,
        targets: targets.split(',').map(str::to_string).collect(),
        lr: 2e-4,
        scheduler: merit_train::Scheduler::Constant,
        warmup: 0.0,
        epochs: 1.0,
        max_steps: Some(steps + 1),
        batch: 1,
        grad_accum: 1,
        weight_decay: 0.0,
        max_grad_norm: 0.0,
        eval_every: None,
        save_every: None,
        seed: 1,
        data: DataSettings {
            cutoff_len: tokens,
            packing: false,
            train_on_prompt: true,
            last_turn_only: false,
            eval_split: 0.0,
        },
        sources: Vec::new(),
    };
    let out = tempfile::tempdir()?;
    let stop = AtomicBool::new(false);
    let mut trainer =
        Trainer { model: &mut m, config, data: &data, out: out.path().to_path_buf(), pad: 0, stop: &stop };
    let mut times = Vec::new();
    let mut last = std::time::Instant::now();
    trainer.run(None, None, |e| {
        if let Event::Step { step, .. } = e {
            let now = std::time::Instant::now();
            if *step > 1 {
                times.push((now - last).as_secs_f64());
            }
            last = now;
        }
    })?;
    let tokens_per_s = (tokens * times.len()) as f64 / times.iter().sum::<f64>();
    let peak = peak_rss_bytes();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": base, "method": method, "targets": targets, "tokens": tokens, "steps": times.len(),
                "tokens_per_s": tokens_per_s, "peak_bytes": peak,
                "threads": std::env::var("CANDLE_NUM_THREADS").ok().and_then(|t| t.parse::<usize>().ok()),
            })
        );
    } else {
        println!(
            "{base}: {method} r=8 on {targets}, batch 1 x {tokens} tokens: {tokens_per_s:.1} tokens/s, peak memory {:.0} MiB",
            peak as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// The process's peak resident set (Linux; 0 elsewhere).
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}
