//! The ledger inside the store: state changes append their events in the
//! same transaction that makes the change, so there is no change without its
//! leaf and no leaf without its change.
//!
//! `ledger_entries` holds the leaves; `ledger_nodes` holds the root of every
//! complete perfect subtree (level 0 = leaf hashes), which is all that
//! roots, proofs and C2SP tiles need; `ledger_head` holds the size.

use std::cell::RefCell;
use std::collections::HashMap;

use merit_ledger::event::Event;
use merit_ledger::proof::{self, NodeSource};
use merit_ledger::{leaf_hash, node_hash, Hash};

use crate::{col, Backend, Store, StoreError, Writer};

/// Appends events to the ledger inside the caller's transaction.
///
/// The new subtree roots are computed in memory from the tree's right border
/// (one read per set bit of the size), and rows go in as multi-row INSERTs,
/// so a batch costs a handful of statements, not a few per leaf.
pub(crate) async fn append(w: &mut Writer<'_>, backend: Backend, events: &[Event], now: i64) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    if backend == Backend::Postgres {
        // One appender at a time; always the last lock a transaction takes.
        sqlx::query("SELECT pg_advisory_xact_lock(7426018)").execute(&mut *w.tx).await?;
    }
    let row = sqlx::query("SELECT size FROM ledger_head WHERE id = 1").fetch_one(&mut *w.tx).await?;
    let start = col::<i64>(&row, "size")? as u64;
    // border[l] is the root of the incomplete run at level l: node (l, (size >> l) - 1) when bit l of size is set.
    let mut border: Vec<Option<Hash>> = vec![None; 64];
    for level in 0..64u32 {
        if start >> level & 1 == 1 {
            let idx = (start >> level) - 1;
            let r = sqlx::query("SELECT hash FROM ledger_nodes WHERE level = $1 AND idx = $2")
                .bind(level as i64)
                .bind(idx as i64)
                .fetch_one(&mut *w.tx)
                .await?;
            border[level as usize] = Some(to_hash(&col::<Vec<u8>>(&r, "hash")?)?);
        }
    }
    let mut entries: Vec<(i64, Vec<u8>, String)> = Vec::with_capacity(events.len());
    let mut nodes: Vec<(i64, i64, Hash)> = Vec::with_capacity(events.len() * 2);
    for (k, event) in events.iter().enumerate() {
        let size = start + k as u64;
        let leaf = event.to_leaf();
        let mut hash = leaf_hash(&leaf);
        entries.push((size as i64, leaf, event.subject()));
        let (mut level, mut idx) = (0usize, size);
        loop {
            nodes.push((level as i64, idx as i64, hash));
            if idx % 2 == 0 {
                border[level] = Some(hash);
                break;
            }
            let left = border[level]
                .take()
                .ok_or_else(|| StoreError::Corrupt(format!("ledger node ({level}, {}) is missing", idx - 1)))?;
            hash = node_hash(&left, &hash);
            level += 1;
            idx /= 2;
        }
    }
    for chunk in entries.chunks(500) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("(${}, ${}, ${}, ${})", 4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4))
            .collect();
        let sql = format!("INSERT INTO ledger_entries (idx, leaf, subject, created_at) VALUES {}", values.join(", "));
        let mut q = sqlx::query(&sql);
        for (idx, leaf, subject) in chunk {
            q = q.bind(*idx).bind(leaf.clone()).bind(subject.clone()).bind(now);
        }
        q.execute(&mut *w.tx).await?;
    }
    for chunk in nodes.chunks(500) {
        let values: Vec<String> =
            (0..chunk.len()).map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3)).collect();
        let sql = format!("INSERT INTO ledger_nodes (level, idx, hash) VALUES {}", values.join(", "));
        let mut q = sqlx::query(&sql);
        for (level, idx, hash) in chunk {
            q = q.bind(*level).bind(*idx).bind(hash.to_vec());
        }
        q.execute(&mut *w.tx).await?;
    }
    sqlx::query("UPDATE ledger_head SET size = $1 WHERE id = 1")
        .bind((start + events.len() as u64) as i64)
        .execute(&mut *w.tx)
        .await?;
    Ok(())
}

fn to_hash(bytes: &[u8]) -> Result<Hash, StoreError> {
    Hash::try_from(bytes).map_err(|_| StoreError::Corrupt(format!("a ledger node is {} bytes, not 32", bytes.len())))
}

/// Records which nodes an algorithm reads (the coordinates do not depend on the hashes).
#[derive(Default)]
struct Recorder(RefCell<Vec<(u32, u64)>>);

impl NodeSource for Recorder {
    fn node(&self, level: u32, index: u64) -> Hash {
        self.0.borrow_mut().push((level, index));
        [0; 32]
    }
}

struct Fetched(HashMap<(u32, u64), Hash>);

impl NodeSource for Fetched {
    fn node(&self, level: u32, index: u64) -> Hash {
        self.0.get(&(level, index)).copied().unwrap_or([0; 32])
    }
}

impl Store {
    /// The number of ledger entries.
    pub async fn ledger_size(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT size FROM ledger_head WHERE id = 1").fetch_one(&self.pool).await?;
        Ok(col::<i64>(&row, "size")? as u64)
    }

    /// Entries `[from, from + limit)` as (index, leaf bytes).
    pub async fn ledger_entries(&self, from: u64, limit: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let rows = sqlx::query("SELECT idx, leaf FROM ledger_entries WHERE idx >= $1 ORDER BY idx LIMIT $2")
            .bind(from as i64)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((col::<i64>(r, "idx")? as u64, col::<Vec<u8>>(r, "leaf")?))).collect()
    }

    /// Entries about `subject` (`contribution:<id>`, `datanet:<name>`), oldest first.
    pub async fn ledger_entries_about(&self, subject: &str) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        // A datanet's entries from before its publication are filed under its commitment.
        let mut also = subject.to_string();
        if let Some(name) = subject.strip_prefix("datanet:") {
            if let Some(c) = self.datanet(name).await?.and_then(|d| d.name_commitment) {
                also = format!("datanet:{c}");
            }
        }
        let rows = sqlx::query(
            "SELECT idx, leaf FROM ledger_entries WHERE subject = $1 OR subject = $2 ORDER BY idx LIMIT 1000",
        )
        .bind(subject)
        .bind(&also)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((col::<i64>(r, "idx")? as u64, col::<Vec<u8>>(r, "leaf")?))).collect()
    }

    /// Perfect-subtree roots at `level`, indexes `[from, to)` (those that exist).
    pub async fn ledger_nodes(&self, level: u32, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        let rows =
            sqlx::query("SELECT hash FROM ledger_nodes WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx")
                .bind(level as i64)
                .bind(from as i64)
                .bind(to as i64)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| to_hash(&col::<Vec<u8>>(r, "hash")?)).collect()
    }

    /// Runs a proof algorithm twice: once to learn which nodes it reads, once on
    /// those nodes, fetched in one query.
    async fn with_nodes<T>(&self, algo: impl Fn(&dyn NodeSource) -> T) -> Result<T, StoreError> {
        let rec = Recorder::default();
        algo(&rec);
        let mut wanted = rec.0.into_inner();
        wanted.sort_unstable();
        wanted.dedup();
        let mut fetched = HashMap::new();
        for chunk in wanted.chunks(200) {
            let terms: Vec<String> =
                (0..chunk.len()).map(|i| format!("(level = ${} AND idx = ${})", 2 * i + 1, 2 * i + 2)).collect();
            let sql = format!("SELECT level, idx, hash FROM ledger_nodes WHERE {}", terms.join(" OR "));
            let mut q = sqlx::query(&sql);
            for (level, idx) in chunk {
                q = q.bind(*level as i64).bind(*idx as i64);
            }
            for r in q.fetch_all(&self.pool).await? {
                let key = (col::<i64>(&r, "level")? as u32, col::<i64>(&r, "idx")? as u64);
                fetched.insert(key, to_hash(&col::<Vec<u8>>(&r, "hash")?)?);
            }
        }
        if let Some((level, idx)) = wanted.iter().find(|k| !fetched.contains_key(k)) {
            return Err(StoreError::Corrupt(format!("ledger node ({level}, {idx}) is missing")));
        }
        Ok(algo(&Fetched(fetched)))
    }

    /// Appends events in one transaction (benchmarks and bulk imports).
    pub async fn ledger_append(&self, events: &[Event]) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        append(&mut w, self.backend, events, crate::now_ms()).await?;
        w.commit().await
    }

    fn check_size(size: u64, current: u64) -> Result<(), StoreError> {
        if size > current {
            return Err(StoreError::Invalid(format!("tree size {size} is larger than the ledger ({current} entries)")));
        }
        Ok(())
    }

    /// The root of the ledger's first `size` entries.
    pub async fn ledger_root(&self, size: u64) -> Result<Hash, StoreError> {
        Store::check_size(size, self.ledger_size().await?)?;
        if size == 0 {
            return Ok(merit_ledger::empty_root());
        }
        self.with_nodes(|src| proof::range_root(src, 0, size)).await
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub async fn ledger_inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        Store::check_size(size, self.ledger_size().await?)?;
        if index >= size {
            return Err(StoreError::Invalid(format!("index {index} is not below tree size {size}")));
        }
        self.with_nodes(|src| proof::inclusion_proof(src, index, size)).await
    }

    /// The consistency proof between the trees of `old` and `new` entries.
    pub async fn ledger_consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        Store::check_size(new, self.ledger_size().await?)?;
        if old > new {
            return Err(StoreError::Invalid(format!("old size {old} is larger than new size {new}")));
        }
        self.with_nodes(|src| proof::consistency_proof(src, old, new)).await
    }
}
