//! Extractors that answer bad input in the API's error shape.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;
use merit_store::User;

/// A JSON body; rejections become 400 / 415 / 422 in the API's shape.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON with `Content-Type: application/json`",
            )),
            Err(JsonRejection::JsonDataError(e)) => {
                Err(ApiError::unprocessable(format!("the JSON body does not fit: {}", e.body_text())))
            }
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is too large: {}", e.body_text()),
            )),
            Err(e) => Err(ApiError::bad_request(format!("the body is not valid JSON: {}", e.body_text()))),
        }
    }
}

/// Query parameters; rejections become 400 in the API's shape.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::bad_request(format!("bad query: {}", e.body_text())))
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// The caller: a user when the request carries a valid token, else the public.
pub struct Caller(pub Option<User>);

impl Caller {
    /// The signed-in user, or 401.
    pub fn user(&self) -> Result<&User, ApiError> {
        self.0.as_ref().ok_or_else(ApiError::unauthorized)
    }
}

/// The user of a request's bearer token, as the rate limiter already looked
/// it up (None: the token is not valid).
#[derive(Clone)]
pub(crate) struct TokenUser(pub Option<User>);

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim())
}

/// The name of the browser session cookie.
pub const SESSION_COOKIE: &str = "merit_session";

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get_all(axum::http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    })
}

/// A signed-in browser: the session's user and CSRF token.
pub struct Session {
    pub user: User,
    pub csrf: String,
    pub token: String,
}

impl Session {
    /// The session of a request's cookie, if it is live.
    pub async fn of(parts: &Parts, state: &AppState) -> Result<Option<Session>, ApiError> {
        let Some(token) = cookie(parts, SESSION_COOKIE) else {
            return Ok(None);
        };
        Ok(state.store.session(token).await?.map(|(user, csrf)| Session { user, csrf, token: token.to_string() }))
    }
}

/// Whether a method changes state (and so needs the CSRF token with a session).
fn unsafe_method(m: &axum::http::Method) -> bool {
    !matches!(*m, axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // An Authorization header that is not a readable bearer token is an
        // error, not the public (a client should learn its key is garbled).
        if parts.headers.contains_key(axum::http::header::AUTHORIZATION) && bearer(parts).is_none() {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the Authorization header must be `Bearer <token>` in visible ASCII",
            ));
        }
        let Some(token) = bearer(parts) else {
            // The web app: a session cookie, with the CSRF token on every change.
            let Some(session) = Session::of(parts, state).await? else {
                return Ok(Caller(None));
            };
            if unsafe_method(&parts.method) {
                let sent = parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
                if sent != Some(session.csrf.as_str()) {
                    return Err(ApiError::forbidden("this request needs the page's CSRF token (X-CSRF-Token)"));
                }
            }
            return Ok(Caller(Some(session.user)));
        };
        let user = match parts.extensions.get::<TokenUser>() {
            Some(TokenUser(known)) => known.clone(),
            None => state.store.user_by_token(token).await?,
        };
        match user {
            Some(user) => Ok(Caller(Some(user))),
            None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the API token is not valid")),
        }
    }
}
