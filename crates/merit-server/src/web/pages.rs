//! Page handlers: each asks the API's handlers for its data (as the viewer)
//! and renders a template.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{page_error, render, Viewer};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::routes::{datanets, ledger, runs};
use crate::AppState;

/// The JSON of an API handler's answer, or the error page (which the page
/// handler returns as it is).
#[allow(clippy::result_large_err)]
fn ok(viewer: &Viewer, r: Result<axum::Json<Value>, ApiError>) -> Result<Value, Response> {
    r.map(|j| j.0).map_err(|e| page_error(Some(viewer), e))
}

/// A page that needs a signed-in person: others go to the sign-in form.
fn sign_in_first(viewer: &Viewer, here: &str) -> Option<Response> {
    viewer.0.is_none().then(|| Redirect::to(&format!("/login?next={here}")).into_response())
}

pub async fn home() -> Response {
    Redirect::to("/datanets").into_response()
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    tag: String,
}

pub async fn datanets(State(state): State<AppState>, viewer: Viewer, Query(q): Query<ListQuery>) -> Response {
    let query = datanets::ListQuery {
        q: Some(q.q.clone()).filter(|s| !s.is_empty()),
        tag: Some(q.tag.clone()).filter(|s| !s.is_empty()),
    };
    let list = match ok(&viewer, datanets::datanets_list(State(state), viewer.caller(), ApiQuery(query)).await) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut tags: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)))
        .collect();
    tags.sort();
    tags.dedup();
    render(&viewer, "datanets.html", "Datanets", json!({ "datanets": list, "q": q.q, "tag": q.tag, "tags": tags }))
}

/// Each contributor's submitted and accepted counts over time, as a small
/// inline SVG (two cumulative lines on one time axis for the whole board).
fn history_charts(outcomes: &[merit_core::score::Outcome]) -> std::collections::HashMap<String, String> {
    use std::collections::HashMap;
    let times = outcomes.iter().flat_map(|o| std::iter::once(o.submitted_at).chain(o.accepted_at));
    let Some((t0, t1)) = times.fold(None, |acc: Option<(i64, i64)>, t| match acc {
        None => Some((t, t)),
        Some((lo, hi)) => Some((lo.min(t), hi.max(t))),
    }) else {
        return HashMap::new();
    };
    let span = t1.saturating_sub(t0).max(1) as f64;
    let mut by: HashMap<String, Vec<(i64, u8)>> = HashMap::new();
    for o in outcomes {
        let e = by.entry(o.contributor.clone()).or_default();
        e.push((o.submitted_at, 0));
        if let (Some(at), merit_core::Status::Accepted) = (o.accepted_at, o.status) {
            e.push((at, 1));
        }
    }
    let (w, h) = (120.0, 28.0);
    by.into_iter()
        .map(|(who, mut ev)| {
            ev.sort();
            let total = ev.iter().filter(|(_, k)| *k == 0).count().max(1) as f64;
            let line = |kind: u8| {
                let mut n = 0.0;
                let mut pts = vec![format!("0,{h}")];
                for (t, k) in &ev {
                    if *k == kind {
                        let x = (*t - t0) as f64 / span * w;
                        pts.push(format!("{x:.1},{:.1}", h - n / total * (h - 2.0)));
                        n += 1.0;
                        pts.push(format!("{x:.1},{:.1}", h - n / total * (h - 2.0)));
                    }
                }
                pts.push(format!("{w},{:.1}", h - n / total * (h - 2.0)));
                pts.join(" ")
            };
            let svg = format!(
                "<svg class=\"spark\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"submitted and accepted over time\">\
                 <polyline fill=\"none\" stroke=\"#9ca3af\" stroke-width=\"1.5\" points=\"{}\"/>\
                 <polyline fill=\"none\" stroke=\"#15803d\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
                line(0),
                line(1)
            );
            (who, svg)
        })
        .collect()
}

/// Adds each contributor's history chart to a leaderboard.
fn with_history(board: Value, outcomes: &[merit_core::score::Outcome]) -> Value {
    let charts = history_charts(outcomes);
    match board {
        Value::Array(rows) => Value::Array(
            rows.into_iter()
                .map(|mut r| {
                    let who = r["contributor"].as_str().unwrap_or_default().to_string();
                    r["history"] = json!(charts.get(&who));
                    r
                })
                .collect(),
        ),
        other => other,
    }
}

pub async fn datanet(State(state): State<AppState>, viewer: Viewer, Path(name): Path<String>) -> Response {
    let d = match ok(&viewer, datanets::datanets_show(State(state.clone()), viewer.caller(), Path(name.clone())).await)
    {
        Ok(v) => v,
        Err(r) => return r,
    };
    let board = datanets::leaderboard_datanet(State(state.clone()), viewer.caller(), Path(name.clone()))
        .await
        .map(|j| j.0)
        .unwrap_or(Value::Array(vec![]));
    let outcomes = match state.store.datanet(&name).await {
        Ok(Some(dn)) => state.store.outcomes(Some(&dn)).await.unwrap_or_default(),
        _ => Vec::new(),
    };
    let board = with_history(board, &outcomes);
    let title = format!("Datanet {name}");
    render(&viewer, "datanet.html", &title, json!({ "d": d, "leaderboard": board }))
}

pub async fn datanet_new(viewer: Viewer) -> Response {
    if let Some(r) = sign_in_first(&viewer, "/datanets/new") {
        return r;
    }
    render(&viewer, "datanet_form.html", "New datanet", json!({ "d": null }))
}

pub async fn datanet_edit(State(state): State<AppState>, viewer: Viewer, Path(name): Path<String>) -> Response {
    if let Some(r) = sign_in_first(&viewer, &format!("/datanets/{name}/edit")) {
        return r;
    }
    let d = match ok(&viewer, datanets::datanets_show(State(state), viewer.caller(), Path(name.clone())).await) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if d["your_role"] != "owner" {
        return page_error(
            Some(&viewer),
            ApiError::forbidden(format!("only the owner of datanet `{name}` can edit it")),
        );
    }
    render(&viewer, "datanet_form.html", &format!("Edit {name}"), json!({ "d": d }))
}

#[derive(Deserialize, Default)]
pub struct RowsQuery {
    #[serde(default)]
    offset: i64,
    #[serde(default)]
    q: String,
    version: Option<i64>,
}

/// The rows table of a datanet (an htmx fragment): 25 rows a page, searchable.
pub async fn rows(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(q): Query<RowsQuery>,
) -> Response {
    let query = datanets::RowsQuery {
        version: q.version,
        offset: q.offset.max(0),
        limit: Some(25),
        q: Some(q.q.clone()).filter(|s| !s.is_empty()),
    };
    let page = match ok(
        &viewer,
        datanets::rows_list(State(state), viewer.caller(), Path(name.clone()), ApiQuery(query)).await,
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let shown = page["rows"].as_array().map_or(0, Vec::len) as i64;
    let data = json!({
        "name": name, "page": page, "q": q.q, "offset": q.offset.max(0),
        "prev": (q.offset > 0).then(|| (q.offset - 25).max(0)),
        "next": (shown == 25).then_some(q.offset.max(0) + 25),
    });
    render(&viewer, "rows.html", "Rows", data)
}

pub async fn leaderboard(State(state): State<AppState>, viewer: Viewer) -> Response {
    let board = match ok(&viewer, datanets::leaderboard_global(State(state.clone())).await) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut outcomes = Vec::new();
    for d in state.store.datanets().await.unwrap_or_default().iter().filter(|d| d.published) {
        outcomes.extend(state.store.outcomes(Some(d)).await.unwrap_or_default());
    }
    let board = with_history(board, &outcomes);
    render(&viewer, "leaderboard.html", "Leaderboard", json!({ "leaderboard": board }))
}

pub async fn runs(State(state): State<AppState>, viewer: Viewer) -> Response {
    if let Some(r) = sign_in_first(&viewer, "/runs") {
        return r;
    }
    let query = runs::ListQuery { offset: 0, limit: Some(200), all: false };
    let list = match ok(&viewer, runs::runs_list(State(state), viewer.caller(), ApiQuery(query)).await) {
        Ok(v) => v,
        Err(r) => return r,
    };
    render(&viewer, "runs.html", "Training runs", json!({ "runs": list }))
}

pub async fn run_new(State(state): State<AppState>, viewer: Viewer) -> Response {
    if let Some(r) = sign_in_first(&viewer, "/runs/new") {
        return r;
    }
    let host = state.runs.clone();
    let models = tokio::task::spawn_blocking(move || host.map(|h| h.trainer.models()).unwrap_or_default())
        .await
        .unwrap_or_default();
    let caller = viewer.caller();
    let list = match ok(
        &viewer,
        datanets::datanets_list(State(state.clone()), caller, ApiQuery(datanets::ListQuery::default())).await,
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    // Measured speed of this machine: finished runs' tokens/s, newest first.
    let query = runs::ListQuery { offset: 0, limit: Some(50), all: false };
    let past =
        runs::runs_list(State(state.clone()), viewer.caller(), ApiQuery(query)).await.map(|j| j.0).unwrap_or_default();
    let measured: Vec<Value> = past
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let tps = r["summary"]["tokens_per_s"].as_f64().filter(|t| *t > 0.0)?;
            Some(json!({ "base": r["config"]["base"], "method": r["config"]["method"], "tokens_per_s": tps }))
        })
        .collect();
    let trainer = state.runs.is_some();
    render(
        &viewer,
        "run_new.html",
        "New training run",
        json!({ "models": models, "datanets": list, "measured": measured, "trainer": trainer }),
    )
}

pub async fn run(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> Response {
    if let Some(r) = sign_in_first(&viewer, &format!("/runs/{id}")) {
        return r;
    }
    let run = match ok(&viewer, runs::runs_show(State(state), viewer.caller(), Path(id.clone())).await) {
        Ok(v) => v,
        Err(r) => return r,
    };
    render(&viewer, "run.html", &format!("Run {id}"), json!({ "run": run }))
}

pub async fn ledger(State(state): State<AppState>, viewer: Viewer) -> Response {
    let key = ledger::key_get(State(state.clone())).await.0;
    let checkpoint = match ledger::checkpoint_text(&state).await {
        Ok(t) => t,
        Err(e) => return page_error(Some(&viewer), e),
    };
    render(&viewer, "ledger.html", "Ledger", json!({ "key": key, "checkpoint": checkpoint }))
}

#[derive(Deserialize, Default)]
pub struct ChatQuery {
    #[serde(default)]
    model: String,
}

pub async fn chat(viewer: Viewer, Query(q): Query<ChatQuery>) -> Response {
    if let Some(r) = sign_in_first(&viewer, "/chat") {
        return r;
    }
    render(&viewer, "chat.html", "Chat", json!({ "model": q.model }))
}

/// The signed-in user's account: their API tokens (listed, made and
/// revoked through `/api/v1/tokens` by the page's script).
pub async fn account(viewer: Viewer) -> Response {
    if let Some(r) = sign_in_first(&viewer, "/account") {
        return r;
    }
    render(&viewer, "account.html", "Your account", json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use merit_core::score::Outcome;
    use merit_core::Status;

    #[test]
    fn history_charts_draw_cumulative_lines() {
        assert!(history_charts(&[]).is_empty());
        let o = |who: &str, status, at, accepted| Outcome {
            contributor: who.into(),
            status,
            credit: 1.0,
            submitted_at: at,
            accepted_at: accepted,
        };
        let charts = history_charts(&[
            o("ann", Status::Accepted, 0, Some(10)),
            o("ann", Status::Rejected, 50, None),
            o("bob", Status::Accepted, 100, Some(100)),
        ]);
        let ann = &charts["ann"];
        assert_eq!(ann.matches("<polyline").count(), 2);
        // ann: two submitted (ends at the top), one accepted (ends half way).
        assert!(ann.contains("120,2.0") && ann.contains("120,15.0"), "{ann}");
        assert!(charts["bob"].contains("120,2.0"));
    }
}
