//! The ledger over HTTP: C2SP tlog-tiles (`/ledger/checkpoint`,
//! `/ledger/tile/…`) and JSON under `/api/v1/ledger`.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use merit_ledger::checkpoint::Checkpoint;
use merit_ledger::event::Event;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, Caller};
use crate::AppState;

/// Hashes (or entries) per full tile.
const TILE_WIDTH: u64 = 256;

/// The latest checkpoint, signed, as a C2SP signed note.
pub async fn checkpoint_get(State(state): State<AppState>) -> ApiResult<Response> {
    let note = checkpoint_text(&state).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], note)
        .into_response())
}

/// The current signed checkpoint (a C2SP signed note).
pub(crate) async fn checkpoint_text(state: &AppState) -> ApiResult<String> {
    let size = state.store.ledger_size().await?;
    let root = state.store.ledger_root(size).await?;
    Ok(state.signer.sign(&Checkpoint { origin: state.signer.name().to_string(), size, root }))
}

/// A tile path after `/ledger/tile/`: `<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`,
/// with N written as 3-digit elements, all but the last prefixed with `x`.
#[derive(Debug, PartialEq, Eq)]
struct TilePath {
    /// `None` for entry bundles.
    level: Option<u32>,
    index: u64,
    width: u64,
}

fn parse_tile_path(path: &str) -> Option<TilePath> {
    let mut elems: Vec<&str> = path.split('/').collect();
    let first = elems.remove(0);
    let level = if first == "entries" { None } else { Some(first.parse::<u32>().ok().filter(|l| *l <= 7)?) };
    let mut width = TILE_WIDTH;
    if elems.len() >= 2 && elems[elems.len() - 2].ends_with(".p") {
        width = elems.pop()?.parse::<u64>().ok().filter(|w| (1..TILE_WIDTH).contains(w))?;
        let last = elems.pop()?.strip_suffix(".p")?;
        elems.push(last);
    }
    let mut index: u64 = 0;
    let n = elems.len();
    if n == 0 {
        return None;
    }
    for (i, e) in elems.iter().enumerate() {
        let digits = if i + 1 < n { e.strip_prefix('x')? } else { e };
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        index = index.checked_mul(1000)?.checked_add(digits.parse::<u64>().ok()?)?;
    }
    Some(TilePath { level, index, width })
}

/// A hash tile or an entry bundle.
pub async fn tile_get(State(state): State<AppState>, Path(path): Path<String>) -> ApiResult<Response> {
    let bad = || ApiError::not_found(format!("tile `{path}`"));
    let t = parse_tile_path(&path).ok_or_else(bad)?;
    let from = t.index.checked_mul(TILE_WIDTH).ok_or_else(bad)?;
    let to = from + t.width;
    let body: Vec<u8> = match t.level {
        Some(level) => {
            let hashes = state.store.ledger_nodes(level * 8, from, to).await?;
            if hashes.len() as u64 != t.width {
                return Err(bad());
            }
            hashes.concat()
        }
        None => {
            let entries = state.store.ledger_entries(from, t.width).await?;
            if entries.len() as u64 != t.width {
                return Err(bad());
            }
            let mut out = Vec::new();
            for (_, leaf) in entries {
                out.extend_from_slice(&(leaf.len() as u16).to_be_bytes());
                out.extend_from_slice(&leaf);
            }
            out
        }
    };
    // Tiles never change once they exist.
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response())
}

pub async fn key_get(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "origin": state.signer.name(), "vkey": state.signer.verifier_key() }))
}

fn entry_json(index: u64, leaf: &[u8]) -> Value {
    let event = Event::from_leaf(leaf).ok().map(|e| serde_json::to_value(e).unwrap_or(Value::Null));
    json!({
        "index": index,
        "leaf": B64.encode(leaf),
        "leaf_hash": hex::encode(merit_ledger::leaf_hash(leaf)),
        "event": event,
    })
}

/// Who may read which entries in the JSON listing: an entry about an
/// unpublished datanet only those who see the datanet (owner, curators,
/// administrators); one about a contribution that is not accepted only its
/// contributor and those who see every contribution of its datanet. Others
/// get the entry's index and leaf hash with `"hidden": true`. (The tiles
/// still carry every leaf, but a draft's leaves name it by a salted
/// commitment until it is published: see the README.) A visible entry that
/// names a datanet by its commitment also gets `"datanet_name"`.
struct Visibility<'a> {
    state: &'a AppState,
    caller: &'a Caller,
    datanets: HashMap<String, Option<bool>>,
    /// Commitment → name, for the datanets the caller may see.
    names: HashMap<String, String>,
    contributions: HashMap<i64, bool>,
}

impl Visibility<'_> {
    /// None: the caller may not see the datanet; Some(all): whether they see
    /// all its contributions.
    async fn datanet(&mut self, name: &str) -> ApiResult<Option<bool>> {
        if let Some(v) = self.datanets.get(name) {
            return Ok(*v);
        }
        let real = if name.starts_with(merit_ledger::event::COMMITMENT_PREFIX) {
            self.state.store.datanet_by_commitment(name).await?.map(|d| d.name)
        } else {
            Some(name.to_string())
        };
        let v = match real.as_deref() {
            None => None,
            Some(real) => match super::access(self.state, self.caller, real).await {
                Ok(a) => Some(a.sees_all()),
                Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => None,
                Err(e) => return Err(e),
            },
        };
        if let (Some(_), Some(real)) = (v, real) {
            if real != name {
                self.names.insert(name.to_string(), real);
            }
        }
        self.datanets.insert(name.to_string(), v);
        Ok(v)
    }

    async fn contribution(&mut self, id: i64, datanet: &str) -> ApiResult<bool> {
        if let Some(v) = self.contributions.get(&id) {
            return Ok(*v);
        }
        let v = match self.datanet(datanet).await? {
            None => false,
            Some(true) => true,
            Some(false) => match self.state.store.contribution(id).await? {
                Some(c) => {
                    c.status == merit_core::verdict::Status::Accepted
                        || self.caller.0.as_ref().is_some_and(|u| u.name == c.contributor)
                }
                None => false,
            },
        };
        self.contributions.insert(id, v);
        Ok(v)
    }

    async fn may_see(&mut self, leaf: &[u8]) -> ApiResult<bool> {
        Ok(match Event::from_leaf(leaf) {
            Ok(Event::DatanetCreated { datanet, .. })
            | Ok(Event::DatanetPublished { datanet, .. })
            | Ok(Event::DatanetPolicy { datanet, .. })
            | Ok(Event::DatanetVersion { datanet, .. }) => self.datanet(&datanet).await?.is_some(),
            Ok(Event::ContributionSubmitted { contribution_id, datanet, .. })
            | Ok(Event::ContributionVerdict { contribution_id, datanet, .. }) => {
                self.contribution(contribution_id, &datanet).await?
            }
            _ => true,
        })
    }

    async fn entry(&mut self, index: u64, leaf: &[u8]) -> ApiResult<Value> {
        if self.may_see(leaf).await? {
            let mut e = entry_json(index, leaf);
            if let Some(name) = e["event"]["datanet"].as_str().and_then(|c| self.names.get(c)) {
                e["datanet_name"] = json!(name);
            }
            Ok(e)
        } else {
            Ok(json!({ "index": index, "leaf_hash": hex::encode(merit_ledger::leaf_hash(leaf)), "hidden": true }))
        }
    }
}

fn visibility<'a>(state: &'a AppState, caller: &'a Caller) -> Visibility<'a> {
    Visibility { state, caller, datanets: HashMap::new(), names: HashMap::new(), contributions: HashMap::new() }
}

pub async fn entry_get(
    State(state): State<AppState>,
    caller: Caller,
    Path(index): Path<String>,
) -> ApiResult<Json<Value>> {
    let index: u64 =
        index.parse().map_err(|_| ApiError::bad_request(format!("index must be a whole number, got `{index}`")))?;
    let entries = state.store.ledger_entries(index, 1).await?;
    match entries.first() {
        Some((i, leaf)) if *i == index => Ok(Json(visibility(&state, &caller).entry(index, leaf).await?)),
        _ => Err(ApiError::not_found(format!("ledger entry {index}"))),
    }
}

#[derive(Deserialize)]
pub struct EntriesQuery {
    #[serde(default)]
    from: u64,
    limit: Option<u64>,
    /// Only entries about this subject: `contribution:<id>`, `datanet:<name>` or `run:<id>`.
    subject: Option<String>,
}

pub async fn entries_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EntriesQuery>,
) -> ApiResult<Json<Value>> {
    let limit = super::page_limit(q.limit.map(|l| l.min(i64::MAX as u64) as i64), 0)? as u64;
    let size = state.store.ledger_size().await?;
    let entries = match &q.subject {
        Some(subject) => state.store.ledger_entries_about(subject).await?,
        None => state.store.ledger_entries(q.from.min(size), limit).await?,
    };
    let mut v = visibility(&state, &caller);
    let mut list = Vec::with_capacity(entries.len());
    for (i, leaf) in &entries {
        let e = v.entry(*i, leaf).await?;
        // Asked by subject: an entry the caller may not see is not listed (the subject is a name).
        if q.subject.is_none() || e.get("hidden").is_none() {
            list.push(e);
        }
    }
    Ok(Json(json!({ "size": size, "entries": list })))
}

/// The tree size asked for, or the ledger's current size.
async fn size_or_current(state: &AppState, size: Option<u64>) -> ApiResult<u64> {
    match size {
        Some(s) => Ok(s),
        None => Ok(state.store.ledger_size().await?),
    }
}

#[derive(Deserialize)]
pub struct InclusionQuery {
    index: u64,
    size: Option<u64>,
}

pub async fn inclusion_get(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> ApiResult<Json<Value>> {
    let size = size_or_current(&state, q.size).await?;
    let hashes = state.store.ledger_inclusion_proof(q.index, size).await?;
    let leaf = state.store.ledger_entries(q.index, 1).await?;
    let leaf_hash = leaf.first().map(|(_, l)| hex::encode(merit_ledger::leaf_hash(l))).unwrap_or_default();
    let hashes: Vec<String> = hashes.iter().map(hex::encode).collect();
    Ok(Json(json!({ "index": q.index, "size": size, "leaf_hash": leaf_hash, "hashes": hashes })))
}

#[derive(Deserialize)]
pub struct ConsistencyQuery {
    old: u64,
    new: Option<u64>,
}

pub async fn consistency_get(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> ApiResult<Json<Value>> {
    let new = size_or_current(&state, q.new).await?;
    let hashes = state.store.ledger_consistency_proof(q.old, new).await?;
    let hashes: Vec<String> = hashes.iter().map(hex::encode).collect();
    Ok(Json(json!({ "old": q.old, "new": new, "hashes": hashes })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_paths() {
        let t = |level, index, width| Some(TilePath { level, index, width });
        assert_eq!(parse_tile_path("0/000"), t(Some(0), 0, 256));
        assert_eq!(parse_tile_path("1/x001/x234/067"), t(Some(1), 1_234_067, 256));
        assert_eq!(parse_tile_path("0/005.p/17"), t(Some(0), 5, 17));
        assert_eq!(parse_tile_path("entries/x001/002.p/255"), t(None, 1002, 255));
        for bad in ["", "0", "0/5", "0/0005", "0/001/002", "9/000", "0/000.p/0", "0/000.p/256", "x/000", "entries/abc"]
        {
            assert_eq!(parse_tile_path(bad), None, "{bad}");
        }
    }
}
