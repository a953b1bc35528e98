//! Training runs as jobs: `POST /api/v1/runs` queues a run in the database,
//! the worker started by [`start_worker`] claims queued runs one at a time and
//! hands them to the [`RunTrainer`] the binary gave (`merit-train`, or a fake
//! in tests). A run works in `RUNS_DIR/<id>/`; its `metrics.jsonl` is what
//! `GET /api/v1/runs/{id}/events` streams, so any API node that sees the
//! folder can stream any run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::AppState;

/// Who may see a run (its settings, metrics, files, events) and act on it:
/// its owner and administrators. Every route that reaches a run asks this.
pub fn may_read(user: &merit_store::User, run: &merit_store::Run) -> bool {
    run.owner_id == user.id || user.admin
}

/// Who may generate with a run's adapter (`/v1`, the web chat): whoever may
/// read the run, and every signed-in user once it is published.
pub fn may_serve(user: &merit_store::User, run: &merit_store::Run) -> bool {
    run.published_at.is_some() || may_read(user, run)
}

/// The run whose adapter a model id names (`<base>:run-<id>`), if any.
pub fn adapter_run(model: &str) -> Option<i64> {
    let (_, adapter) = model.split_once(':')?;
    adapter.strip_prefix("run-")?.parse::<i64>().ok().filter(|n| *n > 0)
}

/// What trains: the binary's adapter over `merit-train`.
pub trait RunTrainer: Send + Sync + 'static {
    /// Completes a run's settings with the defaults and checks them, before
    /// the run is queued. The error names the setting that is wrong.
    fn prepare(&self, config: Value) -> Result<Value, String>;

    /// Trains (blocking) in `dir` until the run ends or `stop` is set, writing
    /// `metrics.jsonl` and checkpoints there; returns the run's summary, with
    /// `"stopped": true` when it ended early because of `stop`.
    fn run(&self, config: &Value, dir: &Path, stop: &AtomicBool) -> Result<Value, String>;

    /// The base models this worker can train, for pickers: objects with at
    /// least `name`, and the shape (`hidden_size`, `intermediate_size`,
    /// `layers`, `heads`, `kv_heads`, `head_dim`, `vocab_size`) for estimates.
    fn models(&self) -> Vec<Value> {
        Vec::new()
    }
}

/// The training side of a server: the trainer and where runs live.
pub struct RunHost {
    pub trainer: Arc<dyn RunTrainer>,
    pub dir: PathBuf,
    /// Queued and running runs one user may have at once.
    pub max_active: u64,
    /// How long a run trains while other users' runs wait before its worker
    /// stops it at a checkpoint and queues it again behind them.
    pub slice: Duration,
    /// Wakes the worker when a run is queued.
    pub(crate) wake: tokio::sync::Notify,
}

impl RunHost {
    pub fn new(trainer: Arc<dyn RunTrainer>, dir: PathBuf) -> RunHost {
        RunHost { trainer, dir, max_active: 4, slice: Duration::from_secs(30 * 60), wake: tokio::sync::Notify::new() }
    }

    /// With these limits (see the fields).
    pub fn with_limits(mut self, max_active: u64, slice: Duration) -> RunHost {
        self.max_active = max_active;
        self.slice = slice;
        self
    }

    /// The folder of run `id`.
    pub fn run_dir(&self, id: i64) -> PathBuf {
        self.dir.join(id.to_string())
    }
}

/// This machine's name, the prefix of its workers' names.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Starts the worker of this process: runs left `running` by an earlier
/// process on this machine become `interrupted`, then queued runs are
/// trained one after the other. Returns `None` when the state has no trainer.
pub fn start_worker(state: &AppState) -> Option<tokio::task::JoinHandle<()>> {
    let host = state.runs.clone()?;
    let store = state.store.clone();
    Some(tokio::spawn(async move {
        let prefix = format!("{}:", host_name());
        match store.interrupt_runs(&prefix).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!("{n} run(s) left running by an earlier process are marked interrupted"),
            Err(e) => tracing::error!("marking interrupted runs: {e}"),
        }
        let worker = format!("{prefix}{}", std::process::id());
        loop {
            match store.claim_run(&worker).await {
                Ok(Some(run)) => execute(&store, &host, run).await,
                Ok(None) => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), host.wake.notified()).await;
                }
                Err(e) => {
                    tracing::error!("claiming a run: {e}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }))
}

/// Trains one claimed run to its end and records how it ended.
async fn execute(store: &merit_store::Store, host: &Arc<RunHost>, run: merit_store::Run) {
    let id = run.id;
    let dir = host.run_dir(id);
    tracing::info!(run = id, "training run started");
    let stop = Arc::new(AtomicBool::new(false));
    let preempted = Arc::new(AtomicBool::new(false));
    // The stop flag is in the database, so any API node can set it. A run
    // that has had its slice while other users' runs wait is stopped too,
    // and queued again behind them.
    let watcher = {
        let (store, stop, preempted) = (store.clone(), stop.clone(), preempted.clone());
        let (owner, slice, started) = (run.owner_id, host.slice, std::time::Instant::now());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Ok(Some(r)) = store.run(id).await {
                    if r.stop_requested {
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                }
                if started.elapsed() >= slice && store.queued_for_others(owner).await.is_ok_and(|n| n > 0) {
                    tracing::info!(run = id, "other users' runs wait: stopping at a checkpoint to queue it again");
                    preempted.store(true, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
            }
        })
    };
    let trainer = host.trainer.clone();
    let config = run.config.clone();
    let flag = stop.clone();
    let result = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        trainer.run(&config, &dir, &flag)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the training task panicked: {e}")));
    watcher.abort();
    if let (true, Ok(s)) = (preempted.load(Ordering::Relaxed), &result) {
        if s["stopped"].as_bool() == Some(true) {
            tracing::info!(run = id, "training run queued again after its slice");
            if let Err(e) = store.preempt_run(id, Some(s)).await {
                tracing::error!(run = id, "queueing the run again: {e}");
            }
            return;
        }
    }
    let (status, summary, error) = match result {
        Ok(s) if s["stopped"].as_bool() == Some(true) => ("stopped", Some(s), None),
        Ok(s) => ("done", Some(s), None),
        Err(e) => ("failed", None, Some(e)),
    };
    tracing::info!(run = id, status, error = error.as_deref().unwrap_or(""), "training run ended");
    if let Err(e) = store.finish_run(id, status, summary.as_ref(), error.as_deref()).await {
        tracing::error!(run = id, "recording the end of the run: {e}");
    }
}

/// A run as the API shows it.
pub(crate) fn run_json(run: &merit_store::Run) -> Value {
    json!({
        "id": run.id,
        "owner": run.owner,
        "status": run.status,
        "config": run.config,
        "stop_requested": run.stop_requested,
        "summary": run.summary,
        "error": run.error,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "published_at": run.published_at,
        "adapter_sha256": run.adapter_sha256,
        "price_per_1k_input": run.price_in_micros as f64 / 1e6,
        "price_per_1k_output": run.price_out_micros as f64 / 1e6,
    })
}
