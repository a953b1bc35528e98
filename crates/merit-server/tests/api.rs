//! API tests by `oneshot`; they run on PostgreSQL too when
//! `MERIT_TEST_DATABASE_URL` is set (see `.ci/run`).

mod common;

use axum::http::StatusCode;
use common::fakes::{word_tokens, EchoGenerator, FakeTrainer};
use common::{prose, App};
use serde_json::{json, Value};

const OWNER_REVIEW: &str = "review = \"owner\"\n";

#[tokio::test]
async fn role_matrix() {
    let app = App::new().await;
    let ann = app.user("ann").await; // owner
    let bob = app.user("bob").await; // contributor
    let cy = app.user("cy").await; // curator
    let dan = app.user("dan").await; // another contributor

    assert_eq!(app.datanet(&ann, "qa", OWNER_REVIEW, false).await.status, StatusCode::CREATED);
    // Unpublished: only the owner (and curators) see it.
    assert_eq!(app.call("GET", "/api/v1/datanets/qa", None, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.call("GET", "/api/v1/datanets/qa", Some(&bob), None).await.status, StatusCode::NOT_FOUND);
    let listed = app.call("GET", "/api/v1/datanets", None, None).await.json();
    assert_eq!(listed, json!([]));
    // Only the owner publishes and edits.
    assert_eq!(app.call("POST", "/api/v1/datanets/qa/publish", Some(&bob), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.call("POST", "/api/v1/datanets/qa/publish", Some(&ann), None).await.status, StatusCode::OK);
    assert_eq!(app.call("GET", "/api/v1/datanets/qa", None, None).await.status, StatusCode::OK);
    let edit = json!({ "summary": "better" });
    assert_eq!(
        app.call("PATCH", "/api/v1/datanets/qa", Some(&bob), Some(edit.clone())).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call("PATCH", "/api/v1/datanets/qa", None, Some(edit.clone())).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.call("PATCH", "/api/v1/datanets/qa", Some(&ann), Some(edit)).await.status, StatusCode::OK);
    // After publishing the policy is fixed.
    let r = app.call("PATCH", "/api/v1/datanets/qa", Some(&ann), Some(json!({ "policy": "review = \"auto\"" }))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.call("PUT", "/api/v1/datanets/qa/curators/cy", Some(&bob), None).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(app.call("PUT", "/api/v1/datanets/qa/curators/cy", Some(&ann), None).await.status, StatusCode::OK);

    // The public cannot contribute; signed-in users can.
    assert_eq!(app.upload("qa", None, &[("a.txt", prose(1).as_bytes())], false).await.status, StatusCode::UNAUTHORIZED);
    let r = app.upload("qa", Some(&bob), &[("bob.txt", prose(2).as_bytes())], false).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    let bob_c = &r.json()[0];
    assert_eq!(bob_c["status"], "pending", "{bob_c}");
    let bob_id = bob_c["contribution_id"].as_i64().unwrap();
    let r = app.upload("qa", Some(&cy), &[("cy.txt", prose(3).as_bytes())], false).await;
    let cy_id = r.json()[0]["contribution_id"].as_i64().unwrap();

    // Pending files: owner and curator see them, the contributor sees their own, others and the public do not.
    let list = |token: Option<String>| {
        let app = &app;
        async move {
            let v = app.call("GET", "/api/v1/datanets/qa/contributions", token.as_deref(), None).await.json();
            v.as_array().unwrap().iter().map(|c| c["id"].as_i64().unwrap()).collect::<Vec<_>>()
        }
    };
    assert_eq!(list(Some(ann.clone())).await, vec![cy_id, bob_id]);
    assert_eq!(list(Some(cy.clone())).await, vec![cy_id, bob_id]);
    assert_eq!(list(Some(bob.clone())).await, vec![bob_id]);
    assert_eq!(list(Some(dan.clone())).await, Vec::<i64>::new());
    assert_eq!(list(None).await, Vec::<i64>::new());
    let path = format!("/api/v1/datanets/qa/contributions/{bob_id}");
    assert_eq!(app.call("GET", &path, Some(&dan), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.call("GET", &path, None, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.call("GET", &path, Some(&bob), None).await.status, StatusCode::OK);
    assert_eq!(app.call("GET", &format!("{path}/file"), Some(&dan), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.call("GET", &format!("{path}/file"), Some(&cy), None).await.body, prose(2).as_bytes());

    // Review: contributors cannot review; nobody reviews their own.
    let approve = |id: i64| format!("/api/v1/datanets/qa/contributions/{id}/approve");
    assert_eq!(app.call("POST", &approve(bob_id), Some(&dan), None).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.call("POST", &approve(bob_id), Some(&bob), None).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.call("POST", &approve(cy_id), Some(&cy), None).await.status, StatusCode::FORBIDDEN);
    let r = app.call("POST", &approve(bob_id), Some(&cy), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "accepted");
    assert_eq!(app.call("POST", &approve(bob_id), Some(&ann), None).await.status, StatusCode::CONFLICT);
    let reject = format!("/api/v1/datanets/qa/contributions/{cy_id}/reject");
    let r = app.call("POST", &reject, Some(&ann), Some(json!({ "reason": "off topic" }))).await;
    assert_eq!(r.json()["status"], "rejected");
    assert_eq!(r.json()["reasons"][0]["gate"], "review");

    // The public reads accepted rows and leaderboards, and sees accepted contributions only.
    let rows = app.call("GET", "/api/v1/datanets/qa/rows", None, None).await.json();
    assert_eq!(rows["row_count"], 1);
    assert_eq!(rows["rows"][0]["contributor"], "bob");
    assert_eq!(list(None).await, vec![bob_id]);
    // A contributor sees accepted ones and their own rejected one, not others' rejected ones.
    assert_eq!(list(Some(dan.clone())).await, vec![bob_id]);
    assert_eq!(list(Some(cy.clone())).await, vec![cy_id, bob_id]);
    let board = app.call("GET", "/api/v1/datanets/qa/leaderboard", None, None).await.json();
    assert_eq!(board[0]["contributor"], "bob");
    assert_eq!(board[0]["accepted"], 1);
    assert_eq!(board[1]["contributor"], "cy");
    assert_eq!(board[1]["score"], 0.0);
    assert_eq!(app.call("GET", "/api/v1/leaderboard", None, None).await.status, StatusCode::OK);
}

/// Issue 14 (medium): an administrator could approve contributions and
/// publish other users' runs, which the roles table gives them no power to do.
#[tokio::test]
async fn administrators_see_but_neither_review_nor_publish() {
    let app = common::App::with_trainer(std::sync::Arc::new(FakeTrainer)).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let root = app.admin("root").await;
    assert_eq!(app.datanet(&ann, "qa", OWNER_REVIEW, true).await.status, StatusCode::CREATED);
    assert_eq!(app.datanet(&ann, "draft", "", false).await.status, StatusCode::CREATED);
    assert_eq!(
        app.call("GET", "/api/v1/datanets/draft", Some(&root), None).await.status,
        StatusCode::OK,
        "sees drafts"
    );
    let r = app.upload("qa", Some(&bob), &[("bob.txt", prose(2).as_bytes())], false).await;
    let id = r.json()[0]["contribution_id"].as_i64().unwrap();
    let path = |verb: &str| format!("/api/v1/datanets/qa/contributions/{id}{verb}");
    assert_eq!(app.call("GET", &path(""), Some(&root), None).await.status, StatusCode::OK, "sees pending files");
    for verb in ["/approve", "/reject"] {
        let r = app.call("POST", &path(verb), Some(&root), Some(json!({ "reason": "no" }))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{verb}: {}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(app.call("GET", &path(""), Some(&ann), None).await.json()["status"], "pending");
    assert_eq!(app.call("POST", &path("/approve"), Some(&ann), None).await.status, StatusCode::OK);

    let r = app
        .call(
            "POST",
            "/api/v1/runs",
            Some(&ann),
            Some(json!({ "base": "m", "rows": [{ "text": "x" }], "max_steps": 1 })),
        )
        .await;
    let run = r.json()["id"].as_i64().unwrap();
    for _ in 0..200 {
        if app.call("GET", &format!("/api/v1/runs/{run}"), Some(&ann), None).await.json()["status"] == "done" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(app.call("GET", &format!("/api/v1/runs/{run}"), Some(&root), None).await.status, StatusCode::OK);
    for verb in ["publish", "resume"] {
        let r = app.call("POST", &format!("/api/v1/runs/{run}/{verb}"), Some(&root), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{verb}");
    }
    assert_eq!(app.call("POST", &format!("/api/v1/runs/{run}/publish"), Some(&ann), None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn verdicts_versions_and_dry_runs() {
    let app = App::new().await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    app.datanet(&ann, "docs", "", true).await;

    // A dry run gives the verdict and stores nothing.
    let r = app.upload("docs", Some(&bob), &[("a.txt", prose(10).as_bytes())], true).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v[0]["status"], "accepted", "{v}");
    assert_eq!(v[0]["contribution_id"], Value::Null);
    let shown = app.call("GET", "/api/v1/datanets/docs", Some(&bob), None).await.json();
    assert_eq!(shown["stats"]["accepted"], 0);
    assert_eq!(shown["your_quota"]["user_files_remaining"], 20);

    // Real uploads: two good files, one short, one PDF that is not a PDF, one exact duplicate.
    let files: Vec<(String, Vec<u8>)> = vec![
        ("a.txt".into(), prose(10).into_bytes()),
        ("b.md".into(), prose(11).into_bytes()),
        ("short.txt".into(), b"Too short to be useful.".to_vec()),
        ("fake.pdf".into(), prose(12).into_bytes()),
        ("again.txt".into(), prose(10).into_bytes()),
    ];
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let r = app.upload("docs", Some(&bob), &refs, false).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    let statuses: Vec<&str> = v.as_array().unwrap().iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["accepted", "accepted", "rejected", "rejected", "rejected"], "{v}");
    assert_eq!(v[2]["reasons"][0]["gate"], "length");
    assert_eq!(v[2]["reasons"][0]["metric"], "word_count");
    assert_eq!(v[3]["reasons"][0]["gate"], "format");
    assert_eq!(v[4]["reasons"][0]["gate"], "exact_duplicate");
    for x in v.as_array().unwrap() {
        for key in ["file", "status", "contribution_id", "score", "reasons"] {
            assert!(x.get(key).is_some(), "{key} missing in {x}");
        }
        let s = x["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s));
    }

    // Two accepted files → versions 1 and 2, each with a Merkle root; v1 stays readable.
    let versions = app.call("GET", "/api/v1/datanets/docs/versions", None, None).await.json();
    assert_eq!(versions.as_array().unwrap().len(), 2);
    assert_eq!(versions[0]["row_count"], 1);
    assert_eq!(versions[1]["row_count"], 2);
    assert_ne!(versions[0]["root"], versions[1]["root"]);
    let v1 = app.call("GET", "/api/v1/datanets/docs/rows?version=1", None, None).await.json();
    assert_eq!(v1["rows"].as_array().unwrap().len(), 1);
    let found = app.call("GET", "/api/v1/datanets/docs/rows?q=carries%20the%20number%2011", None, None).await.json();
    assert_eq!(found["rows"].as_array().unwrap().len(), 1);

    // Exports: JSONL with one object per row; parquet with the magic bytes.
    let jsonl = app.call("GET", "/api/v1/datanets/docs/export?format=jsonl", None, None).await;
    let lines: Vec<Value> =
        String::from_utf8(jsonl.body).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["contributor"], "bob");
    assert!(lines[0]["text"].as_str().unwrap().contains("number 10"));
    let pq = app.call("GET", "/api/v1/datanets/docs/export?format=parquet&version=1", None, None).await;
    assert_eq!(pq.status, StatusCode::OK);
    assert!(pq.body.starts_with(b"PAR1") && pq.body.ends_with(b"PAR1"));
    assert_eq!(
        app.call("GET", "/api/v1/datanets/docs/export?format=xml", None, None).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn size_cap_is_enforced_while_streaming() {
    let app = App::new().await;
    let ann = app.user("ann").await;
    app.datanet(&ann, "small", "max_file_bytes = 1000", true).await;
    let big = vec![b'a'; 50_000];
    let r = app.upload("small", Some(&ann), &[("big.txt", &big)], false).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"]["details"]["limit"], "max_file_bytes");
    let shown = app.call("GET", "/api/v1/datanets/small", Some(&ann), None).await.json();
    assert_eq!(shown["stats"]["rejected"], 0);
    assert_eq!(shown["your_quota"]["user_files_remaining"], 20);
}

#[tokio::test]
async fn daily_limits_hold_under_16_concurrent_uploads() {
    let app = App::new().await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let policy = "[limits]\nuser_files_per_day = 5\n";
    app.datanet(&ann, "limited", policy, true).await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let (app, bob) = (app.clone(), bob.clone());
        tasks.push(tokio::spawn(async move {
            let text = prose(100 + i);
            app.upload("limited", Some(&bob), &[("f.txt", text.as_bytes())], false).await
        }));
    }
    let mut created = 0;
    let mut limited = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                let e = r.json();
                assert_eq!(e["error"]["details"]["limit"], "user_files_per_day");
                assert!(e["error"]["details"]["resets_at"].as_str().unwrap().ends_with("T00:00:00Z"));
                assert!(r.headers.get("retry-after").is_some());
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!((created, limited), (5, 11));
    let shown = app.call("GET", "/api/v1/datanets/limited", None, None).await.json();
    assert_eq!(shown["stats"]["accepted"].as_i64().unwrap() + shown["stats"]["rejected"].as_i64().unwrap(), 5);

    // Bytes per datanet, too: 3 files of ~900 bytes under a 2000-byte cap admit exactly 2.
    let policy = "[limits]\ndatanet_bytes_per_day = 2000\n";
    app.datanet(&ann, "bytes", policy, true).await;
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let app = app.clone();
        let token = if i % 2 == 0 { bob.clone() } else { ann.clone() };
        tasks.push(tokio::spawn(async move {
            let text = prose(200 + i);
            (text.len(), app.upload("bytes", Some(&token), &[("f.txt", text.as_bytes())], false).await)
        }));
    }
    let mut admitted_bytes = 0;
    for t in tasks {
        let (len, r) = t.await.unwrap();
        if r.status == StatusCode::CREATED {
            admitted_bytes += len;
        } else {
            assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(r.json()["error"]["details"]["limit"], "datanet_bytes_per_day");
        }
    }
    assert!(admitted_bytes <= 2000 && admitted_bytes > 2000 - 1100, "{admitted_bytes}");
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let app = App::new().await;
    let ann = app.user("ann").await;
    // Invalid policy: 422 naming the key.
    let r = app.datanet(&ann, "bad", "[gates]\nmin_words = \"many\"", true).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["error"]["details"]["key"], "gates.min_words");
    let r = app.datanet(&ann, "bad", "kind = \"image\"\nformats = [\"pdf\"]", true).await;
    assert_eq!(r.json()["error"]["details"]["key"], "formats");
    // Schema named but not sent.
    let r = app.datanet(&ann, "bad", "[gates]\njson_schema = \"s.json\"", true).await;
    assert_eq!(r.json()["error"]["details"]["key"], "gates.json_schema");
    // Issue 14 (low): a schema sent without a policy naming it was silently ignored, even when not JSON.
    let body = json!({ "name": "bad", "policy": "", "summary": "s", "json_schema": "not json" });
    let r = app.call("POST", "/api/v1/datanets", Some(&ann), Some(body)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["error"]["details"]["key"], "gates.json_schema");
    // Bad names, duplicates, bodies.
    assert_eq!(app.datanet(&ann, "Bad Name", "", true).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.datanet(&ann, "ok", "", true).await.status, StatusCode::CREATED);
    assert_eq!(app.datanet(&ann, "ok", "", true).await.status, StatusCode::CONFLICT);
    let raw = axum::http::Request::builder()
        .method("POST")
        .uri("/api/v1/datanets")
        .header("authorization", format!("Bearer {ann}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{not json"))
        .unwrap();
    assert_eq!(app.send(raw).await.status, StatusCode::BAD_REQUEST);
    let raw = axum::http::Request::builder()
        .method("POST")
        .uri("/api/v1/datanets")
        .header("authorization", format!("Bearer {ann}"))
        .body(axum::body::Body::from("name=x"))
        .unwrap();
    assert_eq!(app.send(raw).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = app.call("POST", "/api/v1/datanets", Some(&ann), Some(json!({ "name": "x", "colour": 1 }))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Uploads that are not multipart: 415. Unknown token: 401. Unknown things: 404.
    let raw = axum::http::Request::builder()
        .method("POST")
        .uri("/api/v1/datanets/ok/contributions")
        .header("authorization", format!("Bearer {ann}"))
        .header("content-type", "text/plain")
        .body(axum::body::Body::from("hi"))
        .unwrap();
    assert_eq!(app.send(raw).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(app.call("GET", "/api/v1/me", Some("mrt_wrong"), None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.call("GET", "/api/v1/datanets/none", None, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.call("GET", "/api/v1/nowhere", None, None).await.status, StatusCode::NOT_FOUND);
    let r = app.call("GET", "/api/v1/datanets/ok/contributions/abc", None, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("positive whole number"));
    assert_eq!(app.call("GET", "/api/v1/datanets/ok/rows?limit=0", None, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.call("GET", "/api/v1/datanets/ok/rows?offset=x", None, None).await.status, StatusCode::BAD_REQUEST);
    // Every error has the same shape.
    let e = app.call("GET", "/api/v1/datanets/none", None, None).await.json();
    for key in ["code", "message", "details"] {
        assert!(e["error"].get(key).is_some());
    }
    // Hostile bytes never make a 500.
    let junk: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    for name in ["x.pdf", "x.docx", "x.parquet", "x.csv", "x.jsonl", "x.txt", "x.png", "x"] {
        let r = app.upload("ok", Some(&ann), &[(name, &junk)], true).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()[0]["status"], "rejected");
    }
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let app = App::with_rate(merit_server::RateLimit { per_second: 0.5, burst: 3.0 }).await;
    let ann = app.user("ann").await;
    for _ in 0..3 {
        assert_eq!(app.call("GET", "/api/v1/me", Some(&ann), None).await.status, StatusCode::OK);
    }
    let r = app.call("GET", "/api/v1/me", Some(&ann), None).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&secs));
    // Another token has its own bucket.
    let bob = app.user("bob").await;
    assert_eq!(app.call("GET", "/api/v1/me", Some(&bob), None).await.status, StatusCode::OK);
}

/// Issue 14 (medium): the public limit was keyed on the bearer string, so
/// every made-up token got a fresh bucket.
#[tokio::test]
async fn invalid_tokens_share_their_address_bucket() {
    let app = App::with_rate(merit_server::RateLimit { per_second: 0.01, burst: 5.0 }).await;
    let mut codes = Vec::new();
    for i in 0..20 {
        codes.push(app.call("GET", "/api/v1/datanets", Some(&format!("mrt_made_up_{i}")), None).await.status);
    }
    assert_eq!(codes[..5], [StatusCode::UNAUTHORIZED; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|c| *c == StatusCode::TOO_MANY_REQUESTS), "{codes:?}");
    // A valid token is not held back by them.
    let ann = app.user("ann").await;
    assert_eq!(app.call("GET", "/api/v1/me", Some(&ann), None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn openapi_document_is_served() {
    let app = App::new().await;
    let doc = app.call("GET", "/api/v1/openapi.json", None, None).await.json();
    assert_eq!(doc["openapi"], "3.0.3");
    // Every documented GET without parameters answers something other than the router's 404.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .replace("{name}", "none")
                .replace("{user}", "nobody")
                .replace("{id}", "1")
                .replace("{number}", "1");
            let r = app.call(&method.to_uppercase(), &concrete, None, None).await;
            let routed = r.status != StatusCode::NOT_FOUND || r.json()["error"]["message"] != "no such route";
            assert!(
                routed && r.status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but not routed"
            );
        }
    }
}

#[tokio::test]
async fn ledger_is_served_as_tiles_and_json() {
    use base64::Engine;
    let app = App::new().await;
    let ann = app.user("ann").await;
    app.datanet(&ann, "t", "", true).await;
    app.upload("t", Some(&ann), &[("a.txt", prose(1).as_bytes())], false).await;
    // created, policy, submitted, verdict, version
    let note = String::from_utf8(app.call("GET", "/ledger/checkpoint", None, None).await.body).unwrap();
    let key = app.call("GET", "/api/v1/ledger/key", None, None).await.json();
    let verifier = merit_ledger::checkpoint::NoteVerifier::parse(key["vkey"].as_str().unwrap()).unwrap();
    let cp = verifier.verify(&note).unwrap();
    assert_eq!((cp.origin.as_str(), cp.size), ("merit.test/ledger", 5));

    // Entry bundle and level-0 hash tile (partial, width 5) per C2SP tlog-tiles.
    let bundle = app.call("GET", "/ledger/tile/entries/000.p/5", None, None).await.body;
    let mut leaves = Vec::new();
    let mut rest = bundle.as_slice();
    while !rest.is_empty() {
        let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        leaves.push(rest[2..2 + n].to_vec());
        rest = &rest[2 + n..];
    }
    assert_eq!(leaves.len(), 5);
    let tile = app.call("GET", "/ledger/tile/0/000.p/5", None, None).await.body;
    let hashes: Vec<[u8; 32]> = tile.chunks(32).map(|c| c.try_into().unwrap()).collect();
    let want: Vec<[u8; 32]> = leaves.iter().map(|l| merit_ledger::leaf_hash(l)).collect();
    assert_eq!(hashes, want);
    assert_eq!(merit_ledger::root(&hashes), cp.root);
    assert_eq!(app.call("GET", "/ledger/tile/0/000", None, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.call("GET", "/ledger/tile/0/000.p/6", None, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.call("GET", "/ledger/tile/zz", None, None).await.status, StatusCode::NOT_FOUND);

    // JSON: entries (base64 and decoded) and proofs in lowercase hex.
    let e = app.call("GET", "/api/v1/ledger/entries/3", None, None).await.json();
    assert_eq!(e["event"]["type"], "contribution.verdict");
    assert_eq!(e["event"]["status"], "accepted");
    let leaf = base64::engine::general_purpose::STANDARD.decode(e["leaf"].as_str().unwrap()).unwrap();
    assert_eq!(leaf, leaves[3]);
    let p = app.call("GET", "/api/v1/ledger/proof/inclusion?index=3&size=5", None, None).await.json();
    assert_eq!(p["leaf_hash"], hex::encode(want[3]));
    let proof: Vec<[u8; 32]> = p["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    merit_ledger::proof::verify_inclusion(3, 5, &want[3], &proof, &cp.root).unwrap();
    let c = app.call("GET", "/api/v1/ledger/proof/consistency?old=2&new=5", None, None).await.json();
    assert_eq!((c["old"].as_u64(), c["new"].as_u64()), (Some(2), Some(5)));
    let proof: Vec<[u8; 32]> = c["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    merit_ledger::proof::verify_consistency(2, 5, &merit_ledger::root(&want[..2]), &cp.root, &proof).unwrap();
    // Bad proof requests are 422 / 400, never 500.
    assert_eq!(
        app.call("GET", "/api/v1/ledger/proof/inclusion?index=9&size=5", None, None).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.call("GET", "/api/v1/ledger/proof/inclusion?index=0&size=99", None, None).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.call("GET", "/api/v1/ledger/proof/consistency?old=5&new=2", None, None).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.call("GET", "/api/v1/ledger/proof/inclusion?index=x", None, None).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(app.call("GET", "/api/v1/ledger/entries/99", None, None).await.status, StatusCode::NOT_FOUND);
    // A dry run appends nothing.
    app.upload("t", Some(&ann), &[("b.txt", prose(2).as_bytes())], true).await;
    assert_eq!(app.call("GET", "/api/v1/ledger/entries", None, None).await.json()["size"], 5);
}

/// The events of a stream, read to its end, as (event, data).
fn sse_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = String::from("message");
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                event = e.to_string();
            } else if let Some(d) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                data.push_str(d);
            }
        }
        if !data.is_empty() {
            out.push((event, serde_json::from_str(&data).unwrap_or(Value::Null)));
        }
    }
    out
}

#[tokio::test]
async fn training_runs_are_jobs_with_live_events_and_stop() {
    let app = common::App::with_trainer(std::sync::Arc::new(FakeTrainer)).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    assert_eq!(app.datanet(&ann, "qa", "", true).await.status, StatusCode::CREATED);
    let r = app.upload("qa", Some(&ann), &[("a.txt", prose(1).as_bytes())], false).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));

    // Bad requests name what is wrong and queue nothing.
    let post = |token: Option<String>, body: Value| {
        let app = &app;
        async move { app.call("POST", "/api/v1/runs", token.as_deref(), Some(body)).await }
    };
    assert_eq!(post(None, json!({ "base": "m", "datanets": ["qa"] })).await.status, StatusCode::UNAUTHORIZED);
    let r = post(Some(ann.clone()), json!({ "base": "m" })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("datanets"));
    let r = post(Some(ann.clone()), json!({ "base": "m", "datanets": ["qa"], "rank": 0 })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("--rank"));
    assert_eq!(
        post(Some(ann.clone()), json!({ "base": "m", "datanets": ["nope"] })).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(Some(ann.clone()), json!({ "base": "m", "datanets": ["qa@7"] })).await.status,
        StatusCode::NOT_FOUND
    );
    let r = post(Some(ann.clone()), json!({ "base": "m", "datanets": ["qa@x"] })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        post(Some(ann.clone()), json!({ "base": "m", "rows": [] })).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(post(Some(ann.clone()), json!(["base"])).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.call("GET", "/api/v1/runs", Some(&ann), None).await.json(), json!([]));

    // A run on a datanet: the version is resolved now; the stream ends with the run.
    let r = post(Some(ann.clone()), json!({ "base": "m", "datanets": ["qa"], "max_steps": 4 })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    let run = r.json();
    assert_eq!(run["config"]["sources"], json!(["datanet:qa@1"]));
    assert_eq!(run["config"]["rank"], 8, "prepared by the trainer");
    let id = run["id"].as_i64().unwrap();
    assert_eq!(app.call("GET", &format!("/api/v1/runs/{id}"), Some(&bob), None).await.status, StatusCode::NOT_FOUND);
    let events = app.call("GET", &format!("/api/v1/runs/{id}/events"), Some(&ann), None).await;
    assert_eq!(events.status, StatusCode::OK);
    assert!(events.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let ev = sse_events(&events.body);
    let steps: Vec<i64> = ev.iter().filter(|(e, _)| e == "step").map(|(_, d)| d["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
    let (last, end) = ev.last().unwrap();
    assert_eq!((last.as_str(), end["status"].as_str()), ("end", Some("done")));
    assert_eq!(end["summary"]["steps"], 4);
    // Reconnecting after line 2 replays only the rest.
    let req = axum::http::Request::builder()
        .uri(format!("/api/v1/runs/{id}/events"))
        .header("authorization", format!("Bearer {ann}"))
        .header("last-event-id", "2")
        .body(axum::body::Body::empty())
        .unwrap();
    let again = sse_events(&app.send(req).await.body);
    assert_eq!(again.iter().filter(|(e, _)| e == "step").count(), 2);
    let f = app.call("GET", &format!("/api/v1/runs/{id}/files/adapter_config.json"), Some(&ann), None).await;
    assert_eq!((f.status, f.body.as_slice()), (StatusCode::OK, b"{\"r\":8}".as_slice()));
    let f = app.call("GET", &format!("/api/v1/runs/{id}/files/..%2Fmerit.db"), Some(&ann), None).await;
    assert_eq!(f.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.call("POST", &format!("/api/v1/runs/{id}/stop"), Some(&ann), None).await.status,
        StatusCode::CONFLICT
    );

    // A long run on sent rows, stopped while it trains: a final checkpoint, status stopped.
    let r = post(Some(ann.clone()), json!({ "base": "m", "rows": [{ "text": "hi" }], "max_steps": 10_000 })).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let run = r.json();
    assert!(run["config"]["sources"][0].as_str().unwrap().starts_with("blob:"));
    let id = run["id"].as_i64().unwrap();
    for _ in 0..200 {
        let r = app.call("GET", &format!("/api/v1/runs/{id}"), Some(&ann), None).await.json();
        if r["status"] == "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.call("POST", &format!("/api/v1/runs/{id}/stop"), Some(&bob), None).await.status,
        StatusCode::NOT_FOUND
    );
    let r = app.call("POST", &format!("/api/v1/runs/{id}/stop"), Some(&ann), None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let ev = sse_events(&app.call("GET", &format!("/api/v1/runs/{id}/events"), Some(&ann), None).await.body);
    assert!(ev.iter().any(|(e, _)| e == "checkpoint"));
    let end = &ev.last().unwrap().1;
    assert_eq!((end["status"].as_str(), end["summary"]["stopped"].as_bool()), (Some("stopped"), Some(true)));
    assert!(end["summary"]["steps"].as_i64().unwrap() < 10_000);

    // A stopped run resumes (queued again, then trained to its end).
    assert_eq!(
        app.call("POST", &format!("/api/v1/runs/{id}/resume"), Some(&bob), None).await.status,
        StatusCode::NOT_FOUND
    );
    let r = app.call("POST", &format!("/api/v1/runs/{id}/resume"), Some(&ann), None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "queued");
    app.call("POST", &format!("/api/v1/runs/{id}/stop"), Some(&ann), None).await;
    let ev = sse_events(&app.call("GET", &format!("/api/v1/runs/{id}/events"), Some(&ann), None).await.body);
    assert!(matches!(ev.last().unwrap().1["status"].as_str(), Some("stopped")));
    // Publishing puts the adapter's hash, base and data versions on the ledger, once.
    let first = 1; // the datanet run
    let r = app.call("POST", &format!("/api/v1/runs/{first}/publish"), Some(&ann), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let sha = r.json()["adapter_sha256"].as_str().unwrap().to_string();
    assert_eq!(sha, merit_core::sha256_hex(b"weights after 4 steps"));
    let again = app.call("POST", &format!("/api/v1/runs/{first}/publish"), Some(&ann), None).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let entries = app.call("GET", &format!("/api/v1/ledger/entries?subject=run:{first}"), None, None).await.json();
    let event = &entries["entries"][0]["event"];
    assert_eq!(event["type"], "adapter.published", "{entries}");
    assert_eq!((event["adapter_sha256"].as_str(), event["datanets"].clone()), (Some(sha.as_str()), json!(["qa@1"])));

    // A failing run says why.
    let r =
        post(Some(ann.clone()), json!({ "base": "m", "rows": [{ "text": "hi" }], "max_steps": 1, "fail": true })).await;
    let id = r.json()["id"].as_i64().unwrap();
    let ev = sse_events(&app.call("GET", &format!("/api/v1/runs/{id}/events"), Some(&ann), None).await.body);
    let end = &ev.last().unwrap().1;
    assert_eq!(end["status"], "failed");
    assert!(end["error"].as_str().unwrap().contains("out of memory"));
    assert_eq!(app.call("GET", "/api/v1/runs", Some(&ann), None).await.json().as_array().unwrap().len(), 3);
    assert_eq!(app.call("GET", "/api/v1/runs", Some(&bob), None).await.json(), json!([]));
}

#[tokio::test]
async fn runs_answer_503_without_a_trainer() {
    let app = App::new().await;
    let ann = app.user("ann").await;
    let r = app.call("POST", "/api/v1/runs", Some(&ann), Some(json!({ "base": "m", "rows": [{ "text": "x" }] }))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"]["code"], "no_trainer");
}

#[tokio::test]
async fn openai_compatible_chat_and_completions() {
    let app =
        common::App::with_trainer_and_generator(std::sync::Arc::new(FakeTrainer), std::sync::Arc::new(EchoGenerator))
            .await;
    let ann = app.user("ann").await;
    let r =
        app.call("POST", "/api/v1/runs", Some(&ann), Some(json!({ "base": "base", "rows": [{ "text": "x" }] }))).await;
    assert_eq!(r.json()["id"], 1, "the echo generator serves base:run-1: ann's");
    let post = |path: &'static str, body: Value, token: Option<String>| {
        let app = &app;
        async move { app.call("POST", path, token.as_deref(), Some(body)).await }
    };
    let r = app.call("GET", "/v1/models", Some(&ann), None).await.json();
    assert_eq!(r["object"], "list");
    assert_eq!(r["data"][1]["id"], "base:run-1");
    let chat =
        json!({ "model": "base:run-1", "messages": [{ "role": "user", "content": "one two three" }], "max_tokens": 2 });
    let r = post("/v1/chat/completions", chat.clone(), Some(ann.clone())).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"], json!({ "role": "assistant", "content": "one two" }));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"], json!({ "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5 }));
    // Streaming: a role chunk, a chunk a piece, a finish chunk with usage, then [DONE].
    let mut s = chat.clone();
    s["stream"] = json!(true);
    let r = post("/v1/chat/completions", s, Some(ann.clone())).await;
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = String::from_utf8(r.body).unwrap();
    let datas: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(datas.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = datas[..datas.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, "one two");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks.last().unwrap()["object"], "chat.completion.chunk");
    // Plain completions.
    let r = post("/v1/completions", json!({ "model": "base", "prompt": "a b" }), Some(ann.clone())).await.json();
    assert_eq!((r["object"].as_str(), r["choices"][0]["text"].as_str()), (Some("text_completion"), Some("a b")));
    // Errors in OpenAI's shape.
    let e = post(
        "/v1/chat/completions",
        json!({ "model": "nope", "messages": [{ "role": "user", "content": "x" }] }),
        Some(ann.clone()),
    )
    .await;
    assert_eq!(e.status, StatusCode::NOT_FOUND);
    assert_eq!(e.json()["error"]["code"], "model_not_found");
    let mut s = json!({ "model": "nope", "messages": [{ "role": "user", "content": "x" }], "stream": true });
    let e = post("/v1/chat/completions", s.clone(), Some(ann.clone())).await;
    assert_eq!(e.status, StatusCode::NOT_FOUND, "a missing model is a 404 even when streaming");
    s["model"] = json!("base");
    s["messages"][0]["content"] = json!("x".repeat(200));
    let e = post("/v1/chat/completions", s, Some(ann.clone())).await;
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert!(e.json()["error"]["message"].as_str().unwrap().contains("100 positions"));
    for (bad, param) in [
        (json!({ "model": "base", "messages": [] }), "messages"),
        (json!({ "model": "base", "messages": [{ "role": "robot", "content": "x" }] }), "messages"),
        (json!({ "model": "base", "messages": [{ "role": "user", "content": "x" }], "temperature": 3 }), "temperature"),
        (json!({ "model": "base", "messages": [{ "role": "user", "content": "x" }], "max_tokens": 0 }), "max_tokens"),
        (json!({ "model": "base", "messages": [{ "role": "user", "content": "x" }], "n": 2 }), "n"),
        // Issue 14 (low): `stop: [""]` answered an empty string.
        (json!({ "model": "base", "messages": [{ "role": "user", "content": "x" }], "stop": [""] }), "stop"),
        (json!({ "model": "base", "messages": [{ "role": "user", "content": "x" }], "stop": "x".repeat(257) }), "stop"),
    ] {
        let e = post("/v1/chat/completions", bad, Some(ann.clone())).await;
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.json()["error"]["param"], param);
    }
    let e = post("/v1/chat/completions", chat, None).await;
    assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    assert_eq!(e.json()["error"]["code"], "invalid_api_key");
}

/// Issue 14 (high): another user's unpublished adapter was served on `/v1`
/// and listed by `GET /v1/models`, while `GET /api/v1/runs/{id}` said 404.
#[tokio::test]
async fn unpublished_adapters_are_served_to_their_owner_only() {
    use std::sync::Arc;
    let app = common::App::with_trainer_and_generator(Arc::new(FakeTrainer), Arc::new(EchoGenerator)).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let r = app
        .call(
            "POST",
            "/api/v1/runs",
            Some(&ann),
            Some(json!({ "base": "base", "rows": [{ "text": "x" }], "max_steps": 1 })),
        )
        .await;
    assert_eq!(r.json()["id"], 1);
    for _ in 0..200 {
        if app.call("GET", "/api/v1/runs/1", Some(&ann), None).await.json()["status"] == "done" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ids = |token: String| {
        let app = &app;
        async move {
            let v = app.call("GET", "/v1/models", Some(&token), None).await.json();
            v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        }
    };
    let ask = |token: String, path: &'static str, model: &'static str| {
        let app = &app;
        async move {
            let body = if path.ends_with("chat/completions") {
                json!({ "model": model, "messages": [{ "role": "user", "content": "a b" }] })
            } else {
                json!({ "model": model, "prompt": "a b" })
            };
            app.call("POST", path, Some(&token), Some(body)).await
        }
    };
    assert_eq!(ids(ann.clone()).await, ["base", "base:run-1"]);
    assert_eq!(ids(bob.clone()).await, ["base"], "bob is not shown ann's unpublished adapter");
    for path in ["/v1/chat/completions", "/v1/completions"] {
        assert_eq!(ask(ann.clone(), path, "base:run-1").await.status, StatusCode::OK);
        let r = ask(bob.clone(), path, "base:run-1").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.json()["error"]["code"], "model_not_found");
        assert_eq!(ask(bob.clone(), path, "base").await.status, StatusCode::OK, "bases are for everyone");
    }
    let mut s = json!({ "model": "base:run-1", "messages": [{ "role": "user", "content": "a" }], "stream": true });
    assert_eq!(
        app.call("POST", "/v1/chat/completions", Some(&bob), Some(s.clone())).await.status,
        StatusCode::NOT_FOUND
    );
    s["model"] = json!("base:run-01");
    assert_eq!(app.call("POST", "/v1/chat/completions", Some(&bob), Some(s)).await.status, StatusCode::NOT_FOUND);
    // Published, it is everyone's.
    assert_eq!(app.call("POST", "/api/v1/runs/1/publish", Some(&ann), None).await.status, StatusCode::OK);
    assert_eq!(ids(bob.clone()).await, ["base", "base:run-1"]);
    assert_eq!(ask(bob.clone(), "/v1/chat/completions", "base:run-1").await.status, StatusCode::OK);
}

/// Streams pieces until it is cancelled (or 10 s pass), and says whether it was.
struct EndlessGenerator(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl merit_server::openai::Generator for EndlessGenerator {
    fn models(&self) -> Vec<String> {
        vec!["base".into()]
    }

    fn tokenize(
        &self,
        _base: &str,
        texts: &[String],
    ) -> Result<Vec<merit_server::openai::Tokens>, merit_server::openai::GenError> {
        Ok(texts.iter().map(|t| word_tokens(t)).collect())
    }

    fn influence(
        &self,
        _req: &merit_server::openai::GenRequest,
        _answer: &str,
    ) -> Result<Vec<(u64, merit_attrib::Influence)>, merit_server::openai::GenError> {
        Ok(Vec::new())
    }

    fn generate(
        &self,
        req: &merit_server::openai::GenRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<merit_server::openai::GenOutput, merit_server::openai::GenError> {
        use std::sync::atomic::Ordering;
        let start = std::time::Instant::now();
        let mut n = 0;
        while start.elapsed() < std::time::Duration::from_secs(10) {
            if req.cancel.load(Ordering::Relaxed) {
                self.0.store(true, Ordering::Relaxed);
                break;
            }
            on_text("x");
            n += 1;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(merit_server::openai::GenOutput {
            text: "x".repeat(n),
            prompt_tokens: 1,
            completion_tokens: n,
            finish_reason: "length".into(),
        })
    }
}

#[tokio::test]
async fn a_client_that_goes_away_stops_its_generation() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let cancelled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = common::App::with_generator(std::sync::Arc::new(EndlessGenerator(cancelled.clone()))).await;
    let ann = app.user("ann").await;
    let body = json!({ "model": "base", "messages": [{ "role": "user", "content": "go" }], "stream": true });
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("authorization", format!("Bearer {ann}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).starts_with("data: "));
    drop(body); // the client goes away mid-stream
    let start = std::time::Instant::now();
    while !cancelled.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "the generation went on after the client left");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `"attribution": true` credits an adapter's answer to the contributions
/// whose rows it repeats, once the run is published; bad requests name the field.
#[tokio::test]
async fn answers_are_attributed_to_the_rows_they_repeat() {
    use std::sync::Arc;
    let app = common::App::with_trainer_and_generator(Arc::new(FakeTrainer), Arc::new(EchoGenerator)).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    assert_eq!(app.datanet(&ann, "qa", "", true).await.status, StatusCode::CREATED);
    for (token, seed) in [(&ann, 1), (&bob, 2)] {
        let r = app.upload("qa", Some(token), &[("a.txt", prose(seed).as_bytes())], false).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    }
    let r = app
        .call("POST", "/api/v1/runs", Some(&ann), Some(json!({ "base": "base", "datanets": ["qa"], "max_steps": 2 })))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(id, 1, "the echo generator serves base:run-1");
    for _ in 0..200 {
        if app.call("GET", "/api/v1/runs/1", Some(&ann), None).await.json()["status"] == "done" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Bob's first sentence, then words found nowhere.
    let bob_text = prose(2);
    let sentence = bob_text.split_inclusive('.').next().unwrap().trim().to_string();
    let question = format!("{sentence} and then zyx qwv");
    let chat = |attribution: Value, model: &str| json!({ "model": model, "messages": [{ "role": "user", "content": question }], "attribution": attribution });
    let post = |body: Value| {
        let (app, ann) = (&app, ann.clone());
        async move { app.call("POST", "/v1/chat/completions", Some(&ann), Some(body)).await }
    };
    // Not published yet: nothing to credit.
    let r = post(chat(json!(true), "base:run-1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["attribution"], json!([]));
    let r = app.call("POST", "/api/v1/runs/1/publish", Some(&ann), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));

    let r = post(chat(json!(true), "base:run-1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let a = r.json()["attribution"].clone();
    let top = &a[0];
    assert_eq!(top["contributor"], "bob", "{a}");
    assert_eq!(top["datanet"], "qa");
    assert!(top["score"].as_f64().unwrap() > 0.8, "{a}");
    let total: f64 = a.as_array().unwrap().iter().map(|x| x["score"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9);
    let span = &top["spans"][0];
    assert_eq!(span["start"], 0);
    assert_eq!(span["text"], sentence.as_str());
    assert_eq!(span["end"].as_u64().unwrap() as usize, sentence.chars().count());
    // The same in a stream: the last chunk carries it.
    let mut body = chat(json!({ "method": "span", "min_tokens": 8 }), "base:run-1");
    body["stream"] = json!(true);
    let r = post(body).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&r.body).to_string();
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks.last().unwrap()["attribution"], a);
    // Gradient influence: the generator's row scores, credited to the rows'
    // contributions — rows less similar than `min_similarity` (0.2 by default) are noise.
    let rows = app.call("GET", "/api/v1/datanets/qa/rows?limit=3", Some(&ann), None).await.json();
    let rows = rows.as_array().or_else(|| rows["rows"].as_array()).unwrap().clone();
    assert_eq!(rows.len(), 2, "one row per contribution");
    let contribution = |i: usize| rows[i]["contribution_id"].as_i64().unwrap();
    let expect = |scores: &[(usize, f64)]| {
        let mut want: Vec<(i64, f64)> = Vec::new();
        for &(i, s) in scores {
            match want.iter_mut().find(|(c, _)| *c == contribution(i)) {
                Some(w) => w.1 += s,
                None => want.push((contribution(i), s)),
            }
        }
        let total: f64 = want.iter().map(|w| w.1).sum();
        want.into_iter().map(|(c, s)| (c, s / total)).collect::<Vec<_>>()
    };
    for (method, want) in [
        (json!({ "method": "gradient" }), expect(&[(1, 3.0)])),
        (json!({ "method": "gradient", "min_similarity": 0.05 }), expect(&[(0, 1.0), (1, 3.0)])),
        (json!({ "method": "gradient", "min_similarity": 0.95 }), Vec::new()),
    ] {
        let g = post(chat(method.clone(), "base:run-1")).await;
        assert_eq!(g.status, StatusCode::OK, "{}", String::from_utf8_lossy(&g.body));
        let got: Vec<(i64, f64)> = g.json()["attribution"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["contribution_id"].as_i64().unwrap(), a["score"].as_f64().unwrap()))
            .collect();
        assert_eq!(got.len(), want.len(), "{method}: {got:?}");
        for (c, s) in want {
            let share = got.iter().find(|(gc, _)| *gc == c).unwrap().1;
            assert!((share - s).abs() < 1e-9, "{method} {c}: {share} (want {s})");
        }
    }
    // Off, a base model, and bad requests.
    assert!(post(chat(json!(false), "base:run-1")).await.json().get("attribution").is_none());
    assert_eq!(post(chat(json!(true), "base")).await.json()["attribution"], json!([]));
    for bad in [
        json!({ "method": "gradient", "min_tokens": 8 }),
        json!({ "method": "gradient", "min_similarity": 1.5 }),
        json!({ "method": "span", "min_similarity": 0.2 }),
        json!({ "method": "magic" }),
        json!({ "min_tokens": 0 }),
        json!({ "k": 3 }),
        json!("yes"),
    ] {
        let r = post(chat(bad.clone(), "base:run-1")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json()["error"]["param"], "attribution");
    }
}

/// A priced adapter's answers are paid for: the fee is split between the
/// publisher, the contributor the answer repeats and the datanet's owner,
/// each charge is an attribution.recorded + reward.paid pair on the ledger,
/// and replaying those leaves alone gives the balances the API reports.
#[tokio::test]
async fn priced_answers_pay_publisher_contributors_and_owners() {
    use base64::Engine;
    use std::sync::Arc;
    let app = common::App::with_trainer_and_generator(Arc::new(FakeTrainer), Arc::new(EchoGenerator)).await;
    let (ann, bob, carl, dave) =
        (app.user("ann").await, app.user("bob").await, app.user("carl").await, app.user("dave").await);
    assert_eq!(app.datanet(&ann, "qa", "", true).await.status, StatusCode::CREATED);
    for (token, seed) in [(&ann, 1), (&bob, 2)] {
        assert_eq!(
            app.upload("qa", Some(token), &[("a.txt", prose(seed).as_bytes())], false).await.status,
            StatusCode::CREATED
        );
    }
    let body = json!({ "base": "base", "datanets": ["qa"], "max_steps": 2 });
    assert_eq!(app.call("POST", "/api/v1/runs", Some(&carl), Some(body)).await.status, StatusCode::CREATED);
    for _ in 0..200 {
        if app.call("GET", "/api/v1/runs/1", Some(&carl), None).await.json()["status"] == "done" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Prices are checked, then set with the publication.
    for bad in
        [json!({ "price_per_1k_input": -1 }), json!({ "price": 1 }), json!({ "price_per_1k_output": "x" }), json!([1])]
    {
        let r = app.call("POST", "/api/v1/runs/1/publish", Some(&carl), Some(bad.clone())).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let prices = json!({ "price_per_1k_input": 1000, "price_per_1k_output": 2000 });
    let r = app.call("POST", "/api/v1/runs/1/publish", Some(&carl), Some(prices)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["price_per_1k_output"], 2000.0);

    let sentence = prose(2).split_inclusive('.').next().unwrap().trim().to_string();
    let ask = |model: &str, content: String| {
        let body = json!({ "model": model, "messages": [{ "role": "user", "content": content }] });
        let (app, dave) = (&app, dave.clone());
        async move { app.call("POST", "/v1/chat/completions", Some(&dave), Some(body)).await }
    };
    let auditor = app.admin("auditor").await;
    let balance = |name: &str| {
        let (app, auditor) = (&app, auditor.clone());
        let path = format!("/api/v1/accounts/{name}/balance");
        async move { app.call("GET", &path, Some(&auditor), None).await.json() }
    };
    // Issue 14 (low): anyone read any balance, and 200 vs 404 told whether a name exists.
    assert_eq!(app.call("GET", "/api/v1/accounts/dave/balance", None, None).await.status, StatusCode::UNAUTHORIZED);
    for name in ["dave", "nobody"] {
        let r = app.call("GET", &format!("/api/v1/accounts/{name}/balance"), Some(&bob), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{name}");
    }
    assert_eq!(app.call("GET", "/api/v1/accounts/dave/balance", Some(&dave), None).await.status, StatusCode::OK);
    // A free base model costs nothing.
    assert_eq!(ask("base", sentence.clone()).await.status, StatusCode::OK);
    assert_eq!(balance("dave").await["spent_micros"], 0);
    // Issue 14: with nothing to spend, a priced answer is 402 and costs nothing
    // (it took dave to -18,000 credits).
    let question = format!("{sentence} and then zyx qwv");
    let r = ask("base:run-1", question.clone()).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["type"], "insufficient_quota");
    assert_eq!(balance("dave").await["balance_micros"], 0);
    // An administrator lets dave go below zero.
    let root = app.admin("root").await;
    let allow = |token: &str, credits: Value| {
        let (app, token) = (&app, token.to_string());
        async move {
            app.call("PUT", "/api/v1/accounts/dave/allowance", Some(&token), Some(json!({ "allowance": credits })))
                .await
        }
    };
    assert_eq!(allow(&dave, json!(1e6)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(allow(&root, json!(-1)).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = allow(&root, json!(1e6)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["available_micros"], 1_000_000_000_000i64);
    // The priced adapter: n words in, n words echoed → fee = n · (1000 + 2000) / 1000 credits.
    let r = ask("base:run-1", question.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let n = r.json()["usage"]["prompt_tokens"].as_i64().unwrap();
    let fee = n * 3_000_000;
    assert_eq!(balance("dave").await["balance_micros"], -fee);
    assert_eq!(balance("carl").await["earned_micros"], fee / 5, "the publisher's 20%");
    let bob_earned = balance("bob").await["earned_micros"].as_i64().unwrap();
    assert!(bob_earned >= fee * 7 / 10 - 1, "bob's row is repeated: {bob_earned} of {fee}");
    assert!(balance("ann").await["earned_micros"].as_i64().unwrap() >= fee / 10, "the owner's 10%");
    // An answer that repeats nobody: the contributors' part goes to the owner.
    assert_eq!(ask("base:run-1", "zyx qwv zyx".into()).await.status, StatusCode::OK);
    // Balances add up, and the ledger alone gives the same ones.
    let names = ["ann", "bob", "carl", "dave"];
    let mut sum = 0;
    for name in names {
        sum += balance(name).await["balance_micros"].as_i64().unwrap();
    }
    assert_eq!(sum, 0);
    let entries = app.call("GET", "/api/v1/ledger/entries?limit=1000", None, None).await.json();
    let events: Vec<merit_ledger::event::Event> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let leaf = base64::engine::general_purpose::STANDARD.decode(e["leaf"].as_str().unwrap()).unwrap();
            merit_ledger::event::Event::from_leaf(&leaf).unwrap()
        })
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "attribution.recorded").count(), 2);
    assert_eq!(kinds.iter().filter(|k| **k == "reward.paid").count(), 2);
    let replayed = merit_ledger::event::balances(&events);
    for name in names {
        let b = balance(name).await;
        let t = replayed.get(name).copied().unwrap_or_default();
        assert_eq!(
            (t.balance_micros, t.earned_micros, t.spent_micros),
            (
                b["balance_micros"].as_i64().unwrap(),
                b["earned_micros"].as_i64().unwrap(),
                b["spent_micros"].as_i64().unwrap()
            ),
            "{name}"
        );
    }
    // The leaderboard shows what contributors earned; unknown accounts are 404.
    let board = app.call("GET", "/api/v1/leaderboard", None, None).await.json();
    let bob_row = board.as_array().unwrap().iter().find(|r| r["contributor"] == "bob").unwrap().clone();
    assert_eq!(bob_row["earned"].as_f64().unwrap(), bob_earned as f64 / 1e6);
    assert_eq!(
        app.call("GET", "/api/v1/accounts/nobody/balance", Some(&auditor), None).await.status,
        StatusCode::NOT_FOUND
    );
}

/// Issue 14: balances stay exact and within balance + allowance under
/// concurrent priced calls (each holds its most possible fee while it runs).
#[tokio::test]
async fn concurrent_priced_calls_never_spend_past_the_allowance() {
    use std::sync::Arc;
    let app = common::App::with_trainer_and_generator(Arc::new(FakeTrainer), Arc::new(EchoGenerator)).await;
    let (carl, dave) = (app.user("carl").await, app.user("dave").await);
    let body = json!({ "base": "base", "rows": [{ "text": "x" }], "max_steps": 1 });
    assert_eq!(app.call("POST", "/api/v1/runs", Some(&carl), Some(body)).await.status, StatusCode::CREATED);
    for _ in 0..200 {
        if app.call("GET", "/api/v1/runs/1", Some(&carl), None).await.json()["status"] == "done" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let prices = json!({ "price_per_1k_input": 1000, "price_per_1k_output": 1000 });
    assert_eq!(app.call("POST", "/api/v1/runs/1/publish", Some(&carl), Some(prices)).await.status, StatusCode::OK);
    // "a b c": the default bound holds 4 + 5 + 8 + 64 = 81 prompt and 3 output tokens (84 credits) while
    // it runs; it costs 6. With 100 credits of allowance one call holds at a time, and after three
    // answers (82 left) none more fits: at most three of the 16 are answered, whatever their order.
    app.store.set_allowance("dave", 100_000_000).await.unwrap();
    let body = json!({ "model": "base:run-1", "messages": [{ "role": "user", "content": "a b c" }], "max_tokens": 3 });
    let calls = (0..16).map(|_| {
        let (app, dave, body) = (&app, dave.clone(), body.clone());
        async move { app.call("POST", "/v1/chat/completions", Some(&dave), Some(body)).await.status }
    });
    let codes = futures_util::future::join_all(calls).await;
    let ok = codes.iter().filter(|c| **c == StatusCode::OK).count();
    assert!(codes.iter().all(|c| *c == StatusCode::OK || *c == StatusCode::PAYMENT_REQUIRED), "{codes:?}");
    assert!((1..=3).contains(&ok), "{codes:?}");
    let b = app.call("GET", "/api/v1/accounts/dave/balance", Some(&dave), None).await.json();
    assert_eq!(b["held_micros"], 0, "every hold ended");
    assert_eq!(b["balance_micros"].as_i64().unwrap(), -(ok as i64) * 6_000_000, "each answer: 3 in + 3 out tokens");
    assert!(b["balance_micros"].as_i64().unwrap() >= -100_000_000);
    let earned = app.call("GET", "/api/v1/accounts/carl/balance", Some(&carl), None).await.json()["balance_micros"]
        .as_i64()
        .unwrap();
    assert_eq!(earned, ok as i64 * 6_000_000, "no owners or contributors: all to the publisher");
}

/// Issue 14 (medium): one user's run blocked the queue for everyone, and
/// nothing bounded how many runs one user queued.
#[tokio::test]
async fn runs_are_limited_per_user_and_take_turns() {
    use std::time::Duration;
    let app = common::App::with_run_limits(std::sync::Arc::new(FakeTrainer), 2, Duration::from_millis(300)).await;
    let (ann, bob) = (app.user("ann").await, app.user("bob").await);
    let post = |token: &str, steps: u64| {
        let (app, token) = (&app, token.to_string());
        async move {
            let body = json!({ "base": "m", "rows": [{ "text": "x" }], "max_steps": steps });
            app.call("POST", "/api/v1/runs", Some(&token), Some(body)).await
        }
    };
    let status = |id: i64| {
        let (app, ann) = (&app, ann.clone());
        async move { app.call("GET", &format!("/api/v1/runs/{id}"), Some(&ann), None).await.json()["status"].clone() }
    };
    // Ann's long runs: two at most, queued or running.
    let long = post(&ann, 100_000).await.json()["id"].as_i64().unwrap();
    let second = post(&ann, 100_000).await.json()["id"].as_i64().unwrap();
    let r = post(&ann, 1).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["code"], "run_limit");
    // Bob's short run gets a turn although ann's came first: ann's running run
    // is stopped at a checkpoint after its slice and queued again, and bob's
    // goes before ann's second (ann has had a turn, bob has not).
    let short = post(&bob, 3).await.json()["id"].as_i64().unwrap();
    let mut done = false;
    for _ in 0..300 {
        if app.call("GET", &format!("/api/v1/runs/{short}"), Some(&bob), None).await.json()["status"] == "done" {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(done, "bob's run never got a turn");
    for id in [long, second] {
        let s = status(id).await;
        assert!(s == "queued" || s == "running", "ann's run {id} is {s}: preempted runs are queued again, not stopped");
    }
    for id in [long, second] {
        app.call("POST", &format!("/api/v1/runs/{id}/stop"), Some(&ann), None).await;
    }
    // The worker stops them at their next step (the test's runtime waits for it).
    for _ in 0..300 {
        if status(long).await == "stopped" && status(second).await == "stopped" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("ann's runs did not stop: {} {}", status(long).await, status(second).await);
}

/// Issue 14 (medium): anonymous `GET /api/v1/ledger/entries?subject=datanet:<draft>`
/// showed unpublished datanets and other users' pending and rejected files;
/// `from=9223372036854775808` wrapped to entry 0.
#[tokio::test]
async fn ledger_entries_show_only_what_the_caller_may_see() {
    let app = App::new().await;
    let (ann, bob, dan) = (app.user("ann").await, app.user("bob").await, app.user("dan").await);
    assert_eq!(app.datanet(&ann, "secret", "", false).await.status, StatusCode::CREATED);
    assert_eq!(app.datanet(&ann, "qa", OWNER_REVIEW, true).await.status, StatusCode::CREATED);
    let r = app.upload("qa", Some(&bob), &[("bob.txt", prose(2).as_bytes())], false).await;
    let pending = r.json()[0]["contribution_id"].as_i64().unwrap();
    let list = |token: Option<String>, query: &str| {
        let (app, path) = (&app, format!("/api/v1/ledger/entries?{query}"));
        async move { app.call("GET", &path, token.as_deref(), None).await.json() }
    };
    assert_eq!(list(None, "subject=datanet:secret").await["entries"], json!([]));
    assert_eq!(list(Some(dan.clone()), "subject=datanet:secret").await["entries"], json!([]));
    assert!(!list(Some(ann.clone()), "subject=datanet:secret").await["entries"].as_array().unwrap().is_empty());
    let about = format!("subject=contribution:{pending}");
    assert_eq!(list(None, &about).await["entries"], json!([]));
    assert_eq!(list(Some(dan.clone()), &about).await["entries"], json!([]));
    assert_eq!(list(Some(bob.clone()), &about).await["entries"].as_array().unwrap().len(), 2, "bob's own");
    assert_eq!(list(Some(ann.clone()), &about).await["entries"].as_array().unwrap().len(), 2, "the owner reviews it");
    // The whole log: every index is listed, hidden ones by leaf hash only.
    let all = list(None, "limit=1000").await;
    let entries = all["entries"].as_array().unwrap();
    assert_eq!(entries.len() as u64, all["size"].as_u64().unwrap());
    let text = all.to_string();
    assert!(!text.contains("secret") && !text.contains("bob.txt"), "{text}");
    let hidden: Vec<&Value> = entries.iter().filter(|e| e["hidden"] == true).collect();
    assert_eq!(hidden.len(), 4, "secret's created and policy leaves, bob's submission and verdict");
    assert!(hidden.iter().all(|e| e.get("leaf").is_none() && e["leaf_hash"].as_str().unwrap().len() == 64));
    let i = hidden[0]["index"].as_u64().unwrap();
    let one = app.call("GET", &format!("/api/v1/ledger/entries/{i}"), None, None).await.json();
    assert_eq!(one["hidden"], true);
    assert!(app.call("GET", &format!("/api/v1/ledger/entries/{i}"), Some(&ann), None).await.json()["event"].is_object());
    let far = list(None, "from=9223372036854775808").await;
    assert_eq!(far["entries"], json!([]), "{far}");
}

/// Issue 14: the public log (the tiles carry every leaf) named unpublished
/// datanets. A draft's leaves now carry a salted commitment to its name;
/// publishing reveals the salt, and the commitment opens to the name.
#[tokio::test]
async fn a_drafts_name_stays_off_the_public_log_until_it_is_published() {
    let app = App::new().await;
    let ann = app.user("ann").await;
    let cy = app.user("cy").await;
    assert_eq!(app.datanet(&ann, "secretnet", "review = \"owner\"\n", false).await.status, StatusCode::CREATED);
    app.call("PUT", "/api/v1/datanets/secretnet/curators/cy", Some(&ann), None).await;
    let r = app.upload("secretnet", Some(&ann), &[("a.txt", prose(1).as_bytes())], false).await;
    let id = r.json()[0]["contribution_id"].as_i64().unwrap();
    let r = app.call("POST", &format!("/api/v1/datanets/secretnet/contributions/{id}/approve"), Some(&cy), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let leaves = |app: &App| {
        let store = app.store.clone();
        async move { store.ledger_entries(0, 1000).await.unwrap() }
    };
    let before = leaves(&app).await;
    assert!(before.len() >= 5, "created, policy, submitted, verdicts, version");
    for (i, leaf) in &before {
        assert!(!String::from_utf8_lossy(leaf).contains("secretnet"), "leaf {i} names the draft");
    }
    let commitment = match merit_ledger::event::Event::from_leaf(&before[0].1).unwrap() {
        merit_ledger::event::Event::DatanetCreated { datanet, .. } => datanet,
        e => panic!("{e:?}"),
    };
    assert!(commitment.starts_with("h:"), "{commitment}");
    // Those who may see the draft read its entries by name, with the name beside the commitment.
    let mine = app.call("GET", "/api/v1/ledger/entries?subject=datanet:secretnet", Some(&ann), None).await.json();
    assert!(mine["entries"].as_array().unwrap().len() >= 3, "{mine}");
    assert_eq!(mine["entries"][0]["datanet_name"], "secretnet", "{mine}");
    let public = app.call("GET", "/api/v1/ledger/entries?subject=datanet:secretnet", None, None).await.json();
    assert_eq!(public["entries"], json!([]));

    // Publication opens it: one leaf with the name, the commitment and the salt.
    assert_eq!(app.call("POST", "/api/v1/datanets/secretnet/publish", Some(&ann), None).await.status, StatusCode::OK);
    let after = leaves(&app).await;
    let published: Vec<_> = after[before.len()..]
        .iter()
        .map(|(_, leaf)| merit_ledger::event::Event::from_leaf(leaf).unwrap())
        .filter(|e| e.kind() == "datanet.published")
        .collect();
    assert_eq!(published.len(), 1, "{published:?}");
    assert!(published[0].opens());
    match &published[0] {
        merit_ledger::event::Event::DatanetPublished { datanet, commitment: c, .. } => {
            assert_eq!((datanet.as_str(), c.as_deref()), ("secretnet", Some(commitment.as_str())));
        }
        e => panic!("{e:?}"),
    }
    // The public now reads every entry, and the leaderboard recomputed from the
    // leaves alone counts the contribution made while it was a draft.
    let public = app.call("GET", "/api/v1/ledger/entries?subject=datanet:secretnet", None, None).await.json();
    assert!(public["entries"].as_array().unwrap().len() >= 4, "{public}");
    let events: Vec<_> = after.iter().map(|(_, l)| merit_ledger::event::Event::from_leaf(l).unwrap()).collect();
    let outcomes = merit_ledger::event::outcomes(&events, "secretnet");
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].contributor, "ann");
    // Publishing twice appends nothing.
    app.call("POST", "/api/v1/datanets/secretnet/publish", Some(&ann), None).await;
    assert_eq!(leaves(&app).await.len(), after.len());
}

/// Issue 14: every number a caller chooses is bounded on arrival; rows sent
/// inline to a run are at most 100,000 (a 422 naming `rows`).
#[tokio::test]
async fn rows_sent_inline_are_bounded() {
    let app = App::with_trainer(std::sync::Arc::new(FakeTrainer)).await;
    let ann = app.user("ann").await;
    let rows: Vec<Value> = (0..100_001).map(|_| json!({ "text": "x" })).collect();
    let r = app.call("POST", "/api/v1/runs", Some(&ann), Some(json!({ "base": "m", "rows": rows }))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let e = r.json();
    assert_eq!(e["error"]["details"]["field"], "rows", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("at most 100000"), "{e}");
    assert_eq!(app.call("GET", "/api/v1/runs", Some(&ann), None).await.json(), json!([]));
}
