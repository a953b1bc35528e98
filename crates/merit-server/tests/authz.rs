//! Who may do what (issue 14): one table of (role × resource × action) over
//! every route of the OpenAPI document and the OpenAI-compatible `/v1`,
//! with drafts, pending files, unpublished runs and their ledger entries.
//! A route the table does not cover fails the test.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::fakes::{EchoGenerator, FakeTrainer};
use common::{prose, App};
use serde_json::{json, Value};

/// Who calls: the public, a signed-in stranger, a contributor (with
/// pending files), a curator, an administrator, the datanets' and runs' owner.
const ROLES: [&str; 6] = ["anon", "dan", "bob", "cy", "root", "ann"];

/// What a role gets: a status, or 200 with a body that does (`Shows`) or
/// does not (`Hides`) contain the resource's tell-tale string.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Exp {
    S(u16),
    Shows,
    Hides,
}
use Exp::*;

struct Case {
    method: &'static str,
    /// The route as the OpenAPI document names it (for the coverage check).
    route: &'static str,
    path: String,
    body: Option<Value>,
    /// What must (or must not) show in a 200's body.
    tell: &'static str,
    /// A run status to wait for before the row is tried.
    after: Option<(i64, &'static str)>,
    /// Expected answer per role, in `ROLES` order (roles run in that order,
    /// so the one allowed to change state goes last).
    exp: [Exp; 6],
}

fn case(method: &'static str, route: &'static str, path: impl Into<String>, exp: [Exp; 6]) -> Case {
    Case { method, route, path: path.into(), body: None, tell: "", after: None, exp }
}

impl Case {
    fn body(mut self, body: Value) -> Case {
        self.body = Some(body);
        self
    }

    fn tell(mut self, tell: &'static str) -> Case {
        self.tell = tell;
        self
    }

    fn after(mut self, run: i64, status: &'static str) -> Case {
        self.after = Some((run, status));
        self
    }
}

async fn wait_for(app: &App, token: &str, run: i64, status: &str) {
    for _ in 0..500 {
        if app.call("GET", &format!("/api/v1/runs/{run}"), Some(token), None).await.json()["status"] == status {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("run {run} never became {status}");
}

#[tokio::test]
async fn every_route_answers_every_role_as_the_roles_table_says() {
    let app = App::with_trainer_and_generator(Arc::new(FakeTrainer), Arc::new(EchoGenerator)).await;
    let mut tokens = std::collections::HashMap::new();
    for who in ["dan", "bob", "cy", "ann"] {
        tokens.insert(who, app.user(who).await);
    }
    tokens.insert("root", app.admin("root").await);
    let t = |who: &str| tokens[who].clone();
    // Web sessions (the pages ask the API's handlers as their viewer).
    let mut sessions = std::collections::HashMap::new();
    for who in ["dan", "bob", "cy", "ann", "root"] {
        let user = app.store.user_by_token(&tokens[who]).await.unwrap().unwrap();
        sessions.insert(who, app.store.create_session(&user, 3_600_000).await.unwrap().0);
    }
    let (ann, bob, cy) = (t("ann"), t("bob"), t("cy"));

    // The world: a published datanet and two drafts of ann's, cy curating two.
    let policy = "review = \"owner\"\n";
    for (name, publish) in [("pub", true), ("draft", false), ("draft2", false)] {
        assert_eq!(app.datanet(&ann, name, policy, publish).await.status.as_u16(), 201);
    }
    for name in ["pub", "draft"] {
        let r = app.call("PUT", &format!("/api/v1/datanets/{name}/curators/cy"), Some(&ann), None).await;
        assert_eq!(r.status.as_u16(), 200);
    }
    let upload = |name: &'static str, token: String, file: &'static str, seed: u64| {
        let app = &app;
        async move {
            let r = app.upload(name, Some(&token), &[(file, prose(seed).as_bytes())], false).await;
            assert_eq!(r.status.as_u16(), 201, "{}", String::from_utf8_lossy(&r.body));
            r.json()[0]["contribution_id"].as_i64().unwrap()
        }
    };
    // Accepted rows in both: a version 1 each.
    for (name, seed) in [("pub", 1), ("draft", 2)] {
        let id = upload(name, ann.clone(), "ann-accepted.txt", seed).await;
        let r = app.call("POST", &format!("/api/v1/datanets/{name}/contributions/{id}/approve"), Some(&cy), None).await;
        assert_eq!(r.status.as_u16(), 200);
    }
    let pending = upload("pub", bob.clone(), "bob-pending.txt", 3).await;
    let to_approve = upload("pub", bob.clone(), "bob-approve.txt", 4).await;
    let to_reject = upload("pub", bob.clone(), "bob-reject.txt", 5).await;
    // Runs of ann's: 1 unpublished, 2 to publish, 3 long (to stop and resume).
    let rows = json!([{ "text": "hi" }]);
    for steps in [1, 1, 3000] {
        let r = app.call(
            "POST",
            "/api/v1/runs",
            Some(&ann),
            Some(json!({ "base": "base", "rows": rows, "max_steps": steps })),
        );
        assert_eq!(r.await.status.as_u16(), 201);
    }
    wait_for(&app, &ann, 1, "done").await;
    wait_for(&app, &ann, 2, "done").await;
    wait_for(&app, &ann, 3, "running").await;
    let ledger = app.call("GET", "/api/v1/ledger/entries?limit=1000", Some(&ann), None).await.json();
    let draft_entry = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["datanet_name"] == "draft")
        .map(|e| e["index"].as_u64().unwrap())
        .unwrap();
    let size = ledger["size"].as_u64().unwrap();
    // A second token of bob's, for bob to revoke.
    let second = app.call("POST", "/api/v1/tokens", Some(&bob), Some(json!({ "label": "spare" }))).await.json();
    let bob_token_id = second["id"].as_str().unwrap().to_string();

    let (a401, a403, a404) = (S(401), S(403), S(404));
    let ok = S(200);
    let c = |m, r, p: &str, e| case(m, r, p.to_string(), e);
    let cases = vec![
        c("GET", "/openapi.json", "/api/v1/openapi.json", [ok; 6]),
        c("GET", "/me", "/api/v1/me", [a401, ok, ok, ok, ok, ok]),
        c("GET", "/ledger/key", "/api/v1/ledger/key", [ok; 6]),
        // Ledger entries of a draft: only those who may see the draft see its names.
        c(
            "GET",
            "/ledger/entries",
            "/api/v1/ledger/entries?subject=datanet:draft",
            [Hides, Hides, Hides, Shows, Shows, Shows],
        )
        .tell("\"draft\""),
        c("GET", "/ledger/entries", "/api/v1/ledger/entries?limit=1000", [Hides, Hides, Shows, Shows, Shows, Shows])
            .tell("\"contributor\":\"bob\""),
        case(
            "GET",
            "/ledger/entries/{index}",
            format!("/api/v1/ledger/entries/{draft_entry}"),
            [Hides, Hides, Hides, Shows, Shows, Shows],
        )
        .tell("\"draft\""),
        c("GET", "/ledger/proof/inclusion", &format!("/api/v1/ledger/proof/inclusion?index={draft_entry}"), [ok; 6]),
        c("GET", "/ledger/proof/consistency", &format!("/api/v1/ledger/proof/consistency?old=1&new={size}"), [ok; 6]),
        case("POST", "/users", "/api/v1/users", [a401, a403, a403, a403, S(201), a403]).body(json!({ "name": "eve" })),
        c("GET", "/accounts/{name}/balance", "/api/v1/accounts/bob/balance", [a401, a404, ok, a404, ok, a404]),
        case("PUT", "/accounts/{name}/allowance", "/api/v1/accounts/bob/allowance", [a401, a403, a403, a403, ok, a403])
            .body(json!({ "allowance": 5 })),
        c("GET", "/tokens", "/api/v1/tokens", [a401, ok, ok, ok, ok, ok]),
        case("POST", "/tokens", "/api/v1/tokens", [a401, S(201), S(201), S(201), S(201), S(201)])
            .body(json!({ "label": "t" })),
        case("DELETE", "/tokens/{id}", format!("/api/v1/tokens/{bob_token_id}"), [a401, a404, ok, a404, a404, a404]),
        c("GET", "/leaderboard", "/api/v1/leaderboard", [ok; 6]),
        c("GET", "/datanets", "/api/v1/datanets", [Hides, Hides, Hides, Shows, Shows, Shows]).tell("\"draft\""),
        case("POST", "/datanets", "/api/v1/datanets", [a401, S(201), S(201), S(201), S(201), S(201)])
            .body(json!({ "name": "{role}-net", "policy": "" })),
        c("GET", "/datanets/{name}", "/api/v1/datanets/draft", [a404, a404, a404, ok, ok, ok]),
        c("GET", "/datanets/{name}", "/api/v1/datanets/pub", [ok; 6]),
        case("PATCH", "/datanets/{name}", "/api/v1/datanets/draft", [a401, a404, a404, a403, a403, ok])
            .body(json!({ "summary": "edited" })),
        c("POST", "/datanets/{name}/publish", "/api/v1/datanets/draft2/publish", [a401, a404, a404, a404, a403, ok]),
        c(
            "PUT",
            "/datanets/{name}/curators/{user}",
            "/api/v1/datanets/pub/curators/dan",
            [a401, a403, a403, a403, a403, ok],
        ),
        c(
            "DELETE",
            "/datanets/{name}/curators/{user}",
            "/api/v1/datanets/pub/curators/dan",
            [a401, a403, a403, a403, a403, ok],
        ),
        c("GET", "/datanets/{name}/versions", "/api/v1/datanets/draft/versions", [a404, a404, a404, ok, ok, ok]),
        c(
            "GET",
            "/datanets/{name}/versions/{number}",
            "/api/v1/datanets/draft/versions/1",
            [a404, a404, a404, ok, ok, ok],
        ),
        c("GET", "/datanets/{name}/versions/{number}", "/api/v1/datanets/pub/versions/1", [ok; 6]),
        c("GET", "/datanets/{name}/rows", "/api/v1/datanets/draft/rows", [a404, a404, a404, ok, ok, ok]),
        c("GET", "/datanets/{name}/export", "/api/v1/datanets/draft/export", [a404, a404, a404, ok, ok, ok]),
        c("GET", "/datanets/{name}/leaderboard", "/api/v1/datanets/draft/leaderboard", [a404, a404, a404, ok, ok, ok]),
        c(
            "GET",
            "/datanets/{name}/contributions",
            "/api/v1/datanets/pub/contributions",
            [Hides, Hides, Shows, Shows, Shows, Shows],
        )
        .tell("bob-pending"),
        c(
            "GET",
            "/datanets/{name}/contributions",
            "/api/v1/datanets/draft/contributions",
            [a404, a404, a404, ok, ok, ok],
        ),
        case(
            "GET",
            "/datanets/{name}/contributions/{id}",
            format!("/api/v1/datanets/pub/contributions/{pending}"),
            [a404, a404, ok, ok, ok, ok],
        ),
        case(
            "GET",
            "/datanets/{name}/contributions/{id}/file",
            format!("/api/v1/datanets/pub/contributions/{pending}/file"),
            [a404, a404, ok, ok, ok, ok],
        ),
        case(
            "POST",
            "/datanets/{name}/contributions/{id}/approve",
            format!("/api/v1/datanets/pub/contributions/{to_approve}/approve"),
            [a401, a403, a403, ok, a403, S(409)],
        ),
        case(
            "POST",
            "/datanets/{name}/contributions/{id}/reject",
            format!("/api/v1/datanets/pub/contributions/{to_reject}/reject"),
            [a401, a403, a403, ok, a403, S(409)],
        )
        .body(json!({ "reason": "off topic" })),
        // Uploads (dry runs: nothing changes): anyone signed in, to what they can see.
        c(
            "POST",
            "/datanets/{name}/contributions",
            "/api/v1/datanets/pub/contributions?dry_run=true",
            [a401, ok, ok, ok, ok, ok],
        ),
        c(
            "POST",
            "/datanets/{name}/contributions",
            "/api/v1/datanets/draft/contributions?dry_run=true",
            [a401, a404, a404, ok, ok, ok],
        ),
        // Runs: their owner's (administrators may look and stop, never publish or resume).
        c("GET", "/models", "/api/v1/models", [a401, ok, ok, ok, ok, ok]),
        c("GET", "/runs", "/api/v1/runs", [a401, Hides, Hides, Hides, Hides, Shows]).tell("\"id\":1,"),
        c("GET", "/runs", "/api/v1/runs?all=true", [a401, Hides, Hides, Hides, Shows, Shows]).tell("\"id\":1,"),
        case("POST", "/runs", "/api/v1/runs", [a401, S(201), S(201), S(201), S(201), S(201)])
            .body(json!({ "base": "base", "rows": rows, "max_steps": 1 })),
        c("GET", "/runs/{id}", "/api/v1/runs/1", [a401, a404, a404, a404, ok, ok]),
        c("GET", "/runs/{id}/events", "/api/v1/runs/1/events", [a401, a404, a404, a404, ok, ok]),
        c(
            "GET",
            "/runs/{id}/files/{name}",
            "/api/v1/runs/1/files/adapter_config.json",
            [a401, a404, a404, a404, ok, ok],
        ),
        c("POST", "/runs/{id}/publish", "/api/v1/runs/2/publish", [a401, a404, a404, a404, a403, ok]),
        c("POST", "/runs/{id}/stop", "/api/v1/runs/3/stop", [a401, a404, a404, a404, S(202), S(202)]),
        c("POST", "/runs/{id}/resume", "/api/v1/runs/3/resume", [a401, a404, a404, a404, a403, S(202)])
            .after(3, "stopped"),
        // `/v1`: unpublished adapters are their owner's (and visible to administrators).
        c("GET", "/v1/models", "/v1/models", [a401, Hides, Hides, Hides, Shows, Shows]).tell("base:run-1"),
        case("POST", "/v1/chat/completions", "/v1/chat/completions", [a401, a404, a404, a404, ok, ok])
            .body(json!({ "model": "base:run-1", "messages": [{ "role": "user", "content": "a b" }] })),
        case("POST", "/v1/completions", "/v1/completions", [a401, a404, a404, a404, ok, ok])
            .body(json!({ "model": "base:run-1", "prompt": "a b" })),
        case("POST", "/v1/completions", "/v1/completions", [a401, ok, ok, ok, ok, ok])
            .body(json!({ "model": "base:run-2", "prompt": "published" })),
        // The web pages, signed in with a session cookie (anonymous visitors
        // of a page that needs an account go to the sign-in form: 303).
        c("PAGE", "", "/datanets", [Hides, Hides, Hides, Shows, Shows, Shows]).tell("draft\""),
        c("PAGE", "", "/datanets/draft", [a404, a404, a404, ok, ok, ok]),
        c("PAGE", "", "/datanets/draft/rows", [a404, a404, a404, ok, ok, ok]),
        c("PAGE", "", "/datanets/draft/edit", [S(303), a404, a404, a403, a403, ok]),
        // The review queue (its list comes from the API, above) is for curators and the owner.
        c("PAGE", "", "/datanets/pub", [Hides, Hides, Hides, Shows, Hides, Shows]).tell("Review queue"),
        c("PAGE", "", "/runs/1", [S(303), a404, a404, a404, ok, ok]),
        c("PAGE", "", "/runs", [S(303), ok, ok, ok, ok, ok]),
        c("PAGE", "", "/ledger", [ok; 6]),
        c("PAGE", "", "/account", [S(303), ok, ok, ok, ok, ok]),
        c("PAGE", "", "/chat", [S(303), ok, ok, ok, ok, ok]),
    ];

    // Every route of the OpenAPI document has a row.
    let doc = app.call("GET", "/api/v1/openapi.json", None, None).await.json();
    let covered: BTreeSet<(String, String)> =
        cases.iter().map(|c| (c.method.to_lowercase(), format!("/api/v1{}", c.route))).collect();
    let mut missing = Vec::new();
    // (Pages are not in the document; every page route is listed here by hand.)
    for (route, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if !covered.contains(&(method.clone(), route.clone())) {
                missing.push(format!("{} {route}", method.to_uppercase()));
            }
        }
    }
    assert!(missing.is_empty(), "routes without a row in the roles table: {missing:?}");

    let mut wrong = Vec::new();
    for case in &cases {
        if let Some((run, status)) = case.after {
            wait_for(&app, &ann, run, status).await;
        }
        for (i, role) in ROLES.iter().enumerate() {
            let path = case.path.replace("{role}", role);
            let body =
                case.body.as_ref().map(|b| serde_json::from_str(&b.to_string().replace("{role}", role)).unwrap());
            let token = (*role != "anon").then(|| t(role));
            let r = if case.method == "PAGE" {
                let mut req = axum::http::Request::builder().uri(&path);
                if let Some(session) = sessions.get(role) {
                    req = req.header("cookie", format!("merit_session={session}"));
                }
                app.send(req.body(axum::body::Body::empty()).unwrap()).await
            } else if case.method == "POST" && case.route == "/datanets/{name}/contributions" {
                let name = path.split('/').nth(4).unwrap();
                app.upload(name, token.as_deref(), &[("dry.txt", prose(9).as_bytes())], true).await
            } else {
                app.call(case.method, &path, token.as_deref(), body).await
            };
            let status = r.status.as_u16();
            let text = String::from_utf8_lossy(&r.body).replace(": ", ":");
            let got = match case.exp[i] {
                Shows | Hides if status == 200 => {
                    if text.contains(case.tell) {
                        Shows
                    } else {
                        Hides
                    }
                }
                _ => S(status),
            };
            if got != case.exp[i] {
                wrong.push(format!(
                    "{role:>4} {} {path}: expected {:?}, got {got:?}: {}",
                    case.method,
                    case.exp[i],
                    text.chars().take(160).collect::<String>()
                ));
            }
        }
    }
    // The long run ends now (the test waits for the worker when it ends).
    app.call("POST", "/api/v1/runs/3/stop", Some(&ann), None).await;
    wait_for(&app, &ann, 3, "stopped").await;
    assert!(wrong.is_empty(), "{} answers break the roles table:\n{}", wrong.len(), wrong.join("\n"));
}
