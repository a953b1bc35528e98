//! One memory budget for everything requests hold: bodies as they are read
//! and parsed, and files while the gates judge them. Each request reserves
//! what it will need before it reads; when the budget is spent, requests wait
//! their turn (first come, first served) and, past a bound, get 503. A
//! request that would need more than the whole budget gets 413 at once.
//!
//! Uploads are not in the body part: their files stream to the staging
//! folder on disk, and each file reserves its share only while it is gated.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Permits are KiB.
const UNIT: u64 = 1024;

/// How much memory a body takes while held and parsed, per byte received
/// (the bytes, plus the JSON values built from them).
pub const BODY_FACTOR: u64 = 3;

/// How much memory the gates take per byte of a file (the file, the text
/// extracted from it, the rows and their stored form).
pub const GATE_FACTOR: u64 = 4;

/// A body sent without `Content-Length` may be at most this long (its size
/// is not known beforehand, so this is what it reserves).
pub const UNSIZED_BODY_MAX: u64 = 2 * 1024 * 1024;

/// How long a request waits for memory before it gets 503.
const WAIT: Duration = Duration::from_secs(60);

/// The shared budget (cheap to clone).
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    total: u64,
}

/// Memory held by one request; given back when dropped.
#[derive(Debug)]
pub struct Reservation(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl MemoryBudget {
    /// A budget of `bytes` (at least 1 MiB).
    pub fn new(bytes: u64) -> MemoryBudget {
        let units = (bytes / UNIT).clamp(1024, u64::from(u32::MAX) / 2);
        MemoryBudget { sem: Arc::new(Semaphore::new(units as usize)), total: units * UNIT }
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Reserves `bytes` for `what` (a phrase for the error: "the file `a.jsonl`").
    pub async fn reserve(&self, bytes: u64, what: &str) -> ApiResult<Reservation> {
        if bytes == 0 {
            return Ok(Reservation(None));
        }
        let units = bytes.div_ceil(UNIT);
        if units * UNIT > self.total {
            let mib = |b: u64| b.div_ceil(1 << 20);
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large_for_server",
                format!(
                    "{what} would need about {} MiB of server memory; this server gives requests {} MiB in all \
                     (merit serve --request-memory)",
                    mib(bytes),
                    mib(self.total)
                ),
            )
            .with_details(json!({ "limit": "request_memory", "value": self.total, "needed": bytes })));
        }
        let acquire = self.sem.clone().acquire_many_owned(units as u32);
        match tokio::time::timeout(WAIT, acquire).await {
            Ok(Ok(permit)) => Ok(Reservation(Some(permit))),
            Ok(Err(_)) => Err(ApiError::internal()),
            Err(_) => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    format!(
                        "the server's request memory is in use; {what} could not start within {} s",
                        WAIT.as_secs()
                    ),
                );
                e.retry_after = Some(5);
                Err(e)
            }
        }
    }
}

/// Whether a request is a file upload (those stream to disk and reserve per file).
fn is_upload(req: &Request) -> bool {
    req.method() == Method::POST
        && req.uri().path().starts_with("/api/v1/datanets/")
        && req.uri().path().ends_with("/contributions")
}

/// Reserves the memory a request's body needs before anything reads it.
pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if is_upload(&req) {
        return next.run(req).await;
    }
    let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    let (reserve, req) = match length {
        Some(n) => (n, req),
        // No size up front (a chunked HTTP/1 body, or any HTTP/2 body without
        // a length): the body may be at most UNSIZED_BODY_MAX.
        None if chunked || req.version() == axum::http::Version::HTTP_2 => {
            let (parts, body) = req.into_parts();
            let body = axum::body::Body::new(http_body_util::Limited::new(body, UNSIZED_BODY_MAX as usize));
            (UNSIZED_BODY_MAX, Request::from_parts(parts, body))
        }
        // HTTP/1 with neither header has no body.
        None => (0, req),
    };
    match state.memory.reserve(reserve.saturating_mul(BODY_FACTOR), "this request's body").await {
        Ok(held) => {
            let response = next.run(req).await;
            drop(held);
            response
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_each_other_and_oversized_ones_are_refused() {
        let budget = MemoryBudget::new(4 << 20);
        assert_eq!(budget.total(), 4 << 20);
        let too_big = budget.reserve(5 << 20, "the file `x`").await.unwrap_err();
        assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(too_big.message.contains("the file `x`") && too_big.message.contains("4 MiB"), "{}", too_big.message);
        let first = budget.reserve(3 << 20, "a").await.unwrap();
        // The second has to wait until the first is given back.
        let b = budget.clone();
        let second = tokio::spawn(async move { b.reserve(2 << 20, "b").await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        drop(first);
        second.await.unwrap().unwrap();
        assert!(budget.reserve(0, "nothing").await.is_ok());
    }
}
