use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use merit_core::{Policy, Status};
use merit_store::{Contribution, ContributionFilter, Datanet, NewRow, Staged, StoreError, Submission};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{access, parse_id, Access};
use crate::budget;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::AppState;

/// The most files one upload request may carry.
const MAX_FILES_PER_REQUEST: usize = 32;

/// Which gates judge files, as recorded on the ledger.
fn gate_version() -> String {
    format!("merit-gate/{}", merit_gate::VERSION)
}

/// Runs the gates on a file (on a blocking thread: they are CPU work) and
/// turns the result into a submission for the store. The file is read into
/// memory only here, under a reservation of the server's request memory.
async fn gate(state: &AppState, policy: &Policy, filename: &str, file: &FileOnDisk) -> ApiResult<Submission> {
    let size = file.len;
    let _held = state.memory.reserve(size.saturating_mul(budget::GATE_FACTOR), &format!("gating `{filename}`")).await?;
    let policy = policy.clone();
    let name = filename.to_string();
    let sha = file.sha256.clone();
    let path = file.path.clone();
    let inspection = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path)?;
        Ok::<_, std::io::Error>(merit_gate::inspect(&policy, &name, &bytes))
    })
    .await
    .map_err(|_| ApiError::internal())?
    .map_err(StoreError::from)?;
    let rows = inspection
        .rows
        .into_iter()
        .map(|c| {
            let mut content = c.content;
            if c.minhash.is_empty() {
                // Media rows point at the kept file.
                content["sha256"] = json!(sha);
            }
            NewRow {
                content: content.to_string(),
                text_hash: hex::encode(c.exact_hash),
                band_keys: if c.minhash.is_empty() { Vec::new() } else { merit_gate::minhash::band_keys(&c.minhash) },
                minhash: c.minhash,
                score: c.score,
            }
        })
        .collect();
    Ok(Submission {
        filename: filename.to_string(),
        format: inspection.format,
        bytes: size,
        sha256: sha,
        rows,
        reasons: inspection.reasons,
        gate_version: gate_version(),
    })
}

/// A file the gates read from disk: a staged upload or a kept blob.
struct FileOnDisk {
    path: std::path::PathBuf,
    len: u64,
    sha256: String,
}

impl From<&Staged> for FileOnDisk {
    fn from(s: &Staged) -> FileOnDisk {
        FileOnDisk { path: s.path().to_path_buf(), len: s.len(), sha256: s.sha256().to_string() }
    }
}

fn verdict_json(file: &str, c: &Contribution) -> Value {
    json!({
        "file": file,
        "status": c.status,
        "contribution_id": c.id,
        "score": c.score,
        "rows": c.rows,
        "version": c.version,
        "reasons": c.reasons,
    })
}

#[derive(Deserialize)]
pub struct UploadQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Reads every file of a multipart body into the blob store's staging
/// folder (never into memory whole), cutting a file off with 413 as soon as
/// it passes the datanet's `max_file_bytes` (nothing is kept then).
async fn read_files(state: &AppState, mut multipart: Multipart, d: &Datanet) -> ApiResult<Vec<(String, Staged)>> {
    let cap = d.policy.max_file_bytes;
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request(format!("bad multipart body: {}", e.body_text()))
    };
    let io = |e: std::io::Error| ApiError::from(StoreError::from(e));
    let mut files = Vec::new();
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        let Some(filename) = field.file_name().map(str::to_string) else {
            // Plain form fields carry nothing we need.
            continue;
        };
        let filename = clean_file_name(&filename);
        if filename.is_empty() {
            return Err(ApiError::bad_request("a file part has an empty file name"));
        }
        if files.len() == MAX_FILES_PER_REQUEST {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_files",
                format!("at most {MAX_FILES_PER_REQUEST} files per request"),
            ));
        }
        let mut staging = state.store.blobs().stage().map_err(io)?;
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            if staging.len() + chunk.len() as u64 > cap {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "file_too_large",
                    format!("`{filename}` is larger than this datanet's max_file_bytes ({cap} bytes)"),
                )
                .with_details(json!({ "file": filename, "limit": "max_file_bytes", "value": cap })));
            }
            staging.write(&chunk).map_err(io)?;
        }
        files.push((filename, staging.finish().map_err(io)?));
    }
    if files.is_empty() {
        return Err(ApiError::bad_request(
            "the multipart body holds no file part (send files as `file` parts with a file name)",
        ));
    }
    Ok(files)
}

pub async fn contributions_create(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let user = caller.user()?.clone();
    let a = access(&state, &caller, &name).await?;
    let multipart = multipart.map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send files as multipart/form-data: {}", e.body_text()),
        )
    })?;
    let d = &a.datanet;
    let files = read_files(&state, multipart, d).await?;
    let mut results = Vec::new();
    for (filename, file) in files {
        let sub = gate(&state, &d.policy, &filename, &FileOnDisk::from(&file)).await?;
        if query.dry_run {
            let rows = sub.rows.len();
            let (status, reasons, credit) = state.store.dry_run(d, sub).await?;
            results.push(json!({
                "file": filename,
                "status": status,
                "contribution_id": null,
                "score": credit,
                "rows": rows,
                "version": null,
                "reasons": reasons,
                "dry_run": true,
            }));
            continue;
        }
        match state.store.submit(d, &user, sub, file).await {
            Ok(c) => results.push(verdict_json(&filename, &c)),
            Err(e @ StoreError::Limit { .. }) => {
                // Files before this one are recorded; say so next to the 429.
                let mut err = ApiError::from(e);
                err.details["file"] = json!(filename);
                err.details["results"] = json!(results);
                return Err(err);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let status = if query.dry_run { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(Value::Array(results))).into_response())
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    contributor: Option<String>,
    #[serde(default)]
    offset: i64,
    limit: Option<i64>,
}

/// Owners and curators see every contribution; a contributor sees accepted
/// ones and their own; the public sees accepted ones.
fn visibility(a: &Access, caller: &Caller) -> ContributionFilter {
    if a.sees_all() {
        return ContributionFilter::default();
    }
    match &caller.0 {
        Some(user) => ContributionFilter { accepted_or_own: Some(user.id), ..Default::default() },
        None => ContributionFilter { status: Some(Status::Accepted), ..Default::default() },
    }
}

fn can_see(a: &Access, caller: &Caller, c: &Contribution) -> bool {
    a.sees_all() || c.status == Status::Accepted || caller.0.as_ref().is_some_and(|u| u.name == c.contributor)
}

pub async fn contributions_list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<Contribution>>> {
    let a = access(&state, &caller, &name).await?;
    let mut filter = visibility(&a, &caller);
    if let Some(s) = &query.status {
        let status = Status::parse(s)
            .ok_or_else(|| ApiError::bad_request(format!("status must be accepted, pending or rejected, got `{s}`")))?;
        if filter.status.is_some_and(|f| f != status) {
            return Ok(Json(Vec::new()));
        }
        filter.status = Some(status);
    }
    if let Some(who) = &query.contributor {
        let Some(user) = state.store.user_by_name(who).await? else {
            return Ok(Json(Vec::new()));
        };
        filter.contributor_id = Some(user.id);
    }
    let limit = super::page_limit(query.limit, query.offset)?;
    Ok(Json(state.store.contributions(&a.datanet, &filter, limit, query.offset).await?))
}

async fn visible_contribution(
    state: &AppState,
    caller: &Caller,
    name: &str,
    id: &str,
) -> ApiResult<(Access, Contribution)> {
    let a = access(state, caller, name).await?;
    let id = parse_id("contribution id", id)?;
    let not_found = || ApiError::not_found(format!("contribution {id} in datanet `{name}`"));
    let c = state.store.contribution(id).await?.ok_or_else(not_found)?;
    if c.datanet != a.datanet.name || !can_see(&a, caller, &c) {
        return Err(not_found());
    }
    Ok((a, c))
}

pub async fn contributions_show(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<Contribution>> {
    let (_, c) = visible_contribution(&state, &caller, &name, &id).await?;
    Ok(Json(c))
}

/// The file of a contribution (kept when accepted or pending), for review previews.
pub async fn contributions_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (_, c) = visible_contribution(&state, &caller, &name, &id).await?;
    let not_kept = || ApiError::not_found(format!("the file of contribution {} (rejected files are not kept)", c.id));
    let path = state.store.blobs().path_of(&c.sha256).ok_or_else(not_kept)?;
    let body = match super::stream_file(&path).await {
        Ok(body) => body,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_kept()),
        Err(e) => return Err(StoreError::from(e).into()),
    };
    let safe_name: String = c.filename.chars().filter(|ch| !ch.is_control() && *ch != '"' && *ch != '\\').collect();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{safe_name}\"")),
        ],
        body,
    )
        .into_response())
}

async fn reviewable(state: &AppState, caller: &Caller, name: &str, id: &str) -> ApiResult<(Access, Contribution)> {
    let user = caller.user()?;
    // The role check comes first: a contributor learns they cannot review,
    // not whether a contribution they cannot see exists.
    access(state, caller, name).await?.require_curator()?;
    let (a, c) = visible_contribution(state, caller, name, id).await?;
    if c.contributor == user.name {
        return Err(ApiError::forbidden("nobody reviews their own contribution"));
    }
    if c.status != Status::Pending {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("contribution {} is {}, not pending", c.id, c.status.as_str()),
        ));
    }
    Ok((a, c))
}

pub async fn contributions_approve(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (a, c) = reviewable(&state, &caller, &name, &id).await?;
    let user = caller.user()?;
    let missing = || {
        tracing::error!(contribution = c.id, "the kept file of a pending contribution is missing");
        ApiError::internal()
    };
    let path = state.store.blobs().path_of(&c.sha256).filter(|p| p.is_file()).ok_or_else(missing)?;
    let file = FileOnDisk { path, len: c.bytes.max(0) as u64, sha256: c.sha256.clone() };
    let regated = gate(&state, &a.datanet.policy, &c.filename, &file).await?;
    let c = state.store.approve(&a.datanet, c.id, user, regated).await?;
    Ok(Json(verdict_json(&c.filename, &c)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    reason: String,
}

pub async fn contributions_reject(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<RejectBody>,
) -> ApiResult<Json<Value>> {
    let reason = body.reason.trim();
    if reason.is_empty() || reason.len() > 2000 {
        return Err(ApiError::unprocessable("reason must be 1 to 2000 characters"));
    }
    let (a, c) = reviewable(&state, &caller, &name, &id).await?;
    let c = state.store.reject(&a.datanet, c.id, caller.user()?, reason).await?;
    Ok(Json(verdict_json(&c.filename, &c)))
}

/// Exported rows as one parquet file: the metadata columns, then one column
/// per content field (strings and numbers as such, anything else as JSON text).
pub(crate) fn to_parquet(records: &[serde_json::Map<String, Value>]) -> ApiResult<Vec<u8>> {
    use merit_gate::export::Column;
    let mut names: Vec<String> =
        vec!["row_index".into(), "contribution_id".into(), "contributor".into(), "score".into()];
    for r in records {
        for k in r.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let columns: Vec<(String, Column)> = names
        .into_iter()
        .map(|name| {
            let values: Vec<&Value> = records.iter().map(|r| r.get(&name).unwrap_or(&Value::Null)).collect();
            let col = if values.iter().all(|v| v.is_i64()) {
                Column::Int64(values.iter().filter_map(|v| v.as_i64()).collect())
            } else if values.iter().all(|v| v.is_number()) {
                Column::Double(values.iter().filter_map(|v| v.as_f64()).collect())
            } else {
                Column::Utf8(
                    values
                        .iter()
                        .map(|v| match v {
                            Value::String(s) => s.clone(),
                            Value::Null => String::new(),
                            other => other.to_string(),
                        })
                        .collect(),
                )
            };
            (name, col)
        })
        .collect();
    merit_gate::export::write_parquet(&columns).map_err(|e| {
        tracing::error!(error = %e, "parquet export failed");
        ApiError::internal()
    })
}

/// A file name as Merit keeps it: the last path segment, without control
/// characters and without the invisible bidirectional controls (U+202E and
/// kin) that make `evil\u{202e}txt.exe` read as `evilexe.txt`; at most 255 bytes.
fn clean_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let mut out: String = base.chars().filter(|c| !c.is_control() && !bidi(*c)).collect();
    if out.len() > 255 {
        let mut end = 255;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_names_lose_paths_controls_and_bidi_overrides() {
        use super::clean_file_name as c;
        assert_eq!(c("a/b\\c.txt"), "c.txt");
        assert_eq!(c("evil\u{202e}txt.exe"), "eviltxt.exe");
        assert_eq!(c("x\u{2067}y\u{200f}\r\n.md"), "xy.md");
        assert_eq!(c(&"é".repeat(200)).len(), 254);
        assert_eq!(c(" \u{202e} "), "");
    }
}
