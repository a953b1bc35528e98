//! Published adapters in an object store — S3 or any S3-compatible service
//! (`s3://bucket/prefix`, credentials and endpoint from the usual `AWS_*`
//! variables), a shared folder (`file:///path`) or memory (`memory://`, for
//! tests) — so nodes that do not share a data directory serve them.
//!
//! A run is `runs/<id>/` under the prefix: the files serving needs (the
//! adapter, its PEFT config and, per checkpoint, the checkpoint's adapter
//! and influence table), then `manifest.json` with every file's SHA-256 and
//! size. The manifest is written last, so a run without one is not there
//! yet; a download is checked against it and lands in its folder all at
//! once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

/// What can go wrong with the adapter store; messages name the object or file.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("adapter store URL `{0}`: {1}")]
    Url(String, String),
    #[error("adapter store: {0}")]
    Store(#[from] object_store::Error),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("adapter store: {0}")]
    Corrupt(String),
}

/// The files of a run folder that serving reads, relative to it.
const RUN_FILES: &[&str] = &["adapter_config.json", "adapter_model.safetensors"];
/// The files of each `checkpoint-N` folder that gradient attribution reads.
const CHECKPOINT_FILES: &[&str] = &["adapter_config.json", "adapter_model.safetensors", "influence.mrt"];

/// A run's manifest: its base and its files.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub run: i64,
    /// The base model the adapter was trained on (`base_model_name_or_path`).
    pub base: String,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ManifestFile {
    /// Relative to the run folder, `/`-separated.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// An object store holding published adapters.
#[derive(Clone)]
pub struct AdapterStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl std::fmt::Debug for AdapterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterStore").field("url", &self.url).finish()
    }
}

impl AdapterStore {
    /// Opens `s3://bucket[/prefix]`, `file:///path` or `memory://`. S3 reads
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` and, for
    /// S3-compatible services, `AWS_ENDPOINT_URL` (plain `http://` endpoints
    /// are allowed when named).
    pub fn open(url: &str) -> Result<AdapterStore, RemoteError> {
        let bad = |why: &str| RemoteError::Url(url.to_string(), why.to_string());
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| bad("use s3://bucket[/prefix], file:///path or memory://"))?;
        let (store, prefix): (Arc<dyn ObjectStore>, &str) = match scheme {
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("no bucket (s3://bucket[/prefix])"));
                }
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"));
                if let Ok(e) = endpoint {
                    b = b.with_endpoint(&e).with_allow_http(e.starts_with("http://"));
                }
                if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
                    b = b.with_region("us-east-1");
                }
                (Arc::new(b.build().map_err(|e| bad(&e.to_string()))?), prefix)
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err(bad("a file:// URL needs an absolute path (file:///srv/adapters)"));
                }
                std::fs::create_dir_all(rest).map_err(|e| bad(&e.to_string()))?;
                let fs =
                    object_store::local::LocalFileSystem::new_with_prefix(rest).map_err(|e| bad(&e.to_string()))?;
                (Arc::new(fs), "")
            }
            "memory" => (Arc::new(object_store::memory::InMemory::new()), rest),
            _ => return Err(bad("use s3://bucket[/prefix], file:///path or memory://")),
        };
        Ok(AdapterStore { store, prefix: ObjectPath::from(prefix.trim_matches('/')), url: url.to_string() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn object(&self, rel: &str) -> ObjectPath {
        rel.split('/').filter(|p| !p.is_empty()).fold(self.prefix.clone(), |p, part| p.child(part))
    }

    /// Uploads run `id`'s adapter from its folder `dir` (the manifest last);
    /// returns the manifest.
    pub async fn put_run(&self, id: i64, base: &str, dir: &Path) -> Result<Manifest, RemoteError> {
        let mut rels: Vec<String> = RUN_FILES.iter().map(|f| f.to_string()).collect();
        let mut entries = tokio::fs::read_dir(dir).await.map_err(|e| RemoteError::Io(dir.to_path_buf(), e))?;
        let mut checkpoints = Vec::new();
        while let Some(e) = entries.next_entry().await.map_err(|e| RemoteError::Io(dir.to_path_buf(), e))? {
            let name = e.file_name().to_string_lossy().to_string();
            let is_checkpoint = name.strip_prefix("checkpoint-").is_some_and(|n| n.parse::<u64>().is_ok());
            if is_checkpoint && e.path().join("influence.mrt").exists() {
                checkpoints.push(name);
            }
        }
        checkpoints.sort();
        for c in &checkpoints {
            rels.extend(CHECKPOINT_FILES.iter().map(|f| format!("{c}/{f}")));
        }
        let mut files = Vec::with_capacity(rels.len());
        for rel in rels {
            let path = dir.join(&rel);
            let bytes = tokio::fs::read(&path).await.map_err(|e| RemoteError::Io(path.clone(), e))?;
            files.push(ManifestFile {
                sha256: merit_core::sha256_hex(&bytes),
                bytes: bytes.len() as u64,
                path: rel.clone(),
            });
            self.store.put(&self.object(&format!("runs/{id}/{rel}")), PutPayload::from(bytes)).await?;
        }
        let manifest = Manifest { run: id, base: base.to_string(), files };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| RemoteError::Corrupt(e.to_string()))?;
        self.store.put(&self.object(&format!("runs/{id}/manifest.json")), PutPayload::from(json)).await?;
        Ok(manifest)
    }

    /// The manifest of run `id`, or `None` when it is not (yet) in the store.
    pub async fn manifest(&self, id: i64) -> Result<Option<Manifest>, RemoteError> {
        let path = self.object(&format!("runs/{id}/manifest.json"));
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| RemoteError::Corrupt(format!("{path} is not a run manifest: {e}")))?;
        if m.run != id {
            return Err(RemoteError::Corrupt(format!("{path} describes run {}", m.run)));
        }
        Ok(Some(m))
    }

    /// The ids of the runs in the store (those with a manifest).
    pub async fn runs(&self) -> Result<Vec<i64>, RemoteError> {
        let listing = self.store.list_with_delimiter(Some(&self.object("runs"))).await?;
        let mut ids: Vec<i64> =
            listing.common_prefixes.iter().filter_map(|p| p.filename().and_then(|n| n.parse().ok())).collect();
        ids.sort_unstable();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let marker = self.object(&format!("runs/{id}/manifest.json"));
            match self.store.head(&marker).await {
                Ok(_) => out.push(id),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Downloads run `id` (as `manifest` lists it) into `dest`, checking
    /// every file's size and SHA-256; `dest` appears whole or not at all.
    pub async fn fetch_run(&self, manifest: &Manifest, dest: &Path) -> Result<(), RemoteError> {
        let io = |p: &Path, e| RemoteError::Io(p.to_path_buf(), e);
        let parent = dest.parent().ok_or_else(|| RemoteError::Corrupt(format!("{} has no parent", dest.display())))?;
        tokio::fs::create_dir_all(parent).await.map_err(|e| io(parent, e))?;
        let tmp = tempfile::Builder::new().prefix(".fetch-").tempdir_in(parent).map_err(|e| io(parent, e))?;
        for f in &manifest.files {
            let safe = !f.path.is_empty()
                && f.path.split('/').all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('\\'));
            if !safe {
                return Err(RemoteError::Corrupt(format!("run {} lists the file `{}`", manifest.run, f.path)));
            }
            let object = self.object(&format!("runs/{}/{}", manifest.run, f.path));
            let bytes = self.store.get(&object).await?.bytes().await?;
            let sha = merit_core::sha256_hex(&bytes);
            if bytes.len() as u64 != f.bytes || sha != f.sha256 {
                return Err(RemoteError::Corrupt(format!(
                    "{object}: {} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
                    bytes.len(),
                    f.bytes,
                    f.sha256
                )));
            }
            let path = tmp.path().join(&f.path);
            if let Some(d) = path.parent() {
                tokio::fs::create_dir_all(d).await.map_err(|e| io(d, e))?;
            }
            tokio::fs::write(&path, &bytes).await.map_err(|e| io(&path, e))?;
        }
        let staged = tmp.keep();
        match tokio::fs::rename(&staged, dest).await {
            Ok(()) => Ok(()),
            // Another download got there first: theirs is as good.
            Err(_) if dest.join("adapter_config.json").exists() => {
                let _ = tokio::fs::remove_dir_all(&staged).await;
                Ok(())
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&staged).await;
                Err(io(dest, e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), br#"{"base_model_name_or_path":"tiny"}"#).unwrap();
        std::fs::write(dir.path().join("adapter_model.safetensors"), b"weights").unwrap();
        std::fs::write(dir.path().join("optimizer.safetensors"), b"not served").unwrap();
        let c = dir.path().join("checkpoint-2");
        std::fs::create_dir_all(&c).unwrap();
        for f in CHECKPOINT_FILES {
            std::fs::write(c.join(f), f.as_bytes()).unwrap();
        }
        // A checkpoint without an influence table is not needed for serving.
        std::fs::create_dir_all(dir.path().join("checkpoint-1")).unwrap();
        dir
    }

    #[tokio::test]
    async fn runs_round_trip_and_are_checked() {
        let root = tempfile::tempdir().unwrap();
        let url = format!("file://{}", root.path().display());
        let store = AdapterStore::open(&url).unwrap();
        assert!(store.runs().await.unwrap().is_empty());
        assert!(store.manifest(7).await.unwrap().is_none());
        let src = run_dir();
        let m = store.put_run(7, "tiny", src.path()).await.unwrap();
        let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "adapter_config.json",
                "adapter_model.safetensors",
                "checkpoint-2/adapter_config.json",
                "checkpoint-2/adapter_model.safetensors",
                "checkpoint-2/influence.mrt"
            ]
        );
        // Another opening of the same URL (another node) sees it.
        let other = AdapterStore::open(&url).unwrap();
        assert_eq!(other.runs().await.unwrap(), vec![7]);
        let m = other.manifest(7).await.unwrap().unwrap();
        assert_eq!(m.base, "tiny");
        let dest = tempfile::tempdir().unwrap();
        let to = dest.path().join("run-7");
        other.fetch_run(&m, &to).await.unwrap();
        assert_eq!(std::fs::read(to.join("adapter_model.safetensors")).unwrap(), b"weights");
        assert_eq!(std::fs::read(to.join("checkpoint-2/influence.mrt")).unwrap(), b"influence.mrt");
        assert!(!to.join("optimizer.safetensors").exists());
        // A tampered object is refused and nothing lands.
        std::fs::write(root.path().join("runs/7/adapter_model.safetensors"), b"weightz").unwrap();
        let again = dest.path().join("again");
        let err = other.fetch_run(&m, &again).await.unwrap_err().to_string();
        assert!(err.contains("SHA-256") && err.contains("adapter_model.safetensors"), "{err}");
        assert!(!again.exists());
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 1, "no staging folder is left behind");
        // A manifest naming a file outside the run is refused.
        let mut evil = m.clone();
        evil.files[0].path = "../../etc/passwd".into();
        assert!(other.fetch_run(&evil, &dest.path().join("evil")).await.unwrap_err().to_string().contains("lists"));
        // A run without its manifest (an upload cut short) is not listed.
        std::fs::create_dir_all(root.path().join("runs/8")).unwrap();
        std::fs::write(root.path().join("runs/8/adapter_config.json"), b"{}").unwrap();
        assert_eq!(other.runs().await.unwrap(), vec![7]);
    }

    #[test]
    fn bad_urls_are_named() {
        for url in ["adapters", "ftp://host/x", "file://relative/path", "s3://"] {
            let err = AdapterStore::open(url).unwrap_err().to_string();
            assert!(err.contains(url), "{err}");
        }
        assert!(AdapterStore::open("memory://").is_ok());
    }
}
