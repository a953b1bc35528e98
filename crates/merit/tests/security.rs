//! Attacks on a real `merit serve` (issue 14), each named after its finding:
//! every one failed on commit 9b88a5d.

use serde_json::{json, Value};

mod common;

use common::*;

async fn post_run(server: &Server, token: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/runs", server.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn alive(server: &Server) {
    let r = reqwest::get(format!("{}/healthz", server.url)).await.expect("the server went down");
    assert_eq!(r.status().as_u16(), 200);
}

/// Critical: `"rank": 1000000000` answered 201, then the worker aborted the
/// whole process allocating 768 GB in `Decoder::add_lora`.
#[tokio::test]
async fn a_huge_rank_is_refused_and_the_server_stays_up() {
    let server = Server::start().await;
    server.add_fixture_model("llama", "tiny");
    let ann = server.user("ann");
    let rows = json!([{ "instruction": "Say hi.", "output": "Hi." }]);
    let (code, body) = post_run(&server, &ann, json!({ "base": "tiny", "rows": rows, "rank": 1_000_000_000u64 })).await;
    assert_eq!(code, 422, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("--rank must be 1 to 1024"), "{msg}");
    // Within every bound, but far more memory than the worker has: refused before it is queued.
    let (code, body) = post_run(
        &server,
        &ann,
        json!({ "base": "tiny", "rows": rows, "rank": 1024, "batch": 1024, "data": { "cutoff_len": 131072 } }),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("would need about") && msg.contains("this worker has"), "{msg}");
    for (field, value, bound) in [
        ("max_steps", json!(1_000_000_000_000_000u64), "--max-steps must be 1 to"),
        ("epochs", json!(1e9), "--epochs must be at most"),
        ("batch", json!(1_000_000), "--batch must be 1 to"),
    ] {
        let mut b = json!({ "base": "tiny", "rows": rows });
        b[field] = value;
        let (code, body) = post_run(&server, &ann, b).await;
        assert_eq!(code, 422, "{field}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(bound), "{field}: {body}");
    }
    let list: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/runs", server.url))
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]), "nothing refused was queued");
    alive(&server).await;
    // A run that fits is still taken.
    let (code, body) =
        post_run(&server, &ann, json!({ "base": "tiny", "rows": rows, "rank": 4, "max_steps": 1 })).await;
    assert_eq!(code, 201, "{body}");
    alive(&server).await;
}

/// High: `"base": "/some/server/path"` trained on whatever model folder sat
/// there, and the errors told which paths exist.
#[tokio::test]
async fn a_server_path_is_not_a_training_base() {
    let server = Server::start().await;
    server.add_fixture_model("llama", "tiny");
    let ann = server.user("ann");
    let fixture = fixtures().join("llama");
    let registered = server.dir.path().join("models");
    let rows = json!([{ "instruction": "Say hi.", "output": "Hi." }]);
    let mut messages = Vec::new();
    for base in [
        fixture.to_str().unwrap(),
        "/etc/passwd",
        "/etc",
        "/no/such/path",
        registered.to_str().unwrap(),
        "../../../../etc/hostname",
        "tiny/../tiny",
    ] {
        let (code, body) = post_run(&server, &ann, json!({ "base": base, "rows": rows })).await;
        assert_eq!(code, 422, "{base}: {body}");
        let msg = body["error"]["message"].as_str().unwrap().to_string();
        for leak in ["gguf", "config.json", "nor a path", "exist", "directory"] {
            assert!(!msg.contains(leak), "{base}: the error tells about the file system: {msg}");
        }
        messages.push(msg.replace(base, "<base>"));
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "errors differ by path: {messages:#?}");
    assert!(messages[0].contains("tiny"), "the error lists the server's models: {}", messages[0]);
    alive(&server).await;
}

/// Medium: `POST /login` with a CR/LF in `next` answered 500 (the session
/// cookie was still set).
#[tokio::test]
async fn a_login_with_a_line_break_in_next_redirects_home() {
    let server = Server::start().await;
    let ann = server.user("ann");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for next in ["/runs\r\nSet-Cookie: x=y", "/runs\n", "/\u{7f}", "//evil.example", "/datanets"] {
        let r = http
            .post(format!("{}/login", server.url))
            .form(&[("token", ann.as_str()), ("next", next)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 303, "{next:?}");
        let to = r.headers()["location"].to_str().unwrap();
        assert_eq!(to, if next == "/datanets" { "/datanets" } else { "/" }, "{next:?}");
        assert!(r.headers().get_all("set-cookie").iter().all(|c| !c.to_str().unwrap().starts_with("x=")));
    }
    alive(&server).await;
}
