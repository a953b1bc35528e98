//! Contributions, their verdicts, the rows they add and the versions that follow.

use merit_core::quota::{reset_at_ms, utc_day, LimitName};
use merit_core::score::Outcome;
use merit_core::{verdict, Reason, Review, Status};
use merit_ledger::event::Event;
use serde::Serialize;

use crate::{col, now_ms, Backend, Datanet, Store, StoreError, User, Writer};

/// A row a contribution would add, as the gates produced it.
#[derive(Debug, Clone)]
pub struct NewRow {
    /// The row as compact JSON; its bytes are the row's Merkle leaf.
    pub content: String,
    /// SHA-256 (hex) of the normalised text, or of the file for media.
    pub text_hash: String,
    /// MinHash signature; empty for media.
    pub minhash: Vec<u32>,
    /// LSH band keys of `minhash`.
    pub band_keys: Vec<u64>,
    /// Validation score in [0, 1].
    pub score: f64,
}

/// A file submitted to a datanet, after the gates.
#[derive(Debug, Clone)]
pub struct Submission {
    pub filename: String,
    pub format: Option<merit_core::Format>,
    pub bytes: u64,
    pub sha256: String,
    pub rows: Vec<NewRow>,
    /// Why the gates refused the file; empty when it passed them.
    pub reasons: Vec<Reason>,
    /// Which gates judged it, such as `merit-gate/0.1.0` (recorded on the ledger).
    pub gate_version: String,
}

/// A contribution as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Contribution {
    pub id: i64,
    pub datanet: String,
    pub contributor: String,
    pub filename: String,
    pub format: Option<String>,
    pub bytes: i64,
    pub sha256: String,
    pub status: Status,
    pub reasons: Vec<Reason>,
    /// The credit it earns: the mean row score, near duplicates counting 0.
    pub score: f64,
    pub rows: i64,
    pub submitted_at: i64,
    pub decided_at: Option<i64>,
    pub reviewer: Option<String>,
    pub review_reason: Option<String>,
    /// The datanet version its acceptance created.
    pub version: Option<i64>,
}

/// A datanet row as stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRow {
    pub index: i64,
    pub contribution_id: i64,
    pub contributor: String,
    pub content: serde_json::Value,
    pub score: f64,
    pub near_duplicate: bool,
}

/// An immutable datanet version: the first `row_count` rows.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub number: i64,
    pub row_count: i64,
    pub byte_count: i64,
    /// RFC 9162 Merkle root over the rows' JSON, lowercase hex.
    pub root: String,
    pub contribution_id: i64,
    pub created_at: i64,
    #[serde(skip)]
    frontier: String,
}

const SELECT_CONTRIBUTION: &str = "SELECT c.id, d.name AS datanet, u.name AS contributor, c.filename, c.format, c.bytes, c.sha256, \
     c.status, c.reasons, c.score, c.row_count, c.submitted_at, c.decided_at, r.name AS reviewer, c.review_reason, c.version \
     FROM contributions c JOIN datanets d ON d.id = c.datanet_id JOIN users u ON u.id = c.contributor_id \
     LEFT JOIN users r ON r.id = c.reviewer_id";

fn contribution_from(row: &sqlx::any::AnyRow) -> Result<Contribution, StoreError> {
    let id: i64 = col(row, "id")?;
    let status: String = col(row, "status")?;
    Ok(Contribution {
        status: Status::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("contribution {id} has status `{status}`")))?,
        reasons: serde_json::from_str(&col::<String>(row, "reasons")?)
            .map_err(|e| StoreError::Corrupt(format!("reasons of contribution {id}: {e}")))?,
        datanet: col(row, "datanet")?,
        contributor: col(row, "contributor")?,
        filename: col(row, "filename")?,
        format: col(row, "format")?,
        bytes: col(row, "bytes")?,
        sha256: col(row, "sha256")?,
        score: col(row, "score")?,
        rows: col(row, "row_count")?,
        submitted_at: col(row, "submitted_at")?,
        decided_at: col(row, "decided_at")?,
        reviewer: col(row, "reviewer")?,
        review_reason: col(row, "review_reason")?,
        version: col(row, "version")?,
        id,
    })
}

fn version_from(row: &sqlx::any::AnyRow) -> Result<Version, StoreError> {
    Ok(Version {
        number: col(row, "number")?,
        row_count: col(row, "row_count")?,
        byte_count: col(row, "byte_count")?,
        root: col(row, "root")?,
        contribution_id: col(row, "contribution_id")?,
        created_at: col(row, "created_at")?,
        frontier: col(row, "frontier")?,
    })
}

fn minhash_bytes(sig: &[u32]) -> Vec<u8> {
    sig.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn minhash_from(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn similarity(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// Which contributions a listing returns.
#[derive(Debug, Clone, Default)]
pub struct ContributionFilter {
    pub status: Option<Status>,
    /// Only this contributor's.
    pub contributor_id: Option<i64>,
    /// Only accepted ones, plus every one of this user (a contributor's own view).
    pub accepted_or_own: Option<i64>,
}

impl Store {
    /// Records a submission: reserves the daily limits, checks duplicates
    /// against the datanet's rows, decides the verdict and, when accepted,
    /// appends the rows as a new version — all in one transaction. The file
    /// itself is kept (as a blob) when accepted or pending.
    pub async fn submit(
        &self,
        d: &Datanet,
        who: &User,
        sub: Submission,
        file: crate::Staged,
    ) -> Result<Contribution, StoreError> {
        let mut w = self.write().await?;
        let now = now_ms();
        let day = utc_day(now);
        let limits = &d.policy.limits;
        let bytes = sub.bytes as i64;
        reserve(
            &mut w,
            &format!("u:{}", who.id),
            day,
            bytes,
            limits.user_bytes_per_day,
            limits.user_files_per_day,
            true,
        )
        .await?;
        reserve(&mut w, &format!("d:{}", d.id), day, bytes, limits.datanet_bytes_per_day, 0, false).await?;

        self.lock_datanet(&mut w, d).await?;
        let Judgement { status, reasons, flags: dup_flags, credit } = judge(&mut w, d, &sub.rows, sub.reasons).await?;
        let row = sqlx::query(
            "INSERT INTO contributions (datanet_id, contributor_id, filename, format, bytes, sha256, status, reasons, score, row_count, submitted_at, decided_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
        )
        .bind(d.id)
        .bind(who.id)
        .bind(&sub.filename)
        .bind(sub.format.map(|f| f.as_str().to_string()))
        .bind(bytes)
        .bind(&sub.sha256)
        .bind(status.as_str())
        .bind(serde_json::to_string(&reasons).unwrap_or_else(|_| "[]".into()))
        .bind(credit)
        .bind(sub.rows.len() as i64)
        .bind(now)
        .bind((status != Status::Pending).then_some(now))
        .fetch_one(&mut *w.tx)
        .await?;
        let id: i64 = col(&row, "id")?;
        let mut events = vec![Event::ContributionSubmitted {
            contribution_id: id,
            datanet: d.ledger_name(),
            contributor: who.name.clone(),
            sha256: sub.sha256.clone(),
            bytes,
            at: now,
        }];
        events.push(verdict_event(d, id, &who.name, status, &reasons, &sub.gate_version, credit, None, now));
        if status == Status::Accepted {
            events.push(append_rows(&mut w, d, id, &sub.rows, &dup_flags, bytes, now).await?);
        }
        crate::ledger::append(&mut w, self.backend, &events, now).await?;
        if status != Status::Rejected {
            self.blobs.keep(file)?;
        }
        w.commit().await?;
        self.contribution(id).await?.ok_or_else(|| StoreError::NotFound(format!("contribution {id}")))
    }

    /// The verdict a submission would get, without storing or counting
    /// anything (dry runs): status, reasons and credit.
    pub async fn dry_run(&self, d: &Datanet, sub: Submission) -> Result<(Status, Vec<Reason>, f64), StoreError> {
        let tx = self.pool.begin().await?;
        let mut w = Writer { tx, _guard: None };
        let j = judge(&mut w, d, &sub.rows, sub.reasons).await?;
        w.tx.rollback().await?;
        Ok((j.status, j.reasons, j.credit))
    }

    /// Approves a pending contribution, whose rows the gates produced again
    /// from the kept file. Duplicates that appeared since it was submitted
    /// turn the approval into a rejection with those reasons.
    ///
    /// `regated` is the kept file run through the gates again today (a policy
    /// may have changed before publishing); any reason makes the approval a
    /// rejection.
    pub async fn approve(
        &self,
        d: &Datanet,
        id: i64,
        reviewer: &User,
        regated: Submission,
    ) -> Result<Contribution, StoreError> {
        let rows = &regated.rows;
        let mut w = self.write().await?;
        self.lock_datanet(&mut w, d).await?;
        let c = pending_in(&mut w, d, id).await?;
        let now = now_ms();
        let Judgement { status, reasons, flags, credit } = judge(&mut w, d, rows, regated.reasons).await?;
        // The review is this decision: what passes is accepted.
        let status = if status == Status::Pending { Status::Accepted } else { status };
        sqlx::query(
            "UPDATE contributions SET status = $1, reasons = $2, score = $3, decided_at = $4, reviewer_id = $5, row_count = $6 \
             WHERE id = $7 AND status = 'pending'",
        )
        .bind(status.as_str())
        .bind(serde_json::to_string(&reasons).unwrap_or_else(|_| "[]".into()))
        .bind(credit)
        .bind(now)
        .bind(reviewer.id)
        .bind(rows.len() as i64)
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
        let mut events = vec![verdict_event(
            d,
            id,
            &c.contributor,
            status,
            &reasons,
            &regated.gate_version,
            credit,
            Some(&reviewer.name),
            now,
        )];
        if status == Status::Accepted {
            events.push(append_rows(&mut w, d, id, rows, &flags, c.bytes, now).await?);
        }
        crate::ledger::append(&mut w, self.backend, &events, now).await?;
        w.commit().await?;
        self.contribution(id).await?.ok_or_else(|| StoreError::NotFound(format!("contribution {id}")))
    }

    /// Rejects a pending contribution with the reviewer's reason.
    pub async fn reject(
        &self,
        d: &Datanet,
        id: i64,
        reviewer: &User,
        reason: &str,
    ) -> Result<Contribution, StoreError> {
        let mut w = self.write().await?;
        let c = pending_in(&mut w, d, id).await?;
        let now = now_ms();
        let reasons = vec![Reason::new("review", "decision", "rejected", serde_json::Value::Null, reason)];
        sqlx::query(
            "UPDATE contributions SET status = 'rejected', reasons = $1, score = 0, decided_at = $2, reviewer_id = $3, review_reason = $4 \
             WHERE id = $5 AND status = 'pending'",
        )
        .bind(serde_json::to_string(&reasons).unwrap_or_else(|_| "[]".into()))
                .bind(now)
        .bind(reviewer.id)
        .bind(reason)
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
        let event =
            verdict_event(d, id, &c.contributor, Status::Rejected, &reasons, "review", 0.0, Some(&reviewer.name), now);
        crate::ledger::append(&mut w, self.backend, &[event], now).await?;
        w.commit().await?;
        self.contribution(id).await?.ok_or_else(|| StoreError::NotFound(format!("contribution {id}")))
    }

    /// A contribution by id.
    pub async fn contribution(&self, id: i64) -> Result<Option<Contribution>, StoreError> {
        let row =
            sqlx::query(&format!("{SELECT_CONTRIBUTION} WHERE c.id = $1")).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(contribution_from).transpose()
    }

    /// Contributions to `d`, newest first.
    pub async fn contributions(
        &self,
        d: &Datanet,
        filter: &ContributionFilter,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Contribution>, StoreError> {
        let mut sql = format!("{SELECT_CONTRIBUTION} WHERE c.datanet_id = $1");
        if filter.status.is_some() {
            sql.push_str(" AND c.status = $2");
        } else {
            sql.push_str(" AND $2 = $2");
        }
        if filter.contributor_id.is_some() {
            sql.push_str(" AND c.contributor_id = $3");
        } else {
            sql.push_str(" AND $3 = $3");
        }
        if filter.accepted_or_own.is_some() {
            sql.push_str(" AND (c.status = 'accepted' OR c.contributor_id = $4)");
        } else {
            sql.push_str(" AND $4 = $4");
        }
        sql.push_str(" ORDER BY c.id DESC LIMIT $5 OFFSET $6");
        let rows = sqlx::query(&sql)
            .bind(d.id)
            .bind(filter.status.map_or("", |s| s.as_str()))
            .bind(filter.contributor_id.unwrap_or(0))
            .bind(filter.accepted_or_own.unwrap_or(0))
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(contribution_from).collect()
    }

    /// Every version of `d`, oldest first.
    pub async fn versions(&self, d: &Datanet) -> Result<Vec<Version>, StoreError> {
        let rows = sqlx::query("SELECT * FROM versions WHERE datanet_id = $1 ORDER BY number")
            .bind(d.id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(version_from).collect()
    }

    /// Version `number` of `d`.
    pub async fn version(&self, d: &Datanet, number: i64) -> Result<Option<Version>, StoreError> {
        let row = sqlx::query("SELECT * FROM versions WHERE datanet_id = $1 AND number = $2")
            .bind(d.id)
            .bind(number)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(version_from).transpose()
    }

    /// The newest version of `d`, if any row was ever accepted.
    pub async fn latest_version(&self, d: &Datanet) -> Result<Option<Version>, StoreError> {
        let row = sqlx::query("SELECT * FROM versions WHERE datanet_id = $1 ORDER BY number DESC LIMIT 1")
            .bind(d.id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(version_from).transpose()
    }

    /// Rows `[offset, offset + limit)` of version `v` (all rows of a version
    /// are the first `row_count` rows of the datanet). `search`, when given,
    /// keeps rows whose JSON contains it (case-insensitive).
    pub async fn rows(
        &self,
        d: &Datanet,
        v: &Version,
        offset: i64,
        limit: i64,
        search: Option<&str>,
    ) -> Result<Vec<StoredRow>, StoreError> {
        let pattern = search
            .map(|s| format!("%{}%", s.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
        let rows = sqlx::query(
            "SELECT r.idx, r.contribution_id, u.name AS contributor, r.content, r.score, r.near_duplicate \
             FROM rows r JOIN contributions c ON c.id = r.contribution_id JOIN users u ON u.id = c.contributor_id \
             WHERE r.datanet_id = $1 AND r.idx < $2 AND ($3 = '' OR LOWER(r.content) LIKE $3 ESCAPE '\\') \
             ORDER BY r.idx LIMIT $4 OFFSET $5",
        )
        .bind(d.id)
        .bind(v.row_count)
        .bind(pattern.unwrap_or_default())
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let index: i64 = col(r, "idx")?;
                Ok(StoredRow {
                    content: serde_json::from_str(&col::<String>(r, "content")?)
                        .map_err(|e| StoreError::Corrupt(format!("row {index}: {e}")))?,
                    contribution_id: col(r, "contribution_id")?,
                    contributor: col(r, "contributor")?,
                    score: col(r, "score")?,
                    near_duplicate: col::<i64>(r, "near_duplicate")? != 0,
                    index,
                })
            })
            .collect()
    }

    /// What the leaderboard needs: every contribution to `d` (or to every datanet).
    pub async fn outcomes(&self, d: Option<&Datanet>) -> Result<Vec<Outcome>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.name AS contributor, c.status, c.score, c.submitted_at, c.decided_at FROM contributions c \
             JOIN users u ON u.id = c.contributor_id WHERE ($1 = 0 OR c.datanet_id = $1)",
        )
        .bind(d.map_or(0, |d| d.id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let status: String = col(r, "status")?;
                let status = Status::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("status `{status}`")))?;
                Ok(Outcome {
                    contributor: col(r, "contributor")?,
                    credit: col(r, "score")?,
                    submitted_at: col(r, "submitted_at")?,
                    accepted_at: if status == Status::Accepted { col(r, "decided_at")? } else { None },
                    status,
                })
            })
            .collect()
    }

    /// Today's use of the daily limits: (user bytes, user files, datanet bytes).
    pub async fn usage_today(&self, d: &Datanet, who: &User) -> Result<(u64, u64, u64), StoreError> {
        let day = utc_day(now_ms());
        let read = |scope: String| {
            let pool = self.pool.clone();
            async move {
                let row = sqlx::query("SELECT bytes, files FROM usage WHERE scope = $1 AND day = $2")
                    .bind(scope)
                    .bind(day)
                    .fetch_optional(&pool)
                    .await?;
                match row {
                    Some(r) => Ok::<_, StoreError>((col::<i64>(&r, "bytes")? as u64, col::<i64>(&r, "files")? as u64)),
                    None => Ok((0, 0)),
                }
            }
        };
        let (ub, uf) = read(format!("u:{}", who.id)).await?;
        let (db, _) = read(format!("d:{}", d.id)).await?;
        Ok((ub, uf, db))
    }

    /// Serialises acceptance per datanet (duplicates and versions are decided
    /// one contribution at a time). SQLite already has one writer.
    async fn lock_datanet(&self, w: &mut Writer<'_>, d: &Datanet) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(d.id).execute(&mut *w.tx).await?;
        }
        Ok(())
    }
}

/// What a submission becomes: its verdict, the reasons, which rows are
/// duplicates that earn nothing, and its credit.
struct Judgement {
    status: Status,
    reasons: Vec<Reason>,
    flags: Vec<bool>,
    credit: f64,
}

/// Decides a submission that passed the gates (or not): duplicates against
/// the datanet's rows, then the review mode. Rejections earn no credit.
async fn judge(
    w: &mut Writer<'_>,
    d: &Datanet,
    rows: &[NewRow],
    gate_reasons: Vec<Reason>,
) -> Result<Judgement, StoreError> {
    let mut flags = vec![false; rows.len()];
    let mut reasons = gate_reasons;
    if reasons.is_empty() {
        reasons = find_duplicates(w, d, rows, &mut flags).await?;
    }
    let status = if !reasons.is_empty() {
        Status::Rejected
    } else if d.policy.review == Review::Owner {
        Status::Pending
    } else {
        Status::Accepted
    };
    let credit = if status == Status::Rejected { 0.0 } else { credit_of(rows, &flags) };
    Ok(Judgement { status, reasons, flags, credit })
}

/// A contribution's credit, rounded to millionths as the ledger records it,
/// so that the leaderboard recomputed from the ledger matches this one.
fn credit_of(rows: &[NewRow], dup_flags: &[bool]) -> f64 {
    let pairs: Vec<(f64, bool)> = rows.iter().zip(dup_flags).map(|(r, &dup)| (r.score, dup)).collect();
    (merit_core::score::credit(&pairs) * 1e6).round() / 1e6
}

/// Adds `bytes` (and one file, if `count_file`) to a daily counter, unless a
/// limit would be crossed. One conditional UPDATE, so concurrent uploads
/// cannot both take the last unit.
async fn reserve(
    w: &mut Writer<'_>,
    scope: &str,
    day: i64,
    bytes: i64,
    byte_limit: u64,
    file_limit: u64,
    count_file: bool,
) -> Result<(), StoreError> {
    let files = i64::from(count_file);
    sqlx::query(
        "INSERT INTO usage (scope, day, bytes, files) VALUES ($1, $2, 0, 0) ON CONFLICT (scope, day) DO NOTHING",
    )
    .bind(scope)
    .bind(day)
    .execute(&mut *w.tx)
    .await?;
    let done = sqlx::query(
        "UPDATE usage SET bytes = bytes + $3, files = files + $4 \
         WHERE scope = $1 AND day = $2 AND ($5 = 0 OR bytes + $3 <= $5) AND ($6 = 0 OR files + $4 <= $6)",
    )
    .bind(scope)
    .bind(day)
    .bind(bytes)
    .bind(files)
    .bind(byte_limit as i64)
    .bind(file_limit as i64)
    .execute(&mut *w.tx)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let row = sqlx::query("SELECT files FROM usage WHERE scope = $1 AND day = $2")
        .bind(scope)
        .bind(day)
        .fetch_one(&mut *w.tx)
        .await?;
    let used_files = col::<i64>(&row, "files")? as u64;
    let (name, limit) = if count_file && file_limit != 0 && used_files + 1 > file_limit {
        (LimitName::UserFilesPerDay, file_limit)
    } else if scope.starts_with("u:") {
        (LimitName::UserBytesPerDay, byte_limit)
    } else {
        (LimitName::DatanetBytesPerDay, byte_limit)
    };
    Err(StoreError::Limit { name, limit, reset_at_ms: reset_at_ms(day) })
}

async fn pending_in(w: &mut Writer<'_>, d: &Datanet, id: i64) -> Result<Contribution, StoreError> {
    let row = sqlx::query(&format!("{SELECT_CONTRIBUTION} WHERE c.id = $1 AND c.datanet_id = $2"))
        .bind(id)
        .bind(d.id)
        .fetch_optional(&mut *w.tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("contribution {id} in datanet `{}`", d.name)))?;
    let c = contribution_from(&row)?;
    if c.status != Status::Pending {
        return Err(StoreError::Conflict(format!("contribution {id} is {}, not pending", c.status.as_str())));
    }
    Ok(c)
}

/// Reasons for rows that duplicate rows already in the datanet. Sets
/// `flags[i]` for rows that are near duplicates when the gate that would
/// refuse them is off: they are accepted but earn nothing.
async fn find_duplicates(
    w: &mut Writer<'_>,
    d: &Datanet,
    rows: &[NewRow],
    flags: &mut [bool],
) -> Result<Vec<Reason>, StoreError> {
    let gates = &d.policy.gates;
    let mut reasons = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let exact = sqlx::query("SELECT idx FROM rows WHERE datanet_id = $1 AND text_hash = $2 LIMIT 1")
            .bind(d.id)
            .bind(&row.text_hash)
            .fetch_optional(&mut *w.tx)
            .await?;
        if let Some(hit) = exact {
            let idx: i64 = col(&hit, "idx")?;
            if gates.exact_duplicates {
                reasons.push(verdict::exact_duplicate(i as u64, idx as u64, &format!("datanet `{}`", d.name)));
            } else {
                flags[i] = true;
            }
            continue;
        }
        if row.minhash.is_empty() || row.band_keys.is_empty() {
            continue;
        }
        let placeholders: Vec<String> = (0..row.band_keys.len()).map(|k| format!("${}", k + 2)).collect();
        let sql = format!(
            "SELECT DISTINCT r.idx, r.minhash FROM row_bands b JOIN rows r ON r.datanet_id = b.datanet_id AND r.idx = b.idx \
             WHERE b.datanet_id = $1 AND b.band_key IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(d.id);
        for key in &row.band_keys {
            q = q.bind(*key as i64);
        }
        let mut best: Option<(i64, f64)> = None;
        for cand in q.fetch_all(&mut *w.tx).await? {
            let sim = similarity(&row.minhash, &minhash_from(&col::<Vec<u8>>(&cand, "minhash")?));
            if best.is_none_or(|(_, s)| sim > s) {
                best = Some((col(&cand, "idx")?, sim));
            }
        }
        if let Some((idx, sim)) = best.filter(|&(_, s)| s >= gates.near_duplicate_threshold) {
            if gates.near_duplicates {
                reasons.push(verdict::near_duplicate(
                    i as u64,
                    idx as u64,
                    &format!("datanet `{}`", d.name),
                    sim,
                    gates.near_duplicate_threshold,
                ));
            } else {
                flags[i] = true;
            }
        }
        if reasons.len() >= 50 {
            break;
        }
    }
    Ok(reasons)
}

/// Appends accepted rows and records the version they make.
async fn append_rows(
    w: &mut Writer<'_>,
    d: &Datanet,
    contribution_id: i64,
    rows: &[NewRow],
    flags: &[bool],
    bytes: i64,
    now: i64,
) -> Result<Event, StoreError> {
    let latest = sqlx::query("SELECT * FROM versions WHERE datanet_id = $1 ORDER BY number DESC LIMIT 1")
        .bind(d.id)
        .fetch_optional(&mut *w.tx)
        .await?;
    let latest = latest.as_ref().map(version_from).transpose()?;
    let (number, row_count, byte_count, mut frontier) = match &latest {
        None => (0, 0, 0, merit_ledger::Frontier::default()),
        Some(v) => (v.number, v.row_count, v.byte_count, parse_frontier(v)?),
    };
    for (i, row) in rows.iter().enumerate() {
        let idx = row_count + i as i64;
        sqlx::query(
            "INSERT INTO rows (datanet_id, idx, contribution_id, content, text_hash, minhash, score, near_duplicate) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(d.id)
        .bind(idx)
        .bind(contribution_id)
        .bind(&row.content)
        .bind(&row.text_hash)
        .bind(minhash_bytes(&row.minhash))
        .bind(row.score)
        .bind(i64::from(flags[i]))
        .execute(&mut *w.tx)
        .await?;
        for key in &row.band_keys {
            sqlx::query("INSERT INTO row_bands (datanet_id, band_key, idx) VALUES ($1, $2, $3)")
                .bind(d.id)
                .bind(*key as i64)
                .bind(idx)
                .execute(&mut *w.tx)
                .await?;
        }
        frontier.push(merit_ledger::leaf_hash(row.content.as_bytes()));
    }
    let frontier_text: Vec<String> = frontier.hashes().iter().map(hex::encode).collect();
    sqlx::query(
        "INSERT INTO versions (datanet_id, number, row_count, byte_count, root, frontier, contribution_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(d.id)
    .bind(number + 1)
    .bind(row_count + rows.len() as i64)
    .bind(byte_count + bytes)
    .bind(hex::encode(frontier.root()))
    .bind(frontier_text.join(","))
    .bind(contribution_id)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    sqlx::query("UPDATE contributions SET version = $1 WHERE id = $2")
        .bind(number + 1)
        .bind(contribution_id)
        .execute(&mut *w.tx)
        .await?;
    Ok(Event::DatanetVersion {
        datanet: d.ledger_name(),
        version: number + 1,
        row_count: row_count + rows.len() as i64,
        byte_count: byte_count + bytes,
        rows_root: hex::encode(frontier.root()),
        contribution_id,
        at: now,
    })
}

#[allow(clippy::too_many_arguments)]
fn verdict_event(
    d: &Datanet,
    id: i64,
    contributor: &str,
    status: Status,
    reasons: &[Reason],
    gate_version: &str,
    credit: f64,
    reviewer: Option<&str>,
    now: i64,
) -> Event {
    Event::ContributionVerdict {
        contribution_id: id,
        datanet: d.ledger_name(),
        contributor: contributor.to_string(),
        status: status.as_str().to_string(),
        reasons_digest: verdict::reasons_digest(reasons),
        policy_hash: d.policy_hash.clone(),
        gate_version: gate_version.to_string(),
        credit_micros: (credit * 1e6).round() as i64,
        reviewer: reviewer.map(str::to_string),
        at: now,
    }
}

fn parse_frontier(v: &Version) -> Result<merit_ledger::Frontier, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt(format!("frontier of version {}: {why}", v.number));
    let hashes = v
        .frontier
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|h| {
            let bytes = hex::decode(h).map_err(|e| corrupt(e.to_string()))?;
            <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| corrupt("hash is not 32 bytes".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    merit_ledger::Frontier::from_parts(v.row_count as u64, hashes).map_err(|e| corrupt(e.to_string()))
}
