//! Accounts and API tokens. Tokens are random, shown once, and stored only as
//! their SHA-256.

use serde::Serialize;

use crate::{col, now_ms, Store, StoreError};

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub admin: bool,
    pub created_at: i64,
}

fn user_from(row: &sqlx::any::AnyRow) -> Result<User, StoreError> {
    Ok(User {
        id: col(row, "id")?,
        name: col(row, "name")?,
        admin: col::<i64>(row, "is_admin")? != 0,
        created_at: col(row, "created_at")?,
    })
}

/// An API token as its owner sees it later: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// The first 12 hex digits of the token's SHA-256.
    pub id: String,
    pub label: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Neither revoked nor expired.
    pub active: bool,
}

const TOKEN_ID_LEN: usize = 12;

/// Live (not revoked, not expired) tokens one account may hold.
pub const MAX_LIVE_TOKENS: i64 = 100;

fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("mrt_{}", hex::encode(bytes))
}

fn token_hash(token: &str) -> String {
    merit_core::sha256_hex(token.as_bytes())
}

impl Store {
    /// Creates an account and its first API token; returns both. The token is
    /// not stored, only its hash.
    pub async fn create_user(&self, name: &str, admin: bool) -> Result<(User, String), StoreError> {
        merit_core::names::check("user", name).map_err(StoreError::Invalid)?;
        let mut w = self.write().await?;
        let exists = sqlx::query("SELECT id FROM users WHERE name = $1").bind(name).fetch_optional(&mut *w.tx).await?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!("user `{name}` already exists")));
        }
        let now = now_ms();
        let row = sqlx::query("INSERT INTO users (name, is_admin, created_at) VALUES ($1, $2, $3) RETURNING id")
            .bind(name)
            .bind(admin as i64)
            .bind(now)
            .fetch_one(&mut *w.tx)
            .await?;
        let user = User { id: col(&row, "id")?, name: name.to_string(), admin, created_at: now };
        let token = new_token();
        sqlx::query("INSERT INTO tokens (hash, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(token_hash(&token))
            .bind(user.id)
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        Ok((user, token))
    }

    /// Issues a further API token for an existing account.
    pub async fn create_token(&self, user: &User) -> Result<String, StoreError> {
        self.issue_token(user, "", None).await
    }

    /// Issues an API token labelled `label` (at most 100 bytes), valid until
    /// `expires_at` (ms since the epoch) when given.
    pub async fn issue_token(&self, user: &User, label: &str, expires_at: Option<i64>) -> Result<String, StoreError> {
        if label.len() > 100 || label.chars().any(char::is_control) {
            return Err(StoreError::Invalid("a token's label is at most 100 bytes of text".into()));
        }
        let now = now_ms();
        if expires_at.is_some_and(|e| e <= now) {
            return Err(StoreError::Invalid("a token's expiry must be in the future".into()));
        }
        let mut w = self.write().await?;
        let live = sqlx::query(
            "SELECT COUNT(*) AS n FROM tokens WHERE user_id = $1 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(user.id)
        .bind(now)
        .fetch_one(&mut *w.tx)
        .await?;
        if col::<i64>(&live, "n")? >= MAX_LIVE_TOKENS {
            w.rollback().await?;
            return Err(StoreError::Invalid(format!(
                "{} has {MAX_LIVE_TOKENS} live tokens, the most one account may; revoke one first",
                user.name
            )));
        }
        let token = new_token();
        sqlx::query("INSERT INTO tokens (hash, user_id, created_at, label, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(token_hash(&token))
            .bind(user.id)
            .bind(now)
            .bind(label)
            .bind(expires_at)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        Ok(token)
    }

    /// `user`'s tokens, newest first (revoked and expired ones too).
    pub async fn tokens(&self, user: &User) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT hash, label, created_at, expires_at, revoked_at FROM tokens WHERE user_id = $1 \
             ORDER BY created_at DESC, hash",
        )
        .bind(user.id)
        .fetch_all(&self.pool)
        .await?;
        let now = now_ms();
        rows.iter()
            .map(|r| {
                let hash: String = col(r, "hash")?;
                let expires_at: Option<i64> = col(r, "expires_at")?;
                let revoked_at: Option<i64> = col(r, "revoked_at")?;
                Ok(TokenInfo {
                    id: hash[..TOKEN_ID_LEN].to_string(),
                    label: col(r, "label")?,
                    created_at: col(r, "created_at")?,
                    expires_at,
                    revoked_at,
                    active: revoked_at.is_none() && expires_at.is_none_or(|e| e > now),
                })
            })
            .collect()
    }

    /// Revokes `user`'s token whose id (the first 12 hex digits of its
    /// SHA-256, as [`Store::tokens`] lists) or whose text is `which`.
    pub async fn revoke_token(&self, user: &User, which: &str) -> Result<TokenInfo, StoreError> {
        let id =
            if which.starts_with("mrt_") { token_hash(which)[..TOKEN_ID_LEN].to_string() } else { which.to_string() };
        let found = self.tokens(user).await?.into_iter().filter(|t| t.id == id).collect::<Vec<_>>();
        let [t] = found.as_slice() else {
            return Err(StoreError::NotFound(format!("token `{id}` of {}", user.name)));
        };
        let mut w = self.write().await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL AND substr(hash, 1, 12) = $3",
        )
        .bind(now)
        .bind(user.id)
        .bind(&id)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(TokenInfo { revoked_at: t.revoked_at.or(Some(now)), active: false, ..t.clone() })
    }

    /// The account a live API token (not revoked, not expired) belongs to.
    pub async fn user_by_token(&self, token: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT u.id, u.name, u.is_admin, u.created_at FROM tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2)",
        )
        .bind(token_hash(token))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from).transpose()
    }

    /// The account called `name`.
    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT id, name, is_admin, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    /// Every account, by name.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows =
            sqlx::query("SELECT id, name, is_admin, created_at FROM users ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(user_from).collect()
    }

    /// Starts a browser session for `user`: returns the session token (for
    /// an HttpOnly cookie; only its hash is stored) and the session's CSRF
    /// token (for forms and `X-CSRF-Token`). Sessions last `ttl_ms`.
    pub async fn create_session(&self, user: &User, ttl_ms: i64) -> Result<(String, String), StoreError> {
        let token = format!("mrs_{}", hex::encode(rand::random::<[u8; 32]>()));
        let csrf = hex::encode(rand::random::<[u8; 16]>());
        let now = now_ms();
        let mut w = self.write().await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1").bind(now).execute(&mut *w.tx).await?;
        sqlx::query("INSERT INTO sessions (hash, user_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(token_hash(&token))
            .bind(user.id)
            .bind(&csrf)
            .bind(now)
            .bind(now + ttl_ms)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        Ok((token, csrf))
    }

    /// The user and CSRF token of a live session.
    pub async fn session(&self, token: &str) -> Result<Option<(User, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT u.id, u.name, u.is_admin, u.created_at, s.csrf FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.hash = $1 AND s.expires_at > $2",
        )
        .bind(token_hash(token))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((user_from(&r)?, col(&r, "csrf")?))).transpose()
    }

    /// Ends a session (signing out).
    pub async fn delete_session(&self, token: &str) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        sqlx::query("DELETE FROM sessions WHERE hash = $1").bind(token_hash(token)).execute(&mut *w.tx).await?;
        w.commit().await
    }
}
