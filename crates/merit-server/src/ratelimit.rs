//! Per-caller request rate limiting: a token bucket per user of a valid API
//! token (per client address for the public and for invalid tokens),
//! answering 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::AppState;

/// How many requests a caller may make: `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { per_second: 20.0, burst: 100.0 }
    }
}

/// The buckets, keyed by a hash of the token or by the client address.
#[derive(Debug, Default)]
pub struct Buckets {
    inner: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Buckets {
    /// Takes one request from `key`'s bucket, or says how many seconds until one is free.
    pub fn take(&self, key: &str, limit: RateLimit) -> Result<(), f64> {
        let now = Instant::now();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Forget full buckets so the map stays bounded.
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * limit.per_second < limit.burst
            });
        }
        let (tokens, at) = map.entry(key.to_string()).or_insert((limit.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * limit.per_second).min(limit.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / limit.per_second)
        }
    }
}

pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let address = match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => format!("a:{}", addr.ip()),
        None => "a:local".to_string(),
    };
    // A valid token has its own bucket; an invalid one counts against the
    // address it came from, so made-up tokens cannot each get a fresh bucket.
    // The lookup is kept for `Caller`, which does not repeat it.
    let key = match crate::extract::bearer(&parts) {
        Some(token) => match state.store.user_by_token(token).await {
            Ok(Some(user)) => {
                let key = format!("u:{}", user.id);
                parts.extensions.insert(crate::extract::TokenUser(Some(user)));
                key
            }
            Ok(None) => {
                parts.extensions.insert(crate::extract::TokenUser(None));
                address
            }
            Err(e) => return ApiError::from(e).into_response(),
        },
        None => address,
    };
    if let Err(wait) = state.buckets.take(&key, state.rate_limit) {
        let secs = wait.ceil().max(1.0) as u64;
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; try again in {secs} s"),
        )
        .with_details(serde_json::json!({ "limit": "requests_per_second", "value": state.rate_limit.per_second }));
        e.retry_after = Some(secs);
        return e.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let b = Buckets::default();
        let limit = RateLimit { per_second: 1.0, burst: 3.0 };
        for _ in 0..3 {
            assert!(b.take("k", limit).is_ok());
        }
        let wait = b.take("k", limit).unwrap_err();
        assert!(wait > 0.0 && wait <= 1.0);
        assert!(b.take("other", limit).is_ok());
    }
}
