//! Merit's persistence: SQL state (SQLite by default, PostgreSQL for scale)
//! and content-addressed blobs.
//!
//! [`Store`] is the one handle: it owns a `sqlx` pool and a [`Blobs`]
//! directory. Each public method is one transaction, so a state change is all
//! there or not there at all. Daily limits are reserved with conditional
//! `UPDATE`s inside the same transaction that records the contribution, so
//! they hold under concurrent uploads on both databases.
//!
//! Architecture invariant: this crate and `merit-server` are the only ones
//! that touch SQL; the SQL here is the common subset of SQLite and PostgreSQL
//! (`$N` placeholders, `BIGINT` and `DOUBLE PRECISION` columns), with the one
//! dialect difference handled in [`migrate`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), merit_store::StoreError> {
//! let store = merit_store::Store::open_local(std::path::Path::new("./merit-data")).await?;
//! let (user, token) = store.create_user("ann", false).await?;
//! assert_eq!(store.user_by_token(&token).await?.map(|u| u.id), Some(user.id));
//! # Ok(()) }
//! ```

mod accounts;
mod blobs;
mod contributions;
mod datanets;
pub mod keys;
mod ledger;
mod migrate;
pub mod remote;
mod runs;
mod users;

use std::path::Path;
use std::sync::Arc;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

pub use accounts::{Available, Charge, Hold};
pub use blobs::{Blobs, Staged, Staging};
pub use contributions::{Contribution, ContributionFilter, NewRow, StoredRow, Submission, Version};
pub use datanets::{Datanet, DatanetPatch, DatanetStats, NewDatanet, Role};
pub use runs::Run;
pub use users::{TokenInfo, User, MAX_LIVE_TOKENS};

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The change conflicts with what is stored (a name taken, a state that forbids it).
    #[error("{0}")]
    Conflict(String),
    /// The request is not allowed in the current state (e.g. editing the policy after publishing).
    #[error("{0}")]
    Invalid(String),
    /// A daily limit would be exceeded.
    #[error("daily limit `{}` of {limit} reached; it resets at {}", name.as_str(), merit_core::quota::rfc3339(*reset_at_ms))]
    Limit { name: merit_core::quota::LimitName, limit: u64, reset_at_ms: i64 },
    /// A user has as many queued and running runs as they may.
    #[error("you have {limit} runs queued or running, the most one user may; wait for one to end or stop one")]
    RunLimit { limit: u64 },
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The blob directory failed.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data could not be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Which SQL database the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The store: SQL pool + blob directory.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    blobs: Blobs,
    /// SQLite allows one writer; writers in this process queue here instead of
    /// failing with SQLITE_BUSY. `None` on PostgreSQL.
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Store {
    /// Opens the embedded default: SQLite (WAL) at `DATA_DIR/merit.db` and blobs under `DATA_DIR/blobs`.
    pub async fn open_local(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let db = data_dir.join("merit.db");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        Store::open(&url, data_dir).await
    }

    /// Opens the database at `database_url` (`sqlite://…` or `postgres://…`)
    /// with blobs under `DATA_DIR/blobs`, and runs the migrations.
    pub async fn open(database_url: &str, data_dir: &Path) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
            Backend::Postgres
        } else if database_url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Invalid(format!(
                "database URL must start with sqlite:// or postgres://, got `{}`",
                database_url.split(':').next().unwrap_or("")
            )));
        };
        let options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        use sqlx::Executor;
                        // The busy timeout first: a connection the pool opens under load must
                        // wait for a lock, not fail with "database is locked" on the next pragma.
                        for pragma in [
                            "PRAGMA busy_timeout = 30000",
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA synchronous = NORMAL",
                        ] {
                            conn.execute(pragma).await?;
                        }
                    }
                    Ok(())
                })
            });
        let pool = options.connect(database_url).await?;
        let blobs = Blobs::open(&data_dir.join("blobs"))?;
        let store = Store {
            pool,
            backend,
            blobs,
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(()))),
        };
        migrate::run(&store).await?;
        Ok(store)
    }

    /// The database this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The blob directory.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Starts a write transaction (queued behind other writers on SQLite).
    async fn write(&self) -> Result<Writer<'_>, StoreError> {
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let tx = self.pool.begin().await?;
        Ok(Writer { tx, _guard: guard })
    }
}

/// A write transaction and, on SQLite, the in-process writer lock.
struct Writer<'a> {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _guard: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl Writer<'_> {
    async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Ends the transaction with nothing written, before the writer lock is
    /// let go (a dropped transaction rolls back only when its connection is
    /// next used, so the next writer would find the database still locked).
    async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// Reads a column, naming it when it is missing or of the wrong type.
fn col<'r, T>(row: &'r sqlx::any::AnyRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    use sqlx::Row;
    row.try_get(name).map_err(StoreError::Db)
}

/// Helpers for tests of this crate and of the crates above it.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// A new, empty PostgreSQL database on the server named by
    /// `MERIT_TEST_DATABASE_URL`, as a URL; `None` when the variable is unset.
    pub async fn fresh_database_url() -> Option<String> {
        let url = std::env::var("MERIT_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty())?;
        sqlx::any::install_default_drivers();
        let name = format!("merit_test_{:016x}", rand::random::<u64>());
        let admin =
            AnyPoolOptions::new().max_connections(1).connect(&url).await.expect("connect to MERIT_TEST_DATABASE_URL");
        sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create test database");
        admin.close().await;
        // Replace the database name: the path after the host part.
        let (head, _) = url.split_once('?').unwrap_or((&url, ""));
        let base = match head.rfind('/') {
            Some(i) if i > head.find("://").map_or(0, |j| j + 2) => &head[..i],
            _ => head,
        };
        Some(format!("{base}/{name}"))
    }

    /// A fresh, empty store under `data_dir`: on a new PostgreSQL database
    /// (see [`fresh_database_url`]) when `MERIT_TEST_DATABASE_URL` is set,
    /// else on SQLite in `data_dir`.
    pub async fn fresh_store(data_dir: &Path) -> Store {
        match fresh_database_url().await {
            Some(url) => Store::open(&url, data_dir).await.expect("open test store"),
            None => Store::open_local(data_dir).await.expect("open test store"),
        }
    }
}
