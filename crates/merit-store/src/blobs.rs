//! Content-addressed blobs under a local directory: `blobs/ab/abcdef…` by SHA-256.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A local content-addressed blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    root: PathBuf,
}

impl Blobs {
    /// Opens (creating if needed) the blob directory `root`.
    pub fn open(root: &Path) -> std::io::Result<Blobs> {
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(Blobs { root: root.to_path_buf() })
    }

    fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        let valid = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        valid.then(|| self.root.join(&sha256[..2]).join(sha256))
    }

    /// Stores `bytes` under their SHA-256 (lowercase hex), atomically: a reader
    /// sees the whole blob or none of it. Returns the digest.
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<String> {
        let sha = merit_core::sha256_hex(bytes);
        let Some(path) = self.path_of(&sha) else { unreachable!("a SHA-256 hex digest is a valid blob name") };
        if path.exists() {
            return Ok(sha);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(sha)
    }

    /// Reads a blob, or `None` when there is none by that digest.
    pub fn get(&self, sha256: &str) -> std::io::Result<Option<Vec<u8>>> {
        let Some(path) = self.path_of(sha256) else {
            return Ok(None);
        };
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn put_get_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = super::Blobs::open(dir.path()).unwrap();
        let sha = blobs.put(b"hello").unwrap();
        assert_eq!(sha, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(blobs.get(&sha).unwrap().unwrap(), b"hello");
        assert_eq!(blobs.put(b"hello").unwrap(), sha);
        assert!(blobs.get("../../etc/passwd").unwrap().is_none());
        assert!(blobs.get(&"0".repeat(64)).unwrap().is_none());
    }
}
