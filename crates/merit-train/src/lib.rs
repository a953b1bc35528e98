//! Merit's model factory engine: LoRA fine-tuning of any [`merit_lm`]
//! decoder on datanet rows or local files, with adapters saved in PEFT's
//! format, live metrics and exact resume.
//!
//! [`data`] turns rows into token ids and label masks, [`trainer`] runs the
//! loop ([`optim`]: AdamW, clipping, schedules), [`checkpoint`] writes and
//! reads checkpoints atomically.

pub mod checkpoint;
pub mod data;
pub mod influence;
pub mod optim;
pub mod trainer;

pub use data::{DataOptions, Dataset, Example, Skipped};
pub use optim::Scheduler;
pub use trainer::{Event, Summary, Trainer};

use serde::{Deserialize, Serialize};

/// A run's settings (the CLI's flags; stored with every checkpoint). Missing
/// fields take `merit train`'s defaults; unknown ones are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The base model as the user named it (`base_model_name_or_path`).
    pub base: String,
    /// `lora` or `qlora`.
    pub method: String,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub rslora: bool,
    /// Family-neutral layer names or `all`.
    pub targets: Vec<String>,
    pub lr: f64,
    pub scheduler: Scheduler,
    /// Warmup as a fraction of the steps.
    pub warmup: f64,
    pub epochs: f64,
    pub max_steps: Option<usize>,
    pub batch: usize,
    pub grad_accum: usize,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub eval_every: Option<usize>,
    pub save_every: Option<usize>,
    pub seed: u64,
    /// Keep only each layer's input in the forward pass and run the layer
    /// again in the backward pass: far less memory for about a third more time.
    pub gradient_checkpointing: bool,
    /// Dimensions of the projected per-example gradients saved with every
    /// checkpoint for gradient attribution (TracIn); 0: none.
    pub influence_dims: usize,
    pub data: DataSettings,
    /// Where the rows came from (`file:PATH`, `datanet:NAME@VERSION`,
    /// `blob:SHA256` for rows sent to the server), so a resume reads the same.
    pub sources: Vec<String>,
}

/// The data half of the settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSettings {
    pub cutoff_len: usize,
    pub packing: bool,
    pub train_on_prompt: bool,
    pub last_turn_only: bool,
    pub eval_split: f64,
}

impl Default for DataSettings {
    fn default() -> DataSettings {
        DataSettings {
            cutoff_len: 1024,
            packing: false,
            train_on_prompt: false,
            last_turn_only: false,
            eval_split: 0.1,
        }
    }
}

impl Default for TrainConfig {
    /// `merit train`'s defaults.
    fn default() -> TrainConfig {
        TrainConfig {
            base: String::new(),
            method: "lora".into(),
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            rslora: false,
            targets: vec!["all".into()],
            lr: 2e-4,
            scheduler: Scheduler::Cosine,
            warmup: 0.03,
            epochs: 3.0,
            max_steps: None,
            batch: 2,
            grad_accum: 8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            eval_every: None,
            save_every: None,
            seed: 42,
            gradient_checkpointing: false,
            influence_dims: 0,
            data: DataSettings::default(),
            sources: Vec::new(),
        }
    }
}

impl TrainConfig {
    /// Checks every setting; the error names the flag.
    pub fn check(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.base.trim().is_empty() {
            return bad("--base is required: the base model".into());
        }
        if self.method != "lora" && self.method != "qlora" {
            return bad(format!("--method `{}` is not lora or qlora", self.method));
        }
        if self.rank == 0 || self.rank > merit_lm::MAX_LORA_RANK {
            return bad(format!("--rank must be 1 to {}, got {}", merit_lm::MAX_LORA_RANK, self.rank));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return bad("--alpha must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("--dropout must be in [0, 1)".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("--lr must be positive".into());
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return bad("--warmup must be a fraction in [0, 1)".into());
        }
        if self.max_steps.is_none() && !(self.epochs > 0.0 && self.epochs.is_finite()) {
            return bad("--epochs must be positive".into());
        }
        if self.max_steps.is_none() && self.epochs > MAX_EPOCHS {
            return bad(format!("--epochs must be at most {MAX_EPOCHS}, got {}", self.epochs));
        }
        if let Some(n) = self.max_steps.filter(|n| !(1..=MAX_STEPS).contains(n)) {
            return bad(format!("--max-steps must be 1 to {MAX_STEPS}, got {n}"));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return bad(format!("--batch must be 1 to {MAX_BATCH}, got {}", self.batch));
        }
        if !(1..=MAX_BATCH).contains(&self.grad_accum) {
            return bad(format!("--grad-accum must be 1 to {MAX_BATCH}, got {}", self.grad_accum));
        }
        if !(2..=MAX_CUTOFF_LEN).contains(&self.data.cutoff_len) {
            return bad(format!("--cutoff-len must be 2 to {MAX_CUTOFF_LEN}, got {}", self.data.cutoff_len));
        }
        for (flag, every) in [("--eval-every", self.eval_every), ("--save-every", self.save_every)] {
            if let Some(n) = every.filter(|n| !(1..=MAX_STEPS).contains(n)) {
                return bad(format!("{flag} must be 1 to {MAX_STEPS}, got {n}"));
            }
        }
        if self.influence_dims > MAX_INFLUENCE_DIMS {
            return bad(format!("--influence-dims must be at most {MAX_INFLUENCE_DIMS}, got {}", self.influence_dims));
        }
        if !(0.0..=1.0).contains(&self.weight_decay) || !(0.0..=1e6).contains(&self.max_grad_norm) {
            return bad("--weight-decay must be in [0, 1] and --max-grad-norm in [0, 1e6]".into());
        }
        if !(0.0..1.0).contains(&self.data.eval_split) {
            return bad("--eval-split must be a fraction in [0, 1)".into());
        }
        if self.targets.is_empty() {
            return bad("--targets names no layer".into());
        }
        if self.targets.len() > 64 || self.targets.iter().any(|t| t.len() > 64) {
            return bad("--targets: at most 64 layer names of at most 64 bytes".into());
        }
        Ok(())
    }

    /// What this run would hold in memory on a model of `shape`: the
    /// weights, the LoRA variables with their gradients and AdamW moments,
    /// and the activations of one batch at the cut-off (the web form's
    /// estimate, the same formula). Saturates instead of overflowing.
    pub fn memory_estimate(&self, shape: &ModelShape) -> MemoryEstimate {
        let h = shape.hidden_size as u128;
        let heads = shape.heads.max(1) as u128;
        let head_dim = if shape.head_dim > 0 { shape.head_dim as u128 } else { h / heads };
        let q = heads * head_dim;
        let kv = shape.kv_heads.max(1) as u128 * head_dim;
        let inter = if shape.intermediate_size > 0 { shape.intermediate_size as u128 } else { 4 * h };
        let dims = [
            ("q_proj", h, q),
            ("k_proj", h, kv),
            ("v_proj", h, kv),
            ("o_proj", q, h),
            ("gate_proj", h, inter),
            ("up_proj", h, inter),
            ("down_proj", inter, h),
        ];
        let all = self.targets.iter().any(|t| t == "all");
        let rank = self.rank as u128;
        let per_layer: u128 = dims
            .iter()
            .filter(|(name, _, _)| all || self.targets.iter().any(|t| t == name))
            .map(|(_, i, o)| rank * (i + o))
            .sum();
        // A family's own module names (c_attn, query_key_value, …): count them as q_proj-sized.
        let native = if all { 0 } else { self.targets.iter().filter(|t| !dims.iter().any(|d| d.0 == *t)).count() };
        let per_layer = per_layer + native as u128 * rank * (h + q);
        let trainable = per_layer * shape.layers as u128;
        let params = shape.params as u128;
        let weights = if self.method == "qlora" { params * 56 / 100 } else { params * 4 };
        let tokens = self.batch as u128 * self.data.cutoff_len as u128;
        let per_token = shape.layers as u128 * h * 4 * if self.gradient_checkpointing { 2 } else { 30 };
        // Logits and their gradient in f32.
        let logits = shape.vocab_size as u128 * 4 * 2;
        let activations = tokens * (per_token + logits);
        let sat = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
        MemoryEstimate {
            trainable: sat(trainable),
            weight_bytes: sat(weights),
            lora_bytes: sat(trainable * 16),
            activation_bytes: sat(activations),
            total_bytes: sat(weights + trainable * 16 + activations),
        }
    }

    /// The data options of this run.
    pub fn data_options(&self) -> DataOptions {
        DataOptions {
            cutoff_len: self.data.cutoff_len,
            train_on_prompt: self.data.train_on_prompt,
            last_turn_only: self.data.last_turn_only,
            packing: self.data.packing,
            eval_split: self.data.eval_split,
            seed: self.seed,
        }
    }
}

/// The largest `--max-steps` (and `--eval-every`, `--save-every`).
pub const MAX_STEPS: usize = 10_000_000;
/// The largest `--epochs`.
pub const MAX_EPOCHS: f64 = 1_000.0;
/// The largest `--batch` and `--grad-accum`.
pub const MAX_BATCH: usize = 1_024;
/// The largest `--cutoff-len` in tokens.
pub const MAX_CUTOFF_LEN: usize = 131_072;
/// The largest `--influence-dims`.
pub const MAX_INFLUENCE_DIMS: usize = 65_536;

/// A base model's shape, as far as a memory estimate needs it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ModelShape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub params: usize,
}

/// Bytes a run would need (see [`TrainConfig::memory_estimate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// LoRA parameters.
    pub trainable: u64,
    pub weight_bytes: u64,
    /// LoRA variables, gradients and AdamW's two moments (f32).
    pub lora_bytes: u64,
    pub activation_bytes: u64,
    pub total_bytes: u64,
}

/// What went wrong in a training run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Checkpoint(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Model(#[from] merit_lm::LmError),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}
