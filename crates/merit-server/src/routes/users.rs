use axum::extract::State;
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
