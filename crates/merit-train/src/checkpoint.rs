//! Checkpoints: a PEFT adapter (`adapter_config.json`,
//! `adapter_model.safetensors`) plus Merit's trainer state
//! (`optimizer.safetensors`, `trainer_state.json`), written into a temporary
//! folder and renamed into place, so a folder that exists is complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{TrainConfig, TrainError};

/// What resuming needs besides the adapter and the optimizer moments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    pub total_steps: usize,
    /// The run's settings (a resumed run keeps them).
    pub config: TrainConfig,
    /// SHA-256 over the training examples, so a resume on changed data is refused.
    pub data_fingerprint: String,
    /// Always true in a file on disk: the state is written last.
    pub complete: bool,
}

/// The PEFT module names of the family-neutral targets.
pub fn peft_config(cfg: &TrainConfig, targets: &[String], fan_in_fan_out: bool) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "use_rslora": cfg.rslora,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "base_model_name_or_path": cfg.base,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "revision": null,
        "use_dora": false,
    })
}

fn io(path: &Path, e: std::io::Error) -> TrainError {
    TrainError::Io(format!("{}: {e}", path.display()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| io(path, e))?;
    f.write_all(bytes).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
    candle_core::safetensors::save(tensors, path).map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| io(path, e))
}

/// Everything a checkpoint holds.
pub struct Snapshot<'a> {
    pub vars: &'a [(String, Var)],
    pub targets: &'a [String],
    /// GPT-2: its linear layers are Conv1D, stored in × out.
    pub fan_in_fan_out: bool,
    pub m: &'a [Tensor],
    pub v: &'a [Tensor],
    pub adam_t: u64,
    pub state: &'a TrainerState,
}

/// Writes `dir` (which must not exist) atomically: into `dir.tmp`, then renamed.
pub fn save(dir: &Path, snap: &Snapshot) -> Result<(), TrainError> {
    let tmp = with_suffix(dir, ".tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let adapter: HashMap<String, Tensor> = snap.vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    save_tensors(&tmp.join("adapter_model.safetensors"), &adapter)?;
    let mut moments = HashMap::new();
    for (i, (n, _)) in snap.vars.iter().enumerate() {
        moments.insert(format!("{n}.exp_avg"), snap.m[i].clone());
        moments.insert(format!("{n}.exp_avg_sq"), snap.v[i].clone());
    }
    moments.insert("adam_t".into(), Tensor::new(&[snap.adam_t as f64], &candle_core::Device::Cpu)?);
    save_tensors(&tmp.join("optimizer.safetensors"), &moments)?;
    let peft = serde_json::to_vec_pretty(&peft_config(&snap.state.config, snap.targets, snap.fan_in_fan_out))?;
    write_synced(&tmp.join("adapter_config.json"), &peft)?;
    write_synced(&tmp.join("trainer_state.json"), &serde_json::to_vec_pretty(snap.state)?)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
    if let Some(parent) = dir.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

/// A checkpoint read back for resuming.
pub struct Loaded {
    pub state: TrainerState,
    pub adapter: HashMap<String, Tensor>,
    pub m: HashMap<String, Tensor>,
    pub v: HashMap<String, Tensor>,
    pub adam_t: u64,
}

/// Reads the trainer state of a checkpoint folder.
pub fn read_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let path = dir.join("trainer_state.json");
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    let state: TrainerState = serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::Checkpoint(format!("{}: not a Merit trainer state: {e}", path.display())))?;
    if !state.complete {
        return Err(TrainError::Checkpoint(format!("{} is incomplete", dir.display())));
    }
    Ok(state)
}

/// Loads a checkpoint folder for resuming.
pub fn load(dir: &Path) -> Result<Loaded, TrainError> {
    let state = read_state(dir)?;
    let read = |name: &str| -> Result<HashMap<String, Tensor>, TrainError> {
        let p = dir.join(name);
        candle_core::safetensors::load(&p, &candle_core::Device::Cpu)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))
    };
    let adapter = read("adapter_model.safetensors")?;
    let mut opt = read("optimizer.safetensors")?;
    let adam_t = opt
        .remove("adam_t")
        .and_then(|t| t.to_vec1::<f64>().ok())
        .and_then(|v| v.first().copied())
        .ok_or_else(|| TrainError::Checkpoint(format!("{}: optimizer step count is missing", dir.display())))?
        as u64;
    let mut m = HashMap::new();
    let mut v = HashMap::new();
    for (k, t) in opt {
        if let Some(n) = k.strip_suffix(".exp_avg") {
            m.insert(n.to_string(), t);
        } else if let Some(n) = k.strip_suffix(".exp_avg_sq") {
            v.insert(n.to_string(), t);
        }
    }
    Ok(Loaded { state, adapter, m, v, adam_t })
}

/// The newest complete `checkpoint-N` folder in a run's output folder, or
/// the folder itself when it is a checkpoint.
pub fn latest(out: &Path) -> Result<PathBuf, TrainError> {
    if out.join("trainer_state.json").exists() && out.join("optimizer.safetensors").exists() {
        return Ok(out.to_path_buf());
    }
    let entries = std::fs::read_dir(out).map_err(|e| io(out, e))?;
    let mut best: Option<(usize, PathBuf)> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(n) = name.strip_prefix("checkpoint-").and_then(|n| n.parse::<usize>().ok()) else { continue };
        if read_state(&e.path()).is_ok() && best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, e.path()));
        }
    }
    best.map(|(_, p)| p)
        .ok_or_else(|| TrainError::Checkpoint(format!("{} holds no complete checkpoint to resume", out.display())))
}
