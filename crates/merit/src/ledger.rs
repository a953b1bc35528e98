//! `merit ledger`: the verifier key, entries, inclusion proofs and a full
//! verification of the log against its signed checkpoint.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use merit_ledger::checkpoint::{Checkpoint, NoteVerifier};
use merit_ledger::event::Event;
use merit_ledger::proof::{verify_consistency, verify_inclusion};
use merit_ledger::{leaf_hash, Frontier, Hash};
use serde_json::Value;

use crate::client::Client;

/// Where the log is read from: a server over HTTP, or the local store.
pub enum Source {
    Remote(Client),
    Local { store: merit_store::Store, signer: Box<merit_ledger::checkpoint::NoteSigner> },
}

fn hex_hash(s: &str) -> Result<Hash> {
    let bytes = hex::decode(s).with_context(|| format!("`{s}` is not hex"))?;
    Hash::try_from(bytes.as_slice()).map_err(|_| anyhow!("`{s}` is not a 32-byte hash"))
}

fn hashes(v: &Value) -> Result<Vec<Hash>> {
    v["hashes"]
        .as_array()
        .context("the proof has no `hashes`")?
        .iter()
        .map(|h| hex_hash(h.as_str().unwrap_or_default()))
        .collect()
}

impl Source {
    /// The signed checkpoint note.
    async fn checkpoint(&self) -> Result<String> {
        match self {
            Source::Remote(c) => {
                let resp = c.send(c.raw(reqwest::Method::GET, "/ledger/checkpoint")).await?;
                resp.text().await.context("reading the checkpoint")
            }
            Source::Local { store, signer } => {
                let size = store.ledger_size().await?;
                let root = store.ledger_root(size).await?;
                Ok(signer.sign(&Checkpoint { origin: signer.name().to_string(), size, root }))
            }
        }
    }

    /// The verifier key this source vouches for (trust on first use when remote).
    async fn key(&self) -> Result<String> {
        match self {
            Source::Remote(c) => {
                Ok(c.get("/ledger/key").await?["vkey"].as_str().context("no vkey in the answer")?.to_string())
            }
            Source::Local { signer, .. } => Ok(signer.verifier_key()),
        }
    }

    async fn entries(&self, from: u64, limit: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        match self {
            // The public log's leaves, from its C2SP entry bundles (the JSON
            // listing hides what the caller may not see; the tiles never do).
            Source::Remote(c) => {
                let size = c.get("/ledger/entries?limit=1").await?["size"].as_u64().context("no size in the answer")?;
                let end = from.saturating_add(limit).min(size);
                let mut out = Vec::new();
                let mut tile = from / TILE;
                while tile * TILE < end {
                    let width = (size - tile * TILE).min(TILE);
                    let path = format!("/ledger/tile/entries/{}", tile_path(tile, width));
                    let resp = c.send(c.raw(reqwest::Method::GET, &path)).await?;
                    let bytes = resp.bytes().await.with_context(|| format!("reading {path}"))?;
                    let leaves = bundle_leaves(&bytes).with_context(|| format!("{path}: not an entry bundle"))?;
                    if leaves.len() as u64 != width {
                        bail!("{path}: {} entries, expected {width}", leaves.len());
                    }
                    for (i, leaf) in leaves.into_iter().enumerate() {
                        let index = tile * TILE + i as u64;
                        if index >= from && index < end {
                            out.push((index, leaf));
                        }
                    }
                    tile += 1;
                }
                Ok(out)
            }
            Source::Local { store, .. } => Ok(store.ledger_entries(from, limit).await?),
        }
    }

    async fn consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        match self {
            Source::Remote(c) => hashes(&c.get(&format!("/ledger/proof/consistency?old={old}&new={new}")).await?),
            Source::Local { store, .. } => Ok(store.ledger_consistency_proof(old, new).await?),
        }
    }

    async fn inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        match self {
            Source::Remote(c) => hashes(&c.get(&format!("/ledger/proof/inclusion?index={index}&size={size}")).await?),
            Source::Local { store, .. } => Ok(store.ledger_inclusion_proof(index, size).await?),
        }
    }
}

/// Entries per full tile (C2SP tlog-tiles).
const TILE: u64 = 256;

/// A tile's path: its index in 3-digit elements, all but the last prefixed
/// with `x`, and `.p/<width>` for a partial tile.
fn tile_path(index: u64, width: u64) -> String {
    let mut elems = vec![format!("{:03}", index % 1000)];
    let mut n = index / 1000;
    while n > 0 {
        elems.push(format!("x{:03}", n % 1000));
        n /= 1000;
    }
    elems.reverse();
    let mut p = elems.join("/");
    if width < TILE {
        p.push_str(&format!(".p/{width}"));
    }
    p
}

/// The leaves of an entry bundle: each a big-endian u16 length, then its bytes.
fn bundle_leaves(mut b: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 2 {
            bail!("a length cut short");
        }
        let n = u16::from_be_bytes([b[0], b[1]]) as usize;
        if b.len() < 2 + n {
            bail!("an entry cut short");
        }
        out.push(b[2..2 + n].to_vec());
        b = &b[2 + n..];
    }
    Ok(out)
}

async fn verifier(source: &Source, key: Option<&str>) -> Result<NoteVerifier> {
    let vkey = match key {
        Some(k) => k.to_string(),
        None => {
            let k = source.key().await?;
            eprintln!("note: trusting the source's own key {k}; pass --key to pin it");
            k
        }
    };
    NoteVerifier::parse(&vkey).map_err(|e| anyhow!("--key: {e}"))
}

/// `merit ledger verify`: checks the signature, recomputes the root from all
/// entries and, given an older trusted checkpoint, checks the log only grew.
/// Returns the verified checkpoint note.
pub async fn verify(source: &Source, key: Option<&str>, trusted: Option<&PathBuf>) -> Result<String> {
    let verifier = verifier(source, key).await?;
    let note = source.checkpoint().await?;
    let cp = verifier.verify(&note).map_err(|e| anyhow!("checkpoint: {e}"))?;
    // Prefix roots: roots[m] is the root of the first m entries as the entries say.
    let mut roots = vec![merit_ledger::empty_root()];
    let mut frontier = Frontier::default();
    let mut next = 0u64;
    while next < cp.size {
        let page = source.entries(next, 1000.min(cp.size - next)).await?;
        if page.is_empty() {
            bail!("ledger entry {next} is missing (the checkpoint covers {} entries)", cp.size);
        }
        for (index, leaf) in page {
            if index != next {
                bail!("ledger entry {next} is missing (the next stored entry is {index})");
            }
            if index >= cp.size {
                break;
            }
            // A publication must open the commitment that stood for the name.
            if let Ok(e @ Event::DatanetPublished { .. }) = Event::from_leaf(&leaf) {
                if !e.opens() {
                    bail!("ledger entry {index}: the published salt does not open the datanet's name commitment");
                }
            }
            frontier.push(leaf_hash(&leaf));
            roots.push(frontier.root());
            next += 1;
        }
    }
    if roots[cp.size as usize] != cp.root {
        let bad = first_bad(source, &roots, cp.size, &cp.root).await?;
        bail!("ledger entry {bad} does not match the signed checkpoint (changed, reordered or inserted)");
    }
    if let Some(path) = trusted {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let old = verifier.verify(&text).map_err(|e| anyhow!("trusted checkpoint {}: {e}", path.display()))?;
        if old.origin != cp.origin {
            bail!("the trusted checkpoint is for log `{}`, not `{}`", old.origin, cp.origin);
        }
        if old.size > cp.size {
            bail!("the log shrank: the trusted checkpoint has {} entries, the current one {}", old.size, cp.size);
        }
        let proof = source.consistency(old.size, cp.size).await?;
        verify_consistency(old.size, cp.size, &old.root, &cp.root, &proof)
            .map_err(|e| anyhow!("the log is not an extension of the trusted checkpoint: {e}"))?;
        if roots[old.size as usize] != old.root {
            let bad = first_bad(source, &roots, old.size, &old.root).await?;
            bail!("ledger entry {bad} was changed after the trusted checkpoint");
        }
    }
    println!("ledger ok: {} entries, root {}, signed by {}", cp.size, hex::encode(cp.root), verifier.name());
    Ok(note)
}

/// The first entry whose prefix no longer extends to `root`: binary search
/// with consistency proofs against the recomputed prefix roots.
async fn first_bad(source: &Source, roots: &[Hash], size: u64, root: &Hash) -> Result<u64> {
    let good = |m: u64| async move {
        let proof = source.consistency(m, size).await.unwrap_or_default();
        verify_consistency(m, size, &roots[m as usize], root, &proof).is_ok()
    };
    // Invariant: prefix `lo` is good, prefix `hi` is bad.
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if good(mid).await {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// `merit ledger prove ID`: the inclusion proof of a contribution's latest verdict.
pub async fn prove(source: &Source, key: Option<&str>, contribution: i64) -> Result<()> {
    let Source::Remote(c) = source else { bail!("prove needs --server") };
    let v = c.get(&format!("/ledger/entries?subject=contribution:{contribution}")).await?;
    let entry = v["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .rfind(|e| e["event"]["type"] == "contribution.verdict")
        .with_context(|| format!("no verdict of contribution {contribution} on the ledger"))?
        .clone();
    let index = entry["index"].as_u64().context("entry without index")?;
    let leaf = B64.decode(entry["leaf"].as_str().unwrap_or_default()).context("leaf is not base64")?;
    let verifier = verifier(source, key).await?;
    let cp = verifier.verify(&source.checkpoint().await?).map_err(|e| anyhow!("checkpoint: {e}"))?;
    let proof = source.inclusion(index, cp.size).await?;
    verify_inclusion(index, cp.size, &leaf_hash(&leaf), &proof, &cp.root)
        .map_err(|e| anyhow!("inclusion proof: {e}"))?;
    let out = serde_json::json!({
        "contribution_id": contribution,
        "event": entry["event"],
        "index": index,
        "size": cp.size,
        "root": hex::encode(cp.root),
        "leaf_hash": hex::encode(leaf_hash(&leaf)),
        "hashes": proof.iter().map(hex::encode).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    println!("verified: entry {index} is in the log of {} entries signed by {}", cp.size, verifier.name());
    Ok(())
}

/// Every event in the log, in order (entries that are not Merit events are skipped).
pub async fn all_events(source: &Source) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    let mut next = 0u64;
    loop {
        let page = source.entries(next, 1000).await?;
        let Some((last, _)) = page.last() else { break };
        next = last + 1;
        out.extend(page.iter().filter_map(|(_, leaf)| Event::from_leaf(leaf).ok()));
    }
    Ok(out)
}

/// `merit ledger show`: decoded entries.
pub async fn show(source: &Source, from: u64, limit: u64, json: bool) -> Result<()> {
    for (index, leaf) in source.entries(from, limit).await? {
        let event = Event::from_leaf(&leaf).ok();
        if json {
            let v = serde_json::json!({ "index": index, "leaf_hash": hex::encode(leaf_hash(&leaf)), "event": event });
            println!("{v}");
        } else {
            let kind = event.as_ref().map_or("(not a Merit event)", Event::kind);
            println!("{index:>8}  {kind:<24} {}", String::from_utf8_lossy(&leaf));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_paths_and_bundles() {
        assert_eq!(tile_path(0, 256), "000");
        assert_eq!(tile_path(0, 17), "000.p/17");
        assert_eq!(tile_path(1_234_067, 256), "x001/x234/067");
        assert_eq!(tile_path(1002, 255), "x001/002.p/255");
        assert_eq!(
            bundle_leaves(&[0, 2, b'a', b'b', 0, 0, 0, 1, b'c']).unwrap(),
            vec![b"ab".to_vec(), vec![], b"c".to_vec()]
        );
        assert!(bundle_leaves(&[0, 3, b'a']).is_err());
        assert!(bundle_leaves(&[0]).is_err());
    }
}
