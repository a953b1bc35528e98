//! The `/api/v1` routes, composed in one place.

mod contributions;
pub(crate) mod datanets;
pub(crate) mod ledger;
pub(crate) mod runs;
mod users;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;

use crate::error::{ApiError, ApiResult};
use crate::extract::Caller;
use crate::AppState;
use merit_store::{Datanet, Role};

/// The C2SP tlog-tiles routes, outside `/api/v1`.
pub fn tlog() -> Router<AppState> {
    Router::new()
        .route("/ledger/checkpoint", get(ledger::checkpoint_get))
        .route("/ledger/tile/{*path}", get(ledger::tile_get))
}

pub fn api() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(crate::openapi::openapi_get))
        .route("/me", get(users::me_get))
        .route("/ledger/key", get(ledger::key_get))
        .route("/ledger/entries", get(ledger::entries_list))
        .route("/ledger/entries/{index}", get(ledger::entry_get))
        .route("/ledger/proof/inclusion", get(ledger::inclusion_get))
        .route("/ledger/proof/consistency", get(ledger::consistency_get))
        .route("/users", post(users::users_create))
        .route("/accounts/{name}/balance", get(users::accounts_balance))
        .route("/accounts/{name}/allowance", put(users::accounts_allowance))
        .route("/tokens", get(users::tokens_list).post(users::tokens_create))
        .route("/tokens/{id}", delete(users::tokens_revoke))
        .route("/leaderboard", get(datanets::leaderboard_global))
        .route("/datanets", get(datanets::datanets_list).post(datanets::datanets_create))
        .route("/datanets/{name}", get(datanets::datanets_show).patch(datanets::datanets_update))
        .route("/datanets/{name}/publish", post(datanets::datanets_publish))
        .route("/datanets/{name}/curators/{user}", put(datanets::curators_add).delete(datanets::curators_remove))
        .route("/datanets/{name}/versions", get(datanets::versions_list))
        .route("/datanets/{name}/versions/{number}", get(datanets::versions_show))
        .route("/datanets/{name}/rows", get(datanets::rows_list))
        .route("/datanets/{name}/export", get(datanets::datanets_export))
        .route("/datanets/{name}/leaderboard", get(datanets::leaderboard_datanet))
        .route(
            "/datanets/{name}/contributions",
            get(contributions::contributions_list)
                .post(contributions::contributions_create)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/datanets/{name}/contributions/{id}", get(contributions::contributions_show))
        .route("/datanets/{name}/contributions/{id}/file", get(contributions::contributions_file))
        .route("/datanets/{name}/contributions/{id}/approve", post(contributions::contributions_approve))
        .route("/datanets/{name}/contributions/{id}/reject", post(contributions::contributions_reject))
        .route("/runs", get(runs::runs_list).post(runs::runs_create).layer(DefaultBodyLimit::max(256 * 1024 * 1024)))
        .route("/runs/{id}", get(runs::runs_show))
        .route("/models", get(runs::models_list))
        .route("/runs/{id}/stop", post(runs::runs_stop))
        .route("/runs/{id}/resume", post(runs::runs_resume))
        .route("/runs/{id}/publish", post(runs::runs_publish))
        .route("/runs/{id}/events", get(runs::runs_events))
        .route("/runs/{id}/files/{name}", get(runs::runs_file))
}

/// What a caller may do with a datanet.
pub(crate) struct Access {
    pub datanet: Datanet,
    pub role: Option<Role>,
    pub admin: bool,
}

impl Access {
    /// Owner or curator: reviews contributions. Administrators do not (the
    /// roles table gives them no say over anyone's datanet).
    pub fn is_curator(&self) -> bool {
        matches!(self.role, Some(Role::Owner | Role::Curator))
    }

    /// Sees the unpublished datanet and every contribution: owner, curators
    /// and administrators.
    pub fn sees_all(&self) -> bool {
        self.admin || self.is_curator()
    }

    pub fn is_owner(&self) -> bool {
        self.role == Some(Role::Owner)
    }

    pub fn require_owner(&self) -> ApiResult<()> {
        if self.is_owner() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("only the owner of datanet `{}` can do this", self.datanet.name)))
        }
    }

    pub fn require_curator(&self) -> ApiResult<()> {
        if self.is_curator() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "only the owner or a curator of datanet `{}` can do this",
                self.datanet.name
            )))
        }
    }
}

/// Loads a datanet the caller may see: published ones for everybody,
/// unpublished ones only for their owner, curators and administrators
/// (others get 404, so unpublished names do not leak).
pub(crate) async fn access(state: &AppState, caller: &Caller, name: &str) -> ApiResult<Access> {
    let not_found = || ApiError::not_found(format!("datanet `{name}`"));
    let datanet = state.store.datanet(name).await?.ok_or_else(not_found)?;
    let (role, admin) = match &caller.0 {
        Some(user) => (state.store.role(&datanet, user).await?, user.admin),
        None => (None, false),
    };
    let access = Access { datanet, role, admin };
    if !access.datanet.published && !access.sees_all() {
        return Err(not_found());
    }
    Ok(access)
}

/// The page size of a listing: `limit` (default 100) must be 1 to 1000 and
/// `offset` not negative.
pub(crate) fn page_limit(limit: Option<i64>, offset: i64) -> ApiResult<i64> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) || offset < 0 {
        return Err(ApiError::bad_request("limit must be 1 to 1000 and offset not negative"));
    }
    Ok(limit)
}

/// A file as a response body, read in pieces as the client takes them (a
/// large file never sits in memory whole). Errors opening it are returned.
pub(crate) async fn stream_file(path: &std::path::Path) -> std::io::Result<axum::body::Body> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    let pieces = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            // The error ends the body (and the stream after it).
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(axum::body::Body::from_stream(pieces))
}

/// Parses a numeric path segment.
pub(crate) fn parse_id(what: &str, s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::bad_request(format!("{what} must be a positive whole number, got `{s}`")))
}
