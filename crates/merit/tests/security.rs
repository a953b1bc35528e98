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
    let list = server.get_json(&ann, "/api/v1/runs").await;
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
        let (cookie, csrf) = login_form(&server).await;
        let r = http
            .post(format!("{}/login", server.url))
            .header("cookie", cookie)
            .form(&[("token", ann.as_str()), ("next", next), ("csrf", csrf.as_str())])
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

/// Reads until the server closes the connection (or `limit` passes); returns
/// what it sent and how long that took.
fn read_to_close(stream: &mut std::net::TcpStream, limit: std::time::Duration) -> (String, std::time::Duration) {
    use std::io::Read;
    let start = std::time::Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if start.elapsed() > limit {
            break;
        }
    }
    (String::from_utf8_lossy(&got).to_string(), start.elapsed())
}

/// Medium: a request whose headers never finish (slowloris) stayed open for
/// 600 s and more, a body that stopped midway for 200 s and more.
#[tokio::test]
async fn slow_headers_and_stalled_bodies_are_cut_off() {
    use std::io::Write;
    let server = Server::start_with(&["--header-timeout", "1", "--body-timeout", "1"]).await;
    let ann = server.user("ann");
    let addr = server.url.trim_start_matches("http://").to_string();
    let limit = std::time::Duration::from_secs(8);

    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: merit\r\nX-Slow: 1\r\n").unwrap();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /api/v1/datanets HTTP/1.1\r\nHost: merit\r\nAuthorization: Bearer {ann}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\": \"sl"
    );
    stalled.write_all(head.as_bytes()).unwrap();
    // Meanwhile others are served.
    alive(&server).await;

    let (sent, took) = tokio::task::spawn_blocking(move || read_to_close(&mut slow, limit)).await.unwrap();
    assert!(took < std::time::Duration::from_secs(5), "headers: open for {took:?}");
    assert!(!sent.contains("200 OK"), "{sent}");
    let (sent, took) = tokio::task::spawn_blocking(move || read_to_close(&mut stalled, limit)).await.unwrap();
    assert!(took < std::time::Duration::from_secs(5), "body: open for {took:?}");
    assert!(!sent.contains("201 Created"), "{sent}");
    // Nothing half-written: the datanet does not exist.
    let r = server.get_json(&ann, "/api/v1/datanets").await;
    assert_eq!(r, json!([]));
    alive(&server).await;
}

/// Low: no Content-Security-Policy, X-Frame-Options or X-Content-Type-Options.
#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let server = Server::start().await;
    for path in ["/", "/login", "/api/v1/datanets", "/static/app.js", "/no/such/page", "/v1/models"] {
        let r = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
        let h = r.headers();
        let csp = h.get("content-security-policy").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp:?}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h.get("x-frame-options").map(|v| v.to_str().unwrap()), Some("DENY"), "{path}");
        assert_eq!(h.get("x-content-type-options").map(|v| v.to_str().unwrap()), Some("nosniff"), "{path}");
        assert!(h.get("referrer-policy").is_some(), "{path}");
    }
}

/// Low: there was no way to revoke a token. Now: `merit user token list /
/// revoke`, `GET/POST /api/v1/tokens`, `DELETE /api/v1/tokens/{id}`.
#[tokio::test]
async fn tokens_are_listed_issued_and_revoked() {
    let server = Server::start().await;
    let ann = server.user("ann");
    let bob = server.user("bob");
    let http = reqwest::Client::new();
    let me = |token: String| {
        let (http, url) = (http.clone(), server.url.clone());
        async move { http.get(format!("{url}/api/v1/me")).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    let r = http
        .post(format!("{}/api/v1/tokens", server.url))
        .bearer_auth(&ann)
        .json(&json!({ "label": "laptop", "expires_in_days": 30 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let made: Value = r.json().await.unwrap();
    let laptop = made["token"].as_str().unwrap().to_string();
    assert_eq!((made["label"].as_str(), made["active"].as_bool()), (Some("laptop"), Some(true)), "{made}");
    assert!(made["expires_at"].as_i64().is_some());
    let bad = http.post(format!("{}/api/v1/tokens", server.url)).bearer_auth(&ann);
    assert_eq!(bad.json(&json!({ "expires_in_days": 0 })).send().await.unwrap().status().as_u16(), 422);
    assert_eq!(me(laptop.clone()).await, 200);
    let list = server.get_json(&ann, "/api/v1/tokens").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains("mrt_"), "a listing never shows tokens: {list}");
    // Bob cannot revoke ann's; ann can.
    let id = made["id"].as_str().unwrap();
    let revoke = |token: &str| http.delete(format!("{}/api/v1/tokens/{id}", server.url)).bearer_auth(token.to_string());
    assert_eq!(revoke(&bob).send().await.unwrap().status().as_u16(), 404);
    assert_eq!(me(laptop.clone()).await, 200);
    assert_eq!(revoke(&ann).send().await.unwrap().status().as_u16(), 200);
    assert_eq!(me(laptop).await, 401, "revoked at once");
    // The CLI on the server's store.
    let dir = server.dir.path().to_str().unwrap().to_string();
    let db: Vec<&str> = server.db.iter().map(String::as_str).collect();
    let cli = |args: &[&str]| {
        let out = merit().args(args).args(["--data-dir", &dir]).args(&db).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let issued = cli(&["user", "token", "ann", "--label", "ci", "--expires-in-days", "1"]);
    let ci = issued.lines().last().unwrap().to_string();
    assert_eq!(me(ci.clone()).await, 200);
    let table = cli(&["user", "token", "list", "ann"]);
    assert!(table.contains("revoked") && table.contains("ci") && table.contains("active"), "{table}");
    cli(&["user", "token", "revoke", "ann", &ci]);
    assert_eq!(me(ci).await, 401);
    assert_eq!(me(ann.clone()).await, 200, "ann's other token still works");
}

/// Low: some errors left the JSON error shape (405 with an empty body, `%FF`
/// in a path, a body over the limit as 400 instead of 413, `/logout` with no
/// body as 415 text/plain).
#[tokio::test]
async fn every_api_error_is_json() {
    let server = Server::start().await;
    let ann = server.user("ann");
    let http = reqwest::Client::new();
    let check = |r: reqwest::Response, status: u16, openai: bool| async move {
        assert_eq!(r.status().as_u16(), status, "{}", r.url());
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/json"), "{ct}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        if openai {
            assert!(v["error"].get("type").is_some(), "{v}");
        } else {
            assert!(v["error"]["code"].is_string(), "{v}");
        }
    };
    let url = |p: &str| format!("{}{p}", server.url);
    check(http.delete(url("/api/v1/datanets")).bearer_auth(&ann).send().await.unwrap(), 405, false).await;
    check(http.get(url("/api/v1/datanets/%FF")).send().await.unwrap(), 400, false).await;
    check(http.put(url("/v1/models")).bearer_auth(&ann).send().await.unwrap(), 405, true).await;
    // A body over the 2 MiB limit, over a raw socket: its length announces
    // 3 MiB, and just past the limit is sent (the server reads all of that,
    // answers and closes; a client writing the rest would meet a closed socket).
    for (path, openai) in [("/api/v1/datanets", false), ("/v1/chat/completions", true)] {
        use std::io::{Read, Write};
        let addr = server.url.trim_start_matches("http://").to_string();
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: merit\r\nAuthorization: Bearer {ann}\r\nContent-Type: application/json\r\n\
             Content-Length: 3145728\r\nConnection: close\r\n\r\n{{\"name\": \"x\""
        );
        tcp.write_all(head.as_bytes()).unwrap();
        tcp.write_all(&vec![b' '; (2 << 20) + 1]).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("content-type: application/json"), "{path}: {answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
        assert_eq!(body["error"].get("type").is_some(), openai, "{body}");
    }
    // Requests hyper's parser refuses (a control byte in a header, a request
    // line that is not HTTP, headers past its limit) get the JSON shape too.
    let big_header = format!("X-Big: {}\r\n", "a".repeat(1 << 20));
    for (request, status) in [
        ("GET /api/v1/me HTTP/1.1\r\nHost: x\r\nX-A: a\u{1}b\r\n\r\n".to_string(), "400"),
        (format!("GET /api/v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ann}\u{7f}\r\n\r\n"), "400"),
        ("GET /api/v1/me HTTTP/9\r\n\r\n".to_string(), "400"),
        (format!("GET /api/v1/me HTTP/1.1\r\nHost: x\r\n{big_header}\r\n"), "431"),
    ] {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
        let _ = tcp.write_all(request.as_bytes());
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{request:.60?}: {answer}");
        assert!(answer.contains("content-type: application/json"), "{request:.60?}: {answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{body}");
    }
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(url("/logout"))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status().as_u16(), 415);
    assert!(r.status().as_u16() < 500);
}

/// The sign-in form's cookie (`merit_login=…`) and its CSRF token.
async fn login_form(server: &Server) -> (String, String) {
    let r = reqwest::get(format!("{}/login", server.url)).await.unwrap();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("merit_login="))
        .expect("the form sets its cookie");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = r.text().await.unwrap();
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    (cookie, csrf)
}

/// Low: `/login` had no CSRF token (login CSRF), and no `Secure` cookie behind TLS.
#[tokio::test]
async fn sign_in_needs_its_form_and_cookies_are_secure_behind_tls() {
    let server = Server::start_with(&["--public-url", "https://merit.example"]).await;
    let ann = server.user("ann");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let post = |cookie: Option<String>, csrf: &str| {
        let mut req = http.post(format!("{}/login", server.url));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.form(&[("token", ann.as_str()), ("next", "/"), ("csrf", csrf)]).send()
    };
    // A page elsewhere can post the form, but not read or set the cookie.
    let (cookie, csrf) = login_form(&server).await;
    assert!(cookie.len() > 20);
    assert_eq!(post(None, &csrf).await.unwrap().status().as_u16(), 403);
    assert_eq!(post(None, "").await.unwrap().status().as_u16(), 403);
    assert_eq!(post(Some(cookie.clone()), "0000").await.unwrap().status().as_u16(), 403);
    let r = post(Some(cookie), &csrf).await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let session = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("merit_session="))
        .unwrap();
    assert!(session.contains("; Secure") && session.contains("HttpOnly"), "{session}");
    let form = reqwest::get(format!("{}/login", server.url)).await.unwrap();
    assert!(form.headers().get_all("set-cookie").iter().all(|c| c.to_str().unwrap().contains("; Secure")));
}

/// Low: a garbled Authorization header (bytes that are not text) was served
/// as the public; it is a 401 in the JSON shape. (Control bytes in a header
/// are refused by the HTTP parser itself: 400, the connection closed.)
#[tokio::test]
async fn a_garbled_authorization_header_is_401() {
    use std::io::{Read, Write};
    let server = Server::start().await;
    let addr = server.url.trim_start_matches("http://").to_string();
    for head in [&b"Authorization: Bearer \x80\xff"[..], b"Authorization: Basic abc", b"Authorization: Bearer"] {
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        let mut req = b"GET /api/v1/me HTTP/1.1\r\nHost: merit\r\nConnection: close\r\n".to_vec();
        req.extend_from_slice(head);
        req.extend_from_slice(b"\r\n\r\n");
        tcp.write_all(&req).unwrap();
        let mut answer = Vec::new();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let _ = tcp.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 401"), "{}: {answer}", String::from_utf8_lossy(head));
        assert!(answer.contains("\"unauthorized\""), "{answer}");
    }
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.write_all(b"GET /api/v1/datanets HTTP/1.1\r\nHost: merit\r\nX-T: a\x01b\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let _ = tcp.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"));
    alive(&server).await;
}

/// The most memory the process has held (VmHWM), in bytes.
fn peak_memory(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Medium: one dry run of a 250 MB file held ~800 MB of server memory, and
/// a request could carry 32 such files, all read into memory before the
/// first was judged. Uploads now stream to the staging folder on disk, and
/// every request shares one memory budget (`--request-memory`).
#[tokio::test]
async fn uploads_stream_to_disk_and_request_memory_is_bounded() {
    let server = Server::start_with(&["--request-memory", "16"]).await;
    let ann = server.user("ann");
    let policy = server.file(
        "p.toml",
        b"max_file_bytes = 200000000\n[limits]\nuser_bytes_per_day = 0\ndatanet_bytes_per_day = 0\nuser_files_per_day = 0\n",
    );
    server.ok(&ann, &["datanet", "create", "big", "--policy", s(&policy), "--publish"]);
    let url = format!("{}/api/v1/datanets/big/contributions", server.url);
    let http = reqwest::Client::new();
    let before = peak_memory(&server);
    let huge = vec![b'a'; 150 << 20];
    let form =
        reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(huge).file_name("huge.txt"));
    let r = http.post(&url).query(&[("dry_run", "true")]).bearer_auth(&ann).multipart(form).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_large_for_server", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--request-memory"), "{body}");
    let grew = peak_memory(&server).saturating_sub(before);
    assert!(grew < 48 << 20, "a 150 MB upload raised the server's peak memory by {} MiB", grew >> 20);
    let staging = server.dir.path().join("blobs").join("tmp");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "the refused file is not left in staging");

    // Files that fit take turns for the budget: every one gets its verdict.
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        let (http, url, ann) = (http.clone(), url.clone(), ann.clone());
        tasks.push(tokio::spawn(async move {
            let mut text = String::new();
            while text.len() < 1 << 20 {
                text.push_str(&prose(100 * i + text.len() as u64));
                text.push_str("\n\n");
            }
            let form = reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(text.into_bytes()).file_name(format!("f{i}.txt")));
            let r = http.post(url).query(&[("dry_run", "true")]).bearer_auth(ann).multipart(form).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (code, body) = t.await.unwrap();
        assert_eq!(code, 200, "{body}");
    }

    // A body is reserved before it is read: a declared 20 MB of JSON needs
    // more than the whole 16 MiB, and the 413 comes before any of it is sent.
    use std::io::{Read, Write};
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /api/v1/runs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ann}\r\n\
         Content-Type: application/json\r\nContent-Length: 20000000\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).unwrap();
    let mut reply = vec![0u8; 4096];
    let n = conn.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("too_large_for_server"), "{reply}");
    alive(&server).await;
}
