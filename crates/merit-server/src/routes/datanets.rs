use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use merit_core::Policy;
use merit_store::{Datanet, DatanetPatch, NewDatanet, Role, Version};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{access, parse_id, Access};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::AppState;

/// Parses a policy sent as TOML text; `json_schema` holds the text of the
/// schema file the policy names, if it names one.
fn parse_policy(toml: &str, json_schema: Option<&str>) -> Result<Policy, merit_core::PolicyError> {
    let used = std::cell::Cell::new(false);
    let policy = Policy::from_toml(toml, |path| {
        used.set(true);
        json_schema
            .map(str::to_string)
            .ok_or_else(|| format!("the policy names `{path}`: send that file's contents in the `json_schema` field"))
    })?;
    // A schema the policy does not name would be silently ignored: say so.
    if json_schema.is_some() && !used.get() {
        return Err(merit_core::PolicyError {
            key: "gates.json_schema".into(),
            reason: "a `json_schema` was sent but the policy names no gates.json_schema file to check rows against"
                .into(),
        });
    }
    Ok(policy)
}

async fn datanet_json(state: &AppState, caller: &Caller, a: &Access) -> ApiResult<Value> {
    let d = &a.datanet;
    let stats = state.store.datanet_stats(d).await?;
    let versions = state.store.versions(d).await?;
    let curators: Vec<String> =
        state.store.members(d).await?.into_iter().filter(|(_, r)| *r == Role::Curator).map(|(n, _)| n).collect();
    let quota = match &caller.0 {
        Some(user) => {
            let (ub, uf, db) = state.store.usage_today(d, user).await?;
            let l = &d.policy.limits;
            let left = |limit: u64, used: u64| {
                if limit == 0 {
                    Value::Null
                } else {
                    json!(limit.saturating_sub(used))
                }
            };
            json!({
                "user_bytes_remaining": left(l.user_bytes_per_day, ub),
                "user_files_remaining": left(l.user_files_per_day, uf),
                "datanet_bytes_remaining": left(l.datanet_bytes_per_day, db),
                "resets_at": merit_core::quota::rfc3339(merit_core::quota::reset_at_ms(merit_core::quota::utc_day(merit_store::now_ms()))),
            })
        }
        None => Value::Null,
    };
    let mut v = summary_json(d);
    v["description"] = json!(d.description);
    v["policy"] = json!(d.policy);
    v["policy_hash"] = json!(d.policy_hash);
    v["stats"] = json!(stats);
    v["versions"] = json!(versions);
    v["curators"] = json!(curators);
    v["your_role"] = json!(a.role.map(Role::as_str));
    v["your_quota"] = quota;
    Ok(v)
}

fn summary_json(d: &Datanet) -> Value {
    json!({
        "name": d.name,
        "owner": d.owner,
        "kind": d.kind,
        "summary": d.summary,
        "tags": d.tags,
        "published": d.published,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    })
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    pub q: Option<String>,
    pub tag: Option<String>,
}

pub async fn datanets_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for d in state.store.datanets().await? {
        if let Some(tag) = &query.tag {
            if !d.tags.contains(tag) {
                continue;
            }
        }
        if let Some(q) = &query.q {
            let q = q.to_lowercase();
            if !d.name.contains(&q) && !d.summary.to_lowercase().contains(&q) {
                continue;
            }
        }
        if !d.published {
            let Some(user) = &caller.0 else { continue };
            let role = state.store.role(&d, user).await?;
            if !user.admin && !matches!(role, Some(Role::Owner | Role::Curator)) {
                continue;
            }
        }
        let stats = state.store.datanet_stats(&d).await?;
        let mut v = summary_json(&d);
        v["stats"] = json!(stats);
        out.push(v);
    }
    Ok(Json(Value::Array(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    name: String,
    #[serde(default)]
    policy: String,
    json_schema: Option<String>,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    publish: bool,
}

pub async fn datanets_create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let user = caller.user()?;
    let policy = parse_policy(&body.policy, body.json_schema.as_deref())?;
    let new = NewDatanet {
        name: body.name,
        policy,
        summary: body.summary,
        description: body.description,
        tags: body.tags,
        publish: body.publish,
    };
    let d = state.store.create_datanet(user, new).await?;
    let a = Access { datanet: d, role: Some(Role::Owner), admin: user.admin };
    Ok((StatusCode::CREATED, Json(datanet_json(&state, &caller, &a).await?)))
}

pub async fn datanets_show(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let a = access(&state, &caller, &name).await?;
    Ok(Json(datanet_json(&state, &caller, &a).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    summary: Option<String>,
    description: Option<String>,
    tags: Option<Vec<String>>,
    policy: Option<String>,
    json_schema: Option<String>,
}

pub async fn datanets_update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateBody>,
) -> ApiResult<Json<Value>> {
    caller.user()?;
    let a = access(&state, &caller, &name).await?;
    a.require_owner()?;
    if body.policy.is_none() && body.json_schema.is_some() {
        return Err(ApiError::unprocessable("`json_schema` goes with the `policy` that names it"));
    }
    let policy = body.policy.as_deref().map(|p| parse_policy(p, body.json_schema.as_deref())).transpose()?;
    let patch = DatanetPatch { summary: body.summary, description: body.description, tags: body.tags, policy };
    let d = state.store.update_datanet(&a.datanet, patch).await?;
    let a = Access { datanet: d, ..a };
    Ok(Json(datanet_json(&state, &caller, &a).await?))
}

pub async fn datanets_publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.user()?;
    let a = access(&state, &caller, &name).await?;
    a.require_owner()?;
    let d = state.store.publish_datanet(&a.datanet).await?;
    let a = Access { datanet: d, ..a };
    Ok(Json(datanet_json(&state, &caller, &a).await?))
}

async fn set_curator(
    state: &AppState,
    caller: &Caller,
    name: &str,
    user_name: &str,
    role: Option<Role>,
) -> ApiResult<Json<Value>> {
    caller.user()?;
    let a = access(state, caller, name).await?;
    a.require_owner()?;
    let user =
        state.store.user_by_name(user_name).await?.ok_or_else(|| ApiError::not_found(format!("user `{user_name}`")))?;
    state.store.set_role(&a.datanet, &user, role).await?;
    Ok(Json(json!({ "datanet": a.datanet.name, "user": user.name, "role": role.map(Role::as_str) })))
}

pub async fn curators_add(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    set_curator(&state, &caller, &name, &user, Some(Role::Curator)).await
}

pub async fn curators_remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    set_curator(&state, &caller, &name, &user, None).await
}

pub async fn versions_list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Version>>> {
    let a = access(&state, &caller, &name).await?;
    Ok(Json(state.store.versions(&a.datanet).await?))
}

pub(crate) async fn version_or_latest(state: &AppState, d: &Datanet, number: Option<i64>) -> ApiResult<Version> {
    match number {
        Some(n) => state
            .store
            .version(d, n)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("version {n} of datanet `{}`", d.name))),
        None => state
            .store
            .latest_version(d)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("a version of datanet `{}` (nothing accepted yet)", d.name))),
    }
}

pub async fn versions_show(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, number)): Path<(String, String)>,
) -> ApiResult<Json<Version>> {
    let a = access(&state, &caller, &name).await?;
    let n = parse_id("version", &number)?;
    Ok(Json(version_or_latest(&state, &a.datanet, Some(n)).await?))
}

#[derive(Deserialize)]
pub struct RowsQuery {
    pub version: Option<i64>,
    #[serde(default)]
    pub offset: i64,
    pub limit: Option<i64>,
    pub q: Option<String>,
}

pub async fn rows_list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<RowsQuery>,
) -> ApiResult<Json<Value>> {
    let a = access(&state, &caller, &name).await?;
    let v = version_or_latest(&state, &a.datanet, query.version).await?;
    let limit = super::page_limit(query.limit, query.offset)?;
    let rows =
        state.store.rows(&a.datanet, &v, query.offset, limit, query.q.as_deref().filter(|q| !q.is_empty())).await?;
    Ok(Json(json!({ "version": v.number, "row_count": v.row_count, "offset": query.offset, "rows": rows })))
}

#[derive(Deserialize)]
pub struct ExportQuery {
    version: Option<i64>,
    format: Option<String>,
}

pub async fn datanets_export(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    let a = access(&state, &caller, &name).await?;
    let v = version_or_latest(&state, &a.datanet, query.version).await?;
    let mut rows = Vec::with_capacity(v.row_count.max(0) as usize);
    let mut offset = 0;
    while offset < v.row_count {
        let page = state.store.rows(&a.datanet, &v, offset, 1000, None).await?;
        if page.is_empty() {
            break;
        }
        offset += page.len() as i64;
        rows.extend(page);
    }
    let records: Vec<serde_json::Map<String, Value>> = rows
        .into_iter()
        .map(|r| {
            let mut m = match r.content {
                Value::Object(m) => m,
                other => serde_json::Map::from_iter([("content".to_string(), other)]),
            };
            m.insert("row_index".into(), json!(r.index));
            m.insert("contribution_id".into(), json!(r.contribution_id));
            m.insert("contributor".into(), json!(r.contributor));
            m.insert("score".into(), json!(r.score));
            m
        })
        .collect();
    let stem = format!("{}-v{}", a.datanet.name, v.number);
    match query.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => {
            let mut body = String::new();
            for r in &records {
                body.push_str(&Value::Object(r.clone()).to_string());
                body.push('\n');
            }
            Ok(download(body.into_bytes(), "application/x-ndjson", &format!("{stem}.jsonl")))
        }
        "parquet" => {
            let bytes = tokio::task::spawn_blocking(move || crate::routes::contributions::to_parquet(&records))
                .await
                .map_err(|_| ApiError::internal())??;
            Ok(download(bytes, "application/vnd.apache.parquet", &format!("{stem}.parquet")))
        }
        other => Err(ApiError::bad_request(format!("format must be jsonl or parquet, got `{other}`"))),
    }
}

fn download(bytes: Vec<u8>, content_type: &'static str, filename: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
        ],
        bytes,
    )
        .into_response()
}

pub async fn leaderboard_datanet(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let a = access(&state, &caller, &name).await?;
    let outcomes = state.store.outcomes(Some(&a.datanet)).await?;
    with_earned(&state, merit_core::score::leaderboard(&outcomes)).await
}

/// A leaderboard with each contributor's `earned` credits (all their
/// payouts from served answers: as contributor, publisher or owner).
async fn with_earned(state: &AppState, standings: Vec<merit_core::score::Standing>) -> ApiResult<Json<Value>> {
    let accounts = state.store.accounts().await?;
    let mut v = json!(standings);
    for s in v.as_array_mut().into_iter().flatten() {
        let earned = s["contributor"].as_str().and_then(|n| accounts.get(n)).map_or(0, |t| t.earned_micros);
        s["earned"] = json!(earned as f64 / 1e6);
    }
    Ok(Json(v))
}

pub async fn leaderboard_global(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    // The global board counts published datanets only.
    let mut outcomes = Vec::new();
    for d in state.store.datanets().await?.iter().filter(|d| d.published) {
        outcomes.extend(state.store.outcomes(Some(d)).await?);
    }
    with_earned(&state, merit_core::score::leaderboard(&outcomes)).await
}
