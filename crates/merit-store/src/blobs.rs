//! Content-addressed blobs under a local directory: `blobs/ab/abcdef…` by SHA-256.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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

    /// Where the blob of `sha256` lives (it may not exist); `None` for a
    /// string that is not a lowercase SHA-256 digest.
    pub fn path_of(&self, sha256: &str) -> Option<PathBuf> {
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

    /// Starts a file in the staging folder: it is written piece by piece
    /// (hashed as it goes) and becomes a blob only when `keep` is called.
    /// An upload never has to sit in memory whole.
    pub fn stage(&self) -> std::io::Result<Staging> {
        let file = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        Ok(Staging { file, hasher: Sha256::new(), len: 0 })
    }

    /// Stages `bytes` at once (tests, and callers that hold a file anyway).
    pub fn stage_bytes(&self, bytes: &[u8]) -> std::io::Result<Staged> {
        let mut s = self.stage()?;
        s.write(bytes)?;
        s.finish()
    }

    /// Makes a staged file the blob of its digest (a rename in the same
    /// folder tree; nothing to do when that blob exists already).
    pub fn keep(&self, staged: Staged) -> std::io::Result<String> {
        let Some(path) = self.path_of(&staged.sha256) else {
            unreachable!("a SHA-256 hex digest is a valid blob name")
        };
        if path.exists() {
            return Ok(staged.sha256);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        staged.file.as_file().sync_all()?;
        staged.file.persist(&path).map_err(|e| e.error)?;
        Ok(staged.sha256)
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

/// A file being written to the staging folder.
pub struct Staging {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    len: u64,
}

impl Staging {
    /// Appends a piece.
    pub fn write(&mut self, piece: &[u8]) -> std::io::Result<()> {
        self.file.write_all(piece)?;
        self.hasher.update(piece);
        self.len += piece.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ends the file; its digest is known from here on.
    pub fn finish(mut self) -> std::io::Result<Staged> {
        self.file.flush()?;
        Ok(Staged { sha256: hex::encode(self.hasher.finalize()), len: self.len, file: self.file })
    }
}

/// A whole staged file: removed when dropped, unless `Blobs::keep` took it.
pub struct Staged {
    file: tempfile::NamedTempFile,
    sha256: String,
    len: u64,
}

impl Staged {
    /// SHA-256 of the content, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the staged file is (until it is kept or dropped).
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Reads the whole content (the caller holds it in memory: budget for it).
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        let mut f = self.file.reopen()?;
        let mut buf = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        f.read_to_end(&mut buf)?;
        Ok(buf)
    }
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged").field("sha256", &self.sha256).field("len", &self.len).finish()
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

    #[test]
    fn staged_files_become_blobs_only_when_kept() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = super::Blobs::open(dir.path()).unwrap();
        let mut s = blobs.stage().unwrap();
        s.write(b"hel").unwrap();
        s.write(b"lo").unwrap();
        let staged = s.finish().unwrap();
        assert_eq!(staged.sha256(), merit_core::sha256_hex(b"hello"));
        assert_eq!(staged.read().unwrap(), b"hello");
        assert!(blobs.get(staged.sha256()).unwrap().is_none(), "not a blob before keep");
        let sha = blobs.keep(staged).unwrap();
        assert_eq!(blobs.get(&sha).unwrap().unwrap(), b"hello");
        // A dropped staging file leaves nothing behind.
        let dropped = blobs.stage_bytes(b"gone").unwrap();
        let sha = dropped.sha256().to_string();
        drop(dropped);
        assert!(blobs.get(&sha).unwrap().is_none());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
