//! C2SP checkpoints as signed notes (c2sp.org/tlog-checkpoint,
//! c2sp.org/signed-note) with Ed25519 keys.
//!
//! A checkpoint body is three lines — origin, tree size, base64 root hash —
//! and the note adds one signature line per signer:
//! `— <key name> <base64(key hash ‖ signature)>`, where the key hash is the
//! first four bytes of SHA-256(key name ‖ "\n" ‖ 0x01 ‖ public key).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Hash;

/// The signature algorithm byte of Ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;

/// A tree head: which log, how many leaves, which root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note body: origin, size and base64 root, each on its own line.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }
}

/// Why a note or key could not be read or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("malformed verifier key: {0}")]
    BadKey(String),
    #[error("no signature by key `{0}` on the note")]
    Unsigned(String),
    #[error("the signature by key `{0}` does not verify")]
    BadSignature(String),
}

fn key_hash(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('+') || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("key name `{name}` must be non-empty with no spaces or '+'"));
    }
    Ok(())
}

/// A named Ed25519 signing key.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl NoteSigner {
    /// A signer from a 32-byte seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<NoteSigner, NoteError> {
        check_name(name).map_err(NoteError::BadKey)?;
        Ok(NoteSigner { name: name.to_string(), key: SigningKey::from_bytes(seed) })
    }

    /// The key's name (conventionally the log's origin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key in C2SP vkey form: `<name>+<hex key hash>+<base64(0x01 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        let public = self.key.verifying_key().to_bytes();
        let mut blob = vec![ALG_ED25519];
        blob.extend_from_slice(&public);
        format!("{}+{}+{}", self.name, hex4(&key_hash(&self.name, &public)), B64.encode(blob))
    }

    /// Signs a checkpoint: its body, a blank line, and the signature line.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        self.sign_text(&checkpoint.body())
    }

    /// Signs any note text (which must end in a newline).
    pub fn sign_text(&self, body: &str) -> String {
        let sig = self.key.sign(body.as_bytes());
        let public = self.key.verifying_key().to_bytes();
        let mut blob = key_hash(&self.name, &public).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{body}\n\u{2014} {} {}\n", self.name, B64.encode(blob))
    }
}

fn hex4(b: &[u8; 4]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A verifier key parsed from its vkey form.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    name: String,
    hash: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `<name>+<hex key hash>+<base64(0x01 ‖ public key)>`.
    pub fn parse(vkey: &str) -> Result<NoteVerifier, NoteError> {
        let bad = |why: &str| NoteError::BadKey(why.to_string());
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(hash_hex), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <name>+<hash>+<key>"));
        };
        check_name(name).map_err(NoteError::BadKey)?;
        let blob = B64.decode(b64).map_err(|_| bad("key is not base64"))?;
        if blob.len() != 33 || blob[0] != ALG_ED25519 {
            return Err(bad("key is not an Ed25519 key (0x01 followed by 32 bytes)"));
        }
        let public: [u8; 32] = blob[1..].try_into().map_err(|_| bad("key length"))?;
        let key = VerifyingKey::from_bytes(&public).map_err(|_| bad("not a valid Ed25519 public key"))?;
        let hash = key_hash(name, &public);
        if hash_hex != hex4(&hash) {
            return Err(bad("key hash does not match the name and key"));
        }
        Ok(NoteVerifier { name: name.to_string(), hash, key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies a signed checkpoint note and returns the checkpoint.
    pub fn verify(&self, note: &str) -> Result<Checkpoint, NoteError> {
        let malformed = |why: &str| NoteError::Malformed(why.to_string());
        let Some(split) = note.find("\n\n") else {
            return Err(malformed("no blank line before the signatures"));
        };
        let body = &note[..split + 1];
        let sigs = &note[split + 2..];
        let mut found = false;
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(malformed("signature line does not start with an em dash"));
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                return Err(malformed("signature line has no signature"));
            };
            if name != self.name {
                continue;
            }
            let blob = B64.decode(b64).map_err(|_| malformed("signature is not base64"))?;
            if blob.len() != 4 + 64 || blob[..4] != self.hash {
                continue;
            }
            found = true;
            let sig = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            self.key.verify(body.as_bytes(), &sig).map_err(|_| NoteError::BadSignature(self.name.clone()))?;
        }
        if !found {
            return Err(NoteError::Unsigned(self.name.clone()));
        }
        parse_body(body)
    }
}

/// Reads a checkpoint body (without checking any signature).
pub fn parse_body(body: &str) -> Result<Checkpoint, NoteError> {
    let malformed = |why: &str| NoteError::Malformed(why.to_string());
    let mut lines = body.lines();
    let origin = lines.next().filter(|l| !l.is_empty()).ok_or_else(|| malformed("no origin line"))?;
    let size = lines.next().and_then(|l| l.parse::<u64>().ok()).ok_or_else(|| malformed("no tree size line"))?;
    let root = lines
        .next()
        .and_then(|l| B64.decode(l).ok())
        .and_then(|b| <Hash>::try_from(b.as_slice()).ok())
        .ok_or_else(|| malformed("no base64 root hash line"))?;
    Ok(Checkpoint { origin: origin.to_string(), size, root })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example key and note of Go's golang.org/x/mod/sumdb/note documentation.
    #[test]
    fn matches_the_go_note_example() {
        let skey = B64.decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz").unwrap();
        let seed: [u8; 32] = skey[1..].try_into().unwrap();
        let signer = NoteSigner::from_seed("PeterNeumann", &seed).unwrap();
        assert_eq!(signer.verifier_key(), "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW");
        let text =
            "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
        assert_eq!(
            signer.sign_text(text),
            format!("{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")
        );
    }

    #[test]
    fn sign_and_verify() {
        let signer = NoteSigner::from_seed("merit.example/log", &[7; 32]).unwrap();
        let cp = Checkpoint { origin: "merit.example/log".into(), size: 42, root: [9; 32] };
        let note = signer.sign(&cp);
        assert!(note.starts_with("merit.example/log\n42\n"));
        assert!(note.contains("\n\n\u{2014} merit.example/log "));
        let v = NoteVerifier::parse(&signer.verifier_key()).unwrap();
        assert_eq!(v.verify(&note).unwrap(), cp);
        // Another key, a changed body, a changed signature: all refused.
        let other = NoteSigner::from_seed("merit.example/log", &[8; 32]).unwrap();
        assert!(NoteVerifier::parse(&other.verifier_key()).unwrap().verify(&note).is_err());
        let tampered = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(v.verify(&tampered), Err(NoteError::BadSignature("merit.example/log".into())));
        assert!(NoteVerifier::parse("nonsense").is_err());
        let mut vk = signer.verifier_key();
        vk.replace_range(vk.len() - 6..vk.len() - 5, "A");
        assert!(NoteVerifier::parse(&vk).is_err() || NoteVerifier::parse(&vk).unwrap().verify(&note).is_err());
    }
}
