//! The generator behind `merit serve`'s OpenAI-compatible API: base models
//! from the registry and the adapters of training runs (`<base>:run-<id>`).
//! Each base is loaded once (a few kept, least recently used goes first);
//! its adapters load onto it on first use and stay in a cache bounded in
//! bytes, swapped in per request without reloading the base.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use merit_lm::{Decoder, TextTokenizer};
use merit_server::openai::{GenError, GenOutput, GenRequest, Generator, Tokens};

use crate::model;

/// Base models kept loaded at once.
const BASES: usize = 3;

/// Adapter weights kept per base, in bytes (`MERIT_ADAPTER_CACHE_BYTES`).
fn adapter_budget() -> usize {
    std::env::var("MERIT_ADAPTER_CACHE_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(512 << 20)
}

/// A loaded base and the adapters loaded onto it, least recently used first.
struct Base {
    model: Decoder,
    tok: Arc<TextTokenizer>,
    /// Loaded adapters: folder, weights and their variables by PEFT name.
    adapters: Vec<(PathBuf, merit_lm::Adapters, Vars)>,
}

type Vars = Vec<(String, merit_lm::candle_core::Var)>;

impl Base {
    /// Puts the adapter in `dir` (or none) on the model, loading it on first
    /// use; returns its variables by PEFT name (none without an adapter).
    fn select(&mut self, dir: Option<&Path>) -> Result<Vars, GenError> {
        let Some(dir) = dir else {
            self.model.set_adapters(&merit_lm::Adapters::default()).map_err(|e| GenError::Internal(e.to_string()))?;
            return Ok(Vec::new());
        };
        let (adapters, vars) = match self.adapters.iter().position(|(d, _, _)| d == dir) {
            Some(i) => {
                let hit = self.adapters.remove(i);
                let a = (hit.1.clone(), hit.2.clone());
                self.adapters.push(hit);
                a
            }
            None => {
                self.model
                    .set_adapters(&merit_lm::Adapters::default())
                    .map_err(|e| GenError::Internal(e.to_string()))?;
                let vars = merit_lm::adapter::load_peft(&mut self.model, dir)
                    .map_err(|e| GenError::Internal(format!("loading the adapter in {}: {e}", dir.display())))?;
                let a = self.model.adapters();
                self.adapters.push((dir.to_path_buf(), a.clone(), vars.clone()));
                // Bounded in bytes: the least recently used go first (never the one in use).
                let budget = adapter_budget();
                while self.adapters.len() > 1
                    && self.adapters.iter().map(|(_, a, _)| a.size_in_bytes()).sum::<usize>() > budget
                {
                    self.adapters.remove(0);
                }
                (a, vars)
            }
        };
        self.model.set_adapters(&adapters).map_err(|e| GenError::Internal(e.to_string()))?;
        Ok(vars)
    }
}

pub struct ServeGenerator {
    pub data_dir: PathBuf,
    bases: Mutex<Vec<(String, Arc<Mutex<Base>>)>>,
    /// Each loaded base's tokenizer, outside the base's lock: tokenizing
    /// (attribution indexes) never waits for a generation.
    tokenizers: Mutex<Vec<(String, Arc<TextTokenizer>)>>,
}

impl ServeGenerator {
    pub fn new(data_dir: PathBuf) -> ServeGenerator {
        ServeGenerator { data_dir, bases: Mutex::new(Vec::new()), tokenizers: Mutex::new(Vec::new()) }
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

    /// The loaded base of that name, loading it (once) on first use.
    fn base(&self, name: &str) -> Result<Arc<Mutex<Base>>, GenError> {
        if let Ok(mut bases) = self.bases.lock() {
            if let Some(i) = bases.iter().position(|(k, _)| k == name) {
                let hit = bases.remove(i);
                let b = hit.1.clone();
                bases.push(hit);
                return Ok(b);
            }
        }
        let (model, tok) = model::load(&self.data_dir, name, None)
            .map_err(|e| GenError::Internal(format!("loading `{name}`: {e:#}")))?;
        let tok = Arc::new(tok);
        if let Ok(mut toks) = self.tokenizers.lock() {
            toks.retain(|(k, _)| k != name);
            toks.push((name.to_string(), tok.clone()));
        }
        let b = Arc::new(Mutex::new(Base { model, tok, adapters: Vec::new() }));
        if let Ok(mut bases) = self.bases.lock() {
            bases.retain(|(k, _)| k != name);
            if bases.len() >= BASES {
                bases.remove(0);
            }
            bases.push((name.to_string(), b.clone()));
        }
        Ok(b)
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

    fn tokenize(&self, base: &str, texts: &[String]) -> Result<Vec<Tokens>, GenError> {
        let (base, _) = self.resolve(base)?;
        let cached = |s: &Self| s.tokenizers.lock().ok()?.iter().find(|(k, _)| *k == base).map(|(_, t)| t.clone());
        let tok = match cached(self) {
            Some(t) => t,
            None => {
                self.base(&base)?;
                cached(self).ok_or_else(|| GenError::Internal(format!("the tokenizer of `{base}` is not loaded")))?
            }
        };
        texts
            .iter()
            .map(|text| {
                let (ids, offsets) =
                    tok.encode_with_offsets(text, false).map_err(|e| GenError::Internal(e.to_string()))?;
                Ok(ids.into_iter().zip(offsets).map(|(id, (a, b))| (id, a, b)).collect())
            })
            .collect()
    }

    fn influence(&self, req: &GenRequest, answer: &str) -> Result<Vec<(u64, f64)>, GenError> {
        let (base, adapter) = self.resolve(&req.model)?;
        let Some(run_dir) = adapter else { return Ok(Vec::new()) };
        // The checkpoints that saved influence tables (TracIn sums over them).
        let mut tables = Vec::new();
        for e in std::fs::read_dir(&run_dir).map_err(|e| GenError::Internal(e.to_string()))?.flatten() {
            let path = e.path().join(merit_train::influence::FILE);
            if e.file_name().to_string_lossy().starts_with("checkpoint-") && path.exists() {
                let t = merit_attrib::InfluenceTable::load(&path).map_err(|e| GenError::Internal(e.to_string()))?;
                tables.push((e.path(), t));
            }
        }
        if tables.is_empty() {
            return Ok(Vec::new());
        }
        let loaded = self.base(&base)?;
        let mut guard = loaded.lock().map_err(|_| GenError::Internal("a model lock was poisoned".into()))?;
        // The request with the answer as the assistant's turn, labelled on the answer.
        let row = match &req.messages {
            Some(msgs) => {
                let mut m: Vec<serde_json::Value> =
                    msgs.iter().map(|(r, c)| serde_json::json!({ "role": r, "content": c })).collect();
                m.push(serde_json::json!({ "role": "assistant", "content": answer }));
                serde_json::json!({ "messages": m })
            }
            None => serde_json::json!({ "text": format!("{}{answer}", req.prompt) }),
        };
        let eos = guard.model.config.eos_token_ids.first().copied();
        let opts = merit_train::DataOptions { eval_split: 0.0, ..Default::default() };
        let ds = merit_train::data::build(&guard.tok, eos, &[row], &opts);
        let Some(ex) = ds.train.first() else {
            let why = ds.skipped.first().map_or_else(|| "empty".to_string(), |s| s.reason.clone());
            return Err(GenError::BadRequest(format!("the answer cannot be scored: {why}")));
        };
        let mut total: std::collections::BTreeMap<u64, f64> = std::collections::BTreeMap::new();
        for (dir, table) in &tables {
            let vars = guard.select(Some(dir))?;
            let q = merit_train::influence::projected_gradient(
                &guard.model,
                &vars,
                ex,
                eos.unwrap_or(0),
                table.projector.dims,
            )
            .map_err(|e| GenError::Internal(e.to_string()))?;
            for (row, s) in table.rows.iter().zip(table.scores(&q)) {
                *total.entry(*row).or_default() += s;
            }
        }
        Ok(total.into_iter().collect())
    }

    fn generate(&self, req: &GenRequest, on_text: &mut dyn FnMut(&str)) -> Result<GenOutput, GenError> {
        let (base, adapter) = self.resolve(&req.model)?;
        let loaded = self.base(&base)?;
        let mut guard = loaded.lock().map_err(|_| GenError::Internal("a model lock was poisoned".into()))?;
        guard.select(adapter.as_deref())?;
        let Base { model: m, tok, .. } = &*guard;
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
