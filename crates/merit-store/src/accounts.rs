//! Balances: what each user has earned from served answers and spent on
//! them, changed only together with the ledger leaves that record why.

use std::collections::BTreeMap;

use merit_ledger::event::{Credit, Event, Payout, Totals};

use crate::{col, now_ms, Store, StoreError};

/// A charged request, as recorded.
#[derive(Debug, Clone)]
pub struct Charge {
    pub request_id: String,
    pub model: String,
    pub payer: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub credits: Vec<Credit>,
    pub price_in_micros: i64,
    pub price_out_micros: i64,
    pub fee_micros: i64,
    pub payouts: Vec<Payout>,
}

/// How long a hold counts: a request that never settled (its server died)
/// stops holding its payer's credit after this.
const HOLD_MS: i64 = 60 * 60 * 1000;

/// Credit held for a request that is running; [`Store::charge`] or
/// [`Store::release`] ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub id: i64,
    pub micros: i64,
}

/// What a payer may still spend: balance + allowance − live holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Available {
    pub balance_micros: i64,
    pub allowance_micros: i64,
    pub held_micros: i64,
}

impl Available {
    pub fn micros(&self) -> i64 {
        self.balance_micros.saturating_add(self.allowance_micros).saturating_sub(self.held_micros)
    }
}

impl Store {
    /// What `user_id` may spend now, read inside the write transaction `w`.
    async fn available_in(&self, w: &mut crate::Writer<'_>, user_id: i64, now: i64) -> Result<Available, StoreError> {
        let row = sqlx::query(
            "SELECT u.credit_allowance_micros, a.balance_micros, \
             (SELECT CAST(COALESCE(SUM(h.micros), 0) AS BIGINT) FROM credit_holds h WHERE h.user_id = u.id AND h.created_at > $2) AS held \
             FROM users u LEFT JOIN accounts a ON a.user_id = u.id WHERE u.id = $1",
        )
        .bind(user_id)
        .bind(now - HOLD_MS)
        .fetch_one(&mut *w.tx)
        .await?;
        Ok(Available {
            balance_micros: col::<Option<i64>>(&row, "balance_micros")?.unwrap_or(0),
            allowance_micros: col(&row, "credit_allowance_micros")?,
            held_micros: col::<i64>(&row, "held")?,
        })
    }

    /// Holds `micros` of `payer`'s credit for a priced request about to run
    /// (the most it can cost): `Ok(Err(available))` when they cannot cover
    /// it. Holds and charges are serialized per payer, so concurrent calls
    /// never spend more than balance + allowance together.
    pub async fn hold(&self, payer: &str, micros: i64) -> Result<Result<Hold, Available>, StoreError> {
        if micros < 0 {
            return Err(StoreError::Invalid("a hold is negative".into()));
        }
        let now = now_ms();
        let mut w = self.write().await?;
        let id = self.lock_account(&mut w, payer).await?;
        let available = self.available_in(&mut w, id, now).await?;
        if available.micros() < micros {
            w.rollback().await?;
            return Ok(Err(available));
        }
        let row =
            sqlx::query("INSERT INTO credit_holds (user_id, micros, created_at) VALUES ($1, $2, $3) RETURNING id")
                .bind(id)
                .bind(micros)
                .bind(now)
                .fetch_one(&mut *w.tx)
                .await?;
        let hold = Hold { id: col(&row, "id")?, micros };
        w.commit().await?;
        Ok(Ok(hold))
    }

    /// Ends `hold` without a charge (the request failed or was refused).
    pub async fn release(&self, hold: &Hold) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        sqlx::query("DELETE FROM credit_holds WHERE id = $1").bind(hold.id).execute(&mut *w.tx).await?;
        w.commit().await
    }

    /// The payer's user id, with their account row made and locked (on
    /// PostgreSQL; SQLite serializes writers) for the rest of `w`.
    async fn lock_account(&self, w: &mut crate::Writer<'_>, name: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT id FROM users WHERE name = $1").bind(name).fetch_optional(&mut *w.tx).await?;
        let id: i64 = col(&row.ok_or_else(|| StoreError::NotFound(format!("user `{name}`")))?, "id")?;
        sqlx::query("INSERT INTO accounts (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        let lock = if self.backend == crate::Backend::Postgres { " FOR UPDATE" } else { "" };
        sqlx::query(&format!("SELECT user_id FROM accounts WHERE user_id = $1{lock}"))
            .bind(id)
            .fetch_one(&mut *w.tx)
            .await?;
        Ok(id)
    }

    /// Sets how far below zero `name`'s balance may go (micro-credits, ≥ 0).
    pub async fn set_allowance(&self, name: &str, micros: i64) -> Result<(), StoreError> {
        if micros < 0 {
            return Err(StoreError::Invalid("an allowance cannot be negative".into()));
        }
        let mut w = self.write().await?;
        let done = sqlx::query("UPDATE users SET credit_allowance_micros = $1 WHERE name = $2")
            .bind(micros)
            .bind(name)
            .execute(&mut *w.tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user `{name}`")));
        }
        w.commit().await
    }

    /// What `name` may spend now; None when there is no such user.
    pub async fn available(&self, name: &str) -> Result<Option<Available>, StoreError> {
        let now = now_ms();
        let mut w = self.write().await?;
        let row = sqlx::query("SELECT id FROM users WHERE name = $1").bind(name).fetch_optional(&mut *w.tx).await?;
        let Some(row) = row else {
            w.rollback().await?;
            return Ok(None);
        };
        let a = self.available_in(&mut w, col(&row, "id")?, now).await?;
        w.commit().await?;
        Ok(Some(a))
    }

    /// Records `c`: an `attribution.recorded` and a `reward.paid` leaf and
    /// the balance changes they describe, in one transaction (all or none),
    /// ending `hold` (which must cover the fee). Without a hold the payer's
    /// balance + allowance must cover it; else `Invalid` and nothing changes.
    pub async fn charge(&self, c: &Charge, hold: Option<&Hold>) -> Result<(), StoreError> {
        if c.fee_micros < 0 || c.payouts.iter().any(|p| p.micros < 0) {
            return Err(StoreError::Invalid("a fee or payout is negative".into()));
        }
        let paid: i64 = c.payouts.iter().map(|p| p.micros).sum();
        if paid != c.fee_micros {
            return Err(StoreError::Invalid(format!("payouts add up to {paid}, the fee is {}", c.fee_micros)));
        }
        let now = now_ms();
        let mut w = self.write().await?;
        let payer = self.lock_account(&mut w, &c.payer).await?;
        match hold {
            Some(h) => {
                if h.micros < c.fee_micros {
                    w.rollback().await?;
                    return Err(StoreError::Invalid(format!("the fee {} is over its hold {}", c.fee_micros, h.micros)));
                }
                sqlx::query("DELETE FROM credit_holds WHERE id = $1").bind(h.id).execute(&mut *w.tx).await?;
            }
            None => {
                let available = self.available_in(&mut w, payer, now).await?;
                if available.micros() < c.fee_micros {
                    w.rollback().await?;
                    return Err(StoreError::Invalid(format!(
                        "`{}` can spend {} micro-credits, the fee is {}",
                        c.payer,
                        available.micros(),
                        c.fee_micros
                    )));
                }
            }
        }
        let changes = std::iter::once((c.payer.as_str(), -c.fee_micros, 0, c.fee_micros))
            .chain(c.payouts.iter().map(|p| (p.account.as_str(), p.micros, p.micros, 0)));
        for (name, balance, earned, spent) in changes {
            let row = sqlx::query("SELECT id FROM users WHERE name = $1").bind(name).fetch_optional(&mut *w.tx).await?;
            let row = row.ok_or_else(|| StoreError::NotFound(format!("user `{name}`")))?;
            let id: i64 = col(&row, "id")?;
            sqlx::query(
                "INSERT INTO accounts (user_id, balance_micros, earned_micros, spent_micros) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id) DO UPDATE SET balance_micros = accounts.balance_micros + excluded.balance_micros, \
                 earned_micros = accounts.earned_micros + excluded.earned_micros, \
                 spent_micros = accounts.spent_micros + excluded.spent_micros",
            )
            .bind(id)
            .bind(balance)
            .bind(earned)
            .bind(spent)
            .execute(&mut *w.tx)
            .await?;
        }
        let events = [
            Event::AttributionRecorded {
                request_id: c.request_id.clone(),
                model: c.model.clone(),
                payer: c.payer.clone(),
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.completion_tokens,
                credits: c.credits.clone(),
                at: now,
            },
            Event::RewardPaid {
                request_id: c.request_id.clone(),
                model: c.model.clone(),
                payer: c.payer.clone(),
                fee_micros: c.fee_micros,
                price_in_micros: c.price_in_micros,
                price_out_micros: c.price_out_micros,
                payouts: c.payouts.clone(),
                at: now,
            },
        ];
        crate::ledger::append(&mut w, self.backend, &events, now).await?;
        w.commit().await
    }

    /// The totals of user `name` (zeros before any charge); None when there is no such user.
    pub async fn account(&self, name: &str) -> Result<Option<Totals>, StoreError> {
        let row = sqlx::query(
            "SELECT a.balance_micros, a.earned_micros, a.spent_micros, u.id FROM users u \
             LEFT JOIN accounts a ON a.user_id = u.id WHERE u.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Totals {
            balance_micros: col::<Option<i64>>(&row, "balance_micros")?.unwrap_or(0),
            earned_micros: col::<Option<i64>>(&row, "earned_micros")?.unwrap_or(0),
            spent_micros: col::<Option<i64>>(&row, "spent_micros")?.unwrap_or(0),
        }))
    }

    /// Every account with a charge or payout, by user name.
    pub async fn accounts(&self) -> Result<BTreeMap<String, Totals>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.name, a.balance_micros, a.earned_micros, a.spent_micros FROM accounts a JOIN users u ON u.id = a.user_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    col(r, "name")?,
                    Totals {
                        balance_micros: col(r, "balance_micros")?,
                        earned_micros: col(r, "earned_micros")?,
                        spent_micros: col(r, "spent_micros")?,
                    },
                ))
            })
            .collect()
    }
}
