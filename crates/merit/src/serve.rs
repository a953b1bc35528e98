//! The generator behind `merit serve`'s OpenAI-compatible API: base models
//! from the registry, adapters of finished training runs (`<base>:run-<id>`),
//! a few loaded models kept in memory (least recently used goes first).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use merit_lm::{Decoder, TextTokenizer};
use merit_server::openai::{GenError, GenOutput, GenRequest, Generator};

use crate::model;

/// Loaded models kept at once.
const CACHE: usize = 3;

type Loaded = Arc<Mutex<(Decoder, TextTokenizer)>>;

pub struct ServeGenerator {
    pub data_dir: PathBuf,
    loaded: Mutex<Vec<(String, Loaded)>>,
}

impl ServeGenerator {
    pub fn new(data_dir: PathBuf) -> ServeGenerator {
        ServeGenerator { data_dir, loaded: Mutex::new(Vec::new()) }
    }

    /// The adapters of runs: (run id, base as the run named it, folder).
    fn run_adapters(&self) -> Vec<(u64, String, PathBuf)> {
        let Ok(dir) = std::fs::read_dir(self.data_dir.join("runs")) else { return Vec::new() };
        let mut out = Vec::new();
        for e in dir.flatten() {
            let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
            let path = e.path();
            if !path.join("adapter_model.safetensors").exists() {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(path.join("adapter_config.json")) else { continue };
            let Ok(cfg) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
            if let Some(base) = cfg["base_model_name_or_path"].as_str() {
                out.push((id, base.to_string(), path));
            }
        }
        out.sort_by_key(|(id, _, _)| *id);
        out
    }

    /// The base and adapter folder of a model id.
    fn resolve(&self, id: &str) -> Result<(String, Option<PathBuf>), GenError> {
        let (base, adapter) = match id.split_once(':') {
            Some((b, a)) => (b, Some(a)),
            None => (id, None),
        };
        let registered = model::registry(&self.data_dir).map_err(|e| GenError::Internal(format!("{e:#}")))?;
        if !registered.contains_key(base) {
            return Err(GenError::NotFound(format!("the model `{base}` does not exist (see GET /v1/models)")));
        }
        let Some(adapter) = adapter else { return Ok((base.to_string(), None)) };
        let run = adapter.strip_prefix("run-").and_then(|n| n.parse::<u64>().ok());
        match self.run_adapters().into_iter().find(|(rid, b, _)| Some(*rid) == run && b == base) {
            Some((_, _, dir)) => Ok((base.to_string(), Some(dir))),
            None => Err(GenError::NotFound(format!(
                "the adapter `{adapter}` of `{base}` does not exist (see GET /v1/models)"
            ))),
        }
    }

    fn get(&self, id: &str) -> Result<Loaded, GenError> {
        if let Ok(mut cache) = self.loaded.lock() {
            if let Some(i) = cache.iter().position(|(k, _)| k == id) {
                let hit = cache.remove(i);
                let m = hit.1.clone();
                cache.push(hit);
                return Ok(m);
            }
        }
        let (base, adapter) = self.resolve(id)?;
        let loaded = model::load(&self.data_dir, &base, adapter.as_deref().map(Path::new))
            .map_err(|e| GenError::Internal(format!("loading `{id}`: {e:#}")))?;
        let m = Arc::new(Mutex::new(loaded));
        if let Ok(mut cache) = self.loaded.lock() {
            cache.retain(|(k, _)| k != id);
            if cache.len() >= CACHE {
                cache.remove(0);
            }
            cache.push((id.to_string(), m.clone()));
        }
        Ok(m)
    }
}

impl Generator for ServeGenerator {
    fn models(&self) -> Vec<String> {
        let mut ids: Vec<String> = model::registry(&self.data_dir).map(|r| r.into_keys().collect()).unwrap_or_default();
        let bases = ids.clone();
        for (id, base, _) in self.run_adapters() {
            if bases.contains(&base) {
                ids.push(format!("{base}:run-{id}"));
            }
        }
        ids
    }

    fn generate(&self, req: &GenRequest, on_text: &mut dyn FnMut(&str)) -> Result<GenOutput, GenError> {
        let loaded = self.get(&req.model)?;
        let guard = loaded.lock().map_err(|_| GenError::Internal("a model lock was poisoned".into()))?;
        let (m, tok) = &*guard;
        let internal = |e: merit_lm::LmError| {
            let msg = e.to_string();
            if msg.contains("longer than") {
                GenError::BadRequest(msg)
            } else {
                GenError::Internal(msg)
            }
        };
        let ids = match &req.messages {
            Some(msgs) => {
                let messages: Vec<merit_lm::Message> =
                    msgs.iter().map(|(r, c)| merit_lm::Message { role: r.clone(), content: c.clone() }).collect();
                let text = tok.apply_chat_template(&messages, true).map_err(|e| GenError::BadRequest(e.to_string()))?;
                tok.encode(&text, false).map_err(internal)?
            }
            None => tok.encode(&req.prompt, true).map_err(internal)?,
        };
        if ids.is_empty() {
            return Err(GenError::BadRequest("the prompt is empty".into()));
        }
        let mut max_new = req.max_tokens;
        if let Some(ctx) = m.config.context_length {
            if ids.len() >= ctx {
                return Err(GenError::BadRequest(format!(
                    "the prompt has {} tokens; `{}` reads at most {ctx} (its context length)",
                    ids.len(),
                    req.model
                )));
            }
            // Generation stops at the end of the context (finish_reason "length").
            max_new = max_new.min(ctx - ids.len());
        }
        let params = merit_lm::SamplingParams {
            temperature: req.temperature,
            top_p: req.top_p,
            seed: req.seed,
            ..Default::default()
        };
        params.check().map_err(|e| GenError::BadRequest(e.to_string()))?;
        let g = merit_lm::generate_cancellable(m, tok, &ids, &params, max_new, &req.stop, &req.cancel, |piece| {
            on_text(piece)
        })
        .map_err(internal)?;
        let finish_reason = match g.stop_reason {
            merit_lm::StopReason::Length | merit_lm::StopReason::Cancelled => "length",
            _ => "stop",
        };
        Ok(GenOutput {
            text: g.text,
            prompt_tokens: ids.len(),
            completion_tokens: g.token_ids.len(),
            finish_reason: finish_reason.into(),
        })
    }
}
