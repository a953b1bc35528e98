//! `merit bench serve`: a bounded load test of the OpenAI-compatible API on
//! a server on this machine (loopback only): N chat completions, C at a
//! time, each timed from request to full answer; with several models
//! (adapters of one base, say), request i asks model i mod their number.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// What to send.
pub struct Load {
    pub server: String,
    pub token: Option<String>,
    pub model: String,
    pub requests: usize,
    pub concurrency: usize,
    pub max_tokens: usize,
}

/// The URL must name this machine: the load test never leaves it.
fn check_loopback(server: &str) -> Result<()> {
    let url = reqwest::Url::parse(server).with_context(|| format!("--server `{server}` is not a URL"))?;
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("the load test only runs against this machine (127.0.0.1, ::1 or localhost), not `{server}`");
    }
    Ok(())
}

/// One request: (latency ms, completion tokens), or what went wrong.
type Outcome = Result<(f64, u64), String>;

/// The value at quantile `q` of sorted `xs`.
fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs[((xs.len() - 1) as f64 * q).round() as usize]
}

/// Runs the load and returns the report: requests, errors (and the first),
/// p50 / p99 / max latency in ms, completion tokens/s and requests/s.
pub async fn run(load: Load) -> Result<Value> {
    check_loopback(&load.server)?;
    if !(1..=10_000).contains(&load.requests) {
        bail!("--requests must be 1 to 10000, got {}", load.requests);
    }
    if !(1..=256).contains(&load.concurrency) {
        bail!("--concurrency must be 1 to 256, got {}", load.concurrency);
    }
    if !(1..=4096).contains(&load.max_tokens) {
        bail!("--max-tokens must be 1 to 4096, got {}", load.max_tokens);
    }
    let models: Vec<String> = load.model.split(',').map(|m| m.trim().to_string()).collect();
    if models.iter().any(String::is_empty) {
        bail!("--model `{}`: a model id, or several separated by commas", load.model);
    }
    let models = Arc::new(models);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(600)).build()?;
    let url = format!("{}/v1/chat/completions", load.server.trim_end_matches('/'));
    let next = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..load.concurrency.min(load.requests) {
        let (http, url, next, results) = (http.clone(), url.clone(), next.clone(), results.clone());
        let (token, models, total, max_tokens) = (load.token.clone(), models.clone(), load.requests, load.max_tokens);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = json!({
                    "model": models[i % models.len()], "max_tokens": max_tokens, "temperature": 0, "seed": i,
                    "messages": [{ "role": "user", "content": format!("Request {i}: tell me something.") }],
                });
                let t = Instant::now();
                let mut req = http.post(&url).json(&body);
                if let Some(tok) = &token {
                    req = req.bearer_auth(tok);
                }
                let outcome = match req.send().await {
                    Err(e) => Err(format!("request {i}: {e}")),
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.json::<Value>().await {
                            Ok(v) if status.is_success() => Ok((
                                t.elapsed().as_secs_f64() * 1e3,
                                v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
                            )),
                            Ok(v) => Err(format!("request {i}: HTTP {status}: {}", v["error"]["message"])),
                            Err(e) => Err(format!("request {i}: HTTP {status}, unreadable answer: {e}")),
                        }
                    }
                };
                if let Ok(mut r) = results.lock() {
                    r.push(outcome);
                }
            }
        }));
    }
    for w in workers {
        w.await.context("a load-test worker failed")?;
    }
    let wall = start.elapsed().as_secs_f64();
    let results = std::mem::take(&mut *results.lock().map_err(|_| anyhow::anyhow!("results lock poisoned"))?);
    let mut latencies: Vec<f64> = results.iter().filter_map(|r| r.as_ref().ok().map(|x| x.0)).collect();
    latencies.sort_by(f64::total_cmp);
    let tokens: u64 = results.iter().filter_map(|r| r.as_ref().ok().map(|x| x.1)).sum();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    Ok(json!({
        "model": load.model, "requests": results.len(), "concurrency": load.concurrency, "max_tokens": load.max_tokens,
        "errors": errors.len(), "first_error": errors.first(),
        "p50_ms": quantile(&latencies, 0.5), "p99_ms": quantile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or(0.0),
        "completion_tokens": tokens, "tokens_per_s": tokens as f64 / wall, "requests_per_s": results.len() as f64 / wall,
        "seconds": wall,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_is_loaded() {
        for ok in ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:80"] {
            assert!(check_loopback(ok).is_ok(), "{ok}");
        }
        for bad in ["http://10.0.0.1:8080", "https://example.com", "not a url"] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 3.0);
        assert_eq!(quantile(&(1..=100).map(f64::from).collect::<Vec<_>>(), 0.99), 99.0);
    }
}
