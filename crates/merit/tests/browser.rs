//! The web app in headless Chromium: `tests/browser/e2e.mjs` (playwright-core)
//! drives a real `merit serve`. Runs when `MERIT_TEST_BROWSER=1` (`.ci/run`
//! installs Chromium and the script's npm package); screenshots of every page
//! go to `target/browser-shots/`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[tokio::test]
async fn the_web_app_in_a_real_browser() {
    if std::env::var("MERIT_TEST_BROWSER").ok().as_deref() != Some("1") {
        eprintln!("skipped: set MERIT_TEST_BROWSER=1 (needs chromium and `npm ci` in tests/browser)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let server = Server::start().await;
    let token = server.user("ann");
    server.add_fixture_model("smollm", "tiny");
    let good = server.file("good-essay.txt", prose(7).as_bytes());
    let bad = server.file("too-short.txt", b"Far too short to be an essay.\n");
    let shots = root.join("target/browser-shots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(root.join("tests/browser/e2e.mjs"))
        .env("MERIT_URL", &server.url)
        .env("MERIT_TOKEN", &token)
        .env("MERIT_GOOD_FILE", &good)
        .env("MERIT_BAD_FILE", &bad)
        .env("MERIT_SHOTS", &shots)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "the browser test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("browser test passed"));
}
