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
        if self.rank == 0 {
            return bad("--rank must be at least 1".into());
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
        if self.max_steps == Some(0) {
            return bad("--max-steps must be at least 1".into());
        }
        if self.batch == 0 || self.grad_accum == 0 {
            return bad("--batch and --grad-accum must be at least 1".into());
        }
        if self.data.cutoff_len < 2 {
            return bad("--cutoff-len must be at least 2".into());
        }
        if !(0.0..1.0).contains(&self.data.eval_split) {
            return bad("--eval-split must be a fraction in [0, 1)".into());
        }
        if self.targets.is_empty() {
            return bad("--targets names no layer".into());
        }
        Ok(())
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
