//! The HTTP client behind the client commands.

use anyhow::{anyhow, Context, Result};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

/// A client of a running `merit serve`.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Result<Client> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--server must be an http:// or https:// URL, got `{server}`");
        }
        let http = reqwest::Client::builder().build().context("building the HTTP client")?;
        Ok(Client { base, token, http })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}/api/v1{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// A request to a path outside `/api/v1` (the tlog-tiles routes).
    pub fn raw(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends a request; an error answer becomes an error naming its code, message and details.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req.send().await.with_context(|| format!("cannot reach the Merit server at {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = resp.text().await.unwrap_or_default();
        let err: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let e = &err["error"];
        let mut msg = match e["message"].as_str() {
            Some(m) => format!("{m} ({}, HTTP {})", e["code"].as_str().unwrap_or("error"), status.as_u16()),
            None => format!("HTTP {status}: {body}"),
        };
        if let Some(key) = e["details"]["key"].as_str() {
            msg.push_str(&format!("\n  key: {key}"));
        }
        if let Some(r) = retry {
            msg.push_str(&format!("\n  retry after: {r} s"));
        }
        Err(anyhow!(msg))
    }

    pub async fn json(&self, req: RequestBuilder) -> Result<Value> {
        let resp = self.send(req).await?;
        resp.json().await.context("the server's answer is not JSON")
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.json(self.request(Method::GET, path)).await
    }
}

/// Percent-encodes a path segment.
pub fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
