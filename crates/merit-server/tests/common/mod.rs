//! Shared helpers for the API tests: an app over a fresh store, requests by
//! `oneshot`, multipart bodies and prose that passes the text gates.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use merit_server::{router, AppState, RateLimit};
use serde_json::Value;
use tower::ServiceExt;

pub mod fakes;

pub struct App {
    pub router: axum::Router,
    pub store: merit_store::Store,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

impl App {
    pub async fn new() -> App {
        App::with_rate(RateLimit { per_second: 10_000.0, burst: 10_000.0 }).await
    }

    pub async fn with_rate(rate: RateLimit) -> App {
        App::build(rate, None).await
    }

    /// An app whose worker trains with `trainer`.
    pub async fn with_trainer(trainer: std::sync::Arc<dyn merit_server::RunTrainer>) -> App {
        App::build(RateLimit { per_second: 10_000.0, burst: 10_000.0 }, Some(trainer)).await
    }

    /// An app that serves models with `generator`.
    pub async fn with_generator(generator: std::sync::Arc<dyn merit_server::openai::Generator>) -> App {
        let mut app = App::build(RateLimit { per_second: 10_000.0, burst: 10_000.0 }, None).await;
        let signer = merit_ledger::checkpoint::NoteSigner::from_seed("merit.test/ledger", &[1; 32]).unwrap();
        let state = AppState::new(app.store.clone(), RateLimit { per_second: 10_000.0, burst: 10_000.0 }, signer)
            .with_generator(generator);
        app.router = router(state);
        app
    }

    /// An app that trains with `trainer` and serves with `generator`.
    pub async fn with_trainer_and_generator(
        trainer: std::sync::Arc<dyn merit_server::RunTrainer>,
        generator: std::sync::Arc<dyn merit_server::openai::Generator>,
    ) -> App {
        App::build_with(RateLimit { per_second: 10_000.0, burst: 10_000.0 }, Some(trainer), Some(generator)).await
    }

    async fn build(rate: RateLimit, trainer: Option<std::sync::Arc<dyn merit_server::RunTrainer>>) -> App {
        App::build_with(rate, trainer, None).await
    }

    /// An app whose worker trains with `trainer`, with these run limits.
    pub async fn with_run_limits(
        trainer: std::sync::Arc<dyn merit_server::RunTrainer>,
        max_active: u64,
        slice: std::time::Duration,
    ) -> App {
        App::build_limited(
            RateLimit { per_second: 10_000.0, burst: 10_000.0 },
            Some(trainer),
            None,
            (max_active, slice),
        )
        .await
    }

    async fn build_with(
        rate: RateLimit,
        trainer: Option<std::sync::Arc<dyn merit_server::RunTrainer>>,
        generator: Option<std::sync::Arc<dyn merit_server::openai::Generator>>,
    ) -> App {
        App::build_limited(rate, trainer, generator, (4, std::time::Duration::from_secs(1800))).await
    }

    async fn build_limited(
        rate: RateLimit,
        trainer: Option<std::sync::Arc<dyn merit_server::RunTrainer>>,
        generator: Option<std::sync::Arc<dyn merit_server::openai::Generator>>,
        (max_active, slice): (u64, std::time::Duration),
    ) -> App {
        let dir = tempfile::tempdir().unwrap();
        let store = merit_store::testing::fresh_store(dir.path()).await;
        let signer = merit_ledger::checkpoint::NoteSigner::from_seed("merit.test/ledger", &[1; 32]).unwrap();
        let mut state = AppState::new(store.clone(), rate, signer).with_attribution_dir(dir.path().join("attribution"));
        if let Some(g) = generator {
            state = state.with_generator(g);
        }
        if let Some(t) = trainer {
            let host = merit_server::RunHost::new(t, dir.path().join("runs")).with_limits(max_active, slice);
            state = state.with_run_host(host);
            merit_server::start_worker(&state);
        }
        let router = router(state);
        App { router, store, _dir: dir }
    }

    pub async fn user(&self, name: &str) -> String {
        self.store.create_user(name, false).await.unwrap().1
    }

    /// An administrator's token.
    pub async fn admin(&self, name: &str) -> String {
        self.store.create_user(name, true).await.unwrap().1
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        Reply { status, headers, body }
    }

    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b.header("content-type", "application/json").body(Body::from(v.to_string())).unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        self.send(req).await
    }

    pub async fn upload(&self, datanet: &str, token: Option<&str>, files: &[(&str, &[u8])], dry_run: bool) -> Reply {
        let (ctype, body) = multipart(files);
        let path = format!("/api/v1/datanets/{datanet}/contributions{}", if dry_run { "?dry_run=true" } else { "" });
        let mut b = Request::builder().method("POST").uri(path).header("content-type", ctype);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.send(b.body(Body::from(body)).unwrap()).await
    }

    /// Creates a datanet owned by `token`'s user from a TOML policy.
    pub async fn datanet(&self, token: &str, name: &str, policy: &str, publish: bool) -> Reply {
        let body = serde_json::json!({ "name": name, "policy": policy, "summary": "test data", "tags": ["test"], "publish": publish });
        self.call("POST", "/api/v1/datanets", Some(token), Some(body)).await
    }
}

pub fn multipart(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "merit-test-boundary-7e3c";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// English prose of about 130 words, different for every seed, that passes
/// the default text gates.
pub fn prose(seed: u64) -> String {
    const ADJ: &[&str] = &[
        "quiet", "bright", "ancient", "careful", "gentle", "busy", "distant", "golden", "honest", "patient", "modern",
        "narrow", "proud", "rapid", "silent", "tired", "warm", "wooden", "clever", "friendly", "humble", "lively",
        "simple", "steady",
    ];
    const NOUN: &[&str] = &[
        "river", "village", "library", "garden", "museum", "harbour", "teacher", "market", "farmer", "bridge",
        "painter", "student", "forest", "kitchen", "station", "doctor", "valley", "island", "sailor", "baker",
        "castle", "meadow", "orchard", "tower",
    ];
    const VERB: &[&str] = &[
        "welcomed",
        "surprised",
        "helped",
        "changed",
        "protected",
        "inspired",
        "supported",
        "followed",
        "remembered",
        "described",
        "visited",
        "admired",
        "crossed",
        "painted",
        "repaired",
        "watched",
        "answered",
        "carried",
        "guided",
        "praised",
    ];
    const PREP: &[&str] =
        &["near", "behind", "beyond", "beside", "under", "above", "around", "across", "towards", "within"];
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    let mut pick = |list: &[&'static str]| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        list[(x % list.len() as u64) as usize]
    };
    let mut out = String::new();
    for i in 0..14 {
        let s = format!(
            "The {} {} {} a {} {} {} the {} {}.",
            pick(ADJ),
            pick(NOUN),
            pick(VERB),
            pick(ADJ),
            pick(NOUN),
            pick(PREP),
            pick(ADJ),
            pick(NOUN)
        );
        out.push_str(&s);
        out.push(if i % 4 == 3 { '\n' } else { ' ' });
    }
    out.push_str(&format!("This note carries the number {seed} so that it stays unique.\n"));
    out
}
