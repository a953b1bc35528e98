//! Loading a Hugging Face model folder: `config.json` and single or sharded
//! safetensors (`model.safetensors.index.json`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Decoder, DecoderConfig, LmError};

fn read(path: &Path) -> Result<Vec<u8>, LmError> {
    std::fs::read(path).map_err(|source| LmError::Io { path: path.display().to_string(), source })
}

/// Loads the decoder in `dir` onto `device`.
pub fn load_hf_dir(dir: &Path, device: &Device) -> Result<Decoder, LmError> {
    load_hf_dir_as(dir, device, candle_core::DType::F32)
}

/// Loads the decoder in `dir`, computing in `dtype`.
pub fn load_hf_dir_as(dir: &Path, device: &Device, dtype: candle_core::DType) -> Result<Decoder, LmError> {
    let config_bytes = read(&dir.join("config.json"))?;
    let json: serde_json::Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| LmError::Config(format!("{}: not JSON: {e}", dir.join("config.json").display())))?;
    let config = DecoderConfig::from_hf(&json)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<String> = if index.exists() {
        let v: serde_json::Value = serde_json::from_slice(&read(&index)?)
            .map_err(|e| LmError::Weights(format!("{}: not JSON: {e}", index.display())))?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| LmError::Weights(format!("{}: no `weight_map`", index.display())))?;
        let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
        files.sort();
        files.dedup();
        files
    } else {
        vec!["model.safetensors".to_string()]
    };
    for f in files {
        let path = dir.join(&f);
        if !path.exists() {
            return Err(LmError::Weights(format!("weights file {} is missing", path.display())));
        }
        let loaded = candle_core::safetensors::load(&path, device)
            .map_err(|e| LmError::Weights(format!("{}: not a readable safetensors file: {e}", path.display())))?;
        tensors.extend(loaded);
    }
    Decoder::load_as(config, tensors, device, dtype)
}
