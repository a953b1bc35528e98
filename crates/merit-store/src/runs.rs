//! Training runs: a job queue in the database. `merit serve`'s worker claims
//! the oldest queued run (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so several
//! workers never take the same one); metrics live in the run's folder.

use serde::Serialize;
use serde_json::Value;

use merit_ledger::event::Event;

use crate::{col, now_ms, Backend, Store, StoreError, User};

/// A training run as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub id: i64,
    pub owner: String,
    pub owner_id: i64,
    /// `queued`, `running`, `done`, `stopped`, `failed` or `interrupted`.
    pub status: String,
    /// The run's settings (merit-train's `TrainConfig`).
    pub config: Value,
    pub stop_requested: bool,
    pub summary: Option<Value>,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// When the adapter was published (on the ledger), and its SHA-256.
    pub published_at: Option<i64>,
    pub adapter_sha256: Option<String>,
    /// The adapter's prices per 1,000 input and output tokens (micro-credits), set when published.
    pub price_in_micros: i64,
    pub price_out_micros: i64,
}

impl Run {
    /// Whether the run has ended (it will not change any more).
    pub fn ended(&self) -> bool {
        matches!(self.status.as_str(), "done" | "stopped" | "failed" | "interrupted")
    }
}

const SELECT: &str = "SELECT r.id, r.owner_id, u.name AS owner, r.status, r.config, r.stop_requested, r.summary, \
                      r.error, r.created_at, r.started_at, r.finished_at, r.published_at, r.adapter_sha256, \
                      r.price_in_micros, r.price_out_micros FROM runs r JOIN users u ON u.id = r.owner_id";

fn run_from(row: &sqlx::any::AnyRow) -> Result<Run, StoreError> {
    let json = |name: &str, s: Option<String>| -> Result<Option<Value>, StoreError> {
        s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("run {name}: {e}")))).transpose()
    };
    Ok(Run {
        id: col(row, "id")?,
        owner_id: col(row, "owner_id")?,
        owner: col(row, "owner")?,
        status: col(row, "status")?,
        config: json("config", Some(col(row, "config")?))?.unwrap_or(Value::Null),
        stop_requested: col::<i64>(row, "stop_requested")? != 0,
        summary: json("summary", col(row, "summary")?)?,
        error: col(row, "error")?,
        created_at: col(row, "created_at")?,
        started_at: col(row, "started_at")?,
        finished_at: col(row, "finished_at")?,
        published_at: col(row, "published_at")?,
        adapter_sha256: col(row, "adapter_sha256")?,
        price_in_micros: col(row, "price_in_micros")?,
        price_out_micros: col(row, "price_out_micros")?,
    })
}

impl Store {
    /// Queues a run for `owner`.
    pub async fn create_run(&self, owner: &User, config: &Value, max_active: u64) -> Result<Run, StoreError> {
        let mut w = self.write().await?;
        if let Err(e) = self.check_active(&mut w, owner.id, max_active).await {
            w.rollback().await?;
            return Err(e);
        }
        let row = sqlx::query(
            "INSERT INTO runs (owner_id, status, config, created_at) VALUES ($1, 'queued', $2, $3) RETURNING id",
        )
        .bind(owner.id)
        .bind(config.to_string())
        .bind(now_ms())
        .fetch_one(&mut *w.tx)
        .await?;
        let id: i64 = col(&row, "id")?;
        w.commit().await?;
        self.run(id).await?.ok_or_else(|| StoreError::Corrupt(format!("run {id} vanished")))
    }

    /// Refuses a new active (queued or running) run of `owner_id` when they
    /// have `max_active` already (inside the write transaction, so
    /// concurrent requests cannot pass it together).
    async fn check_active(&self, w: &mut crate::Writer<'_>, owner_id: i64, max_active: u64) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            // Serialize one owner's run creations on PostgreSQL (SQLite has its writer lock).
            sqlx::query("SELECT pg_advisory_xact_lock(7426018, CAST($1 AS INTEGER))")
                .bind(owner_id)
                .execute(&mut *w.tx)
                .await?;
        }
        let row = sqlx::query("SELECT COUNT(*) AS n FROM runs WHERE owner_id = $1 AND status IN ('queued', 'running')")
            .bind(owner_id)
            .fetch_one(&mut *w.tx)
            .await?;
        let n: i64 = col(&row, "n")?;
        if n as u64 >= max_active {
            return Err(StoreError::RunLimit { limit: max_active });
        }
        Ok(())
    }

    /// Queued runs of owners other than `owner_id` (a reason to preempt).
    pub async fn queued_for_others(&self, owner_id: i64) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM runs WHERE status = 'queued' AND owner_id <> $1")
            .bind(owner_id)
            .fetch_one(&self.pool)
            .await?;
        col(&row, "n")
    }

    /// Puts a running run back in the queue (its worker stopped it at a
    /// checkpoint to let other users' runs have a turn).
    pub async fn preempt_run(&self, id: i64, summary: Option<&Value>) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        sqlx::query(
            "UPDATE runs SET status = 'queued', summary = $1, stop_requested = 0, worker = NULL WHERE id = $2 \
             AND status = 'running'",
        )
        .bind(summary.map(Value::to_string))
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    pub async fn run(&self, id: i64) -> Result<Option<Run>, StoreError> {
        let row = sqlx::query(&format!("{SELECT} WHERE r.id = $1")).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(run_from).transpose()
    }

    /// The runs of these ids that exist (in chunks of 500: one query each).
    pub async fn runs_with_ids(&self, ids: &[i64]) -> Result<Vec<Run>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("{SELECT} WHERE r.id IN ({})", marks.join(", "));
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push(run_from(&row)?);
            }
        }
        Ok(out)
    }

    /// Runs, newest first: of one owner, or of everybody.
    pub async fn runs(&self, owner: Option<&User>, offset: i64, limit: i64) -> Result<Vec<Run>, StoreError> {
        let rows = match owner {
            Some(u) => {
                sqlx::query(&format!("{SELECT} WHERE r.owner_id = $1 ORDER BY r.id DESC LIMIT $2 OFFSET $3"))
                    .bind(u.id)
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("{SELECT} ORDER BY r.id DESC LIMIT $1 OFFSET $2"))
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(run_from).collect()
    }

    /// Takes a queued run for `worker`, marking it running: fairly between
    /// users — first those with the fewest runs running, then the one whose
    /// last run started longest ago, then the oldest run.
    pub async fn claim_run(&self, worker: &str) -> Result<Option<Run>, StoreError> {
        let mut w = self.write().await?;
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE OF r SKIP LOCKED" } else { "" };
        let row = sqlx::query(&format!(
            "SELECT r.id FROM runs r WHERE r.status = 'queued' ORDER BY \
             (SELECT COUNT(*) FROM runs x WHERE x.owner_id = r.owner_id AND x.status = 'running'), \
             COALESCE((SELECT MAX(x.started_at) FROM runs x WHERE x.owner_id = r.owner_id), 0), r.id \
             LIMIT 1{lock}"
        ))
        .fetch_optional(&mut *w.tx)
        .await?;
        let Some(row) = row else {
            w.rollback().await?;
            return Ok(None);
        };
        let id: i64 = col(&row, "id")?;
        sqlx::query("UPDATE runs SET status = 'running', worker = $1, started_at = $2 WHERE id = $3")
            .bind(worker)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        self.run(id).await
    }

    /// Records how a run ended.
    pub async fn finish_run(
        &self,
        id: i64,
        status: &str,
        summary: Option<&Value>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        sqlx::query("UPDATE runs SET status = $1, summary = $2, error = $3, finished_at = $4 WHERE id = $5")
            .bind(status)
            .bind(summary.map(Value::to_string))
            .bind(error)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }

    /// Asks a run to stop: a queued run is stopped at once, a running one is
    /// flagged for its worker (which writes a final checkpoint). A run that
    /// has ended is a conflict.
    pub async fn request_stop(&self, id: i64) -> Result<Run, StoreError> {
        let mut w = self.write().await?;
        let row = sqlx::query("SELECT status FROM runs WHERE id = $1").bind(id).fetch_optional(&mut *w.tx).await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!("run {id}")));
        };
        let status: String = col(&row, "status")?;
        match status.as_str() {
            "queued" => {
                sqlx::query("UPDATE runs SET status = 'stopped', stop_requested = 1, finished_at = $1 WHERE id = $2")
                    .bind(now_ms())
                    .bind(id)
                    .execute(&mut *w.tx)
                    .await?;
            }
            "running" => {
                sqlx::query("UPDATE runs SET stop_requested = 1 WHERE id = $1").bind(id).execute(&mut *w.tx).await?;
            }
            other => return Err(StoreError::Conflict(format!("run {id} has already ended ({other})"))),
        }
        w.commit().await?;
        self.run(id).await?.ok_or_else(|| StoreError::Corrupt(format!("run {id} vanished")))
    }

    /// Marks the runs left `running` by workers whose name starts with
    /// `worker_prefix` (a restarted machine) as `interrupted`; returns how many.
    pub async fn interrupt_runs(&self, worker_prefix: &str) -> Result<u64, StoreError> {
        let mut w = self.write().await?;
        let done = sqlx::query(
            "UPDATE runs SET status = 'interrupted', finished_at = $1 WHERE status = 'running' AND worker LIKE $2",
        )
        .bind(now_ms())
        .bind(format!("{}%", worker_prefix.replace('%', "")))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(done.rows_affected())
    }

    /// Queues a run that ended early (stopped, interrupted, failed) again:
    /// its worker continues from the newest checkpoint in its folder.
    pub async fn requeue_run(&self, id: i64, max_active: u64) -> Result<Run, StoreError> {
        let mut w = self.write().await?;
        let row =
            sqlx::query("SELECT status, owner_id FROM runs WHERE id = $1").bind(id).fetch_optional(&mut *w.tx).await?;
        let Some(row) = row else {
            w.rollback().await?;
            return Err(StoreError::NotFound(format!("run {id}")));
        };
        let status: String = col(&row, "status")?;
        if let Err(e) = self.check_active(&mut w, col(&row, "owner_id")?, max_active).await {
            w.rollback().await?;
            return Err(e);
        }
        if !matches!(status.as_str(), "stopped" | "interrupted" | "failed") {
            return Err(StoreError::Conflict(format!(
                "run {id} is {status}; only a stopped, interrupted or failed run resumes"
            )));
        }
        sqlx::query(
            "UPDATE runs SET status = 'queued', stop_requested = 0, error = NULL, finished_at = NULL WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        self.run(id).await?.ok_or_else(|| StoreError::Corrupt(format!("run {id} vanished")))
    }

    /// Publishes a finished run's adapter: records its SHA-256 and appends an
    /// `adapter.published` leaf (base, data versions) in the same transaction.
    pub async fn publish_run(
        &self,
        id: i64,
        publisher: &User,
        adapter_sha256: &str,
        (price_in_micros, price_out_micros): (i64, i64),
    ) -> Result<Run, StoreError> {
        if price_in_micros < 0 || price_out_micros < 0 {
            return Err(StoreError::Invalid("prices cannot be negative".into()));
        }
        let run = self.run(id).await?.ok_or_else(|| StoreError::NotFound(format!("run {id}")))?;
        if !matches!(run.status.as_str(), "done" | "stopped") {
            return Err(StoreError::Conflict(format!("run {id} is {}; only a finished run is published", run.status)));
        }
        // The data versions as the ledger names them (a draft by its commitment).
        let mut datanets = Vec::new();
        for spec in run.config["sources"].as_array().into_iter().flatten() {
            let Some(spec) = spec.as_str().and_then(|s| s.strip_prefix("datanet:")) else { continue };
            let named = match spec.rsplit_once('@') {
                Some((name, v)) => match (self.datanet(name).await?, v.parse::<i64>()) {
                    (Some(d), Ok(v)) => d.ledger_version(v),
                    _ => spec.to_string(),
                },
                None => spec.to_string(),
            };
            datanets.push(named);
        }
        let now = now_ms();
        let mut w = self.write().await?;
        let done = sqlx::query(
            "UPDATE runs SET published_at = $1, adapter_sha256 = $2, price_in_micros = $3, price_out_micros = $4 \
             WHERE id = $5 AND published_at IS NULL",
        )
        .bind(now)
        .bind(adapter_sha256)
        .bind(price_in_micros)
        .bind(price_out_micros)
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("run {id} is already published")));
        }
        let event = Event::AdapterPublished {
            run_id: id,
            publisher: publisher.name.clone(),
            base: run.config["base"].as_str().unwrap_or_default().to_string(),
            adapter_sha256: adapter_sha256.to_string(),
            datanets,
            at: now,
        };
        crate::ledger::append(&mut w, self.backend, &[event], now).await?;
        w.commit().await?;
        self.run(id).await?.ok_or_else(|| StoreError::Corrupt(format!("run {id} vanished")))
    }
}
