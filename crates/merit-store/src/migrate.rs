//! Schema migrations, run on every start for both databases.
//!
//! Migrations are written once in the common SQL subset; the only dialect
//! difference, auto-increment keys and binary columns, is rewritten for
//! PostgreSQL here.

use crate::{Backend, Store, StoreError};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_datanets.sql")),
    (2, include_str!("migrations/0002_ledger.sql")),
    (3, include_str!("migrations/0003_runs.sql")),
    (4, include_str!("migrations/0004_sessions.sql")),
    (5, include_str!("migrations/0005_publish.sql")),
    (6, include_str!("migrations/0006_rewards.sql")),
    (7, include_str!("migrations/0007_credit.sql")),
    (8, include_str!("migrations/0008_tokens.sql")),
    (9, include_str!("migrations/0009_name_commitments.sql")),
];

fn dialect(sql: &str, backend: Backend) -> String {
    match backend {
        Backend::Sqlite => sql.to_string(),
        Backend::Postgres => {
            sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY").replace(" BLOB", " BYTEA")
        }
    }
}

pub(crate) async fn run(store: &Store) -> Result<(), StoreError> {
    let mut w = store.write().await?;
    if store.backend == Backend::Postgres {
        // Two servers starting at once must not both migrate.
        sqlx::query("SELECT pg_advisory_xact_lock(7426017)").execute(&mut *w.tx).await?;
    }
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *w.tx)
    .await?;
    let done: Vec<i64> = {
        let rows = sqlx::query("SELECT version FROM schema_migrations").fetch_all(&mut *w.tx).await?;
        rows.iter().map(|r| crate::col::<i64>(r, "version")).collect::<Result<_, _>>()?
    };
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tracing::info!(version, "applying migration");
        sqlx::raw_sql(&dialect(sql, store.backend)).execute(&mut *w.tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(*version)
            .bind(crate::now_ms())
            .execute(&mut *w.tx)
            .await?;
    }
    w.commit().await
}
