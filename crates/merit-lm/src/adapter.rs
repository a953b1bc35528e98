//! LoRA adapters on disk in PEFT's format: `adapter_config.json` and
//! `adapter_model.safetensors` with tensors named
//! `base_model.model.model.layers.<i>.<block>.<proj>.lora_{A,B}.weight`.

use std::path::Path;

use serde_json::Value;

use crate::{Decoder, LmError, LoraConfig};

fn bad(dir: &Path, what: String) -> LmError {
    LmError::Weights(format!("adapter {}: {what}", dir.display()))
}

/// Attaches the PEFT LoRA adapter in `dir` to `model`; returns its
/// variables by PEFT name (for gradients with respect to the adapter).
pub fn load_peft(model: &mut Decoder, dir: &Path) -> Result<Vec<(String, candle_core::Var)>, LmError> {
    let cfg_path = dir.join("adapter_config.json");
    let bytes =
        std::fs::read(&cfg_path).map_err(|source| LmError::Io { path: cfg_path.display().to_string(), source })?;
    let cfg: Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(dir, format!("adapter_config.json is not JSON: {e}")))?;
    if cfg.get("peft_type").and_then(Value::as_str).is_some_and(|t| t != "LORA") {
        return Err(bad(dir, format!("peft_type {} is not LORA", cfg["peft_type"])));
    }
    // `fan_in_fan_out` (GPT-2's Conv1D) changes how PEFT merges, not the
    // shapes of lora_A ([r, in]) and lora_B ([out, r]): nothing to do here.
    let rank = cfg.get("r").and_then(Value::as_u64).ok_or_else(|| bad(dir, "`r` is missing".into()))? as usize;
    let alpha =
        cfg.get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| bad(dir, "`lora_alpha` is missing".into()))?;
    let targets: Vec<String> = match cfg.get("target_modules") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(s)) if s == "all-linear" => vec!["all".to_string()],
        other => return Err(bad(dir, format!("target_modules {other:?} is not a list of layer names"))),
    };
    let lora = LoraConfig {
        rank,
        alpha,
        rslora: cfg.get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
        targets,
        dropout: 0.0,
        seed: 0,
    };
    let vars = model.add_lora(&lora)?;
    let weights = dir.join("adapter_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, model.device())
        .map_err(|e| bad(dir, format!("adapter_model.safetensors is not readable: {e}")))?;
    for (name, var) in &vars {
        let t = tensors.remove(name).ok_or_else(|| bad(dir, format!("tensor `{name}` is missing")))?;
        if t.dims() != var.dims() {
            return Err(bad(dir, format!("tensor `{name}` has shape {:?}, expected {:?}", t.dims(), var.dims())));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(bad(dir, format!("tensor `{extra}` matches no layer of this model")));
    }
    Ok(vars)
}
