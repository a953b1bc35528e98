//! Span attribution of served answers (`"attribution": true` on `/v1`).
//!
//! A published adapter (`<base>:run-<id>`) was trained on datanet versions;
//! for each of them a [`SpanIndex`] over its rows, tokenized with the base's
//! tokenizer, is built once (when the adapter is published, or on the first
//! request that needs it) and kept on disk beside the other indexes
//! (`DIR/<datanet>@<version>.<base>.spans`) and in memory. An answer is
//! tokenized the same way and credited to the contributions whose rows hold
//! its maximal verbatim spans (see `merit_attrib::span`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use merit_attrib::SpanIndex;
use merit_ledger::event::{Credit, Payout};
use serde_json::{json, Value};

use crate::openai::{GenError, Generator};
use crate::AppState;

/// Shortest span credited, in tokens (OLMoTrace's default is similar).
pub const MIN_SPAN_TOKENS: usize = 8;
/// Rows read from the store at a time while building an index.
const PAGE: i64 = 1000;

/// Indexes kept in memory at once (least recently used go first; they are
/// read back from `dir` when needed again).
const LOADED: usize = 8;

/// Built indexes, by file name; `dir` keeps them across restarts.
#[derive(Default)]
pub struct Indexes {
    dir: Option<PathBuf>,
    /// Least recently used first.
    loaded: Mutex<Vec<(String, Arc<SpanIndex>)>>,
    /// Serialises builds: two requests never build the same index twice.
    building: tokio::sync::Mutex<()>,
}

impl Indexes {
    pub fn new(dir: Option<PathBuf>) -> Indexes {
        Indexes { dir, ..Indexes::default() }
    }
}

/// Every row of version `v` of `d`, read a page at a time.
async fn version_rows(
    state: &AppState,
    d: &merit_store::Datanet,
    v: &merit_store::Version,
) -> Result<Vec<merit_store::StoredRow>, GenError> {
    let mut rows = Vec::new();
    while (rows.len() as i64) < v.row_count {
        let page = state.store.rows(d, v, rows.len() as i64, PAGE, None).await.map_err(internal)?;
        if page.is_empty() {
            break;
        }
        rows.extend(page);
    }
    Ok(rows)
}

/// The text of a row: every string in it, in order, one per line.
fn row_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        }
        Value::Array(items) => items.iter().for_each(|i| row_text(i, out)),
        Value::Object(map) => map.values().for_each(|i| row_text(i, out)),
        _ => {}
    }
}

fn internal(e: impl std::fmt::Display) -> GenError {
    GenError::Internal(e.to_string())
}

/// The index of `datanet@version` for `base`'s tokenizer, built if needed.
async fn index(
    state: &AppState,
    g: &Arc<dyn Generator>,
    base: &str,
    datanet: &str,
    version: i64,
) -> Result<Arc<SpanIndex>, GenError> {
    let safe = |s: &str| {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect::<String>()
    };
    let name = format!("{}@{version}.{}.spans", safe(datanet), safe(base));
    let ix = &state.indexes;
    let cached = |ix: &Indexes| {
        let mut m = ix.loaded.lock().ok()?;
        let i = m.iter().position(|(k, _)| *k == name)?;
        let hit = m.remove(i);
        let ix = hit.1.clone();
        m.push(hit);
        Some(ix)
    };
    if let Some(hit) = cached(ix) {
        return Ok(hit);
    }
    let _building = ix.building.lock().await;
    if let Some(hit) = cached(ix) {
        return Ok(hit);
    }
    let path = ix.dir.as_ref().map(|d| d.join(&name));
    let loaded = match &path {
        Some(p) if p.exists() => {
            let p = p.clone();
            Some(tokio::task::spawn_blocking(move || SpanIndex::load(&p)).await.map_err(internal)?.map_err(internal)?)
        }
        _ => None,
    };
    let built = match loaded {
        Some(ix) => ix,
        None => {
            let d = state.store.datanet(datanet).await.map_err(internal)?;
            let d = d.ok_or_else(|| internal(format!("datanet `{datanet}` of the run no longer exists")))?;
            let v = state.store.version(&d, version).await.map_err(internal)?;
            let v = v.ok_or_else(|| internal(format!("version {version} of `{datanet}` does not exist")))?;
            let rows: Vec<(u64, String)> = version_rows(state, &d, &v)
                .await?
                .into_iter()
                .map(|r| {
                    let mut text = String::new();
                    row_text(&r.content, &mut text);
                    (r.contribution_id as u64, text)
                })
                .collect();
            let (g, base, path) = (g.clone(), base.to_string(), path.clone());
            tokio::task::spawn_blocking(move || -> Result<SpanIndex, GenError> {
                let (ids, texts): (Vec<u64>, Vec<String>) = rows.into_iter().unzip();
                let tokenized: Vec<Vec<u32>> =
                    g.tokenize(&base, &texts)?.into_iter().map(|t| t.into_iter().map(|t| t.0).collect()).collect();
                let ix = SpanIndex::build(ids.into_iter().zip(tokenized.iter().map(|t| &t[..]))).map_err(internal)?;
                if let Some(p) = path {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).map_err(internal)?;
                    }
                    ix.save(&p).map_err(internal)?;
                }
                Ok(ix)
            })
            .await
            .map_err(internal)??
        }
    };
    let built = Arc::new(built);
    if let Ok(mut m) = ix.loaded.lock() {
        m.retain(|(k, _)| *k != name);
        if m.len() >= LOADED {
            m.remove(0);
        }
        m.push((name, built.clone()));
    }
    Ok(built)
}

/// A published run behind a model id: the run, its base and its datanet versions.
pub(crate) struct Published {
    pub(crate) run: merit_store::Run,
    base: String,
    versions: Vec<(String, i64)>,
}

/// The published run behind a model id `<base>:run-<id>`; None for a base
/// model or an unpublished run (nothing to credit or charge).
pub(crate) async fn published(state: &AppState, model: &str) -> Result<Option<Published>, GenError> {
    let Some((base, adapter)) = model.split_once(':') else { return Ok(None) };
    let Some(id) = adapter.strip_prefix("run-").and_then(|n| n.parse::<i64>().ok()) else { return Ok(None) };
    let Some(run) = state.store.run(id).await.map_err(internal)? else { return Ok(None) };
    if run.published_at.is_none() {
        return Ok(None);
    }
    let versions = run.config["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str()?.strip_prefix("datanet:"))
        .filter_map(|s| {
            let (name, v) = s.rsplit_once('@')?;
            Some((name.to_string(), v.parse().ok()?))
        })
        .collect();
    Ok(Some(Published { run, base: base.to_string(), versions }))
}

/// Builds the indexes of a published run's datanet versions (after publishing).
pub async fn prepare(state: &AppState, run_id: i64) -> Result<(), GenError> {
    let Some(g) = state.generator.clone() else { return Ok(()) };
    let Some(config) = state.store.run(run_id).await.map_err(internal)?.map(|r| r.config) else { return Ok(()) };
    let base = config["base"].as_str().unwrap_or_default().to_string();
    if let Some(p) = published(state, &format!("{base}:run-{run_id}")).await? {
        for (name, v) in &p.versions {
            index(state, &g, &p.base, name, *v).await?;
        }
    }
    Ok(())
}

/// One contribution's credit for an answer.
#[derive(Debug, Clone)]
pub struct Credited {
    pub contribution_id: i64,
    pub contributor: String,
    pub datanet: String,
    /// Its share; the shares of an answer sum to 1.
    pub score: f64,
    /// `{start, end, text}`, characters of the answer.
    pub spans: Vec<Value>,
}

/// The contributions an answer of `model` draws on (see [`attribute`]).
pub async fn credits(
    state: &AppState,
    g: &Arc<dyn Generator>,
    model: &str,
    answer: &str,
    min_tokens: usize,
) -> Result<Vec<Credited>, GenError> {
    let Some(p) = published(state, model).await? else { return Ok(Vec::new()) };
    let mut indexes = Vec::new();
    for (name, v) in &p.versions {
        indexes.push(index(state, g, &p.base, name, *v).await?);
    }
    let (g2, base2, text) = (g.clone(), p.base.clone(), answer.to_string());
    let tokens = tokio::task::spawn_blocking(move || g2.tokenize(&base2, &[text])).await.map_err(internal)??;
    let tokens = tokens.into_iter().next().unwrap_or_default();
    let ids: Vec<u32> = tokens.iter().map(|t| t.0).collect();
    let found = merit_attrib::normalize(indexes.iter().flat_map(|ix| ix.credits(&ids, min_tokens)).collect());
    let chars = |byte: usize| answer.get(..byte).map_or(0, |s| s.chars().count());
    let mut out = Vec::with_capacity(found.len());
    for c in found {
        let contribution = state.store.contribution(c.id as i64).await.map_err(internal)?;
        let (contributor, datanet) = contribution.map(|k| (k.contributor, k.datanet)).unwrap_or_default();
        let spans = c
            .spans
            .iter()
            .map(|s| {
                let (a, b) = (tokens[s.start].1, tokens[s.end - 1].2);
                json!({ "start": chars(a), "end": chars(b), "text": answer.get(a..b).unwrap_or_default() })
            })
            .collect();
        out.push(Credited { contribution_id: c.id as i64, contributor, datanet, score: c.score, spans });
    }
    Ok(out)
}

/// How similar (the cosine of centred projected gradients, averaged over
/// checkpoints) a training row must be to an answer to be credited by the
/// gradient method: below it, resemblance is indistinguishable from the
/// noise between unrelated examples. Requests may set `min_similarity`.
pub const MIN_SIMILARITY: f64 = 0.2;

/// The contributions an answer draws on by gradient influence: the run's
/// TracIn scores per training row (from the generator, over the checkpoints
/// that saved influence tables), those of rows with a positive score and a
/// similarity of at least `min_similarity` summed per contribution and
/// normalised to 1. Empty for an answer like no training row, a base model,
/// an unpublished run, a run trained without `influence_dims` or on rows
/// that are not datanet versions.
pub async fn gradient_credits(
    state: &AppState,
    g: &Arc<dyn Generator>,
    req: &crate::openai::GenRequest,
    answer: &str,
    min_similarity: f64,
) -> Result<Vec<Credited>, GenError> {
    let Some(p) = published(state, &req.model).await? else { return Ok(Vec::new()) };
    let all_datanets = p.run.config["sources"]
        .as_array()
        .is_some_and(|s| s.iter().all(|x| x.as_str().is_some_and(|x| x.starts_with("datanet:"))));
    if !all_datanets {
        return Ok(Vec::new());
    }
    let (g2, req2, text) = (g.clone(), req.clone(), answer.to_string());
    let scores = tokio::task::spawn_blocking(move || g2.influence(&req2, &text)).await.map_err(internal)??;
    // The training rows were the versions' rows, one version after another.
    let mut rows: Vec<(i64, String, String)> = Vec::new();
    for (name, v) in &p.versions {
        let d = state.store.datanet(name).await.map_err(internal)?;
        let d = d.ok_or_else(|| internal(format!("datanet `{name}` of the run no longer exists")))?;
        let version = state.store.version(&d, *v).await.map_err(internal)?;
        let version = version.ok_or_else(|| internal(format!("version {v} of `{name}` does not exist")))?;
        let stored = version_rows(state, &d, &version).await?;
        rows.extend(stored.into_iter().map(|r| (r.contribution_id, r.contributor, d.name.clone())));
    }
    let mut by_id: Vec<Credited> = Vec::new();
    let credited =
        scores.into_iter().filter(|(_, i)| i.score > 0.0 && i.score.is_finite() && i.similarity >= min_similarity);
    for (row, score) in credited.map(|(row, i)| (row, i.score)) {
        let Some((id, contributor, datanet)) = rows.get(row as usize) else { continue };
        match by_id.iter_mut().find(|c| c.contribution_id == *id) {
            Some(c) => c.score += score,
            None => by_id.push(Credited {
                contribution_id: *id,
                contributor: contributor.clone(),
                datanet: datanet.clone(),
                score,
                spans: Vec::new(),
            }),
        }
    }
    let total: f64 = by_id.iter().map(|c| c.score).sum();
    if total > 0.0 {
        by_id.iter_mut().for_each(|c| c.score /= total);
    }
    by_id.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.contribution_id.cmp(&b.contribution_id)));
    Ok(by_id)
}

/// `attribution` for an answer of `model`: `[{contribution_id, contributor,
/// datanet, score, spans: [{start, end, text}]}]`, scores summing to 1
/// (empty when no span of at least `min_tokens` tokens is found, or the
/// model is a base or an unpublished run). `start`/`end` count characters
/// of `answer`.
pub fn to_json(credits: &[Credited]) -> Value {
    Value::Array(
        credits
            .iter()
            .map(|c| {
                json!({ "contribution_id": c.contribution_id, "contributor": c.contributor, "datanet": c.datanet,
                        "score": c.score, "spans": c.spans })
            })
            .collect(),
    )
}

/// Charges `payer` for an answer of a published adapter with a price: the
/// fee `(prompt · price_in + completion · price_out) / 1000` is split
/// between the publisher, the credited contributors (pro rata to their
/// scores) and the owners of the run's datanets (`state.shares`), and
/// recorded with its ledger leaves. Returns the fee in micro-credits (None:
/// free or not a published adapter).
#[allow(clippy::too_many_arguments)]
pub async fn charge(
    state: &AppState,
    g: &Arc<dyn Generator>,
    payer: &str,
    model: &str,
    (prompt_tokens, completion_tokens): (usize, usize),
    answer: &str,
    credited: Option<&[Credited]>,
    hold: Option<&merit_store::Hold>,
) -> Result<Option<i64>, GenError> {
    let Some(p) = published(state, model).await? else { return Ok(None) };
    let (pin, pout) = (p.run.price_in_micros, p.run.price_out_micros);
    let fee = (prompt_tokens as i128 * pin as i128 + completion_tokens as i128 * pout as i128) / 1000;
    let fee = i64::try_from(fee).map_err(|_| internal("the fee overflows"))?;
    if fee <= 0 {
        return Ok(None);
    }
    let credited = match credited {
        Some(c) => c.to_vec(),
        None => credits(state, g, model, answer, MIN_SPAN_TOKENS).await?,
    };
    let mut by_contributor: Vec<(String, f64)> = Vec::new();
    for c in &credited {
        match by_contributor.iter_mut().find(|(n, _)| *n == c.contributor) {
            Some(e) => e.1 += c.score,
            None => by_contributor.push((c.contributor.clone(), c.score)),
        }
    }
    let mut owners = Vec::new();
    for (name, _) in &p.versions {
        if let Some(d) = state.store.datanet(name).await.map_err(internal)? {
            owners.push(d.owner);
        }
    }
    let payouts = merit_attrib::split(fee, state.shares, &p.run.owner, &by_contributor, &owners)
        .into_iter()
        .map(|x| Payout { account: x.account, role: x.role.as_str().to_string(), micros: x.micros })
        .collect();
    let charge = merit_store::Charge {
        request_id: format!("{:016x}", crate::openai::rand_u64()),
        model: model.to_string(),
        payer: payer.to_string(),
        prompt_tokens: prompt_tokens as i64,
        completion_tokens: completion_tokens as i64,
        credits: credited
            .iter()
            .map(|c| Credit {
                contribution_id: c.contribution_id,
                contributor: c.contributor.clone(),
                datanet: c.datanet.clone(),
                score_micros: (c.score * 1e6).round() as i64,
            })
            .collect(),
        price_in_micros: pin,
        price_out_micros: pout,
        fee_micros: fee,
        payouts,
    };
    state.store.charge(&charge, hold).await.map_err(internal)?;
    Ok(Some(fee))
}
