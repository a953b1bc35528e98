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
    /// lora (f32 base) or qlora (4-bit base: a GGUF base as stored, a Hugging Face base in NF4)
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
    /// Keep only each layer's input and recompute the layer in the backward pass:
    /// far less memory (for long sequences, big batches, QLoRA) for about a third more time
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Save every example's projected LoRA gradient (this many dimensions, e.g. 2048)
    /// with each checkpoint, for gradient attribution of answers (TracIn); 0: off
    #[arg(long, default_value_t = 0)]
    influence_dims: usize,
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
    #[arg(long, required_unless_present_any = ["resume", "server"])]
    out: Option<PathBuf>,
    /// Print every step and eval as a JSON line instead of the progress bar
    #[arg(long)]
    json: bool,
    #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
    data_dir: PathBuf,
    #[arg(long, env = "MERIT_DATABASE_URL")]
    database_url: Option<String>,
    /// Run on this `merit serve` instead (its worker trains; --base names a model there);
    /// the live metrics are shown here, Ctrl-C stops the run, --out receives the adapter
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// API token for --server (from `merit user add`)
    #[arg(long, env = "MERIT_TOKEN", hide_env_values = true)]
    token: Option<String>,
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

/// The accepted rows of a datanet version (`NAME` for the newest, or
/// `NAME@VERSION`) and the exact version read.
async fn datanet_rows(store: &merit_store::Store, spec: &str) -> Result<(Vec<Value>, (String, i64))> {
    let (name, version) = match spec.split_once('@') {
        Some((n, v)) => (n, Some(v.parse::<i64>().with_context(|| format!("--datanet {spec}: bad version"))?)),
        None => (spec, None),
    };
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

async fn open_store(data_dir: &Path, db: Option<&str>) -> Result<merit_store::Store> {
    match db {
        Some(url) => merit_store::Store::open(url, data_dir).await,
        None => merit_store::Store::open_local(data_dir).await,
    }
    .with_context(|| format!("opening the store in {}", data_dir.display()))
}

/// Reads the rows of every source: `file:PATH`, `datanet:NAME@VERSION`
/// (from `store`) or `blob:SHA256` (rows sent to the server, in its blob store).
async fn read_sources(sources: &[String], data_dir: &Path, store: Option<&merit_store::Store>) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for s in sources {
        if let Some(f) = s.strip_prefix("file:") {
            rows.extend(merit_train::data::read_rows(Path::new(f)).map_err(anyhow::Error::msg)?);
        } else if let Some(d) = s.strip_prefix("datanet:") {
            let store = store.context("datanet rows need the store")?;
            rows.extend(datanet_rows(store, d).await?.0);
        } else if let Some(sha) = s.strip_prefix("blob:") {
            let blobs = merit_store::Blobs::open(&data_dir.join("blobs"))?;
            let bytes = blobs.get(sha)?.with_context(|| format!("the sent rows (blob {sha}) are missing"))?;
            let text = String::from_utf8(bytes).context("the sent rows are not UTF-8")?;
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                rows.push(serde_json::from_str(line).with_context(|| format!("sent row {i}"))?);
            }
        } else {
            bail!("unknown data source `{s}`");
        }
    }
    Ok(rows)
}

/// Checks that the base exists.
/// What a server's worker checks before it queues a run: the base is one of
/// its registered models (never a path: a caller must not train on, nor probe
/// for, the server's files), and the run fits in the worker's memory.
fn check_served_run(data_dir: &Path, config: &TrainConfig) -> Result<()> {
    let registry = model::registry(data_dir)?;
    if !registry.contains_key(&config.base) {
        let names: Vec<&str> = registry.keys().map(String::as_str).collect();
        bail!(
            "--base `{}` is not a model of this server (its models: {}; see GET /api/v1/models)",
            config.base.chars().take(200).collect::<String>(),
            if names.is_empty() { "none registered".to_string() } else { names.join(", ") }
        );
    }
    let shape: merit_train::ModelShape =
        serde_json::from_value(model::shape(data_dir, &config.base)?).context("reading the base model's shape")?;
    let need = config.memory_estimate(&shape);
    if let Some(have) = worker_memory_bytes() {
        if need.total_bytes > have {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            bail!(
                "the run would need about {:.1} GiB (weights {:.1}, LoRA {:.1} for {} trainable parameters, \
                 activations {:.1} at --batch {} × --cutoff-len {}) and this worker has {:.1} GiB: lower --rank, \
                 --batch or --cutoff-len, or use --gradient-checkpointing or --method qlora",
                gib(need.total_bytes),
                gib(need.weight_bytes),
                gib(need.lora_bytes),
                need.trainable,
                gib(need.activation_bytes),
                config.batch,
                config.data.cutoff_len,
                gib(have)
            );
        }
    }
    Ok(())
}

/// The memory this process may use for training: `MERIT_WORKER_MEMORY`
/// (bytes) when set; on a GPU (`MERIT_DEVICE=cuda[:N]`) that GPU's memory as
/// `nvidia-smi` reports it (None when it cannot tell); else the machine's
/// (or its cgroup's, when lower).
fn worker_memory_bytes() -> Option<u64> {
    if let Some(v) = std::env::var("MERIT_WORKER_MEMORY").ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(v);
    }
    if let Some(device) = std::env::var("MERIT_DEVICE").ok().filter(|d| d.starts_with("cuda")) {
        let index = device.strip_prefix("cuda:").unwrap_or("0");
        let out = std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", index])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        return gpu_memory_from_smi(&String::from_utf8_lossy(&out.stdout));
    }
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|v| v.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// `nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits`
/// prints MiB, one GPU a line.
fn gpu_memory_from_smi(out: &str) -> Option<u64> {
    out.lines().next()?.trim().parse::<u64>().ok().map(|mib| mib << 20)
}

/// Loads the base for training: QLoRA keeps a GGUF base as stored and turns
/// the layers of a Hugging Face base into NF4; LoRA trains on f32 weights.
fn load_for_training(
    data_dir: &Path,
    base: &str,
    method: &str,
) -> Result<(merit_lm::Decoder, merit_lm::TextTokenizer)> {
    let qlora = match method {
        "lora" => false,
        "qlora" => true,
        other => bail!("--method `{other}` is not lora or qlora"),
    };
    let gguf = model::is_gguf(data_dir, base)?;
    let (mut m, tok) = model::load_base_as(data_dir, base, !qlora)?;
    if qlora && !gguf {
        let (before, after) = m.quantize_nf4()?;
        tracing::info!("NF4: decoder weights {} MiB → {} MiB", before >> 20, after >> 20);
    }
    Ok((m, tok))
}

/// Loads the base, builds the examples and trains: what `merit train` and
/// the server's worker share. `note` gets the lines about the data.
#[allow(clippy::too_many_arguments)]
fn train_rows(
    config: &TrainConfig,
    rows: &[Value],
    data_dir: &Path,
    out: &Path,
    resume: Option<&Path>,
    from: Option<&Path>,
    stop: &AtomicBool,
    note: &mut dyn FnMut(String),
    on_event: impl FnMut(&Event),
) -> Result<merit_train::Summary> {
    let (mut m, tok) = load_for_training(data_dir, &config.base, &config.method)?;
    let eos = m.config.eos_token_ids.first().copied();
    let ds = merit_train::data::build(&tok, eos, rows, &config.data_options());
    for s in ds.skipped.iter().take(20) {
        note(format!("skipped row {}: {}", s.row, s.reason));
    }
    if ds.skipped.len() > 20 {
        note(format!("… {} rows skipped in all", ds.skipped.len()));
    }
    note(format!(
        "{} training and {} held-out examples from {} rows; base {} ({}), LoRA r={} α={} on {}",
        ds.train.len(),
        ds.eval.len(),
        rows.len(),
        config.base,
        config.method,
        config.rank,
        config.alpha,
        config.targets.join(",")
    ));
    let mut trainer = Trainer {
        model: &mut m,
        config: config.clone(),
        data: &ds,
        out: out.to_path_buf(),
        pad: eos.unwrap_or(0),
        stop,
    };
    Ok(trainer.run(resume, from, on_event)?)
}

/// The settings the flags give (sources apart).
fn config_from_args(args: &TrainArgs) -> Result<TrainConfig> {
    Ok(TrainConfig {
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
        gradient_checkpointing: args.gradient_checkpointing,
        influence_dims: args.influence_dims,
        data: DataSettings {
            cutoff_len: args.cutoff_len,
            packing: args.packing,
            train_on_prompt: args.train_on_prompt,
            last_turn_only: args.last_turn_only,
            eval_split: args.eval_split,
        },
        sources: Vec::new(),
    })
}

/// Shows training events: a progress bar (made at the first step, when the
/// total is known) or JSON lines.
struct Progress {
    json: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(json: bool) -> Progress {
        Progress { json, bar: None }
    }

    fn show(&mut self, e: &Event) {
        if self.json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
            return;
        }
        match e {
            Event::Step { step, total_steps, loss, lr, tokens_per_s, .. } => {
                let bar = self.bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::new(*total_steps as u64);
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{bar:30} step {pos}/{len}  {msg}  [{elapsed_precise} < {eta_precise}]",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    b
                });
                bar.set_position(*step as u64);
                bar.set_message(format!("loss {loss:.4}  lr {lr:.2e}  {tokens_per_s:.0} tok/s"));
            }
            Event::Eval { step, eval_loss, eval_perplexity, .. } => {
                let line = format!("step {step}: eval loss {eval_loss:.4} (perplexity {eval_perplexity:.2})");
                match &self.bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Event::Checkpoint { .. } => {}
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn print_summary(stopped: bool, steps: u64, total: u64, out: &str, eval_loss: Option<f64>) {
    eprintln!(
        "{} after {steps} of {total} steps; adapter in {out}{}",
        if stopped { "stopped" } else { "done" },
        eval_loss.map(|l| format!(", eval loss {l:.4}")).unwrap_or_default()
    );
}

pub async fn run(args: TrainArgs) -> Result<()> {
    if let Some(server) = args.server.clone() {
        return remote::run(&server, args).await;
    }
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
            let mut config = config_from_args(&args)?;
            let mut resolved = Vec::new();
            if !args.datanets.is_empty() {
                let store = open_store(&args.data_dir, db.as_deref()).await?;
                for spec in &args.datanets {
                    // Resolve "newest" to a number now, so the run names exact versions.
                    resolved.push(datanet_rows(&store, spec).await?.1);
                }
            }
            config.sources = describe_sources(&args, &resolved)?;
            let out = args.out.clone().context("--out is required")?;
            (config, out, None)
        }
    };
    config.check()?;
    let store = if config.sources.iter().any(|s| s.starts_with("datanet:")) {
        Some(open_store(&args.data_dir, db.as_deref()).await?)
    } else {
        None
    };
    let rows = read_sources(&config.sources, &args.data_dir, store.as_ref()).await?;
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
        let mut progress = Progress::new(json);
        let summary = train_rows(
            &config,
            &rows,
            &data_dir,
            &out,
            resume_dir.as_deref(),
            from.as_deref(),
            &stop,
            &mut |line| eprintln!("{line}"),
            |e| progress.show(e),
        )?;
        progress.finish();
        Ok(summary)
    })
    .await??;
    print_summary(
        summary.stopped,
        summary.steps as u64,
        summary.total_steps as u64,
        &summary.out.display().to_string(),
        summary.eval_loss,
    );
    Ok(())
}

/// The trainer of `merit serve`'s worker: runs jobs with the same code as `merit train`.
pub struct ServeTrainer {
    pub data_dir: PathBuf,
    pub store: merit_store::Store,
}

impl merit_server::RunTrainer for ServeTrainer {
    fn prepare(&self, config: Value) -> std::result::Result<Value, String> {
        let config: TrainConfig =
            serde_json::from_value(config).map_err(|e| format!("the run's settings do not fit: {e}"))?;
        config.check().map_err(|e| e.to_string())?;
        check_served_run(&self.data_dir, &config).map_err(|e| format!("{e:#}"))?;
        serde_json::to_value(&config).map_err(|e| e.to_string())
    }

    fn run(&self, config: &Value, dir: &Path, stop: &AtomicBool) -> std::result::Result<Value, String> {
        let go = || -> Result<Value> {
            let config: TrainConfig = serde_json::from_value(config.clone()).context("the run's settings")?;
            check_served_run(&self.data_dir, &config)?;
            let rows = tokio::runtime::Handle::current().block_on(read_sources(
                &config.sources,
                &self.data_dir,
                Some(&self.store),
            ))?;
            // A resumed run continues from its newest complete checkpoint.
            let resume = merit_train::checkpoint::latest(dir).ok();
            let summary = train_rows(
                &config,
                &rows,
                &self.data_dir,
                dir,
                resume.as_deref(),
                None,
                stop,
                &mut |line| tracing::info!("{line}"),
                |_| {},
            )?;
            // The run's folder is the server's business: callers see the run, not its path.
            let mut summary = serde_json::to_value(&summary)?;
            if let Some(o) = summary.as_object_mut() {
                o.remove("out");
            }
            Ok(summary)
        };
        go().map_err(|e| format!("{e:#}"))
    }

    fn models(&self) -> Vec<Value> {
        let names: Vec<String> = model::registry(&self.data_dir).map(|r| r.into_keys().collect()).unwrap_or_default();
        names
            .iter()
            .map(|n| {
                model::shape(&self.data_dir, n).unwrap_or_else(|e| {
                    tracing::warn!("model {n}: {e:#}");
                    serde_json::json!({ "name": n })
                })
            })
            .collect()
    }
}

/// `merit train --server URL`: the run as a job of a running `merit serve`.
mod remote {
    use super::*;
    use crate::client::Client;
    use reqwest::Method;

    pub async fn run(server: &str, args: TrainArgs) -> Result<()> {
        if args.resume.is_some() || args.from.is_some() {
            bail!("--resume and --from work on local folders; they cannot be sent with --server");
        }
        if args.data.is_none() && args.datanets.is_empty() {
            bail!("give the training rows: --data FILE or --datanet NAME[@VERSION]");
        }
        let client = Client::new(server, args.token.clone().filter(|t| !t.is_empty()))?;
        let config = config_from_args(&args)?;
        config.check()?;
        let mut body = serde_json::to_value(&config)?;
        body.as_object_mut().map(|o| o.remove("sources"));
        if !args.datanets.is_empty() {
            body["datanets"] = serde_json::json!(args.datanets);
        }
        if let Some(f) = &args.data {
            let rows = merit_train::data::read_rows(f).map_err(anyhow::Error::msg)?;
            body["rows"] = Value::Array(rows);
        }
        let run = client.json(client.request(Method::POST, "/runs").json(&body)).await?;
        let id = run["id"].as_i64().context("the server's answer has no run id")?;
        eprintln!("run {id} queued on {server} (status {})", run["status"].as_str().unwrap_or("?"));
        // Ctrl-C asks the server to stop the run; the stream goes on to its end.
        let stopper = {
            let client = Client::new(server, args.token.clone().filter(|t| !t.is_empty()))?;
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("\nstopping run {id} after this step (a checkpoint is written)…");
                    if let Err(e) = client.send(client.request(Method::POST, &format!("/runs/{id}/stop"))).await {
                        eprintln!("error: {e:#}");
                    }
                }
            })
        };
        let end = follow(&client, id, args.json).await;
        stopper.abort();
        let end = end?;
        match end["status"].as_str() {
            Some("done") | Some("stopped") => {}
            Some(other) => {
                bail!("run {id} {other}{}", end["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default())
            }
            None => bail!("run {id} ended without a status"),
        }
        let summary = &end["summary"];
        let mut where_ = format!("run {id} on the server");
        if let Some(out) = &args.out {
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            for name in ["adapter_config.json", "adapter_model.safetensors", "metrics.jsonl"] {
                let resp = client.send(client.request(Method::GET, &format!("/runs/{id}/files/{name}"))).await?;
                let bytes = resp.bytes().await.with_context(|| format!("downloading {name}"))?;
                let tmp = out.join(format!(".{name}.tmp"));
                std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, out.join(name)).with_context(|| format!("writing {name}"))?;
            }
            where_ = out.display().to_string();
        }
        print_summary(
            summary["stopped"].as_bool().unwrap_or(false),
            summary["steps"].as_u64().unwrap_or(0),
            summary["total_steps"].as_u64().unwrap_or(0),
            &where_,
            summary["eval_loss"].as_f64(),
        );
        Ok(())
    }

    /// Follows the run's events to its end (reconnecting where it left off);
    /// returns the run as the `end` event gives it.
    async fn follow(client: &Client, id: i64, json: bool) -> Result<Value> {
        let mut progress = Progress::new(json);
        let mut last_id: Option<String> = None;
        let mut failures = 0;
        loop {
            let mut req = client.request(Method::GET, &format!("/runs/{id}/events"));
            if let Some(l) = &last_id {
                req = req.header("last-event-id", l.as_str());
            }
            let mut resp = match client.send(req).await {
                Ok(r) => r,
                Err(e) if failures < 5 => {
                    failures += 1;
                    eprintln!("warning: {e:#}; reconnecting");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut buf = String::new();
            let (mut event, mut data, mut eid) = (String::new(), String::new(), None::<String>);
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) | Err(_) => break,
                };
                failures = 0;
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(nl) = buf.find('\n') {
                    let line = buf[..nl].trim_end_matches('\r').to_string();
                    buf.drain(..=nl);
                    if line.is_empty() {
                        // One event is complete.
                        if let Some(i) = eid.take() {
                            last_id = Some(i);
                        }
                        let value: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                        match event.as_str() {
                            "end" => {
                                progress.finish();
                                return Ok(value);
                            }
                            "status" if !json => {
                                if let Some(s) = value["status"].as_str() {
                                    if s != "running" || progress.bar.is_none() {
                                        eprintln!("run {id}: {s}");
                                    }
                                }
                            }
                            _ => {
                                if let Ok(e) = serde_json::from_value::<Event>(value) {
                                    progress.show(&e);
                                }
                            }
                        }
                        event.clear();
                        data.clear();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    } else if let Some(v) = line.strip_prefix("id:") {
                        eid = Some(v.trim().to_string());
                    }
                }
            }
            failures += 1;
            if failures > 5 {
                bail!("lost the event stream of run {id}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// `merit bench train`: optimizer steps on one synthetic sequence (batch 1),
/// timed after a warm-up step; prints tokens/s and the process's peak memory.
#[allow(clippy::too_many_arguments)]
/// What `merit bench train` measures.
pub struct Bench {
    pub tokens: usize,
    pub steps: usize,
    pub batch: usize,
    pub rank: usize,
    pub targets: String,
    pub method: String,
    pub gradient_checkpointing: bool,
}

pub fn bench(data_dir: &Path, base: &str, b: &Bench, json: bool) -> Result<()> {
    let Bench { tokens, steps, batch, rank, ref targets, ref method, gradient_checkpointing } = *b;
    if tokens < 2 || steps == 0 || batch == 0 {
        bail!("--tokens must be at least 2, --steps and --batch at least 1");
    }
    let (mut m, _tok) = load_for_training(data_dir, base, method)?;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let vocab = m.config.vocab_size as u64;
    let mut train = Vec::with_capacity((steps + 1) * batch);
    for row in 0..(steps + 1) * batch {
        let ids: Vec<u32> = (0..tokens)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (100 + rng % (vocab.saturating_sub(100).max(1))) as u32
            })
            .collect();
        train.push(merit_train::Example { labels: vec![true; ids.len()], ids, row });
    }
    let data = merit_train::Dataset { train, eval: Vec::new(), skipped: Vec::new() };
    let config = TrainConfig {
        base: base.to_string(),
        method: method.to_string(),
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        rslora: false,
        targets: targets.split(',').map(str::to_string).collect(),
        lr: 2e-4,
        scheduler: merit_train::Scheduler::Constant,
        warmup: 0.0,
        epochs: 1.0,
        max_steps: Some(steps + 1),
        batch,
        grad_accum: 1,
        weight_decay: 0.0,
        max_grad_norm: 0.0,
        eval_every: None,
        save_every: None,
        seed: 1,
        gradient_checkpointing,
        influence_dims: 0,
        data: DataSettings {
            cutoff_len: tokens,
            packing: false,
            train_on_prompt: true,
            last_turn_only: false,
            eval_split: 0.0,
        },
        sources: Vec::new(),
    };
    config.check()?;
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
    let tokens_per_s = (batch * tokens * times.len()) as f64 / times.iter().sum::<f64>();
    let peak = peak_rss_bytes();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": base, "method": method, "targets": targets, "tokens": tokens, "steps": times.len(),
                "batch": batch, "rank": rank, "dtype": format!("{:?}", model::dtype()?),
                "device": format!("{:?}", m.device()),
                "gradient_checkpointing": gradient_checkpointing,
                "tokens_per_s": tokens_per_s, "peak_bytes": peak,
                "threads": std::env::var("CANDLE_NUM_THREADS").ok().and_then(|t| t.parse::<usize>().ok()),
            })
        );
    } else {
        println!(
            "{base}: {method}{} r={rank} on {targets}, batch {batch} x {tokens} tokens: {tokens_per_s:.1} tokens/s, peak memory {:.0} MiB",
            if gradient_checkpointing { " (gradient checkpointing)" } else { "" },
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

#[cfg(test)]
mod tests {
    #[test]
    fn gpu_memory_is_read_from_nvidia_smi() {
        // What nvidia-smi prints for an H200 (MiB).
        assert_eq!(super::gpu_memory_from_smi("143771\n"), Some(143_771 << 20));
        assert_eq!(super::gpu_memory_from_smi(" 81559 \n81559\n"), Some(81_559 << 20));
        assert_eq!(super::gpu_memory_from_smi("[N/A]\n"), None);
        assert_eq!(super::gpu_memory_from_smi(""), None);
    }
}
