//! The web app at `/`: server-rendered pages (minijinja templates embedded
//! in the binary) with htmx and uPlot vendored under `/static`, no build step.
//!
//! Pages get their data from the API's own handlers, called in-process with
//! the signed-in person as the caller, so a page shows exactly what the API
//! would answer and offers only what it would allow. Changes go through the
//! JSON API from the page (`static/app.js`) with the session cookie and the
//! session's CSRF token in `X-CSRF-Token`.

mod pages;

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use minijinja::Environment;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::{Session, SESSION_COOKIE};
use crate::AppState;

/// How long a browser session lasts.
const SESSION_MS: i64 = 7 * 24 * 3600 * 1000;

/// The vendored and own static files: (name, content type, bytes).
const STATIC: &[(&str, &str, &[u8])] = &[
    ("htmx.min.js", "text/javascript", include_bytes!("../../web/static/htmx.min.js")),
    ("htmx.LICENSE.txt", "text/plain", include_bytes!("../../web/static/htmx.LICENSE.txt")),
    ("uPlot.iife.min.js", "text/javascript", include_bytes!("../../web/static/uPlot.iife.min.js")),
    ("uPlot.min.css", "text/css", include_bytes!("../../web/static/uPlot.min.css")),
    ("uPlot.LICENSE.txt", "text/plain", include_bytes!("../../web/static/uPlot.LICENSE.txt")),
    ("app.js", "text/javascript", include_bytes!("../../web/static/app.js")),
    ("app.css", "text/css", include_bytes!("../../web/static/app.css")),
];

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../web/templates/base.html")),
    ("error.html", include_str!("../../web/templates/error.html")),
    ("login.html", include_str!("../../web/templates/login.html")),
    ("datanets.html", include_str!("../../web/templates/datanets.html")),
    ("datanet.html", include_str!("../../web/templates/datanet.html")),
    ("datanet_form.html", include_str!("../../web/templates/datanet_form.html")),
    ("rows.html", include_str!("../../web/templates/rows.html")),
    ("leaderboard.html", include_str!("../../web/templates/leaderboard.html")),
    ("leaderboard_table.html", include_str!("../../web/templates/leaderboard_table.html")),
    ("runs.html", include_str!("../../web/templates/runs.html")),
    ("run_new.html", include_str!("../../web/templates/run_new.html")),
    ("run.html", include_str!("../../web/templates/run.html")),
    ("ledger.html", include_str!("../../web/templates/ledger.html")),
    ("chat.html", include_str!("../../web/templates/chat.html")),
    ("account.html", include_str!("../../web/templates/account.html")),
];

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // Every template is HTML: values are escaped unless marked safe.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        for (name, src) in TEMPLATES {
            if let Err(e) = env.add_template(name, src) {
                tracing::error!("template {name}: {e}");
            }
        }
        env.add_filter("markdown", |s: String| minijinja::Value::from_safe_string(markdown(&s)));
        env.add_filter("exp", |x: f64| x.exp());
        env.add_filter("when", |ms: i64| {
            let secs = ms / 1000;
            let days = secs.div_euclid(86_400);
            let (y, m, d) = civil(days);
            let t = secs.rem_euclid(86_400);
            format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", t / 3600, t % 3600 / 60)
        });
        env
    })
}

/// The calendar date of a day number since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Markdown to HTML with raw HTML shown as text and only http(s), mailto and
/// relative links kept: descriptions are written by users.
pub fn markdown(src: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, Tag};
    let safe_url = |u: &str| {
        let lower = u.trim().to_ascii_lowercase();
        !lower.contains(':')
            || lower.starts_with("http://")
            || lower.starts_with("https://")
            || lower.starts_with("mailto:")
    };
    let events = Parser::new_ext(src, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH).map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link { link_type, dest_url, title, id }) if !safe_url(&dest_url) => {
            Event::Start(Tag::Link { link_type, dest_url: "#".into(), title, id })
        }
        Event::Start(Tag::Image { link_type, dest_url, title, id }) if !safe_url(&dest_url) => {
            Event::Start(Tag::Image { link_type, dest_url: "#".into(), title, id })
        }
        other => other,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

/// The signed-in person of a page request, if any.
pub(crate) struct Viewer(pub Option<Session>);

impl axum::extract::FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Self, Response> {
        Session::of(parts, state).await.map(Viewer).map_err(|e| page_error(None, e))
    }
}

impl Viewer {
    /// The API's caller for this person.
    pub fn caller(&self) -> crate::extract::Caller {
        crate::extract::Caller(self.0.as_ref().map(|s| s.user.clone()))
    }

    fn context(&self) -> Value {
        match &self.0 {
            Some(s) => json!({ "name": s.user.name, "admin": s.user.admin, "csrf": s.csrf }),
            None => Value::Null,
        }
    }
}

/// Renders `template` with `data` and the viewer; a template error becomes a 500 page.
pub(crate) fn render(viewer: &Viewer, template: &str, title: &str, data: Value) -> Response {
    let ctx = json!({ "me": viewer.context(), "title": title, "data": data });
    match env().get_template(template).and_then(|t| t.render(&ctx)) {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("rendering {template}: {e:#}");
            page_error(Some(viewer), ApiError::internal())
        }
    }
}

/// An error as a page: the status and the API's message, never a blank screen.
pub(crate) fn page_error(viewer: Option<&Viewer>, e: ApiError) -> Response {
    let me = viewer.map(Viewer::context).unwrap_or(Value::Null);
    let ctx = json!({ "me": me, "title": "Error", "data": { "status": e.status.as_u16(), "code": e.code, "message": e.message } });
    let html = env()
        .get_template("error.html")
        .and_then(|t| t.render(&ctx))
        .unwrap_or_else(|_| format!("<!doctype html><title>Error</title><p>{}</p>", e.status));
    (e.status, Html(html)).into_response()
}

async fn static_file(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match STATIC.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, bytes)) => {
            ([(header::CONTENT_TYPE, *mime), (header::CACHE_CONTROL, "public, max-age=3600")], *bytes).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
    /// The sign-in form's CSRF token, also in the `merit_login` cookie.
    #[serde(default)]
    csrf: String,
}

/// The cookie that pairs a sign-in form with the browser that loaded it
/// (double submit: a page elsewhere can post the form, not read the cookie).
const LOGIN_COOKIE: &str = "merit_login";

/// `; Secure` when the server is told it is reached over TLS.
fn secure(state: &AppState) -> &'static str {
    if state.secure_cookies {
        "; Secure"
    } else {
        ""
    }
}

/// The sign-in page with a fresh CSRF token, in the form and in a cookie.
fn login_form(state: &AppState, viewer: &Viewer, error: Option<&str>, next: &str) -> Response {
    let token = hex::encode(rand_bytes());
    let data = json!({ "error": error, "next": local_path(next), "csrf": token });
    let mut r = render(viewer, "login.html", "Sign in", data);
    let cookie =
        format!("{LOGIN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/login; Max-Age=3600{}", secure(state));
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// 128 unpredictable bits: two of the request-id generator's draws.
fn rand_bytes() -> [u8; 16] {
    let (a, b) = (crate::openai::rand_u64(), crate::openai::rand_u64());
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    out
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    #[serde(default)]
    next: String,
}

/// Only local paths: never an open redirect.
fn local_path(next: &str) -> String {
    // Control characters (CR, LF, …) cannot be in a Location header: such a `next` is nowhere.
    if next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control)
        && next.len() <= 2048
    {
        next.to_string()
    } else {
        "/".into()
    }
}

async fn login_page(
    State(state): State<AppState>,
    viewer: Viewer,
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
) -> Response {
    login_form(&state, &viewer, None, &q.next)
}

/// Signs in with an API token: a session cookie (HttpOnly, SameSite=Strict,
/// Secure behind TLS). The form's CSRF token must match its cookie.
async fn login(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: axum::http::HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let paired = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == LOGIN_COOKIE && !v.is_empty() && v == form.csrf);
    if !paired {
        let mut r = login_form(&state, &viewer, Some("The sign-in form was stale; please sign in again."), &form.next);
        *r.status_mut() = StatusCode::FORBIDDEN;
        return r;
    }
    let user = match state.store.user_by_token(form.token.trim()).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            let error = "That API token is not valid. `merit user add NAME` prints one.";
            let mut r = login_form(&state, &viewer, Some(error), &form.next);
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            return r;
        }
        Err(e) => return page_error(Some(&viewer), e.into()),
    };
    let (token, _) = match state.store.create_session(&user, SESSION_MS).await {
        Ok(t) => t,
        Err(e) => return page_error(Some(&viewer), e.into()),
    };
    let next = local_path(&form.next);
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        SESSION_MS / 1000,
        secure(&state)
    );
    let used = format!("{LOGIN_COOKIE}=; HttpOnly; SameSite=Strict; Path=/login; Max-Age=0{}", secure(&state));
    let mut r = Redirect::to(&next).into_response();
    for c in [cookie, used] {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    csrf: String,
}

/// Signs out: the session ends on the server and the cookie is cleared.
async fn logout(
    State(state): State<AppState>,
    viewer: Viewer,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    // No form at all (no body): as stale as a wrong token.
    let sent = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if let Some(s) = &viewer.0 {
        if s.csrf != sent {
            return page_error(Some(&viewer), ApiError::forbidden("the sign-out form is stale; reload the page"));
        }
        if let Err(e) = state.store.delete_session(&s.token).await {
            return page_error(Some(&viewer), e.into());
        }
    }
    let cookie = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}", secure(&state));
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::home))
        .route("/static/{name}", get(static_file))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/datanets", get(pages::datanets))
        .route("/datanets/new", get(pages::datanet_new))
        .route("/datanets/{name}", get(pages::datanet))
        .route("/datanets/{name}/edit", get(pages::datanet_edit))
        .route("/datanets/{name}/rows", get(pages::rows))
        .route("/leaderboard", get(pages::leaderboard))
        .route("/runs", get(pages::runs))
        .route("/runs/new", get(pages::run_new))
        .route("/runs/{id}", get(pages::run))
        .route("/ledger", get(pages::ledger))
        .route("/chat", get(pages::chat))
        .route("/account", get(pages::account))
        // A failure inside a page is an error page, not the API's JSON.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| page_error(None, ApiError::internal())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_shows_raw_html_as_text_and_drops_script_links() {
        let html = markdown(
            "# Title\n\n<script>alert(1)</script>\n\nSee <img src=x onerror=alert(1)> [x](javascript:alert(1)) [ok](https://a.b)",
        );
        assert!(html.contains("<h1>Title</h1>"));
        assert!(!html.contains("<script>") && !html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;") && html.contains("&lt;img"));
        assert!(!html.contains("href=\"javascript"), "{html}");
        assert!(html.contains("href=\"#\"") && html.contains("href=\"https://a.b\""), "{html}");
    }

    #[test]
    fn every_template_parses() {
        for (name, _) in TEMPLATES {
            env().get_template(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_417), (2025, 11, 25));
    }
}
