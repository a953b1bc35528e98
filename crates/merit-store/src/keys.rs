//! The ledger's signing key, kept in the data directory with mode 0600 in
//! C2SP signed-note form: `PRIVATE+KEY+<name>+<hash>+<base64(0x01 ‖ seed)>`.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use merit_ledger::checkpoint::NoteSigner;

use crate::StoreError;

/// Loads the signing key at `path`, creating it (named `origin`) when absent.
pub fn load_or_create(path: &Path, origin: &str) -> Result<NoteSigner, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            parse(text.trim()).map_err(|why| StoreError::Corrupt(format!("ledger key {}: {why}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed: [u8; 32] = rand::random();
            let signer = NoteSigner::from_seed(origin, &seed).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let vkey = signer.verifier_key();
            let hash = vkey.split('+').nth(1).unwrap_or_default();
            let mut blob = vec![0x01u8];
            blob.extend_from_slice(&seed);
            let text = format!("PRIVATE+KEY+{origin}+{hash}+{}\n", B64.encode(blob));
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(path)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            Ok(signer)
        }
        Err(e) => Err(e.into()),
    }
}

fn parse(text: &str) -> Result<NoteSigner, String> {
    let rest = text.strip_prefix("PRIVATE+KEY+").ok_or("does not start with PRIVATE+KEY+")?;
    // Names hold no '+'; base64 may.
    let mut parts = rest.splitn(3, '+');
    let (Some(name), Some(_hash), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected PRIVATE+KEY+<name>+<hash>+<key>".into());
    };
    let blob = B64.decode(b64).map_err(|_| "key is not base64")?;
    if blob.len() != 33 || blob[0] != 0x01 {
        return Err("not an Ed25519 key".into());
    }
    let seed: [u8; 32] = blob[1..].try_into().map_err(|_| "key length")?;
    NoteSigner::from_seed(name, &seed).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn created_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.key");
        let a = super::load_or_create(&path, "merit.test/log").unwrap();
        let b = super::load_or_create(&path, "ignored").unwrap();
        assert_eq!(a.verifier_key(), b.verifier_key());
        assert!(a.verifier_key().starts_with("merit.test/log+"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, "garbage").unwrap();
        assert!(super::load_or_create(&path, "x").is_err());
    }
}
