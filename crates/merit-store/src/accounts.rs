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

impl Store {
    /// Records `c`: an `attribution.recorded` and a `reward.paid` leaf and
    /// the balance changes they describe, in one transaction (all or none).
    pub async fn charge(&self, c: &Charge) -> Result<(), StoreError> {
        if c.fee_micros < 0 || c.payouts.iter().any(|p| p.micros < 0) {
            return Err(StoreError::Invalid("a fee or payout is negative".into()));
        }
        let paid: i64 = c.payouts.iter().map(|p| p.micros).sum();
        if paid != c.fee_micros {
            return Err(StoreError::Invalid(format!("payouts add up to {paid}, the fee is {}", c.fee_micros)));
        }
        let now = now_ms();
        let mut w = self.write().await?;
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
