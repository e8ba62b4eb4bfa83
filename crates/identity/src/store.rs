//! Persistence of identity (one SQL dialect for SQLite and PostgreSQL, see `axle_core::db`).
//!
//! Every administrative change is written with its audit record and its event in one
//! transaction ([`Change`]), so the trail and the published events never miss a change nor
//! record one that did not happen. Secrets (codes, refresh tokens, session cookies, reset
//! links, client secrets) are stored as SHA-256 hashes: a copy of the database signs nobody in.

use axle_core::db::{Db, violates};
use axle_core::events::{CloudEvent, Outbox};
use axle_core::time::{from_text, now, now_text, to_text};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use crate::domain::{Client, Organisation, Role, Status, User};
use crate::keys::{KeyError, NewKey, SigningKey};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} was not found")]
    NotFound(String),
    #[error("it changed concurrently; read it again and retry")]
    Conflict,
    #[error("stored {0} is unreadable")]
    Corrupt(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// SHA-256, hex: how secrets are kept.
pub fn digest(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A user with what only sign-in may see.
#[derive(Debug, Clone)]
pub struct Account {
    pub user: User,
    pub password_hash: String,
    pub failed_attempts: i64,
}

/// An audited change: what the trail records, and the event published with it.
#[derive(Debug)]
pub struct Change<'a> {
    pub actor: &'a str,
    /// e.g. `user_created`: the audit action and the event type `axle.identity.<action>.v1`.
    pub action: &'static str,
    /// e.g. `user:0190…`.
    pub target: String,
    pub version: i64,
    /// What changed (never a secret).
    pub detail: Value,
    /// What the event carries besides, and the audit trail does not keep: a notification's
    /// content (a reset link) for the notification service to deliver.
    pub notice: Option<Value>,
}

/// An authorization code's grant, as stored when it was issued.
#[derive(Debug, Clone)]
pub struct CodeGrant {
    pub client_id: String,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub auth_time: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What redeeming a code found.
#[derive(Debug)]
pub enum Redeemed<T> {
    Fresh(T),
    /// Redeemed before: a replay. What it had issued has been revoked.
    Reused,
    Unknown,
}

/// A refresh token's grant.
#[derive(Debug, Clone)]
pub struct RefreshGrant {
    pub family_id: Uuid,
    pub client_id: String,
    pub user_id: Uuid,
    pub session_id: Option<Uuid>,
    pub scope: String,
    pub auth_time: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A single sign-on session.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub user_agent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

pub use axle_core::audit::AuditEntry;

#[derive(Debug, Clone)]
pub struct IdentityStore {
    db: Db,
}

fn time(row: &AnyRow, column: &str) -> Result<DateTime<Utc>, StoreError> {
    let text: String = row.try_get(column)?;
    from_text(&text).ok_or_else(|| StoreError::Corrupt(column.into()))
}

fn opt_time(row: &AnyRow, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let text: Option<String> = row.try_get(column)?;
    Ok(text.as_deref().and_then(from_text))
}

fn uuid(row: &AnyRow, column: &str) -> Result<Uuid, StoreError> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|_| StoreError::Corrupt(column.into()))
}

fn opt_uuid(row: &AnyRow, column: &str) -> Result<Option<Uuid>, StoreError> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| Uuid::parse_str(&t).map_err(|_| StoreError::Corrupt(column.into())))
        .transpose()
}

const USER_COLUMNS: &str = "id, username, email, display_name, org_id, roles, status, \
    password_hash, failed_attempts, locked_until, version, created_at, updated_at";

fn account(row: &AnyRow) -> Result<Account, StoreError> {
    let roles: String = row.try_get("roles")?;
    let status: String = row.try_get("status")?;
    Ok(Account {
        user: User {
            id: uuid(row, "id")?,
            username: row.try_get("username")?,
            email: row.try_get("email")?,
            display_name: row.try_get("display_name")?,
            org_id: opt_uuid(row, "org_id")?,
            roles: serde_json::from_str(&roles).map_err(|_| StoreError::Corrupt("roles".into()))?,
            status: Status::parse(&status).ok_or_else(|| StoreError::Corrupt("status".into()))?,
            locked_until: opt_time(row, "locked_until")?,
            version: row.try_get("version")?,
            created_at: time(row, "created_at")?,
            updated_at: time(row, "updated_at")?,
        },
        password_hash: row.try_get("password_hash")?,
        failed_attempts: row.try_get("failed_attempts")?,
    })
}

fn organisation(row: &AnyRow) -> Result<Organisation, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Organisation {
        id: uuid(row, "id")?,
        name: row.try_get("name")?,
        status: Status::parse(&status).ok_or_else(|| StoreError::Corrupt("status".into()))?,
        deposit_account: row.try_get("deposit_account")?,
        version: row.try_get("version")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn client(row: &AnyRow) -> Result<(Client, Option<String>), StoreError> {
    let doc: String = row.try_get("doc")?;
    let client: Client =
        serde_json::from_str(&doc).map_err(|_| StoreError::Corrupt("client".into()))?;
    Ok((client, row.try_get("secret_hash")?))
}

fn roles_json(roles: &[Role]) -> String {
    serde_json::to_string(roles).unwrap_or_else(|_| "[]".into())
}

impl IdentityStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Records `change` in the audit trail and queues its event, inside `tx`.
    async fn audit(
        tx: &mut Transaction<'static, Any>,
        change: &Change<'_>,
    ) -> Result<(), StoreError> {
        axle_core::audit::record(
            tx,
            change.actor,
            change.action,
            &change.target,
            &change.detail,
        )
        .await?;
        let mut data = serde_json::json!({
            "actor": change.actor,
            "target": change.target,
            "detail": change.detail,
        });
        if let Some(notice) = &change.notice {
            data["notice"] = notice.clone();
        }
        let subject = change
            .target
            .split_once(':')
            .map_or(change.target.as_str(), |(_, id)| id);
        let event = CloudEvent::new(
            crate::NAME,
            &format!("axle.identity.{}.v1", change.action),
            subject,
            change.version,
            &data,
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Outbox::enqueue(tx, &event).await?;
        Ok(())
    }

    /// Records `change` alone (for changes with no row of their own, e.g. a key rotation).
    pub async fn record(&self, change: &Change<'_>) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        Self::audit(&mut tx, change).await?;
        tx.commit().await?;
        Ok(())
    }

    // --- organisations ---------------------------------------------------------------------

    pub async fn create_organisation(
        &self,
        org: &Organisation,
        change: &Change<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO organisations (id, name, status, deposit_account, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(org.id.to_string())
        .bind(&org.name)
        .bind(org.status.as_str())
        .bind(org.deposit_account.as_deref())
        .bind(org.version)
        .bind(to_text(org.created_at))
        .bind(to_text(org.updated_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e)
                if violates(&e, "organisations_name_key") || violates(&e, "organisations.name") =>
            {
                return Err(StoreError::Exists(format!(
                    "an organisation named {:?}",
                    org.name
                )));
            }
            other => other?,
        };
        Self::audit(&mut tx, change).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn organisation(&self, id: Uuid) -> Result<Option<Organisation>, StoreError> {
        sqlx::query("SELECT * FROM organisations WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?
            .map(|r| organisation(&r))
            .transpose()
    }

    pub async fn organisations(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Organisation>, StoreError> {
        sqlx::query("SELECT * FROM organisations WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after.map(|a| a.to_string()).unwrap_or_default())
            .bind(i64::from(limit) + 1)
            .fetch_all(self.db.pool())
            .await?
            .iter()
            .map(organisation)
            .collect()
    }

    /// Saves `org` if it is still at `org.version - 1`.
    pub async fn save_organisation(
        &self,
        org: &Organisation,
        change: &Change<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE organisations SET name = $1, status = $2, deposit_account = $3, version = $4, \
             updated_at = $5 WHERE id = $6 AND version = $7",
        )
        .bind(&org.name)
        .bind(org.status.as_str())
        .bind(org.deposit_account.as_deref())
        .bind(org.version)
        .bind(to_text(org.updated_at))
        .bind(org.id.to_string())
        .bind(org.version - 1)
        .execute(&mut *tx)
        .await;
        match updated {
            Err(e)
                if violates(&e, "organisations_name_key") || violates(&e, "organisations.name") =>
            {
                return Err(StoreError::Exists(format!(
                    "an organisation named {:?}",
                    org.name
                )));
            }
            Ok(r) if r.rows_affected() == 0 => return Err(StoreError::Conflict),
            other => other?,
        };
        Self::audit(&mut tx, change).await?;
        tx.commit().await?;
        Ok(())
    }

    // --- users -----------------------------------------------------------------------------

    pub async fn create_user(
        &self,
        user: &User,
        password_hash: &str,
        change: &Change<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, NULL, $9, $10, $11)"
        ))
        .bind(user.id.to_string())
        .bind(&user.username)
        .bind(user.email.as_deref())
        .bind(&user.display_name)
        .bind(user.org_id.map(|o| o.to_string()))
        .bind(roles_json(&user.roles))
        .bind(user.status.as_str())
        .bind(password_hash)
        .bind(user.version)
        .bind(to_text(user.created_at))
        .bind(to_text(user.updated_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if violates(&e, "users_username_key") || violates(&e, "users.username") => {
                return Err(StoreError::Exists(format!(
                    "a user named {:?}",
                    user.username
                )));
            }
            other => other?,
        };
        Self::audit(&mut tx, change).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn user(&self, id: Uuid) -> Result<Option<Account>, StoreError> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?
            .map(|r| account(&r))
            .transpose()
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<Account>, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(self.db.pool())
        .await?
        .map(|r| account(&r))
        .transpose()
    }

    pub async fn users(
        &self,
        org: Option<Uuid>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<User>, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id > $1 AND ($2 = '' OR org_id = $2) ORDER BY id LIMIT $3"
        ))
        .bind(after.map(|a| a.to_string()).unwrap_or_default())
        .bind(org.map(|o| o.to_string()).unwrap_or_default())
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(|r| account(r).map(|a| a.user))
        .collect()
    }

    pub async fn count_users(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(self.db.pool())
            .await?)
    }

    /// Saves `user`'s profile (and a new password hash, when given) if it is still at
    /// `user.version - 1`.
    pub async fn save_user(
        &self,
        user: &User,
        password_hash: Option<&str>,
        change: &Change<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE users SET email = $1, display_name = $2, org_id = $3, roles = $4, status = $5, \
             password_hash = COALESCE($6, password_hash), locked_until = $7, \
             failed_attempts = CASE WHEN $7 IS NULL THEN 0 ELSE failed_attempts END, \
             version = $8, updated_at = $9 WHERE id = $10 AND version = $11",
        )
        .bind(user.email.as_deref())
        .bind(&user.display_name)
        .bind(user.org_id.map(|o| o.to_string()))
        .bind(roles_json(&user.roles))
        .bind(user.status.as_str())
        .bind(password_hash)
        .bind(user.locked_until.map(to_text))
        .bind(user.version)
        .bind(to_text(user.updated_at))
        .bind(user.id.to_string())
        .bind(user.version - 1)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        Self::audit(&mut tx, change).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Counts a failed sign-in (atomically) and locks the account when the rule says so;
    /// answers the failures counted.
    pub async fn sign_in_failed(
        &self,
        id: Uuid,
        lock: impl Fn(i64) -> Option<DateTime<Utc>>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.db.begin().await?;
        let failures: i64 = sqlx::query_scalar(
            "UPDATE users SET failed_attempts = failed_attempts + 1 WHERE id = $1 RETURNING failed_attempts",
        )
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        if let Some(until) = lock(failures) {
            sqlx::query("UPDATE users SET locked_until = $1 WHERE id = $2")
                .bind(to_text(until))
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(failures)
    }

    pub async fn sign_in_succeeded(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET failed_attempts = 0, locked_until = NULL WHERE id = $1 AND failed_attempts > 0")
            .bind(id.to_string())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    // --- clients ---------------------------------------------------------------------------

    pub async fn create_client(
        &self,
        client: &Client,
        secret_hash: Option<&str>,
        change: &Change<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO clients (id, name, secret_hash, doc, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&client.id)
        .bind(&client.name)
        .bind(secret_hash)
        .bind(serde_json::to_string(client).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .bind(client.version)
        .bind(to_text(client.created_at))
        .bind(to_text(client.updated_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if axle_core::db::is_unique_violation(&e) => {
                return Err(StoreError::Exists(format!("a client {:?}", client.id)));
            }
            other => other?,
        };
        Self::audit(&mut tx, change).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A client and the hash of its secret (confidential clients).
    pub async fn client(&self, id: &str) -> Result<Option<(Client, Option<String>)>, StoreError> {
        sqlx::query("SELECT doc, secret_hash FROM clients WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .map(|r| client(&r))
            .transpose()
    }

    pub async fn clients(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Client>, StoreError> {
        sqlx::query("SELECT doc, secret_hash FROM clients WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after.unwrap_or_default())
            .bind(i64::from(limit) + 1)
            .fetch_all(self.db.pool())
            .await?
            .iter()
            .map(|r| client(r).map(|(c, _)| c))
            .collect()
    }

    /// Saves `client` (and a new secret hash, when given) if it is still at `version - 1`.
    pub async fn save_client(
        &self,
        client: &Client,
        secret_hash: Option<&str>,
        change: &Change<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE clients SET name = $1, secret_hash = COALESCE($2, secret_hash), doc = $3, version = $4, \
             updated_at = $5 WHERE id = $6 AND version = $7",
        )
        .bind(&client.name)
        .bind(secret_hash)
        .bind(serde_json::to_string(client).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .bind(client.version)
        .bind(to_text(client.updated_at))
        .bind(&client.id)
        .bind(client.version - 1)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        Self::audit(&mut tx, change).await?;
        tx.commit().await?;
        Ok(())
    }

    // --- signing keys ----------------------------------------------------------------------

    pub async fn keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        let rows = sqlx::query("SELECT * FROM signing_keys ORDER BY created_at")
            .fetch_all(self.db.pool())
            .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let kid: String = row.try_get("kid")?;
            let jwk: String = row.try_get("public_jwk")?;
            let jwk = serde_json::from_str(&jwk).map_err(|_| StoreError::Corrupt(kid.clone()))?;
            let private: String = row.try_get("private_der")?;
            keys.push(SigningKey::from_stored(
                kid,
                &private,
                jwk,
                time(&row, "created_at")?,
                opt_time(&row, "retired_at")?,
                opt_time(&row, "retires_at")?,
            )?);
        }
        Ok(keys)
    }

    /// Makes `key` the active one: the keys active until now retire, published until
    /// `retires_at`; keys past their retirement are deleted.
    pub async fn rotate_keys(
        &self,
        key: &NewKey,
        retires_at: DateTime<Utc>,
        change: &Change<'_>,
    ) -> Result<(), StoreError> {
        let now = to_text(now());
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM signing_keys WHERE retires_at IS NOT NULL AND retires_at < $1")
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE signing_keys SET retired_at = $1, retires_at = $2 WHERE retired_at IS NULL",
        )
        .bind(&now)
        .bind(to_text(retires_at))
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO signing_keys (kid, private_der, public_jwk, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&key.kid)
            .bind(&key.private_der)
            .bind(key.jwk.to_string())
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        Self::audit(&mut tx, change).await?;
        tx.commit().await?;
        Ok(())
    }

    // --- sessions --------------------------------------------------------------------------

    pub async fn create_session(&self, secret: &str, session: &Session) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id, secret_hash, user_id, user_agent, created_at, last_seen_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(session.id.to_string())
        .bind(digest(secret))
        .bind(session.user_id.to_string())
        .bind(session.user_agent.as_deref())
        .bind(to_text(session.created_at))
        .bind(to_text(session.last_seen_at))
        .bind(to_text(session.expires_at))
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    fn session(row: &AnyRow) -> Result<Session, StoreError> {
        Ok(Session {
            id: uuid(row, "id")?,
            user_id: uuid(row, "user_id")?,
            user_agent: row.try_get("user_agent")?,
            created_at: time(row, "created_at")?,
            last_seen_at: time(row, "last_seen_at")?,
            expires_at: time(row, "expires_at")?,
        })
    }

    /// The live session whose cookie holds `secret`, marked as seen now.
    pub async fn session_by_secret(&self, secret: &str) -> Result<Option<Session>, StoreError> {
        let now = to_text(now());
        let row = sqlx::query(
            "UPDATE sessions SET last_seen_at = $1 WHERE secret_hash = $2 AND ended_at IS NULL \
             AND expires_at > $1 RETURNING id, user_id, user_agent, created_at, last_seen_at, expires_at",
        )
        .bind(&now)
        .bind(digest(secret))
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| Self::session(&r)).transpose()
    }

    /// Whether session `id` is live.
    pub async fn session_live(&self, id: Uuid) -> Result<bool, StoreError> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT id FROM sessions WHERE id = $1 AND ended_at IS NULL AND expires_at > $2",
        )
        .bind(id.to_string())
        .bind(to_text(now()))
        .fetch_optional(self.db.pool())
        .await?;
        Ok(found.is_some())
    }

    pub async fn sessions_of(&self, user: Uuid) -> Result<Vec<Session>, StoreError> {
        sqlx::query(
            "SELECT * FROM sessions WHERE user_id = $1 AND ended_at IS NULL AND expires_at > $2 \
             ORDER BY created_at DESC LIMIT 100",
        )
        .bind(user.to_string())
        .bind(to_text(now()))
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(Self::session)
        .collect()
    }

    /// Ends session `id` of `user` and revokes the refresh tokens issued in it; answers whether
    /// there was such a live session.
    pub async fn end_session(&self, user: Uuid, id: Uuid) -> Result<bool, StoreError> {
        let now = to_text(now());
        let mut tx = self.db.begin().await?;
        let ended = sqlx::query(
            "UPDATE sessions SET ended_at = $1 WHERE id = $2 AND user_id = $3 AND ended_at IS NULL",
        )
        .bind(&now)
        .bind(id.to_string())
        .bind(user.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE session_id = $2 AND revoked_at IS NULL")
            .bind(&now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ended.rows_affected() > 0)
    }

    // --- authorization codes ---------------------------------------------------------------

    pub async fn insert_code(&self, code: &str, grant: &CodeGrant) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO auth_codes (code_hash, client_id, user_id, session_id, redirect_uri, scope, nonce, \
             code_challenge, auth_time, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(digest(code))
        .bind(&grant.client_id)
        .bind(grant.user_id.to_string())
        .bind(grant.session_id.to_string())
        .bind(&grant.redirect_uri)
        .bind(&grant.scope)
        .bind(grant.nonce.as_deref())
        .bind(grant.code_challenge.as_deref())
        .bind(to_text(grant.auth_time))
        .bind(to_text(grant.expires_at))
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Redeems `code` once. A second redemption revokes the refresh tokens the first one
    /// issued (their family is the code's hash), as RFC 6749 §4.1.2 advises.
    pub async fn redeem_code(&self, code: &str) -> Result<Redeemed<CodeGrant>, StoreError> {
        let hash = digest(code);
        let now = to_text(now());
        let mut tx = self.db.begin().await?;
        let row = sqlx::query("UPDATE auth_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL RETURNING *")
            .bind(&now)
            .bind(&hash)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            let known: Option<String> =
                sqlx::query_scalar("SELECT code_hash FROM auth_codes WHERE code_hash = $1")
                    .bind(&hash)
                    .fetch_optional(&mut *tx)
                    .await?;
            if known.is_none() {
                return Ok(Redeemed::Unknown);
            }
            sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL")
                .bind(&now)
                .bind(code_family(&hash).to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Redeemed::Reused);
        };
        tx.commit().await?;
        Ok(Redeemed::Fresh(CodeGrant {
            client_id: row.try_get("client_id")?,
            user_id: uuid(&row, "user_id")?,
            session_id: uuid(&row, "session_id")?,
            redirect_uri: row.try_get("redirect_uri")?,
            scope: row.try_get("scope")?,
            nonce: row.try_get("nonce")?,
            code_challenge: row.try_get("code_challenge")?,
            auth_time: time(&row, "auth_time")?,
            expires_at: time(&row, "expires_at")?,
        }))
    }

    // --- refresh tokens --------------------------------------------------------------------

    pub async fn insert_refresh(
        &self,
        token: &str,
        grant: &RefreshGrant,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, client_id, user_id, session_id, scope, \
             auth_time, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(digest(token))
        .bind(grant.family_id.to_string())
        .bind(&grant.client_id)
        .bind(grant.user_id.to_string())
        .bind(grant.session_id.map(|s| s.to_string()))
        .bind(&grant.scope)
        .bind(to_text(grant.auth_time))
        .bind(now_text())
        .bind(to_text(grant.expires_at))
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Uses refresh token `token` once. A token used before (or revoked) presented again
    /// revokes its whole family: whoever holds the newer one is then refused too (RFC 9700
    /// §4.14.2).
    pub async fn use_refresh(&self, token: &str) -> Result<Redeemed<RefreshGrant>, StoreError> {
        let hash = digest(token);
        let now = to_text(now());
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL \
             AND revoked_at IS NULL RETURNING *",
        )
        .bind(&now)
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let family: Option<String> =
                sqlx::query_scalar("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
                    .bind(&hash)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(family) = family else {
                return Ok(Redeemed::Unknown);
            };
            sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL")
                .bind(&now)
                .bind(&family)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Redeemed::Reused);
        };
        tx.commit().await?;
        Ok(Redeemed::Fresh(refresh_grant(&row)?))
    }

    /// A live refresh token's grant, without using it (introspection).
    pub async fn refresh_grant(&self, token: &str) -> Result<Option<RefreshGrant>, StoreError> {
        sqlx::query(
            "SELECT * FROM refresh_tokens WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL \
             AND expires_at > $2",
        )
        .bind(digest(token))
        .bind(now_text())
        .fetch_optional(self.db.pool())
        .await?
        .map(|r| refresh_grant(&r))
        .transpose()
    }

    /// Revokes the family of refresh token `token` if `client` holds it (RFC 7009).
    pub async fn revoke_refresh(&self, token: &str, client: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND family_id IN \
             (SELECT family_id FROM refresh_tokens WHERE token_hash = $2 AND client_id = $3)",
        )
        .bind(now_text())
        .bind(digest(token))
        .bind(client)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    // --- revoked access tokens -------------------------------------------------------------

    pub async fn revoke_access(
        &self,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let done = sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2)")
            .bind(jti)
            .bind(to_text(expires_at))
            .execute(self.db.pool())
            .await;
        match done {
            Err(e) if axle_core::db::is_unique_violation(&e) => Ok(()),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    pub async fn access_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT jti FROM revoked_tokens WHERE jti = $1")
                .bind(jti)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(found.is_some())
    }

    // --- consents --------------------------------------------------------------------------

    pub async fn consented(&self, user: Uuid, client: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT scope FROM consents WHERE user_id = $1 AND client_id = $2")
                .bind(user.to_string())
                .bind(client)
                .fetch_optional(self.db.pool())
                .await?,
        )
    }

    pub async fn consent(&self, user: Uuid, client: &str, scope: &str) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM consents WHERE user_id = $1 AND client_id = $2")
            .bind(user.to_string())
            .bind(client)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO consents (user_id, client_id, scope, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(user.to_string())
        .bind(client)
        .bind(scope)
        .bind(now_text())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // --- password resets -------------------------------------------------------------------

    pub async fn insert_reset(
        &self,
        token: &str,
        user: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO password_resets (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(digest(token))
        .bind(user.to_string())
        .bind(to_text(expires_at))
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The user a live reset link `token` is for (the link stays usable).
    pub async fn reset_user(&self, token: &str) -> Result<Option<Uuid>, StoreError> {
        let user: Option<String> = sqlx::query_scalar(
            "SELECT user_id FROM password_resets WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(digest(token))
        .bind(now_text())
        .fetch_optional(self.db.pool())
        .await?;
        user.map(|u| Uuid::parse_str(&u).map_err(|_| StoreError::Corrupt("reset".into())))
            .transpose()
    }

    /// The user a live reset link `token` is for, the link used up.
    pub async fn take_reset(&self, token: &str) -> Result<Option<Uuid>, StoreError> {
        let now = now_text();
        let user: Option<String> = sqlx::query_scalar(
            "UPDATE password_resets SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL \
             AND expires_at > $1 RETURNING user_id",
        )
        .bind(&now)
        .bind(digest(token))
        .fetch_optional(self.db.pool())
        .await?;
        user.map(|u| Uuid::parse_str(&u).map_err(|_| StoreError::Corrupt("reset".into())))
            .transpose()
    }

    // --- the service's own secrets ---------------------------------------------------------

    /// The secret named `name`, made from `make` the first time (by whichever instance gets
    /// there first; the others read it).
    pub async fn own_secret(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(make())
        .execute(self.db.pool())
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
                .bind(name)
                .fetch_one(self.db.pool())
                .await?,
        )
    }

    // --- audit -----------------------------------------------------------------------------

    pub async fn audit_trail(
        &self,
        target: Option<&str>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(axle_core::audit::trail(&self.db, target, after, limit).await?)
    }

    /// Forgets what can no longer be used: expired codes, sessions, refresh tokens, reset
    /// links and revocations of expired access tokens.
    pub async fn purge_expired(&self) -> Result<(), StoreError> {
        let now = now_text();
        for table in [
            "auth_codes",
            "refresh_tokens",
            "revoked_tokens",
            "password_resets",
            "sessions",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE expires_at < $1"))
                .bind(&now)
                .execute(self.db.pool())
                .await?;
        }
        Ok(())
    }
}

fn refresh_grant(row: &AnyRow) -> Result<RefreshGrant, StoreError> {
    Ok(RefreshGrant {
        family_id: uuid(row, "family_id")?,
        client_id: row.try_get("client_id")?,
        user_id: uuid(row, "user_id")?,
        session_id: opt_uuid(row, "session_id")?,
        scope: row.try_get("scope")?,
        auth_time: time(row, "auth_time")?,
        expires_at: time(row, "expires_at")?,
    })
}

/// The refresh-token family of the tokens a code issued: derived from the code's hash, so a
/// replayed code finds them.
pub fn code_family(code_hash: &str) -> Uuid {
    let bytes: [u8; 16] = {
        let mut b = [0u8; 16];
        for (i, pair) in code_hash.as_bytes().chunks(2).take(16).enumerate() {
            b[i] = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("00"), 16).unwrap_or(0);
        }
        b
    };
    Uuid::from_bytes(bytes)
}
