//! Golden tests: the public inclusion and consistency proof vectors of
//! transparency-dev/merkle (see `tests/vectors/README.md`), run against
//! [`merit_ledger::proof::verify_inclusion`] and
//! [`merit_ledger::proof::verify_consistency`].
//!
//! Every vector states its inputs and whether verification must fail
//! (`wantErr`). Many are malformed on purpose (garbage hashes, out-of-range
//! indices), so nothing here may panic on a vector: a hash that does not
//! decode to exactly 32 bytes counts as a failed verification, a size that is
//! not a `u64` counts as a failed verification without calling the verifier,
//! and a panic inside the verifier is caught and reported as a mismatch.
//! Every mismatch is collected and reported by file name; the test fails at
//! the end if there is any.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use merit_ledger::proof::{verify_consistency, verify_inclusion};
use serde_json::Value;

/// The vectors in the tree today: 112 inclusion and 119 consistency. The
/// floors only guard against the walk silently finding fewer files.
const MIN_INCLUSION: usize = 100;
const MIN_CONSISTENCY: usize = 119;

type Hash = [u8; 32];

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("vectors")
}

/// Every `*.json` file under `dir`, recursively, sorted by path.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("reading {}: {e}", d.display())).path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "json") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A base64 hash of exactly 32 bytes, or `None` (bad base64, wrong length, not a string).
fn hash(v: &Value) -> Option<Hash> {
    let bytes = STANDARD.decode(v.as_str()?).ok()?;
    bytes.try_into().ok()
}

/// The proof's hashes; `null` or a missing field is the empty proof. `None`
/// if any element is not a 32-byte base64 hash.
fn proof(v: &Value) -> Option<Vec<Hash>> {
    match v.get("proof") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(hash).collect(),
        Some(_) => None,
    }
}

/// What deciding one vector gave: `Ok(true)` the verification failed,
/// `Ok(false)` it succeeded, `Err` the vector itself could not be read.
type Outcome = Result<bool, String>;

/// Why a vector was decided without calling the verifier, if it was.
enum Decided {
    /// A size or index is not a `u64` (negative, fractional, too large, not a number).
    AbsurdSize(&'static str),
    /// A hash is not 32 bytes of base64.
    BadHash(&'static str),
}

impl Decided {
    fn describe(&self) -> String {
        match self {
            Decided::AbsurdSize(field) => format!("{field} is not a u64"),
            Decided::BadHash(field) => format!("{field} is not a 32-byte hash"),
        }
    }
}

/// A size field: `Ok(n)`, `Err(Some(..))` present but not a u64, `Err(None)` missing.
fn size(v: &Value, field: &'static str) -> Result<u64, Option<Decided>> {
    match v.get(field) {
        None => Err(None),
        Some(x) => x.as_u64().ok_or(Some(Decided::AbsurdSize(field))),
    }
}

/// Runs `f`, turning a panic into a reported outcome.
fn guarded<E: std::fmt::Debug>(f: impl FnOnce() -> Result<(), E>) -> Result<Result<(), E>, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".into());
        format!("verifier panicked: {msg}")
    })
}

/// Either the verifier's result (`Ok(is_err)`, with its error text) or the
/// reason the vector was decided without it.
struct Run {
    failed: bool,
    detail: String,
    called: bool,
}

impl Run {
    fn decided(d: Decided) -> Run {
        Run { failed: true, detail: d.describe(), called: false }
    }
}

fn missing(field: &str) -> String {
    format!("vector has no usable `{field}`")
}

fn run_inclusion(v: &Value) -> Result<Run, String> {
    // Older vectors name the index `leafIdx`, newer ones `leafIndex`.
    let index_field = if v.get("leafIdx").is_some() { "leafIdx" } else { "leafIndex" };
    let index = match size(v, index_field) {
        Ok(n) => n,
        Err(Some(d)) => return Ok(Run::decided(d)),
        Err(None) => return Err(missing("leafIdx/leafIndex")),
    };
    let tree_size = match size(v, "treeSize") {
        Ok(n) => n,
        Err(Some(d)) => return Ok(Run::decided(d)),
        Err(None) => return Err(missing("treeSize")),
    };
    let Some(root) = hash(&v["root"]) else { return Ok(Run::decided(Decided::BadHash("root"))) };
    let Some(leaf) = hash(&v["leafHash"]) else { return Ok(Run::decided(Decided::BadHash("leafHash"))) };
    let Some(proof) = proof(v) else { return Ok(Run::decided(Decided::BadHash("proof"))) };
    let result = guarded(|| verify_inclusion(index, tree_size, &leaf, &proof, &root))?;
    Ok(Run { failed: result.is_err(), detail: format!("{result:?}"), called: true })
}

fn run_consistency(v: &Value) -> Result<Run, String> {
    let size1 = match size(v, "size1") {
        Ok(n) => n,
        Err(Some(d)) => return Ok(Run::decided(d)),
        Err(None) => return Err(missing("size1")),
    };
    let size2 = match size(v, "size2") {
        Ok(n) => n,
        Err(Some(d)) => return Ok(Run::decided(d)),
        Err(None) => return Err(missing("size2")),
    };
    let Some(root1) = hash(&v["root1"]) else { return Ok(Run::decided(Decided::BadHash("root1"))) };
    let Some(root2) = hash(&v["root2"]) else { return Ok(Run::decided(Decided::BadHash("root2"))) };
    let Some(proof) = proof(v) else { return Ok(Run::decided(Decided::BadHash("proof"))) };
    let result = guarded(|| verify_consistency(size1, size2, &root1, &root2, &proof))?;
    Ok(Run { failed: result.is_err(), detail: format!("{result:?}"), called: true })
}

#[derive(Default)]
struct Tally {
    ran: usize,
    verifier_calls: usize,
    want_ok: usize,
}

/// Runs every vector of one kind, appending each mismatch to `failures`.
fn run_kind(kind: &str, run: fn(&Value) -> Result<Run, String>, failures: &mut Vec<String>) -> Tally {
    let dir = vectors_dir().join(kind);
    let mut tally = Tally::default();
    for path in json_files(&dir) {
        let name = path.strip_prefix(vectors_dir()).unwrap_or(&path).display().to_string();
        tally.ran += 1;
        let outcome: Outcome = (|| {
            let text = fs::read_to_string(&path).map_err(|e| format!("unreadable: {e}"))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
            let want_err = v.get("wantErr").and_then(Value::as_bool).ok_or_else(|| missing("wantErr"))?;
            let desc = v.get("desc").and_then(Value::as_str).unwrap_or("");
            if !want_err {
                tally.want_ok += 1;
            }
            let r = run(&v)?;
            if r.called {
                tally.verifier_calls += 1;
            }
            if r.failed != want_err {
                return Err(format!(
                    "{desc:?}: want {} but got {} ({})",
                    if want_err { "an error" } else { "success" },
                    if r.failed { "an error" } else { "success" },
                    r.detail
                ));
            }
            Ok(r.failed)
        })();
        if let Err(e) = outcome {
            failures.push(format!("{name}: {e}"));
        }
    }
    tally
}

#[test]
fn transparency_dev_vectors() {
    let mut failures = Vec::new();
    let inclusion = run_kind("inclusion", run_inclusion, &mut failures);
    let consistency = run_kind("consistency", run_consistency, &mut failures);
    for (kind, t) in [("inclusion", &inclusion), ("consistency", &consistency)] {
        println!(
            "{kind}: {} vectors ran ({} expect success), {} reached the verifier",
            t.ran, t.want_ok, t.verifier_calls
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors disagree with the verifier:\n  {}",
        failures.len(),
        inclusion.ran + consistency.ran,
        failures.join("\n  ")
    );
    assert!(inclusion.ran >= MIN_INCLUSION, "only {} inclusion vectors ran", inclusion.ran);
    assert!(consistency.ran >= MIN_CONSISTENCY, "only {} consistency vectors ran", consistency.ran);
}
