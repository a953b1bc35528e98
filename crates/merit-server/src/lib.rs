//! Merit's HTTP API.
//!
//! [`router`] builds the whole API over an [`AppState`]; [`serve`] binds it.
//! Routes live under `/api/v1` and are listed, with their bodies, in the
//! OpenAPI document served at `/api/v1/openapi.json` (see `openapi.rs`; a
//! test checks that the two agree). Every error is JSON
//! `{"error": {"code", "message", "details"}}` (see [`error::ApiError`]).
//!
//! Architecture invariant: handlers hold no SQL; they check roles, call
//! `merit-gate` for verdicts and `merit-store` for state.

// The OpenAPI document is one large `json!`.
#![recursion_limit = "256"]

pub mod attribution;
pub mod budget;
pub mod error;
mod extract;
pub mod openai;
pub mod openapi;
pub mod ratelimit;
mod routes;
pub mod runs;
mod web;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use merit_ledger::checkpoint::NoteSigner;
use merit_store::Store;

pub use ratelimit::RateLimit;
pub use runs::{start_worker, RunHost, RunTrainer};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub rate_limit: RateLimit,
    /// Signs ledger checkpoints.
    pub signer: Arc<NoteSigner>,
    /// Training runs; `None` on a server without a trainer (runs answer 503).
    pub runs: Option<Arc<RunHost>>,
    /// Serves models on the OpenAI-compatible API; `None`: `/v1` answers 503.
    pub generator: Option<Arc<dyn openai::Generator>>,
    /// Span indexes for `"attribution": true`.
    pub indexes: Arc<attribution::Indexes>,
    /// How a priced answer's fee is split (publisher, contributors, datanet owners).
    pub shares: merit_attrib::Shares,
    /// Where published adapters are uploaded for other nodes (`merit serve --adapter-store`).
    pub adapter_store: Option<Arc<merit_store::remote::AdapterStore>>,
    /// Cookies carry `Secure` (the server is reached over TLS: `merit serve --public-url https://…`).
    pub secure_cookies: bool,
    /// Memory all requests together may hold for bodies and gating.
    pub memory: budget::MemoryBudget,
    buckets: Arc<ratelimit::Buckets>,
}

impl AppState {
    pub fn new(store: Store, rate_limit: RateLimit, signer: NoteSigner) -> AppState {
        AppState {
            store,
            rate_limit,
            signer: Arc::new(signer),
            runs: None,
            generator: None,
            secure_cookies: false,
            memory: budget::MemoryBudget::new(DEFAULT_REQUEST_MEMORY),
            indexes: Arc::new(attribution::Indexes::new(None)),
            shares: merit_attrib::Shares::default(),
            adapter_store: None,
            buckets: Arc::new(ratelimit::Buckets::default()),
        }
    }

    /// Serves models with `generator` on `/v1` (and the web app's chat).
    pub fn with_generator(mut self, generator: Arc<dyn openai::Generator>) -> AppState {
        self.generator = Some(generator);
        self
    }

    /// Keeps span-attribution indexes in `dir` (built once, read back after a restart).
    pub fn with_attribution_dir(mut self, dir: std::path::PathBuf) -> AppState {
        self.indexes = Arc::new(attribution::Indexes::new(Some(dir)));
        self
    }

    /// Uploads every adapter published from now on to `store` (before the
    /// publication is recorded, so a published adapter is always there).
    pub fn with_adapter_store(mut self, store: Arc<merit_store::remote::AdapterStore>) -> AppState {
        self.adapter_store = Some(store);
        self
    }

    /// Lets requests hold at most `bytes` of memory together (bodies being
    /// read and parsed, files being gated); see [`budget`].
    pub fn with_request_memory(mut self, bytes: u64) -> AppState {
        self.memory = budget::MemoryBudget::new(bytes);
        self
    }

    /// Splits priced answers' fees by `shares` instead of the default 0.2 / 0.7 / 0.1.
    pub fn with_shares(mut self, shares: merit_attrib::Shares) -> AppState {
        self.shares = shares;
        self
    }

    /// Adds training runs: `trainer` trains them in folders under `runs_dir`
    /// (the worker itself starts with [`start_worker`]).
    pub fn with_trainer(self, trainer: Arc<dyn RunTrainer>, runs_dir: std::path::PathBuf) -> AppState {
        self.with_run_host(RunHost::new(trainer, runs_dir))
    }

    /// Adds training runs as `host` says (its limits too).
    pub fn with_run_host(mut self, host: RunHost) -> AppState {
        self.runs = Some(Arc::new(host));
        self
    }
}

/// What requests may hold in memory together unless told otherwise: 2 GiB.
pub const DEFAULT_REQUEST_MEMORY: u64 = 2 << 30;

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    use axum::http::{header, HeaderValue};
    use tower_http::set_header::SetResponseHeaderLayer as Set;
    Router::new()
        .nest("/api/v1", routes::api())
        .merge(routes::tlog())
        .merge(web::routes())
        .merge(openai::routes())
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .fallback(|| async {
            error::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), budget::middleware))
        .layer(axum::middleware::from_fn_with_state(state.clone(), ratelimit::middleware))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| error::ApiError::internal().into_response()))
        // The headers every answer carries (unless a handler set its own).
        .layer(Set::if_not_present(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)))
        .layer(Set::if_not_present(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(Set::if_not_present(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(Set::if_not_present(header::REFERRER_POLICY, HeaderValue::from_static("same-origin")))
        .with_state(state)
}

/// Content-Security-Policy: the page's own scripts, styles and images (the
/// vendored assets), no inline script, no framing, forms to this server only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// How long a client may take: to send a request's headers, and between
/// two pieces of its body. A connection past either is closed (a slow or
/// stalled client holds no task, socket or buffer for long).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: std::time::Duration,
    pub body: std::time::Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts { header: std::time::Duration::from_secs(30), body: std::time::Duration::from_secs(60) }
    }
}

/// Serves the API on `addr` until the process is stopped (Ctrl-C: open
/// connections get 10 s to finish).
pub async fn serve(state: AppState, addr: SocketAddr, timeouts: Timeouts) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let app = router(state).layer(tower_http::timeout::RequestBodyTimeoutLayer::new(timeouts.body));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(timeouts.header);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let service = app.clone().map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            req
        });
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(wire::JsonParseErrors::new(stream)),
                hyper_util::service::TowerToHyperService::new(service),
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
    }
    Ok(())
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}
