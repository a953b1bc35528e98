//! Shared by the binary's integration tests: a `merit serve` on loopback,
//! the binary with a clean environment, and prose that passes the text gates.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub db: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn merit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_merit"));
    c.env_remove("MERIT_SERVER").env_remove("MERIT_TOKEN").env("MERIT_LOG", "warn");
    // Tests register their own tiny models; `merit serve` fetches nothing.
    c.env("MERIT_DEFAULT_MODEL", "none");
    c
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(&[]).await
    }

    /// A server started with extra `merit serve` flags.
    pub async fn start_with(flags: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db = match merit_store::testing::fresh_database_url().await {
            Some(url) => vec!["--database-url".to_string(), url],
            None => vec![],
        };
        Server::spawn(dir, db, flags)
    }

    /// A server started with extra flags and environment variables.
    pub async fn start_with_env(flags: &[&str], env: &[(String, String)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db = match merit_store::testing::fresh_database_url().await {
            Some(url) => vec!["--database-url".to_string(), url],
            None => vec![],
        };
        Server::spawn_env(dir, db, flags, env)
    }

    /// Another node beside `other`: its own data directory, the same database.
    pub fn start_beside(other: &Server, flags: &[&str], env: &[(String, String)]) -> Server {
        let db = if other.db.is_empty() {
            vec!["--database-url".to_string(), format!("sqlite://{}/merit.db", other.dir.path().display())]
        } else {
            other.db.clone()
        };
        Server::spawn_env(tempfile::tempdir().unwrap(), db, flags, env)
    }

    /// Kills the server with SIGKILL and starts it again on the same data.
    pub fn kill_and_restart(mut self) -> Server {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let old = std::mem::replace(&mut self.dir, dir);
        let db = std::mem::take(&mut self.db);
        Server::start_on(old, db)
    }

    pub fn start_on(dir: tempfile::TempDir, db: Vec<String>) -> Server {
        Server::spawn(dir, db, &[])
    }

    fn spawn(dir: tempfile::TempDir, db: Vec<String>, flags: &[&str]) -> Server {
        Server::spawn_env(dir, db, flags, &[])
    }

    fn spawn_env(dir: tempfile::TempDir, db: Vec<String>, flags: &[&str], env: &[(String, String)]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = merit()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path())
            .args(&db)
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server { child, url: format!("http://127.0.0.1:{port}"), dir, db };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "merit serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// `merit user add NAME`; returns the token (the last line of stdout).
    pub fn user(&self, name: &str) -> String {
        let out =
            merit().args(["user", "add", name, "--data-dir"]).arg(self.dir.path()).args(&self.db).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout.lines().last().unwrap().to_string()
    }

    pub fn run(&self, token: &str, args: &[&str]) -> Output {
        merit().env("MERIT_SERVER", &self.url).env("MERIT_TOKEN", token).args(args).output().unwrap()
    }

    pub fn ok(&self, token: &str, args: &[&str]) -> String {
        let out = self.run(token, args);
        assert!(out.status.success(), "merit {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `merit model add` a fixture model of merit-lm (`llama`, `smollm`, …) as `name`.
    pub fn add_fixture_model(&self, fixture: &str, name: &str) {
        add_fixture_model(self.dir.path(), fixture, name);
    }

    /// `GET {url}{path}` with `token`, as JSON.
    pub async fn get_json(&self, token: &str, path: &str) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn prose(seed: u64) -> String {
    let words = [
        "quiet", "river", "village", "garden", "teacher", "market", "bridge", "painter", "student", "forest",
        "station", "valley", "island", "baker", "castle", "meadow", "orchard", "tower", "welcomed", "helped",
        "visited", "crossed", "repaired", "watched", "guided", "praised", "bright", "gentle", "careful", "honest",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        words[(x % words.len() as u64) as usize]
    };
    let mut out = String::new();
    for _ in 0..14 {
        out.push_str(&format!(
            "The {} {} {} a {} {} near the {} {}. ",
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next()
        ));
    }
    out.push_str(&format!("\nThis note carries the number {seed} so that it stays unique.\n"));
    out
}

/// merit-lm's fixture models.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../merit-lm/tests/fixtures")
}

/// `merit model add` a fixture model as `name` in `data_dir`.
pub fn add_fixture_model(data_dir: &Path, fixture: &str, name: &str) {
    let added = merit()
        .args(["model", "add"])
        .arg(fixtures().join(fixture))
        .args(["--name", name, "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
}
