//! The training loop: LoRA adapters on a frozen base, AdamW, gradient
//! accumulation and clipping, scheduled learning rate, held-out evaluation,
//! atomic checkpoints and exact resume.
//!
//! Determinism: the data order of each epoch comes from `seed` and the epoch
//! number, LoRA dropout is reseeded from `seed` and the step, so the whole
//! run is a function of its settings, its data and the step it starts from —
//! a resumed run ends bit for bit where an uninterrupted one does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use merit_lm::{Decoder, LoraConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::checkpoint::{self, Snapshot, TrainerState};
use crate::data::{Dataset, Example};
use crate::optim::{clip_grad_norm, learning_rate, AdamW};
use crate::{TrainConfig, TrainError};

type CResult<T> = candle_core::Result<T>;

/// What the trainer reports as it goes (also written to `metrics.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    Step {
        step: usize,
        total_steps: usize,
        epoch: f64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens: usize,
        tokens_per_s: f64,
        elapsed_s: f64,
        eta_s: f64,
    },
    Eval {
        step: usize,
        eval_loss: f64,
        eval_perplexity: f64,
        eval_tokens: usize,
    },
    Checkpoint {
        step: usize,
        /// The checkpoint's folder, relative to the run's (no server path leaks).
        path: String,
    },
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub total_steps: usize,
    pub stopped: bool,
    pub final_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    /// Trained tokens per second over this process's part of the run.
    pub tokens_per_s: f64,
    pub out: PathBuf,
}

/// SHA-256 over the training examples (ids and labels).
pub fn fingerprint(data: &Dataset) -> String {
    let mut h = sha2::Sha256::new();
    for ex in data.train.iter().chain(&data.eval) {
        h.update((ex.ids.len() as u64).to_le_bytes());
        for (id, l) in ex.ids.iter().zip(&ex.labels) {
            h.update(id.to_le_bytes());
            h.update([*l as u8]);
        }
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The model inputs of `batch` (right-padded with `pad`): ids (b × t), the
/// next-token targets and their weights (1 on labelled targets, b × (t − 1)),
/// and how many targets and input tokens there are.
struct BatchInputs {
    ids: Tensor,
    targets: Vec<u32>,
    weights: Vec<f32>,
    n_targets: usize,
    n_tokens: usize,
}

fn batch_inputs(model: &Decoder, batch: &[&Example], pad: u32) -> CResult<BatchInputs> {
    let t = batch.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    if t < 2 {
        candle_core::bail!("a training example needs at least two tokens");
    }
    let b = batch.len();
    let mut ids = Vec::with_capacity(b * t);
    let mut targets = Vec::with_capacity(b * (t - 1));
    let mut weights = Vec::with_capacity(b * (t - 1));
    let mut n_targets = 0;
    let mut n_tokens = 0;
    for ex in batch {
        n_tokens += ex.ids.len();
        for i in 0..t {
            ids.push(ex.ids.get(i).copied().unwrap_or(pad));
        }
        for i in 1..t {
            targets.push(ex.ids.get(i).copied().unwrap_or(pad));
            let on = ex.labels.get(i).copied().unwrap_or(false);
            n_targets += on as usize;
            weights.push(if on { 1f32 } else { 0.0 });
        }
    }
    let ids = Tensor::from_vec(ids, (b, t), model.device())?;
    Ok(BatchInputs { ids, targets, weights, n_targets, n_tokens })
}

/// Summed negative log-likelihood of the labelled targets of `batch`
/// (right-padded), and how many targets and input tokens there were.
pub fn batch_nll(model: &Decoder, batch: &[&Example], pad: u32) -> CResult<(Tensor, usize, usize)> {
    let inp = batch_inputs(model, batch, pad)?;
    let t = inp.ids.dim(1)?;
    let logits = model.forward(&inp.ids, None)?.narrow(1, 0, t - 1)?;
    // One op with its own backward: no vocabulary-sized intermediates.
    let nll = merit_lm::fused::cross_entropy(&logits, &inp.targets, &inp.weights)?.sum_all()?;
    Ok((nll, inp.n_targets, inp.n_tokens))
}

/// Mean loss over `examples` (no update), in batches of `batch`.
pub fn evaluate(model: &Decoder, examples: &[Example], batch: usize, pad: u32) -> CResult<(f64, usize)> {
    model.set_training(false);
    let (mut total, mut count) = (0f64, 0usize);
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (nll, n, _) = batch_nll(model, &refs, pad)?;
        total += nll.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?;
        count += n;
    }
    Ok((if count > 0 { total / count as f64 } else { f64::NAN }, count))
}

/// A training run over `data` that writes checkpoints and `metrics.jsonl` into `out`.
pub struct Trainer<'a> {
    pub model: &'a mut Decoder,
    pub config: TrainConfig,
    pub data: &'a Dataset,
    pub out: PathBuf,
    /// Pad token for batches (any id; padding is never a target).
    pub pad: u32,
    /// Set to stop cleanly after the current step, with a final checkpoint.
    pub stop: &'a AtomicBool,
}

impl Trainer<'_> {
    /// Micro-batches per epoch.
    fn micro_per_epoch(&self) -> usize {
        self.data.train.len().div_ceil(self.config.batch)
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> usize {
        match self.config.max_steps {
            Some(n) => n,
            None => {
                let micro = (self.micro_per_epoch() as f64 * self.config.epochs).ceil() as usize;
                micro.div_ceil(self.config.grad_accum).max(1)
            }
        }
    }

    /// The examples of micro-batch `m` of the endless stream of epochs.
    fn micro_batch(&self, m: usize) -> Vec<&Example> {
        let per = self.micro_per_epoch().max(1);
        let epoch = m / per;
        let mut order: Vec<usize> = (0..self.data.train.len()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            self.config.seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(epoch as u64 + 1)),
        );
        order.shuffle(&mut rng);
        let i = (m % per) * self.config.batch;
        order[i..(i + self.config.batch).min(order.len())].iter().map(|&k| &self.data.train[k]).collect()
    }

    /// Runs (or resumes) the training; `on_event` sees every step, eval and checkpoint.
    pub fn run(
        &mut self,
        resume: Option<&Path>,
        init_adapter: Option<&Path>,
        mut on_event: impl FnMut(&Event),
    ) -> Result<Summary, TrainError> {
        let cfg = self.config.clone();
        if self.data.train.is_empty() {
            return Err(TrainError::Data("no training examples (every row was skipped or held out)".into()));
        }
        let lora = LoraConfig {
            rank: cfg.rank,
            alpha: cfg.alpha,
            rslora: cfg.rslora,
            targets: cfg.targets.clone(),
            dropout: cfg.dropout,
            seed: cfg.seed,
        };
        let vars = self.model.add_lora(&lora)?;
        self.model.layout_for_training()?;
        if vars.is_empty() {
            return Err(TrainError::Config("the LoRA targets match no layer of this model".into()));
        }
        let plain: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
        let targets: Vec<String> = self.model.lora_targets_for(&cfg.targets).iter().map(|s| s.to_string()).collect();
        let fan_in_fan_out = self.model.config.family == merit_lm::Family::Gpt2;
        let mut opt = AdamW::new(&plain, cfg.weight_decay)?;
        let total = self.total_steps();
        let fp = fingerprint(self.data);
        let mut start = 0;
        if let Some(dir) = resume {
            let ck = checkpoint::load(dir)?;
            if ck.state.data_fingerprint != fp {
                return Err(TrainError::Checkpoint(format!(
                    "{}: the training data differs from the run being resumed",
                    dir.display()
                )));
            }
            for (i, (name, var)) in vars.iter().enumerate() {
                let missing = || TrainError::Checkpoint(format!("{}: `{name}` is missing", dir.display()));
                var.set(ck.adapter.get(name).ok_or_else(missing)?)?;
                opt.m[i] = ck.m.get(name).ok_or_else(missing)?.clone();
                opt.v[i] = ck.v.get(name).ok_or_else(missing)?.clone();
            }
            opt.t = ck.adam_t;
            start = ck.state.step;
        } else if let Some(dir) = init_adapter {
            let tensors = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), self.model.device())
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", dir.display())))?;
            for (name, var) in &vars {
                let t = tensors.get(name).ok_or_else(|| {
                    TrainError::Checkpoint(format!(
                        "{}: `{name}` is missing (rank and targets must match)",
                        dir.display()
                    ))
                })?;
                if t.dims() != var.dims() {
                    return Err(TrainError::Checkpoint(format!(
                        "{}: `{name}` has shape {:?}, this run needs {:?}",
                        dir.display(),
                        t.dims(),
                        var.dims()
                    )));
                }
                var.set(&t.to_dtype(var.dtype())?)?;
            }
        }
        std::fs::create_dir_all(&self.out).map_err(|e| TrainError::Io(format!("{}: {e}", self.out.display())))?;
        let mut metrics = open_metrics(&self.out.join("metrics.jsonl"), start)?;
        let mut emit = |e: &Event, metrics: &mut std::fs::File| -> Result<(), TrainError> {
            let mut line = serde_json::to_vec(e)?;
            line.push(b'\n');
            metrics.write_all(&line).map_err(|e| TrainError::Io(format!("metrics.jsonl: {e}")))?;
            on_event(e);
            Ok(())
        };
        let warmup = (cfg.warmup * total as f64).ceil() as usize;
        let started = Instant::now();
        let mut tokens_seen = 0usize;
        let mut last_loss = None;
        let mut last_eval = None;
        let mut stopped = false;
        let state_at = |step: usize| TrainerState {
            step,
            total_steps: total,
            config: cfg.clone(),
            data_fingerprint: fp.clone(),
            complete: true,
        };
        let save = |step: usize, dir: &Path, opt: &AdamW| -> Result<(), TrainError> {
            let state = state_at(step);
            checkpoint::save(
                dir,
                &Snapshot {
                    vars: &vars,
                    targets: &targets,
                    fan_in_fan_out,
                    m: &opt.m,
                    v: &opt.v,
                    adam_t: opt.t,
                    state: &state,
                },
            )?;
            if cfg.influence_dims > 0 {
                // Every example's projected gradient at this checkpoint (TracIn), beside the adapter.
                let lr = learning_rate(cfg.lr, cfg.scheduler, step.saturating_sub(1), total, warmup);
                let t = crate::influence::table(self.model, &vars, &self.data.train, self.pad, cfg.influence_dims, lr)?;
                t.save(&dir.join(crate::influence::FILE)).map_err(|e| TrainError::Io(e.to_string()))?;
            }
            Ok(())
        };
        let mut step = start;
        while step < total {
            if self.stop.load(Ordering::Relaxed) {
                stopped = true;
                break;
            }
            self.model.set_training(true);
            let micro: Vec<Vec<&Example>> =
                (0..cfg.grad_accum).map(|a| self.micro_batch(step * cfg.grad_accum + a)).collect();
            let window_targets: usize = micro.iter().flatten().map(|e| e.target_count()).sum::<usize>().max(1);
            // Every micro-batch draws its own dropout masks, the same on a resume.
            let dropout_seed = |micro: usize| cfg.seed.wrapping_mul(1_000_003).wrapping_add(micro as u64);
            let mut grads: Option<Vec<Tensor>> = None;
            let mut loss_sum = 0f64;
            let mut step_tokens = 0;
            for (a, batch) in micro.iter().enumerate() {
                self.model.reseed_dropout(dropout_seed(step * cfg.grad_accum + a));
                let these: Vec<Tensor> = if cfg.gradient_checkpointing {
                    let inp = batch_inputs(self.model, batch, self.pad)?;
                    let (nll, g) = self.model.loss_grads_checkpointed(
                        &inp.ids,
                        &inp.targets,
                        &inp.weights,
                        1.0 / window_targets as f64,
                        dropout_seed(step * cfg.grad_accum + a),
                    )?;
                    loss_sum += nll;
                    step_tokens += inp.n_tokens;
                    plain
                        .iter()
                        .map(|v| g.get(&v.as_tensor().id()).cloned().map_or_else(|| v.zeros_like(), Ok))
                        .collect::<CResult<_>>()?
                } else {
                    let (nll, _, n_tokens) = batch_nll(self.model, batch, self.pad)?;
                    loss_sum += nll.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?;
                    step_tokens += n_tokens;
                    let scaled = (nll / window_targets as f64)?;
                    let g = scaled.backward()?;
                    plain
                        .iter()
                        .map(|v| g.get(v.as_tensor()).cloned().map_or_else(|| v.zeros_like(), Ok))
                        .collect::<CResult<_>>()?
                };
                grads = Some(match grads {
                    None => these,
                    Some(acc) => acc.iter().zip(&these).map(|(a, b)| a + b).collect::<CResult<_>>()?,
                });
            }
            let mut grads = grads.unwrap_or_default();
            let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
            let lr = learning_rate(cfg.lr, cfg.scheduler, step, total, warmup);
            opt.step(&plain, &grads, lr)?;
            step += 1;
            tokens_seen += step_tokens;
            let loss = loss_sum / window_targets as f64;
            last_loss = Some(loss);
            let elapsed = started.elapsed().as_secs_f64();
            let per_step = elapsed / (step - start) as f64;
            let epoch = (step * cfg.grad_accum) as f64 / self.micro_per_epoch().max(1) as f64;
            emit(
                &Event::Step {
                    step,
                    total_steps: total,
                    epoch,
                    loss,
                    lr,
                    grad_norm,
                    tokens: step_tokens,
                    tokens_per_s: tokens_seen as f64 / elapsed.max(1e-9),
                    elapsed_s: elapsed,
                    eta_s: per_step * (total - step) as f64,
                },
                &mut metrics,
            )?;
            let eval_now = cfg.eval_every.is_some_and(|n| n > 0 && step % n == 0) || step == total;
            if eval_now && !self.data.eval.is_empty() {
                let (eval_loss, n) = evaluate(self.model, &self.data.eval, cfg.batch, self.pad)?;
                last_eval = Some(eval_loss);
                emit(&Event::Eval { step, eval_loss, eval_perplexity: eval_loss.exp(), eval_tokens: n }, &mut metrics)?;
            }
            if cfg.save_every.is_some_and(|n| n > 0 && step % n == 0) && step < total {
                let dir = self.out.join(format!("checkpoint-{step}"));
                save(step, &dir, &opt)?;
                emit(&Event::Checkpoint { step, path: format!("checkpoint-{step}") }, &mut metrics)?;
            }
        }
        self.model.set_training(false);
        // The final (or stopping) checkpoint, and the adapter at the top of `out`.
        let dir = self.out.join(format!("checkpoint-{step}"));
        save(step, &dir, &opt)?;
        emit(&Event::Checkpoint { step, path: format!("checkpoint-{step}") }, &mut metrics)?;
        publish_adapter(&dir, &self.out)?;
        Ok(Summary {
            steps: step,
            total_steps: total,
            stopped,
            final_loss: last_loss,
            eval_loss: last_eval,
            tokens_per_s: tokens_seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
            out: self.out.clone(),
        })
    }
}

/// Opens `metrics.jsonl` for appending, dropping lines past `step` (left by
/// a run that died after its last checkpoint).
fn open_metrics(path: &Path, step: usize) -> Result<std::fs::File, TrainError> {
    let io = |e: std::io::Error| TrainError::Io(format!("{}: {e}", path.display()));
    let keep: Vec<String> = if step == 0 {
        Vec::new()
    } else {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| s as usize <= step)
            })
            .map(str::to_string)
            .collect()
    };
    let mut f = std::fs::File::create(path).map_err(io)?;
    for l in keep {
        writeln!(f, "{l}").map_err(io)?;
    }
    Ok(f)
}

/// Copies a checkpoint's adapter files to the top of the run folder, each
/// through a temporary name and a rename; the config is renamed last, so an
/// adapter with a config is complete.
fn publish_adapter(checkpoint: &Path, out: &Path) -> Result<(), TrainError> {
    for name in ["adapter_model.safetensors", "adapter_config.json"] {
        let tmp = out.join(format!(".{name}.tmp"));
        std::fs::copy(checkpoint.join(name), &tmp).map_err(|e| TrainError::Io(format!("{}: {e}", tmp.display())))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| TrainError::Io(e.to_string()))?;
        std::fs::rename(&tmp, out.join(name)).map_err(|e| TrainError::Io(format!("{}: {e}", out.display())))?;
    }
    Ok(())
}
