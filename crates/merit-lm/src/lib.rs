//! Merit's model engine.
//!
//! One configurable decoder ([`Decoder`]) covers the model families; each
//! family is a mapping from its `config.json` and weight names
//! ([`DecoderConfig::from_hf`]). Its ops are candle primitives that all have a
//! backward, so the same model code trains (LoRA comes next).
//!
//! Correctness is measured against Hugging Face `transformers` on tiny random
//! models (`tests/fixtures`, made by `scripts/fixtures/make_models.py`).
//!
//! Status: LLaMA (incl. llama3 / linear / dynamic rope scaling, SmolLM2),
//! Mistral (sliding window), Qwen2/2.5, Qwen3, the DeepSeek Qwen/LLaMA
//! distills, GLM and GLM-4, BLOOM and GPT-2 load from Hugging Face folders and
//! match transformers; GGUF files of the llama, qwen2, qwen3, chatglm, glm4, gpt2
//! and bloom architectures load with their tokenizers and templates and stay quantized
//! ([`quant`]). Every linear layer can carry LoRA (PEFT names and files,
//! dropout) with gradients checked against finite differences; frozen base
//! weights, dense or quantized, get no weight gradient ([`linear`]).
//! DeepSeek-V2/V3 (MLA + MoE) are not supported yet.

pub mod adapter;
mod attention;
mod chunked;
pub mod config;
mod dense;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod linear;
pub mod loader;
pub mod model;
pub mod nf4;
pub mod quant;
pub mod tokenizer;
pub mod vmath;

pub use candle_core::{self, Device, Tensor};
pub use config::{DecoderConfig, Family, MlpKind, NormKind, Positions, RopeScaling};
pub use generate::{
    generate, generate_batch, generate_cancellable, nll, Batch, BatchEvent, BatchRequest, Generation, Sampler,
    SamplingParams, StopReason, TextStream,
};
pub use linear::{Dropout, Linear, Lora, LoraRows, Weight};
pub use model::{Adapters, Cache, Decoder, LoraConfig, MAX_LORA_RANK};
pub use nf4::Nf4Weight;
pub use quant::QWeight;
pub use tokenizer::{Message, TextTokenizer};

/// What went wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LmError {
    /// `config.json` is missing a key or holds an unsupported value.
    #[error("{0}")]
    Config(String),
    /// A weight is missing or misshapen.
    #[error("{0}")]
    Weights(String),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The tokenizer is missing or unreadable.
    #[error("{0}")]
    Tokenizer(String),
    /// The chat template is missing or fails.
    #[error("{0}")]
    Template(String),
    /// The tensor library failed.
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}
