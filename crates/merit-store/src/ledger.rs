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
pub(crate) async fn append(w: &mut Writer<'_>, backend: Backend, events: &[Event], now: i64) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        // One appender at a time; always the last lock a transaction takes.
        sqlx::query("SELECT pg_advisory_xact_lock(7426018)").execute(&mut *w.tx).await?;
    }
    let row = sqlx::query("SELECT size FROM ledger_head WHERE id = 1").fetch_one(&mut *w.tx).await?;
    let mut size: i64 = col(&row, "size")?;
    for event in events {
        let leaf = event.to_leaf();
        let mut hash = leaf_hash(&leaf);
        sqlx::query("INSERT INTO ledger_entries (idx, leaf, subject, created_at) VALUES ($1, $2, $3, $4)")
            .bind(size)
            .bind(leaf)
            .bind(event.subject())
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        let (mut level, mut idx) = (0i64, size);
        loop {
            sqlx::query("INSERT INTO ledger_nodes (level, idx, hash) VALUES ($1, $2, $3)")
                .bind(level)
                .bind(idx)
                .bind(hash.to_vec())
                .execute(&mut *w.tx)
                .await?;
            if idx % 2 == 0 {
                break;
            }
            let left = sqlx::query("SELECT hash FROM ledger_nodes WHERE level = $1 AND idx = $2")
                .bind(level)
                .bind(idx - 1)
                .fetch_one(&mut *w.tx)
                .await?;
            hash = node_hash(&to_hash(&col::<Vec<u8>>(&left, "hash")?)?, &hash);
            level += 1;
            idx /= 2;
        }
        size += 1;
    }
    sqlx::query("UPDATE ledger_head SET size = $1 WHERE id = 1").bind(size).execute(&mut *w.tx).await?;
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
        let rows = sqlx::query("SELECT idx, leaf FROM ledger_entries WHERE subject = $1 ORDER BY idx LIMIT 1000")
            .bind(subject)
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

    /// Runs a proof algorithm twice: once to learn which nodes it reads, once on those nodes.
    async fn with_nodes<T>(&self, algo: impl Fn(&dyn NodeSource) -> T) -> Result<T, StoreError> {
        let rec = Recorder::default();
        algo(&rec);
        let mut fetched = HashMap::new();
        for (level, idx) in rec.0.into_inner() {
            if fetched.contains_key(&(level, idx)) {
                continue;
            }
            let row = sqlx::query("SELECT hash FROM ledger_nodes WHERE level = $1 AND idx = $2")
                .bind(level as i64)
                .bind(idx as i64)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("ledger node ({level}, {idx}) is missing")))?;
            fetched.insert((level, idx), to_hash(&col::<Vec<u8>>(&row, "hash")?)?);
        }
        Ok(algo(&Fetched(fetched)))
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
