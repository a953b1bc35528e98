//! The generator behind `merit serve`'s OpenAI-compatible API: base models
//! from the registry and the adapters of training runs (`<base>:run-<id>`).
//! Each base is loaded once (a few kept, least recently used goes first)
//! and runs a [`Batcher`]: a thread that batches concurrent requests
//! continuously — they join between decoding steps and leave when done,
//! rows of different adapters in one forward pass. Adapters load on first
//! use into a cache bounded in bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use merit_lm::{Batch, BatchEvent, BatchRequest, Decoder, TextTokenizer};
use merit_server::openai::{GenError, GenOutput, GenRequest, Generator, Tokens};
use merit_store::remote::{AdapterStore, Manifest};

use crate::model;

/// Base models kept loaded at once.
const BASES: usize = 3;

/// Adapter weights kept per base, in bytes (`MERIT_ADAPTER_CACHE_BYTES`).
fn adapter_budget() -> usize {
    std::env::var("MERIT_ADAPTER_CACHE_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(512 << 20)
}

/// A loaded adapter: its weights and their variables by PEFT name.
#[derive(Clone)]
struct Loaded {
    adapters: Arc<merit_lm::Adapters>,
    vars: Vars,
}

type Vars = Vec<(String, merit_lm::candle_core::Var)>;

/// A loaded base: the model as loaded (cloned, cheaply, to load adapters
/// and score answers), its tokenizer, its adapters (least recently used
/// first) and the batcher that generates with it.
struct Base {
    model: Decoder,
    tok: Arc<TextTokenizer>,
    adapters: Mutex<Vec<(PathBuf, Loaded)>>,
    batcher: Batcher,
}

impl Base {
    /// The adapter in `dir`, loading it on first use into the cache. The
    /// file is read outside the cache's lock, so a cold load never holds up
    /// requests for adapters already loaded.
    fn adapter(&self, dir: &Path) -> Result<Loaded, GenError> {
        let poisoned = || GenError::Internal("an adapter lock was poisoned".into());
        {
            let mut cache = self.adapters.lock().map_err(|_| poisoned())?;
            if let Some(i) = cache.iter().position(|(d, _)| d == dir) {
                let hit = cache.remove(i);
                let loaded = hit.1.clone();
                cache.push(hit);
                return Ok(loaded);
            }
        }
        let loaded = self.load(dir)?;
        let mut cache = self.adapters.lock().map_err(|_| poisoned())?;
        if let Some((_, first)) = cache.iter().find(|(d, _)| d == dir) {
            // Another request loaded it meanwhile: one copy is kept.
            return Ok(first.clone());
        }
        cache.push((dir.to_path_buf(), loaded.clone()));
        // Bounded in bytes: the least recently used go first (rows still
        // generating with one keep it until they finish).
        let budget = adapter_budget();
        while cache.len() > 1 && cache.iter().map(|(_, l)| l.adapters.size_in_bytes()).sum::<usize>() > budget {
            cache.remove(0);
        }
        Ok(loaded)
    }

    /// The adapter in `dir`, read from disk (not cached).
    fn load(&self, dir: &Path) -> Result<Loaded, GenError> {
        let mut m = self.model.clone();
        let vars = merit_lm::adapter::load_peft(&mut m, dir)
            .map_err(|e| GenError::Internal(format!("loading the adapter in {}: {e}", dir.display())))?;
        Ok(Loaded { adapters: Arc::new(m.adapters()), vars })
    }
}

/// What a batcher tells a request.
enum Event {
    Text(String),
    Done(Result<merit_lm::Generation, String>),
}

/// A request waiting for its batcher.
struct Job {
    req: BatchRequest,
    cancel: Arc<AtomicBool>,
    events: mpsc::Sender<Event>,
}

/// Continuous batching on one loaded model: a thread owns the model and a
/// [`Batch`]; between decoding steps it admits waiting requests (up to
/// `max_batch` rows) and drops cancelled ones. Dropping the batcher ends
/// the thread once its rows are done.
pub struct Batcher {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Cleared when the thread ends (a panic included).
    alive: Arc<AtomicBool>,
}

/// Clears a batcher's `alive` flag when its thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl Batcher {
    pub fn start(model: Decoder, tok: Arc<TextTokenizer>, max_batch: usize) -> Batcher {
        let (tx, rx) = mpsc::channel::<Job>();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        let started = std::thread::Builder::new().name("merit-batcher".into()).spawn(move || {
            let _guard = guard;
            batch_loop(model, &tok, &rx, max_batch.max(1))
        });
        if let Err(e) = started {
            // The guard went with the closure: the batcher reads as dead.
            tracing::error!("starting a batcher: {e}");
        }
        Batcher { jobs: Mutex::new(tx), alive }
    }

    /// Whether the thread still runs (a panic in a forward pass ends it).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Generates for `req` with the other requests of the moment, calling
    /// `on_text` with each new piece of its text; stops early once `cancel` is set.
    pub fn run(
        &self,
        req: BatchRequest,
        cancel: Arc<AtomicBool>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<merit_lm::Generation, GenError> {
        let (tx, rx) = mpsc::channel();
        let stopped = || GenError::Internal("the model's batcher has stopped".into());
        self.jobs.lock().map_err(|_| stopped())?.send(Job { req, cancel, events: tx }).map_err(|_| stopped())?;
        for event in rx {
            match event {
                Event::Text(t) => on_text(&t),
                Event::Done(r) => return r.map_err(GenError::Internal),
            }
        }
        Err(stopped())
    }
}

type Sinks = HashMap<u64, (mpsc::Sender<Event>, Arc<AtomicBool>)>;

/// Passes a batch's event on to the request it is about.
fn deliver(sinks: &mut Sinks, id: u64, event: BatchEvent) {
    let Some((tx, cancel)) = sinks.get(&id) else { return };
    let sent = match event {
        BatchEvent::Text(t) => tx.send(Event::Text(t.to_string())),
        BatchEvent::Done(g) => {
            let _ = tx.send(Event::Done(Ok(g)));
            sinks.remove(&id);
            return;
        }
    };
    if sent.is_err() {
        // Nobody listens any more: it leaves the batch before the next step.
        cancel.store(true, Ordering::Relaxed);
    }
}

/// The batcher's thread: admit, drop the cancelled, step, until no one is left.
fn batch_loop(mut model: Decoder, tok: &TextTokenizer, rx: &mpsc::Receiver<Job>, max_batch: usize) {
    let mut batch = Batch::new();
    let mut sinks = Sinks::new();
    let mut next_id = 0u64;
    loop {
        let mut joining = Vec::new();
        if batch.is_empty() {
            // Idle: wait for work; every sender gone ends the thread.
            match rx.recv() {
                Ok(job) => joining.push(job),
                Err(_) => return,
            }
        }
        while batch.len() + joining.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => joining.push(job),
                Err(_) => break,
            }
        }
        let mut requests = Vec::with_capacity(joining.len());
        for job in joining {
            if job.cancel.load(Ordering::Relaxed) {
                continue;
            }
            sinks.insert(next_id, (job.events, job.cancel));
            requests.push((next_id, job.req));
            next_id += 1;
        }
        let ids: Vec<u64> = requests.iter().map(|(id, _)| *id).collect();
        tracing::debug!(joining = ids.len(), running = batch.len(), "batch");
        if let Err(e) = batch.join(&mut model, tok, requests, &mut |id, e| deliver(&mut sinks, id, e)) {
            let msg = e.to_string();
            for id in ids.iter().filter(|id| !batch.ids().any(|b| b == **id)) {
                if let Some((tx, _)) = sinks.remove(id) {
                    let _ = tx.send(Event::Done(Err(msg.clone())));
                }
            }
        }
        let gone: Vec<u64> =
            batch.ids().filter(|id| sinks.get(id).is_none_or(|(_, c)| c.load(Ordering::Relaxed))).collect();
        batch.cancel(|id| gone.contains(&id), &mut |id, e| deliver(&mut sinks, id, e));
        if let Err(e) = batch.step(&mut model, tok, &mut |id, e| deliver(&mut sinks, id, e)) {
            let msg = e.to_string();
            for id in batch.abandon() {
                if let Some((tx, _)) = sinks.remove(&id) {
                    let _ = tx.send(Event::Done(Err(msg.clone())));
                }
            }
        }
    }
}

pub struct ServeGenerator {
    pub data_dir: PathBuf,
    bases: Mutex<Vec<(String, Arc<Base>)>>,
    max_batch: usize,
    remote: Option<Remote>,
}

/// The adapter SHA-256 a run was published with on the ledger (None:
/// not published), as the serving node's database tells it.
pub type PublishedSha = Arc<dyn Fn(u64) -> Result<Option<String>, String> + Send + Sync>;

/// Published adapters in an object store. The store is not trusted: a run
/// is served from it only when the ledger says it is published and the
/// adapter's SHA-256 there is the one in its manifest, and every download is
/// checked against that manifest.
struct Remote {
    store: Arc<AdapterStore>,
    handle: tokio::runtime::Handle,
    published: PublishedSha,
    /// Manifests that matched the ledger (a published run never changes).
    manifests: Mutex<HashMap<u64, Manifest>>,
    /// One download per run at a time.
    fetching: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// The file of a run that the ledger's SHA-256 covers.
const ADAPTER_FILE: &str = "adapter_model.safetensors";

impl Remote {
    /// Run `run`'s manifest, when the run is published and the store holds
    /// the adapter the ledger names.
    fn manifest(&self, run: u64) -> Result<Option<Manifest>, GenError> {
        if let Some(m) = self.manifests.lock().ok().and_then(|c| c.get(&run).cloned()) {
            return Ok(Some(m));
        }
        let Some(sha) = (self.published)(run).map_err(GenError::Internal)? else { return Ok(None) };
        let id = i64::try_from(run).map_err(|_| GenError::NotFound(format!("no run {run}")))?;
        let m = self
            .handle
            .block_on(self.store.manifest(id))
            .map_err(|e| GenError::Internal(format!("reading run {run} from {}: {e}", self.store.url())))?;
        let Some(m) = m else { return Ok(None) };
        let stored = m.files.iter().find(|f| f.path == ADAPTER_FILE).map(|f| f.sha256.as_str());
        if stored != Some(sha.as_str()) {
            return Err(GenError::Internal(format!(
                "run {run} in {} does not hold the adapter published on the ledger (SHA-256 {sha}, the store's manifest says {})",
                self.store.url(),
                stored.unwrap_or("none")
            )));
        }
        if let Ok(mut cache) = self.manifests.lock() {
            cache.insert(run, m.clone());
        }
        Ok(Some(m))
    }

    /// Downloads the run into `dir` unless it is there already.
    fn fetch(&self, m: &Manifest, dir: &Path) -> Result<(), GenError> {
        if dir.join(ADAPTER_FILE).exists() {
            return Ok(());
        }
        let poisoned = || GenError::Internal("a download lock was poisoned".into());
        let lock = self.fetching.lock().map_err(|_| poisoned())?.entry(dir.display().to_string()).or_default().clone();
        let _one = lock.lock().map_err(|_| poisoned())?;
        if dir.join(ADAPTER_FILE).exists() {
            return Ok(());
        }
        let t = std::time::Instant::now();
        self.handle
            .block_on(self.store.fetch_run(m, dir))
            .map_err(|e| GenError::Internal(format!("fetching run {} from {}: {e}", m.run, self.store.url())))?;
        tracing::info!("fetched run {} from {} in {:.0} ms", m.run, self.store.url(), t.elapsed().as_secs_f64() * 1e3);
        Ok(())
    }
}

impl ServeGenerator {
    pub fn new(data_dir: PathBuf) -> ServeGenerator {
        ServeGenerator { data_dir, bases: Mutex::new(Vec::new()), max_batch: 32, remote: None }
    }

    /// At most `n` rows in one forward pass.
    pub fn with_max_batch(self, n: usize) -> ServeGenerator {
        ServeGenerator { max_batch: n.max(1), ..self }
    }

    /// Serves, besides the local runs, the adapters published to `store`:
    /// those `published` confirms, fetched on first use into
    /// `DATA_DIR/adapter-cache/<SHA-256 of the adapter>` and checked against
    /// their manifest. `handle` runs the store's requests.
    pub fn with_adapter_store(
        self,
        store: Arc<AdapterStore>,
        handle: tokio::runtime::Handle,
        published: PublishedSha,
    ) -> ServeGenerator {
        let remote = Remote {
            store,
            handle,
            published,
            manifests: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
        };
        ServeGenerator { remote: Some(remote), ..self }
    }

    /// The base a local run folder's adapter was trained on, if it has a finished adapter.
    fn local_run(dir: &Path) -> Option<String> {
        if !dir.join("adapter_model.safetensors").exists() {
            return None;
        }
        let text = std::fs::read_to_string(dir.join("adapter_config.json")).ok()?;
        let cfg = serde_json::from_str::<serde_json::Value>(&text).ok()?;
        cfg["base_model_name_or_path"].as_str().map(str::to_string)
    }

    /// The adapters of runs: (run id, base as the run named it), local ones
    /// and those in the adapter store.
    fn run_adapters(&self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.data_dir.join("runs")) {
            for e in dir.flatten() {
                let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
                if let Some(base) = Self::local_run(&e.path()) {
                    out.push((id, base));
                }
            }
        }
        if let Some(remote) = &self.remote {
            match remote.handle.block_on(remote.store.runs()) {
                Ok(ids) => {
                    for id in ids.into_iter().filter_map(|i| u64::try_from(i).ok()) {
                        if out.iter().any(|(l, _)| *l == id) {
                            continue;
                        }
                        match remote.manifest(id) {
                            Ok(Some(m)) => out.push((id, m.base)),
                            Ok(None) => {}
                            Err(e) => tracing::warn!("{e:?}"),
                        }
                    }
                }
                Err(e) => tracing::warn!("listing {}: {e}", remote.store.url()),
            }
        }
        out.sort();
        out
    }

    /// The base and adapter folder of a model id (an adapter from the store
    /// is downloaded first).
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
        let missing =
            || GenError::NotFound(format!("the adapter `{adapter}` of `{base}` does not exist (see GET /v1/models)"));
        let Some(run) = adapter.strip_prefix("run-").and_then(|n| n.parse::<u64>().ok()) else { return Err(missing()) };
        let local = self.data_dir.join("runs").join(run.to_string());
        if let Some(b) = Self::local_run(&local) {
            return if b == base { Ok((base.to_string(), Some(local))) } else { Err(missing()) };
        }
        let Some(remote) = &self.remote else { return Err(missing()) };
        match remote.manifest(run)? {
            Some(m) if m.base == base => {
                // Content-addressed: a folder holds one adapter, whatever store it came from.
                let sha = m.files.iter().find(|f| f.path == ADAPTER_FILE).map(|f| f.sha256.clone()).unwrap_or_default();
                let dir = self.data_dir.join("adapter-cache").join(sha);
                remote.fetch(&m, &dir)?;
                Ok((base.to_string(), Some(dir)))
            }
            _ => Err(missing()),
        }
    }

    /// The loaded base of that name, loading it (once) on first use.
    fn base(&self, name: &str) -> Result<Arc<Base>, GenError> {
        if let Ok(mut bases) = self.bases.lock() {
            if let Some(i) = bases.iter().position(|(k, _)| k == name) {
                let hit = bases.remove(i);
                if hit.1.batcher.is_alive() {
                    let b = hit.1.clone();
                    bases.push(hit);
                    return Ok(b);
                }
                // Its batcher died (a panic): load the base afresh.
                tracing::error!("the batcher of `{name}` stopped; loading `{name}` again");
            }
        }
        let (model, tok) = model::load(&self.data_dir, name, None)
            .map_err(|e| GenError::Internal(format!("loading `{name}`: {e:#}")))?;
        let tok = Arc::new(tok);
        let batcher = Batcher::start(model.clone(), tok.clone(), self.max_batch);
        let b = Arc::new(Base { model, tok, adapters: Mutex::new(Vec::new()), batcher });
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

/// The token ids of a request's prompt (the chat template applied to messages).
fn prompt_ids(tok: &TextTokenizer, req: &GenRequest) -> Result<Vec<u32>, GenError> {
    let bad = |e: merit_lm::LmError| GenError::BadRequest(e.to_string());
    match &req.messages {
        Some(msgs) => {
            let messages: Vec<merit_lm::Message> =
                msgs.iter().map(|(r, c)| merit_lm::Message { role: r.clone(), content: c.clone() }).collect();
            let text = tok.apply_chat_template(&messages, true).map_err(bad)?;
            tok.encode(&text, false).map_err(bad)
        }
        None => tok.encode(&req.prompt, true).map_err(bad),
    }
}

impl Generator for ServeGenerator {
    fn prompt_tokens(&self, req: &GenRequest) -> Result<usize, GenError> {
        let (base, _) = self.resolve(&req.model)?;
        let tok = self.base(&base)?.tok.clone();
        Ok(prompt_ids(&tok, req)?.len())
    }

    fn models(&self) -> Vec<String> {
        let mut ids: Vec<String> = model::registry(&self.data_dir).map(|r| r.into_keys().collect()).unwrap_or_default();
        let bases = ids.clone();
        for (id, base) in self.run_adapters() {
            if bases.contains(&base) {
                ids.push(format!("{base}:run-{id}"));
            }
        }
        ids
    }

    fn tokenize(&self, base: &str, texts: &[String]) -> Result<Vec<Tokens>, GenError> {
        let (base, _) = self.resolve(base)?;
        let tok = self.base(&base)?.tok.clone();
        texts
            .iter()
            .map(|text| {
                let (ids, offsets) =
                    tok.encode_with_offsets(text, false).map_err(|e| GenError::Internal(e.to_string()))?;
                Ok(ids.into_iter().zip(offsets).map(|(id, (a, b))| (id, a, b)).collect())
            })
            .collect()
    }

    fn influence(&self, req: &GenRequest, answer: &str) -> Result<Vec<(u64, merit_attrib::Influence)>, GenError> {
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
        // A copy of the base (its weights shared) to put each checkpoint's adapter on.
        let mut model = loaded.model.clone();
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
        let eos = model.config.eos_token_ids.first().copied();
        let opts = merit_train::DataOptions { eval_split: 0.0, ..Default::default() };
        let ds = merit_train::data::build(&loaded.tok, eos, &[row], &opts);
        let Some(ex) = ds.train.first() else {
            let why = ds.skipped.first().map_or_else(|| "empty".to_string(), |s| s.reason.clone());
            return Err(GenError::BadRequest(format!("the answer cannot be scored: {why}")));
        };
        // TracIn sums the scores over checkpoints; the similarity is their mean.
        let mut total: std::collections::BTreeMap<u64, merit_attrib::Influence> = std::collections::BTreeMap::new();
        let share = 1.0 / tables.len() as f64;
        for (dir, table) in &tables {
            // Checkpoints' adapters are read for this answer only: they stay
            // out of the serving cache.
            let Loaded { adapters, vars } = loaded.load(dir)?;
            model.set_adapters(&adapters).map_err(|e| GenError::Internal(e.to_string()))?;
            let q =
                merit_train::influence::projected_gradient(&model, &vars, ex, eos.unwrap_or(0), table.projector.dims)
                    .map_err(|e| GenError::Internal(e.to_string()))?;
            for (row, i) in table.rows.iter().zip(table.scores(&q)) {
                let t = total.entry(*row).or_default();
                t.score += i.score;
                t.similarity += i.similarity * share;
            }
        }
        Ok(total.into_iter().collect())
    }

    fn generate(&self, req: &GenRequest, on_text: &mut dyn FnMut(&str)) -> Result<GenOutput, GenError> {
        let (base, adapter) = self.resolve(&req.model)?;
        let loaded = self.base(&base)?;
        let adapter = match adapter {
            Some(dir) => Some(loaded.adapter(&dir)?.adapters),
            None => None,
        };
        let (m, tok) = (&loaded.model, &loaded.tok);
        let ids = prompt_ids(tok, req)?;
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
        let prompt_tokens = ids.len();
        let job = BatchRequest { prompt: ids, params, max_new, stop: req.stop.clone(), adapter };
        let g = loaded.batcher.run(job, req.cancel.clone(), on_text)?;
        let finish_reason = match g.stop_reason {
            merit_lm::StopReason::Length | merit_lm::StopReason::Cancelled => "length",
            _ => "stop",
        };
        Ok(GenOutput {
            text: g.text,
            prompt_tokens,
            completion_tokens: g.token_ids.len(),
            finish_reason: finish_reason.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn fixture() -> (Decoder, Arc<TextTokenizer>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../merit-lm/tests/fixtures/smollm");
        let model = merit_lm::loader::load_hf_dir(&dir, &merit_lm::Device::Cpu).unwrap();
        (model, Arc::new(TextTokenizer::from_hf_dir(&dir).unwrap()))
    }

    fn request(prompt: &[u32], max_new: usize) -> BatchRequest {
        let params = merit_lm::SamplingParams::default();
        BatchRequest { prompt: prompt.to_vec(), params, max_new, stop: Vec::new(), adapter: None }
    }

    /// More concurrent requests than a forward pass may hold: they wait
    /// their turn and each gets the answer it gets alone; a request whose
    /// client went away leaves the batch at the next token while the
    /// others go on.
    #[test]
    fn the_batcher_bounds_rows_answers_each_as_alone_and_drops_the_cancelled() {
        let (model, tok) = fixture();
        let prompts: Vec<Vec<u32>> = (0..6u32).map(|i| (1..4 + i).map(|t| t * 7 % 300 + 3).collect()).collect();
        let alone: Vec<merit_lm::Generation> = prompts
            .iter()
            .map(|p| merit_lm::generate(&model, &tok, p, &Default::default(), 12, &[], |_| {}).unwrap())
            .collect();
        let batcher = Batcher::start(model, tok, 2);
        std::thread::scope(|s| {
            let handles: Vec<_> = prompts
                .iter()
                .map(|p| {
                    let b = &batcher;
                    s.spawn(move || b.run(request(p, 12), Default::default(), &mut |_| {}).unwrap())
                })
                .collect();
            for (h, want) in handles.into_iter().zip(&alone) {
                let got = h.join().unwrap();
                assert_eq!((got.token_ids, got.text), (want.token_ids.clone(), want.text.clone()));
            }
        });
        // An endless request, cancelled after its first piece of text.
        let cancel = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let (endless, short) = std::thread::scope(|s| {
            let (c, b, p) = (cancel.clone(), &batcher, &prompts);
            let endless =
                s.spawn(move || b.run(request(&p[0], 100_000), c.clone(), &mut |_| c.store(true, Ordering::Relaxed)));
            let short = s.spawn(move || b.run(request(&p[1], 12), Default::default(), &mut |_| {}));
            (endless.join().unwrap().unwrap(), short.join().unwrap().unwrap())
        });
        assert_eq!(endless.stop_reason, merit_lm::StopReason::Cancelled);
        assert!(endless.token_ids.len() < 50, "{} tokens after the cancel", endless.token_ids.len());
        assert_eq!(short.token_ids, alone[1].token_ids);
        assert!(start.elapsed() < Duration::from_secs(30));
    }
}
