use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, Caller};
use crate::AppState;

pub async fn me_get(caller: Caller) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    Ok(Json(json!({ "name": user.name, "admin": user.admin, "created_at": user.created_at })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    #[serde(default)]
    admin: bool,
}

/// Administrators create accounts; the token is in the answer and nowhere else.
pub async fn users_create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewUser>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !caller.user()?.admin {
        return Err(ApiError::forbidden("only administrators can create accounts"));
    }
    let (user, token) = state.store.create_user(&body.name, body.admin).await?;
    Ok((StatusCode::CREATED, Json(json!({ "name": user.name, "admin": user.admin, "token": token }))))
}

/// `GET /accounts/{name}/balance`: what a user has earned from served
/// answers and spent on them, their allowance (how far below zero they may
/// go) and what running requests hold (credits; `*_micros` exact).
pub async fn accounts_balance(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let missing = || ApiError::not_found(format!("user `{name}`"));
    // One's own balance, or any for an administrator; to others every name
    // is missing alike (a balance is private, and so is whether a name exists).
    let user = caller.user()?;
    if user.name != name && !user.admin {
        return Err(missing());
    }
    balance_json(&state, &name).await
}

async fn balance_json(state: &AppState, name: &str) -> ApiResult<Json<Value>> {
    let missing = || ApiError::not_found(format!("user `{name}`"));
    let t = state.store.account(name).await?.ok_or_else(missing)?;
    let a = state.store.available(name).await?.ok_or_else(missing)?;
    let credits = |m: i64| m as f64 / 1e6;
    Ok(Json(json!({
        "account": name,
        "balance": credits(t.balance_micros), "earned": credits(t.earned_micros), "spent": credits(t.spent_micros),
        "allowance": credits(a.allowance_micros), "held": credits(a.held_micros), "available": credits(a.micros()),
        "balance_micros": t.balance_micros, "earned_micros": t.earned_micros, "spent_micros": t.spent_micros,
        "allowance_micros": a.allowance_micros, "held_micros": a.held_micros, "available_micros": a.micros(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allowance {
    /// Credits the account may go below zero (0 to 10^9).
    allowance: f64,
}

/// `PUT /accounts/{name}/allowance`: administrators set how far below zero
/// an account may spend on priced answers (default 0: only what it earned).
pub async fn accounts_allowance(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<Allowance>,
) -> ApiResult<Json<Value>> {
    if !caller.user()?.admin {
        return Err(ApiError::forbidden("only administrators set allowances"));
    }
    if !(0.0..=1e9).contains(&body.allowance) {
        return Err(ApiError::unprocessable(format!("allowance must be 0 to 1e9 credits, got {}", body.allowance)));
    }
    state.store.set_allowance(&name, (body.allowance * 1e6).round() as i64).await?;
    balance_json(&state, &name).await
}

/// `GET /tokens`: the caller's API tokens (never the tokens themselves).
pub async fn tokens_list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    Ok(Json(json!(state.store.tokens(user).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[serde(default)]
    label: String,
    /// Days until it stops working (1 to 3650); none: until revoked.
    expires_in_days: Option<u32>,
}

/// `POST /tokens`: a further token for the caller, shown once.
pub async fn tokens_create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let user = caller.user()?;
    let expires_at = match body.expires_in_days {
        None => None,
        Some(d @ 1..=3650) => Some(merit_store::now_ms() + i64::from(d) * 86_400_000),
        Some(d) => return Err(ApiError::unprocessable(format!("expires_in_days must be 1 to 3650, got {d}"))),
    };
    let token = state.store.issue_token(user, &body.label, expires_at).await?;
    let info = state.store.tokens(user).await?.into_iter().next();
    let mut v = json!(info);
    v["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(v)))
}

/// `DELETE /tokens/{id}`: revokes one of the caller's tokens (by its id, or
/// the token itself); it stops working at once.
pub async fn tokens_revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    Ok(Json(json!(state.store.revoke_token(user, &id).await?)))
}
