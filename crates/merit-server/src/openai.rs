//! The OpenAI-compatible API under `/v1`: `GET /v1/models`,
//! `POST /v1/chat/completions` and `POST /v1/completions`, streaming
//! (server-sent `data:` chunks ending with `data: [DONE]`) or not, with
//! `model` = `<base>` or `<base>:<adapter>`. Errors use OpenAI's shape
//! `{"error": {"message", "type", "param", "code"}}`. The binary injects the
//! [`Generator`] that runs the models.

// Helpers return the finished error response, which handlers pass on as it is.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::extract::Caller;
use crate::AppState;

/// One generation request, as the generator sees it.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// `<base>` or `<base>:<adapter>`.
    pub model: String,
    /// Chat messages (role, content), or `None` for a plain prompt.
    pub messages: Option<Vec<(String, String)>>,
    pub prompt: String,
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    pub stop: Vec<String>,
    /// Set when the client has gone away: the generator stops at its next token.
    pub cancel: Arc<std::sync::atomic::AtomicBool>,
}

/// Sets `cancel` when dropped: a request future or stream that goes away
/// (the client disconnected) stops its generation.
struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A text's tokens: (token id, byte start, byte end) each.
pub type Tokens = Vec<(u32, usize, usize)>;

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct GenOutput {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// Why a generation could not run.
#[derive(Debug, Clone)]
pub enum GenError {
    /// No such model or adapter (404).
    NotFound(String),
    /// The request cannot be served as sent (400), e.g. a prompt over the context.
    BadRequest(String),
    Internal(String),
}

/// What runs the models: the binary's adapter over `merit-lm`.
pub trait Generator: Send + Sync + 'static {
    /// Every servable model id: bases and `<base>:<adapter>`.
    fn models(&self) -> Vec<String>;
    /// Generates (blocking), calling `on_text` with each new piece of text.
    fn generate(&self, req: &GenRequest, on_text: &mut dyn FnMut(&str)) -> Result<GenOutput, GenError>;
    /// Each of `texts` as `base`'s tokenizer splits it: (token id, byte
    /// start, byte end) per token, no special tokens added (span attribution).
    fn tokenize(&self, base: &str, texts: &[String]) -> Result<Vec<Tokens>, GenError>;
    /// Gradient influence of `answer` to `req` (a `<base>:<adapter>` model)
    /// on the adapter's training examples: (row of the run's training data,
    /// TracIn score summed and similarity averaged over the checkpoints that
    /// saved influence tables). Empty when none did.
    fn influence(&self, req: &GenRequest, answer: &str) -> Result<Vec<(u64, merit_attrib::Influence)>, GenError>;
    /// How many tokens `req`'s prompt has (chat template applied), or at
    /// least an upper bound: what a priced answer holds credit for. The
    /// default bound counts a token per byte, plus the template's.
    fn prompt_tokens(&self, req: &GenRequest) -> Result<usize, GenError> {
        Ok(match &req.messages {
            Some(m) => m.iter().map(|(r, c)| r.len() + c.len() + 8).sum::<usize>() + 64,
            None => req.prompt.len() + 8,
        })
    }
}

/// Credit held for a priced request while it runs: released when dropped
/// unless [`Store::charge`](merit_store::Store::charge) took it (releasing
/// a hold that was charged changes nothing).
struct CreditHold {
    store: merit_store::Store,
    hold: Option<merit_store::Hold>,
}

impl CreditHold {
    async fn release(mut self) {
        if let Some(h) = self.hold.take() {
            release_hold(&self.store, h).await;
        }
    }
}

impl Drop for CreditHold {
    fn drop(&mut self) {
        if let (Some(h), Ok(rt)) = (self.hold.take(), tokio::runtime::Handle::try_current()) {
            let store = self.store.clone();
            rt.spawn(async move { release_hold(&store, h).await });
        }
    }
}

async fn release_hold(store: &merit_store::Store, h: merit_store::Hold) {
    if let Err(e) = store.release(&h).await {
        tracing::error!("releasing credit hold {}: {e}", h.id);
    }
}

/// Holds the most a priced answer can cost (its prompt at the input price,
/// `max_tokens` at the output price) from `payer`'s credit before it runs:
/// 402 when balance + allowance − what other running requests hold cannot
/// cover it. None for a free model.
async fn hold_credit(
    state: &AppState,
    g: &Arc<dyn Generator>,
    payer: &str,
    gen: &GenRequest,
) -> Result<Option<CreditHold>, Response> {
    let Some(p) = crate::attribution::published(state, &gen.model).await.map_err(gen_error)? else {
        return Ok(None);
    };
    let (pin, pout) = (p.run.price_in_micros, p.run.price_out_micros);
    if pin <= 0 && pout <= 0 {
        return Ok(None);
    }
    let (g2, req) = (g.clone(), gen.clone());
    let prompt = match tokio::task::spawn_blocking(move || g2.prompt_tokens(&req)).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(gen_error(e)),
        Err(_) => return Err(gen_error(GenError::Internal("counting the prompt's tokens panicked".into()))),
    };
    let most = (prompt as i128 * pin as i128 + gen.max_tokens as i128 * pout as i128).div_euclid(1000) + 1;
    let most = i64::try_from(most).unwrap_or(i64::MAX);
    match state.store.hold(payer, most).await {
        Ok(Ok(hold)) => Ok(Some(CreditHold { store: state.store.clone(), hold: Some(hold) })),
        Ok(Err(available)) => {
            let credits = |m: i64| m as f64 / 1e6;
            Err(oai_error(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                format!(
                    "this answer can cost up to {:.6} credits ({prompt} prompt tokens, max_tokens {}); `{payer}` can spend {:.6} \
                     (balance {:.6}, allowance {:.6}, held by running requests {:.6})",
                    credits(most),
                    gen.max_tokens,
                    credits(available.micros()),
                    credits(available.balance_micros),
                    credits(available.allowance_micros),
                    credits(available.held_micros),
                ),
                None,
            ))
        }
        Err(e) => {
            tracing::error!("holding credit: {e}");
            Err(oai_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the database failed", None))
        }
    }
}

/// An error in OpenAI's shape.
fn oai_error(status: StatusCode, kind: &str, message: impl Into<String>, param: Option<&str>) -> Response {
    let code = match status {
        StatusCode::NOT_FOUND => "model_not_found",
        StatusCode::UNAUTHORIZED => "invalid_api_key",
        _ => kind,
    };
    (status, Json(json!({ "error": { "message": message.into(), "type": kind, "param": param, "code": code } })))
        .into_response()
}

fn gen_error(e: GenError) -> Response {
    match e {
        GenError::NotFound(m) => oai_error(StatusCode::NOT_FOUND, "invalid_request_error", m, Some("model")),
        GenError::BadRequest(m) => oai_error(StatusCode::BAD_REQUEST, "invalid_request_error", m, None),
        GenError::Internal(m) => {
            tracing::error!("generation failed: {m}");
            oai_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", m, None)
        }
    }
}

fn generator(state: &AppState) -> Result<Arc<dyn Generator>, Response> {
    state.generator.clone().ok_or_else(|| {
        oai_error(StatusCode::SERVICE_UNAVAILABLE, "server_error", "this server does not serve models", None)
    })
}

/// The signed-in caller (a Merit API token as the OpenAI key, or the web app's session).
async fn signed_in(state: &AppState, parts: &mut axum::http::request::Parts) -> Result<merit_store::User, Response> {
    use axum::extract::FromRequestParts;
    match Caller::from_request_parts(parts, state).await {
        Ok(Caller(Some(user))) => Ok(user),
        Ok(Caller(None)) => Err(oai_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "send a Merit API token as the API key (Authorization: Bearer mrt_…)",
            None,
        )),
        Err(e) => Err(oai_error(e.status, "invalid_request_error", e.message, None)),
    }
}

/// Whether `user` may generate with `model`: a base, or the adapter of a run
/// that [`crate::runs::may_serve`] lets them use. Others are told, as for an
/// adapter that does not exist, that there is no such model.
async fn may_use_model(state: &AppState, user: &merit_store::User, model: &str) -> Result<bool, Response> {
    let Some(run) = crate::runs::adapter_run(model) else { return Ok(true) };
    match state.store.run(run).await {
        Ok(Some(r)) => Ok(crate::runs::may_serve(user, &r)),
        Ok(None) => Ok(false),
        Err(e) => {
            tracing::error!("reading run {run}: {e}");
            Err(oai_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the database failed", None))
        }
    }
}

async fn models(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let user = match signed_in(&state, &mut parts).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let g = match generator(&state) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let all = tokio::task::spawn_blocking(move || g.models()).await.unwrap_or_default();
    // The adapters' runs in one query; then the one rule, `may_serve`.
    let wanted: Vec<i64> = all.iter().filter_map(|m| crate::runs::adapter_run(m)).collect();
    let runs = match state.store.runs_with_ids(&wanted).await {
        Ok(runs) => runs,
        Err(e) => {
            tracing::error!("reading runs: {e}");
            return oai_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the database failed", None);
        }
    };
    let servable: std::collections::HashSet<i64> =
        runs.iter().filter(|r| crate::runs::may_serve(&user, r)).map(|r| r.id).collect();
    let ids: Vec<String> =
        all.into_iter().filter(|m| crate::runs::adapter_run(m).is_none_or(|run| servable.contains(&run))).collect();
    let data: Vec<Value> =
        ids.iter().map(|id| json!({ "id": id, "object": "model", "created": 0, "owned_by": "merit" })).collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// `stop`: a string or a list of up to 4 strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: Value,
}

#[derive(Deserialize)]
struct Body {
    model: String,
    messages: Option<Vec<ChatMessage>>,
    prompt: Option<Value>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    n: Option<usize>,
    /// Merit's extension: `true`, `{"method": "span", "min_tokens": 8}` or
    /// `{"method": "gradient", "min_similarity": 0.2}`.
    attribution: Option<Value>,
}

/// Which attribution a request asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Method {
    /// Verbatim spans of at least this many tokens.
    Span(usize),
    /// Gradient influence (TracIn over the run's checkpoints), crediting
    /// rows at least this similar to the answer.
    Gradient(f64),
}

/// The attribution asked for by `attribution`, or None when off.
fn attribution_request(v: Option<&Value>) -> Result<Option<Method>, String> {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(Method::Span(crate::attribution::MIN_SPAN_TOKENS))),
        Some(Value::Object(o)) => {
            if let Some(k) = o.keys().find(|k| !matches!(k.as_str(), "method" | "min_tokens" | "min_similarity")) {
                return Err(format!("attribution has an unknown field `{k}`"));
            }
            match o.get("method").and_then(Value::as_str).unwrap_or("span") {
                "span" if o.contains_key("min_similarity") => {
                    return Err("attribution.min_similarity applies to the gradient method only".into())
                }
                "span" => {}
                "gradient" if o.contains_key("min_tokens") => {
                    return Err("attribution.min_tokens applies to the span method only".into())
                }
                "gradient" => {
                    return match o.get("min_similarity") {
                        None => Ok(Some(Method::Gradient(crate::attribution::MIN_SIMILARITY))),
                        Some(x) => match x.as_f64() {
                            Some(x) if (0.0..=1.0).contains(&x) => Ok(Some(Method::Gradient(x))),
                            _ => Err(format!("attribution.min_similarity must be a number from 0 to 1, got {x}")),
                        },
                    }
                }
                other => return Err(format!("attribution method `{other}` is not span or gradient")),
            }
            match o.get("min_tokens") {
                None => Ok(Some(Method::Span(crate::attribution::MIN_SPAN_TOKENS))),
                Some(n) => match n.as_u64() {
                    Some(n @ 1..=256) => Ok(Some(Method::Span(n as usize))),
                    _ => Err(format!("attribution.min_tokens must be 1 to 256, got {n}")),
                },
            }
        }
        Some(other) => Err(format!("attribution must be true, false or an object, got {other}")),
    }
}

/// Message content: a string, or a list of `{"type": "text", "text"}` parts.
fn content_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("")),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn parse(body: Body, chat: bool) -> Result<(GenRequest, bool, Option<Method>), Response> {
    let bad = |m: String, p: &str| oai_error(StatusCode::BAD_REQUEST, "invalid_request_error", m, Some(p));
    let attribution = attribution_request(body.attribution.as_ref()).map_err(|m| bad(m, "attribution"))?;
    if body.n.is_some_and(|n| n != 1) {
        return Err(bad("only n = 1 is supported".into(), "n"));
    }
    let temperature = body.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad(format!("temperature must be between 0 and 2, got {temperature}"), "temperature"));
    }
    let top_p = body.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad(format!("top_p must be in (0, 1], got {top_p}"), "top_p"));
    }
    let max_tokens = body.max_completion_tokens.or(body.max_tokens).unwrap_or(256);
    if max_tokens == 0 || max_tokens > 8192 {
        return Err(bad(format!("max_tokens must be 1 to 8192, got {max_tokens}"), "max_tokens"));
    }
    let stop = match body.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) if v.len() <= 4 => v,
        Some(Stop::Many(_)) => return Err(bad("at most 4 stop sequences".into(), "stop")),
    };
    if let Some(s) = stop.iter().find(|s| s.is_empty() || s.len() > 256) {
        return Err(bad(format!("a stop sequence must be 1 to 256 bytes, got {} bytes", s.len()), "stop"));
    }
    let (messages, prompt) = if chat {
        let Some(msgs) = body.messages.filter(|m| !m.is_empty()) else {
            return Err(bad("`messages` must be a non-empty list".into(), "messages"));
        };
        let mut out = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.into_iter().enumerate() {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "developer") {
                return Err(bad(
                    format!("messages[{i}].role `{}` is not system, user or assistant", m.role),
                    "messages",
                ));
            }
            let Some(text) = content_text(&m.content) else {
                return Err(bad(format!("messages[{i}].content must be text"), "messages"));
            };
            let role = if m.role == "developer" { "system".to_string() } else { m.role };
            out.push((role, text));
        }
        (Some(out), String::new())
    } else {
        let prompt = match body.prompt {
            Some(Value::String(s)) => s,
            Some(Value::Array(v)) if v.len() == 1 && v[0].is_string() => v[0].as_str().unwrap_or_default().to_string(),
            _ => return Err(bad("`prompt` must be a string".into(), "prompt")),
        };
        (None, prompt)
    };
    let req = GenRequest {
        model: body.model,
        messages,
        prompt,
        max_tokens,
        temperature,
        top_p,
        seed: body.seed.unwrap_or(0),
        stop,
        cancel: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    Ok((req, body.stream, attribution))
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn complete(state: AppState, req: Request, chat: bool) -> Response {
    let (mut parts, body) = req.into_parts();
    let user = match signed_in(&state, &mut parts).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let g = match generator(&state) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let body: Body = match Json::<Body>::from_request(Request::from_parts(parts, body), &state).await {
        Ok(Json(b)) => b,
        Err(e) => return oai_error(e.status(), "invalid_request_error", e.body_text(), None),
    };
    let (gen, stream, attribution) = match parse(body, chat) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match may_use_model(&state, &user, &gen.model).await {
        Ok(true) => {}
        Ok(false) => {
            return gen_error(GenError::NotFound(format!(
                "the model `{}` does not exist (see GET /v1/models)",
                gen.model
            )))
        }
        Err(r) => return r,
    }
    let payer = user.name;
    let hold = match hold_credit(&state, &g, &payer, &gen).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let id = format!("{}-{:016x}", if chat { "chatcmpl" } else { "cmpl" }, rand_u64());
    let created = now_s();
    let model = gen.model.clone();
    let guard = CancelOnDrop(gen.cancel.clone());
    if !stream {
        let (g2, req2) = (g.clone(), gen.clone());
        let out = tokio::task::spawn_blocking(move || g.generate(&gen, &mut |_| {})).await;
        let out = match out {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return gen_error(e),
            Err(_) => return gen_error(GenError::Internal("the generation task panicked".into())),
        };
        drop(guard);
        let usage = json!({ "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                            "total_tokens": out.prompt_tokens + out.completion_tokens });
        let choice = if chat {
            json!({ "index": 0, "message": { "role": "assistant", "content": out.text }, "finish_reason": out.finish_reason, "logprobs": null })
        } else {
            json!({ "index": 0, "text": out.text, "finish_reason": out.finish_reason, "logprobs": null })
        };
        let object = if chat { "chat.completion" } else { "text_completion" };
        let mut v = json!({ "id": id, "object": object, "created": created, "model": model, "choices": [choice], "usage": usage });
        match settle(&state, &g2, &payer, &req2, &out, attribution, hold).await {
            Ok(Some(a)) => v["attribution"] = a,
            Ok(None) => {}
            Err(e) => return gen_error(e),
        }
        return Json(v).into_response();
    }
    // Streaming: pieces flow through a channel from the blocking generator.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Value, GenError>>();
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |delta: Value, finish: Option<&str>, usage: Option<Value>| {
            let choice = if chat {
                json!({ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null })
            } else {
                json!({ "index": 0, "text": delta["content"].as_str().unwrap_or(""), "finish_reason": finish, "logprobs": null })
            };
            let mut v = json!({ "id": id, "object": object, "created": created, "model": model, "choices": [choice] });
            if let Some(u) = usage {
                v["usage"] = u;
            }
            v
        }
    };
    // The first event tells whether the model exists: a missing one is a 404, not a broken stream.
    let first = chunk.clone();
    let cancel = gen.cancel.clone();
    let (rt, st, g2, req2) = (tokio::runtime::Handle::current(), state.clone(), g.clone(), gen.clone());
    tokio::task::spawn_blocking(move || {
        let mut started = false;
        let result = g.generate(&gen, &mut |piece| {
            if !started {
                started = true;
                let _ = tx.send(Ok(first(json!({ "role": "assistant", "content": "" }), None, None)));
            }
            if tx.send(Ok(first(json!({ "content": piece }), None, None))).is_err() {
                // Nobody reads the stream any more.
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
        match result {
            Ok(out) => {
                if !started {
                    let _ = tx.send(Ok(first(json!({ "role": "assistant", "content": "" }), None, None)));
                }
                let usage = json!({ "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                                    "total_tokens": out.prompt_tokens + out.completion_tokens });
                let mut last = first(json!({}), Some(&out.finish_reason), Some(usage));
                // The last chunk carries the attribution, as it carries the usage.
                match rt.block_on(settle(&st, &g2, &payer, &req2, &out, attribution, hold)) {
                    Ok(Some(a)) => last["attribution"] = a,
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
                let _ = tx.send(Ok(last));
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    let mut rx = rx;
    let head = match rx.recv().await {
        Some(Ok(v)) => v,
        Some(Err(e)) => return gen_error(e),
        None => return gen_error(GenError::Internal("the generation ended without output".into())),
    };
    // The stream owns the guard: a client that disconnects drops it and frees the model.
    let rest = futures_util::stream::unfold((rx, false, guard), |(mut rx, done, guard)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(Ok(v)) => Some((Event::default().data(v.to_string()), (rx, false, guard))),
            Some(Err(e)) => {
                let msg = match e {
                    GenError::NotFound(m) | GenError::BadRequest(m) | GenError::Internal(m) => m,
                };
                let err = json!({ "error": { "message": msg, "type": "server_error", "param": null, "code": null } });
                Some((Event::default().data(err.to_string()), (rx, false, guard)))
            }
            None => Some((Event::default().data("[DONE]"), (rx, true, guard))),
        }
    });
    use futures_util::StreamExt;
    let stream = futures_util::stream::once(async move { Event::default().data(head.to_string()) })
        .chain(rest)
        .map(Ok::<_, Infallible>);
    Sse::new(stream).into_response()
}

/// After a generation: the attribution asked for (`min_tokens`, as JSON)
/// and, for an adapter with a price, the charge (its fee split and recorded).
async fn settle(
    state: &AppState,
    g: &Arc<dyn Generator>,
    payer: &str,
    req: &GenRequest,
    out: &GenOutput,
    attribution: Option<Method>,
    hold: Option<CreditHold>,
) -> Result<Option<Value>, GenError> {
    let held = hold.as_ref().and_then(|h| h.hold.as_ref());
    let settled = settle_held(state, g, payer, req, out, attribution, held).await;
    // Charged or not, the hold ends here (a charged one is gone already).
    if let Some(h) = hold {
        h.release().await;
    }
    settled
}

/// Attributes and charges an answer, the charge ending `hold`.
async fn settle_held(
    state: &AppState,
    g: &Arc<dyn Generator>,
    payer: &str,
    req: &GenRequest,
    out: &GenOutput,
    attribution: Option<Method>,
    hold: Option<&merit_store::Hold>,
) -> Result<Option<Value>, GenError> {
    use crate::attribution as attr;
    let model = req.model.as_str();
    let credited = match attribution {
        Some(Method::Span(k)) => Some(attr::credits(state, g, model, &out.text, k).await?),
        Some(Method::Gradient(min)) => Some(attr::gradient_credits(state, g, req, &out.text, min).await?),
        None => None,
    };
    // Fees are always split by span attribution of the default length.
    let reuse = credited.as_deref().filter(|_| attribution == Some(Method::Span(attr::MIN_SPAN_TOKENS)));
    attr::charge(state, g, payer, model, (out.prompt_tokens, out.completion_tokens), &out.text, reuse, hold).await?;
    Ok(credited.map(|c| attr::to_json(&c)))
}

pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

async fn chat_completions(State(state): State<AppState>, req: Request) -> Response {
    complete(state, req, true).await
}

async fn completions(State(state): State<AppState>, req: Request) -> Response {
    complete(state, req, false).await
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
}
