//! Datanets, their roles and their counts.

use merit_core::{Kind, Policy};
use serde::Serialize;

use merit_ledger::event::Event;

use crate::{col, now_ms, Store, StoreError, User};

/// A datanet's role for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Created the datanet: edits it, publishes it, names curators, reviews.
    Owner,
    /// Named by the owner: reviews contributions and sees all of them.
    Curator,
    /// Anyone signed in who contributes to a published datanet.
    Contributor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Curator => "curator",
            Role::Contributor => "contributor",
        }
    }
}

/// A datanet as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Datanet {
    pub id: i64,
    pub name: String,
    pub owner: String,
    #[serde(skip)]
    pub owner_id: i64,
    pub kind: Kind,
    pub policy: Policy,
    pub policy_hash: String,
    pub summary: String,
    pub description: String,
    pub tags: Vec<String>,
    pub published: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// How the ledger names it until it is published (see [`Datanet::ledger_name`]).
    #[serde(skip)]
    pub name_commitment: Option<String>,
}

impl Datanet {
    /// The name its ledger events carry: the name once published, before
    /// that the salted commitment to it (datanets created before commitments
    /// existed carry their name).
    pub fn ledger_name(&self) -> String {
        match (&self.name_commitment, self.published) {
            (Some(c), false) => c.clone(),
            _ => self.name.clone(),
        }
    }

    /// `NAME@VERSION` as the ledger writes it (see `ledger_name`).
    pub fn ledger_version(&self, version: i64) -> String {
        format!("{}@{version}", self.ledger_name())
    }
}

/// What it takes to create a datanet.
#[derive(Debug, Clone)]
pub struct NewDatanet {
    pub name: String,
    pub policy: Policy,
    pub summary: String,
    pub description: String,
    pub tags: Vec<String>,
    pub publish: bool,
}

/// A change to a datanet; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct DatanetPatch {
    pub summary: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    /// Only before publishing, and never a different kind.
    pub policy: Option<Policy>,
}

/// Counts over a datanet.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatanetStats {
    pub versions: i64,
    pub rows: i64,
    pub bytes: i64,
    pub accepted: i64,
    pub pending: i64,
    pub rejected: i64,
    pub contributors: i64,
}

const SELECT: &str = "SELECT d.id, d.name, u.name AS owner, d.owner_id, d.policy, d.policy_hash, d.summary, d.description, \
                      d.tags, d.published, d.created_at, d.updated_at, d.name_commitment FROM datanets d JOIN users u ON u.id = d.owner_id";

fn datanet_from(row: &sqlx::any::AnyRow) -> Result<Datanet, StoreError> {
    let name: String = col(row, "name")?;
    let policy: Policy = serde_json::from_str(&col::<String>(row, "policy")?)
        .map_err(|e| StoreError::Corrupt(format!("policy of datanet `{name}`: {e}")))?;
    let tags: Vec<String> = serde_json::from_str(&col::<String>(row, "tags")?)
        .map_err(|e| StoreError::Corrupt(format!("tags of datanet `{name}`: {e}")))?;
    Ok(Datanet {
        id: col(row, "id")?,
        owner: col(row, "owner")?,
        owner_id: col(row, "owner_id")?,
        kind: policy.kind,
        policy,
        policy_hash: col(row, "policy_hash")?,
        summary: col(row, "summary")?,
        description: col(row, "description")?,
        tags,
        published: col::<i64>(row, "published")? != 0,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
        name_commitment: col(row, "name_commitment")?,
        name,
    })
}

impl Store {
    /// Creates a datanet owned by `owner`.
    pub async fn create_datanet(&self, owner: &User, new: NewDatanet) -> Result<Datanet, StoreError> {
        merit_core::names::check("datanet", &new.name).map_err(StoreError::Invalid)?;
        merit_core::names::check_tags(&new.tags).map_err(StoreError::Invalid)?;
        merit_core::names::check_texts(&new.summary, &new.description).map_err(StoreError::Invalid)?;
        let policy_json = serde_json::to_string(&new.policy).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let tags_json = serde_json::to_string(&new.tags).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut w = self.write().await?;
        let taken =
            sqlx::query("SELECT id FROM datanets WHERE name = $1").bind(&new.name).fetch_optional(&mut *w.tx).await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(format!("datanet `{}` already exists", new.name)));
        }
        let now = now_ms();
        // A draft is named on the ledger by a salted commitment until published.
        let (salt, commitment) = if new.publish {
            (None, None)
        } else {
            let salt = hex::encode(rand::random::<[u8; 32]>());
            let commitment = merit_ledger::event::name_commitment(&salt, &new.name);
            (Some(salt), Some(commitment))
        };
        let ledger_name = commitment.clone().unwrap_or_else(|| new.name.clone());
        sqlx::query(
            "INSERT INTO datanets (name, owner_id, kind, policy, policy_hash, summary, description, tags, published, created_at, updated_at, name_salt, name_commitment) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12)",
        )
        .bind(&new.name)
        .bind(owner.id)
        .bind(new.policy.kind.as_str())
        .bind(&policy_json)
        .bind(new.policy.hash_hex())
        .bind(&new.summary)
        .bind(&new.description)
        .bind(&tags_json)
        .bind(new.publish as i64)
        .bind(now)
        .bind(&salt)
        .bind(&commitment)
        .execute(&mut *w.tx)
        .await
        .map_err(|e| unique_violation(e, || format!("datanet `{}` already exists", new.name)))?;
        let events = [
            Event::DatanetCreated {
                datanet: ledger_name.clone(),
                owner: owner.name.clone(),
                kind: new.policy.kind.as_str().to_string(),
                at: now,
            },
            Event::DatanetPolicy { datanet: ledger_name, policy_hash: new.policy.hash_hex(), at: now },
        ];
        crate::ledger::append(&mut w, self.backend, &events, now).await?;
        w.commit().await?;
        self.datanet(&new.name).await?.ok_or_else(|| StoreError::NotFound(format!("datanet `{}`", new.name)))
    }

    /// The datanet called `name`.
    pub async fn datanet(&self, name: &str) -> Result<Option<Datanet>, StoreError> {
        let row = sqlx::query(&format!("{SELECT} WHERE d.name = $1")).bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(datanet_from).transpose()
    }

    /// The datanet whose ledger commitment is `commitment` (`h:…`).
    pub async fn datanet_by_commitment(&self, commitment: &str) -> Result<Option<Datanet>, StoreError> {
        let row = sqlx::query(&format!("{SELECT} WHERE d.name_commitment = $1"))
            .bind(commitment)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(datanet_from).transpose()
    }

    /// Every datanet, by name.
    pub async fn datanets(&self) -> Result<Vec<Datanet>, StoreError> {
        let rows = sqlx::query(&format!("{SELECT} ORDER BY d.name")).fetch_all(&self.pool).await?;
        rows.iter().map(datanet_from).collect()
    }

    /// Changes a datanet. After publishing only summary, description and tags may change.
    pub async fn update_datanet(&self, d: &Datanet, patch: DatanetPatch) -> Result<Datanet, StoreError> {
        let summary = patch.summary.unwrap_or_else(|| d.summary.clone());
        let description = patch.description.unwrap_or_else(|| d.description.clone());
        let tags = patch.tags.unwrap_or_else(|| d.tags.clone());
        merit_core::names::check_tags(&tags).map_err(StoreError::Invalid)?;
        merit_core::names::check_texts(&summary, &description).map_err(StoreError::Invalid)?;
        let mut w = self.write().await?;
        // Read the published flag inside the transaction: a concurrent publish wins.
        let row = sqlx::query("SELECT published, policy FROM datanets WHERE id = $1")
            .bind(d.id)
            .fetch_one(&mut *w.tx)
            .await?;
        let published = col::<i64>(&row, "published")? != 0;
        let mut policy_json: String = col(&row, "policy")?;
        let mut policy_hash = d.policy_hash.clone();
        if let Some(policy) = patch.policy {
            if published {
                return Err(StoreError::Invalid(format!(
                    "datanet `{}` is published: only summary, description and tags can change",
                    d.name
                )));
            }
            if policy.kind != d.kind {
                return Err(StoreError::Invalid(format!(
                    "kind is fixed at creation: datanet `{}` is {}, the new policy says {}",
                    d.name,
                    d.kind.as_str(),
                    policy.kind.as_str()
                )));
            }
            policy_json = serde_json::to_string(&policy).map_err(|e| StoreError::Invalid(e.to_string()))?;
            policy_hash = policy.hash_hex();
        }
        let tags_json = serde_json::to_string(&tags).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let now = now_ms();
        if policy_hash != d.policy_hash {
            let event = Event::DatanetPolicy { datanet: d.ledger_name(), policy_hash: policy_hash.clone(), at: now };
            crate::ledger::append(&mut w, self.backend, &[event], now).await?;
        }
        sqlx::query(
            "UPDATE datanets SET summary = $1, description = $2, tags = $3, policy = $4, policy_hash = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(&summary)
        .bind(&description)
        .bind(&tags_json)
        .bind(&policy_json)
                .bind(&policy_hash)
        .bind(now)
        .bind(d.id)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        self.datanet(&d.name).await?.ok_or_else(|| StoreError::NotFound(format!("datanet `{}`", d.name)))
    }

    /// Publishes a datanet: the public can read it and anyone signed in can contribute.
    pub async fn publish_datanet(&self, d: &Datanet) -> Result<Datanet, StoreError> {
        let mut w = self.write().await?;
        let now = now_ms();
        let done = sqlx::query("UPDATE datanets SET published = 1, updated_at = $1 WHERE id = $2 AND published = 0")
            .bind(now)
            .bind(d.id)
            .execute(&mut *w.tx)
            .await?;
        if done.rows_affected() == 1 {
            // The ledger learns the name, and which commitment stood for it.
            let row = sqlx::query("SELECT name_salt, name_commitment FROM datanets WHERE id = $1")
                .bind(d.id)
                .fetch_one(&mut *w.tx)
                .await?;
            let event = Event::DatanetPublished {
                datanet: d.name.clone(),
                commitment: col(&row, "name_commitment")?,
                salt: col(&row, "name_salt")?,
                at: now,
            };
            crate::ledger::append(&mut w, self.backend, &[event], now).await?;
        }
        w.commit().await?;
        self.datanet(&d.name).await?.ok_or_else(|| StoreError::NotFound(format!("datanet `{}`", d.name)))
    }

    /// Names `user` a curator of `d` (`Some(Role::Curator)`) or removes their role (`None`).
    pub async fn set_role(&self, d: &Datanet, user: &User, role: Option<Role>) -> Result<(), StoreError> {
        if user.id == d.owner_id {
            return Err(StoreError::Invalid(format!(
                "`{}` owns datanet `{}`; the owner's role cannot change",
                user.name, d.name
            )));
        }
        let mut w = self.write().await?;
        sqlx::query("DELETE FROM members WHERE datanet_id = $1 AND user_id = $2")
            .bind(d.id)
            .bind(user.id)
            .execute(&mut *w.tx)
            .await?;
        if let Some(role) = role {
            if role == Role::Owner {
                return Err(StoreError::Invalid("a datanet has one owner".to_string()));
            }
            sqlx::query("INSERT INTO members (datanet_id, user_id, role) VALUES ($1, $2, $3)")
                .bind(d.id)
                .bind(user.id)
                .bind(role.as_str())
                .execute(&mut *w.tx)
                .await?;
        }
        w.commit().await
    }

    /// The role `user` holds on `d`: owner, a named role, contributor if they
    /// have contributed, or none.
    pub async fn role(&self, d: &Datanet, user: &User) -> Result<Option<Role>, StoreError> {
        if user.id == d.owner_id {
            return Ok(Some(Role::Owner));
        }
        let row = sqlx::query("SELECT role FROM members WHERE datanet_id = $1 AND user_id = $2")
            .bind(d.id)
            .bind(user.id)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = row {
            return Ok(match col::<String>(&row, "role")?.as_str() {
                "curator" => Some(Role::Curator),
                _ => Some(Role::Contributor),
            });
        }
        let contributed =
            sqlx::query("SELECT id FROM contributions WHERE datanet_id = $1 AND contributor_id = $2 LIMIT 1")
                .bind(d.id)
                .bind(user.id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(contributed.map(|_| Role::Contributor))
    }

    /// The named members of `d` (curators), by name.
    pub async fn members(&self, d: &Datanet) -> Result<Vec<(String, Role)>, StoreError> {
        let rows = sqlx::query("SELECT u.name, m.role FROM members m JOIN users u ON u.id = m.user_id WHERE m.datanet_id = $1 ORDER BY u.name")
            .bind(d.id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let role = if col::<String>(r, "role")? == "curator" { Role::Curator } else { Role::Contributor };
                Ok((col(r, "name")?, role))
            })
            .collect()
    }

    /// Counts over `d`.
    pub async fn datanet_stats(&self, d: &Datanet) -> Result<DatanetStats, StoreError> {
        let row = sqlx::query(
            "SELECT \
               CAST(COALESCE(SUM(CASE WHEN status = 'accepted' THEN 1 ELSE 0 END), 0) AS BIGINT) AS accepted, \
               CAST(COALESCE(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0) AS BIGINT) AS pending, \
               CAST(COALESCE(SUM(CASE WHEN status = 'rejected' THEN 1 ELSE 0 END), 0) AS BIGINT) AS rejected, \
               CAST(COUNT(DISTINCT contributor_id) AS BIGINT) AS contributors \
             FROM contributions WHERE datanet_id = $1",
        )
        .bind(d.id)
        .fetch_one(&self.pool)
        .await?;
        let latest = self.latest_version(d).await?;
        Ok(DatanetStats {
            versions: latest.as_ref().map_or(0, |v| v.number),
            rows: latest.as_ref().map_or(0, |v| v.row_count),
            bytes: latest.as_ref().map_or(0, |v| v.byte_count),
            accepted: col(&row, "accepted")?,
            pending: col(&row, "pending")?,
            rejected: col(&row, "rejected")?,
            contributors: col(&row, "contributors")?,
        })
    }
}

/// Maps a unique-key violation to a conflict with a clear message.
pub(crate) fn unique_violation(e: sqlx::Error, msg: impl FnOnce() -> String) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(msg()),
        _ => StoreError::Db(e),
    }
}
