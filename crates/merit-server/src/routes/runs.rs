//! `/runs`: training runs as jobs (see `crate::runs`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::runs::{run_json, RunHost};
use crate::AppState;
use merit_store::Run;

fn host(state: &AppState) -> ApiResult<Arc<RunHost>> {
    state.runs.clone().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_trainer", "this server does not train (it has no worker)")
    })
}

/// A run the caller may see: their own, or any for an administrator (others: 404).
async fn visible_run(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Run> {
    let user = caller.user()?;
    let id = super::parse_id("run id", id)?;
    match state.store.run(id).await? {
        Some(r) if crate::runs::may_read(user, &r) => Ok(r),
        _ => Err(ApiError::not_found(format!("run {id}"))),
    }
}

/// The most rows a run may carry inline (`rows`); more belong in a datanet.
pub const MAX_INLINE_ROWS: usize = 100_000;

/// `POST /runs`: the run's settings (merit-train's, every one optional but
/// `base`), plus where the rows come from: `datanets` (`NAME` or
/// `NAME@VERSION`, resolved now to exact versions the caller may read) and/or
/// `rows` (the rows themselves, stored as a blob).
pub async fn runs_create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let user = caller.user()?.clone();
    let host = host(&state)?;
    let Value::Object(mut body) = body else {
        return Err(ApiError::unprocessable("the body must be a JSON object of run settings"));
    };
    let mut sources = Vec::new();
    match body.remove("datanets") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for spec in list {
                let Some(spec) = spec.as_str() else {
                    return Err(ApiError::unprocessable("`datanets` must be a list of \"NAME[@VERSION]\" strings"));
                };
                let (name, number) = match spec.split_once('@') {
                    Some((n, v)) => (
                        n,
                        Some(v.parse::<i64>().map_err(|_| {
                            ApiError::unprocessable(format!("`datanets`: `{spec}` has a bad version (a whole number)"))
                        })?),
                    ),
                    None => (spec, None),
                };
                let access = super::access(&state, &caller, name).await?;
                let v = super::datanets::version_or_latest(&state, &access.datanet, number).await?;
                sources.push(Value::String(format!("datanet:{name}@{}", v.number)));
            }
        }
        Some(_) => return Err(ApiError::unprocessable("`datanets` must be a list of \"NAME[@VERSION]\" strings")),
    }
    match body.remove("rows") {
        None | Some(Value::Null) => {}
        Some(Value::Array(rows)) if rows.len() > MAX_INLINE_ROWS => {
            return Err(ApiError::unprocessable(format!(
                "`rows` holds {} rows; at most {MAX_INLINE_ROWS} are sent inline (put more in a datanet)",
                rows.len()
            ))
            .with_details(json!({ "field": "rows", "limit": MAX_INLINE_ROWS })));
        }
        Some(Value::Array(rows)) if !rows.is_empty() => {
            let mut jsonl = Vec::new();
            for r in &rows {
                serde_json::to_writer(&mut jsonl, r).map_err(|_| ApiError::internal())?;
                jsonl.push(b'\n');
            }
            let blobs = state.store.blobs().clone();
            let sha = tokio::task::spawn_blocking(move || blobs.put(&jsonl))
                .await
                .map_err(|_| ApiError::internal())?
                .map_err(merit_store::StoreError::from)?;
            sources.push(Value::String(format!("blob:{sha}")));
        }
        Some(_) => return Err(ApiError::unprocessable("`rows` must be a non-empty list of rows")),
    }
    if body.contains_key("sources") {
        return Err(ApiError::unprocessable("give rows with `datanets` or `rows`, not `sources`"));
    }
    if sources.is_empty() {
        return Err(ApiError::unprocessable("a run needs rows: `datanets` (NAME[@VERSION]) or `rows`"));
    }
    body.insert("sources".into(), Value::Array(sources));
    let trainer = host.trainer.clone();
    let config = tokio::task::spawn_blocking(move || trainer.prepare(Value::Object(body)))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(ApiError::unprocessable)?;
    let run = state.store.create_run(&user, &config, host.max_active).await?;
    host.wake.notify_one();
    Ok((StatusCode::CREATED, Json(run_json(&run))))
}

/// `GET /models`: the base models this server's worker can train.
pub async fn models_list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.user()?;
    let host = host(&state)?;
    let models = tokio::task::spawn_blocking(move || host.trainer.models()).await.map_err(|_| ApiError::internal())?;
    Ok(Json(Value::Array(models)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub offset: i64,
    pub limit: Option<i64>,
    /// Administrators: `all=true` lists everybody's runs.
    #[serde(default)]
    pub all: bool,
}

/// `GET /runs`: the caller's runs, newest first.
pub async fn runs_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    let limit = super::page_limit(q.limit, q.offset)?;
    let owner = if q.all && user.admin { None } else { Some(user) };
    let runs = state.store.runs(owner, q.offset, limit).await?;
    Ok(Json(Value::Array(runs.iter().map(run_json).collect())))
}

pub async fn runs_show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(run_json(&visible_run(&state, &caller, &id).await?)))
}

/// `POST /runs/{id}/stop`: a queued run is stopped at once; a running one
/// stops after its current step and writes a final checkpoint (202).
pub async fn runs_stop(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let run = visible_run(&state, &caller, &id).await?;
    let run = state.store.request_stop(run.id).await?;
    let code = if run.ended() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((code, Json(run_json(&run))))
}

/// A run of the caller's own, to resume or publish (administrators may see
/// and stop any run, not publish or resume it); others get 404 or 403.
async fn own_run(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Run> {
    let run = visible_run(state, caller, id).await?;
    let user = caller.user()?;
    if run.owner_id != user.id {
        return Err(ApiError::forbidden(format!("only {} can change run {}", run.owner, run.id)));
    }
    Ok(run)
}

/// `POST /runs/{id}/resume`: a stopped, interrupted or failed run is queued
/// again and continues from its newest checkpoint.
pub async fn runs_resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let host = host(&state)?;
    let run = own_run(&state, &caller, &id).await?;
    let run = state.store.requeue_run(run.id, host.max_active).await?;
    host.wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(run_json(&run))))
}

/// The optional body of a publish: `{"price_per_1k_input": X, "price_per_1k_output": Y}`
/// in credits (default 0: free); returned in micro-credits.
fn publish_prices(body: &[u8]) -> ApiResult<(i64, i64)> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok((0, 0));
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let Some(map) = v.as_object() else { return Err(ApiError::unprocessable("the body must be a JSON object")) };
    if let Some(k) = map.keys().find(|k| !matches!(k.as_str(), "price_per_1k_input" | "price_per_1k_output")) {
        return Err(ApiError::unprocessable(format!("unknown field `{k}` (price_per_1k_input, price_per_1k_output)")));
    }
    let price = |key: &str| -> ApiResult<i64> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && (0.0..=1e6).contains(&x) => Ok((x * 1e6).round() as i64),
                _ => Err(ApiError::unprocessable(format!(
                    "`{key}` must be a number of credits from 0 to 1000000, got {v}"
                ))),
            },
        }
    };
    Ok((price("price_per_1k_input")?, price("price_per_1k_output")?))
}

/// `POST /runs/{id}/publish`: records the adapter's SHA-256 and appends an
/// `adapter.published` entry to the ledger (base and datanet versions).
pub async fn runs_publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let host = host(&state)?;
    let run = own_run(&state, &caller, &id).await?;
    let prices = publish_prices(&body)?;
    let path = host.run_dir(run.id).join("adapter_model.safetensors");
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("run {} has no adapter yet", run.id)))
        }
        Err(e) => {
            tracing::error!("reading {}: {e}", path.display());
            return Err(ApiError::internal());
        }
    };
    let sha = merit_core::sha256_hex(&bytes);
    let user = caller.user()?.clone();
    if let Some(remote) = &state.adapter_store {
        // The store's checks first: a run that cannot be published is not uploaded.
        let conflict = |m: String| ApiError::new(StatusCode::CONFLICT, "conflict", m);
        if run.published_at.is_some() {
            return Err(conflict(format!("run {} is already published", run.id)));
        }
        if !matches!(run.status.as_str(), "done" | "stopped") {
            return Err(conflict(format!("run {} is {}; only a finished run is published", run.id, run.status)));
        }
        // Uploaded first: once the ledger says published, every node can fetch it.
        let dir = host.run_dir(run.id);
        let base = adapter_base(&dir).await?;
        if let Err(e) = remote.put_run(run.id, &base, &dir).await {
            tracing::error!("uploading run {} to {}: {e}", run.id, remote.url());
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "adapter_store",
                format!("the adapter could not be uploaded to the adapter store ({e}); nothing was published"),
            ));
        }
    }
    let run = state.store.publish_run(run.id, &user, &sha, prices).await?;
    // Span-attribution indexes of its datanet versions, built ahead of the first request.
    let (st, id) = (state.clone(), run.id);
    tokio::spawn(async move {
        if let Err(e) = crate::attribution::prepare(&st, id).await {
            tracing::warn!("attribution index for run {id}: {e:?}");
        }
    });
    Ok(Json(run_json(&run)))
}

/// The base model named in a run folder's `adapter_config.json`.
async fn adapter_base(dir: &std::path::Path) -> ApiResult<String> {
    let path = dir.join("adapter_config.json");
    let text = tokio::fs::read(&path).await.map_err(|e| {
        tracing::error!("reading {}: {e}", path.display());
        ApiError::internal()
    })?;
    let cfg: Value = serde_json::from_slice(&text).map_err(|e| {
        tracing::error!("{}: {e}", path.display());
        ApiError::internal()
    })?;
    cfg["base_model_name_or_path"].as_str().map(str::to_string).ok_or_else(|| {
        tracing::error!("{} names no base model", path.display());
        ApiError::internal()
    })
}

/// The files of a run that can be fetched.
const FILES: &[(&str, &str)] = &[
    ("adapter_config.json", "application/json"),
    ("adapter_model.safetensors", "application/octet-stream"),
    ("metrics.jsonl", "application/x-ndjson"),
];

/// `GET /runs/{id}/files/{name}`: the adapter (newest complete one) and metrics.
pub async fn runs_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let run = visible_run(&state, &caller, &id).await?;
    let host = host(&state)?;
    let Some((_, mime)) = FILES.iter().find(|(n, _)| *n == name) else {
        return Err(ApiError::not_found(format!(
            "file `{name}` (a run has {})",
            FILES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )));
    };
    let path = host.run_dir(run.id).join(&name);
    match super::stream_file(&path).await {
        Ok(body) => Ok(([(header::CONTENT_TYPE, *mime)], body).into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ApiError::not_found(format!("`{name}` of run {} (not written yet)", run.id)))
        }
        Err(e) => {
            tracing::error!("reading {}: {e}", path.display());
            Err(ApiError::internal())
        }
    }
}

/// Where an event stream is: the bytes of `metrics.jsonl` read so far, the
/// lines sent, the last status sent.
struct Tail {
    state: AppState,
    host: Arc<RunHost>,
    id: i64,
    offset: u64,
    line: u64,
    skip: u64,
    status: String,
    done: bool,
}

impl Tail {
    /// The complete lines added to `metrics.jsonl` since the last call.
    async fn new_lines(&mut self) -> Vec<String> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.host.run_dir(self.id).join("metrics.jsonl");
        let Ok(mut f) = tokio::fs::File::open(&path).await else {
            return Vec::new();
        };
        if f.seek(std::io::SeekFrom::Start(self.offset)).await.is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).await.is_err() {
            return Vec::new();
        }
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        self.offset += end as u64 + 1;
        String::from_utf8_lossy(&buf[..end]).lines().map(str::to_string).collect()
    }

    /// The new metric lines as events named by their `kind`.
    async fn metric_events(&mut self, out: &mut Vec<Event>) {
        for line in self.new_lines().await {
            self.line += 1;
            if self.line <= self.skip {
                continue;
            }
            let kind = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["kind"].as_str().map(str::to_string))
                .unwrap_or_else(|| "metric".into());
            out.push(Event::default().id(self.line.to_string()).event(kind).data(line));
        }
    }

    /// The next batch of events; empty when there is nothing new yet.
    async fn poll(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.metric_events(&mut out).await;
        let run = match self.state.store.run(self.id).await {
            Ok(Some(r)) => r,
            _ => {
                self.done = true;
                out.push(Event::default().event("end").data(json!({ "status": "gone" }).to_string()));
                return out;
            }
        };
        if run.status != self.status {
            self.status = run.status.clone();
            out.push(Event::default().event("status").data(json!({ "status": run.status }).to_string()));
        }
        if run.ended() {
            // Lines written just before the end was recorded.
            self.metric_events(&mut out).await;
            self.done = true;
            out.push(Event::default().event("end").data(run_json(&run).to_string()));
        }
        out
    }
}

#[derive(Deserialize)]
pub struct EventsQuery {
    /// Skip the first N metric lines (as `Last-Event-ID` does on reconnect).
    after: Option<u64>,
}

/// `GET /runs/{id}/events`: server-sent events. Every line of the run's
/// `metrics.jsonl` (event `step`, `eval` or `checkpoint`, id = line number,
/// data = the line), `status` on every change, and a last `end` with the run.
pub async fn runs_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    let run = visible_run(&state, &caller, &id).await?;
    let host = host(&state)?;
    let skip = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(q.after)
        .unwrap_or(0);
    let tail = Tail { state, host, id: run.id, offset: 0, line: 0, skip, status: String::new(), done: false };
    let stream = futures_util::stream::unfold(tail, |mut tail| async move {
        if tail.done {
            return None;
        }
        loop {
            let events = tail.poll().await;
            if !events.is_empty() {
                return Some((futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>)), tail));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    use futures_util::StreamExt;
    Ok(Sse::new(stream.flatten()).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}
