//! The embedded store (the default): resources in the gateway's database (SQLite, or
//! PostgreSQL when configured), with the whole history: every change is a row, so any revision
//! can be shown, compared with another and rolled back to.

use std::collections::BTreeMap;

use axle_core::db::Db;
use serde_json::Value;
use sqlx::Row;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Change, Entry, Guard, StoreError, Update, Written};

/// How often the follower looks for changes written by other processes sharing the database.
const POLL: std::time::Duration = std::time::Duration::from_secs(1);
/// Changes read per round trip.
const CHANGES_PER_READ: i64 = 10_000;

/// The embedded store.
#[derive(Debug)]
pub struct Embedded {
    db: Db,
    /// Writes are serialised in the process, so revisions are handed out without conflicts.
    writer: Mutex<()>,
    /// The latest revision written through this process.
    revision: watch::Sender<i64>,
}

impl Embedded {
    pub async fn open(db: Db) -> Result<Self, StoreError> {
        let store = Embedded {
            db,
            writer: Mutex::new(()),
            revision: watch::Sender::new(0),
        };
        let revision = store.revision().await?;
        store.revision.send_replace(revision);
        Ok(store)
    }

    /// Reports the configuration, then its changes, until `shutdown`: woken by writes through
    /// this process, and polling for writes by other processes sharing the database.
    pub async fn follow(&self, updates: mpsc::Sender<Update>, shutdown: CancellationToken) {
        let mut written = self.revision.subscribe();
        let mut revision = None;
        loop {
            let update = match revision {
                None => self
                    .snapshot()
                    .await
                    .map(|(revision, entries)| Update::Reset {
                        revision,
                        config: entries.into_iter().map(|e| (e.key, e.value)).collect(),
                    }),
                Some(since) => self
                    .changes_since(since, CHANGES_PER_READ)
                    .await
                    .map(|changes| Update::Changes {
                        revision: changes.last().map_or(since, |c| c.revision),
                        changes: changes.into_iter().map(|c| (c.key, c.value)).collect(),
                    }),
            };
            match update {
                Ok(Update::Changes { changes, .. }) if changes.is_empty() => {}
                Ok(update) => {
                    revision = Some(update.revision());
                    if updates.send(update).await.is_err() {
                        return;
                    }
                    continue; // more may be waiting
                }
                Err(e) => tracing::warn!(error = %e, "gateway: reading the config store failed"),
            }
            tokio::select! {
                _ = written.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let revision: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM gateway_history")
                .fetch_one(self.db.pool())
                .await?;
        Ok(revision)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let row = sqlx::query(
            "SELECT key, value, created_index, modified_index FROM gateway_config WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| entry(&r)).transpose()
    }

    /// Every entry under `prefix`, ordered by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let rows = sqlx::query(
            "SELECT key, value, created_index, modified_index FROM gateway_config \
             WHERE key >= $1 AND key < $2 ORDER BY key",
        )
        .bind(prefix)
        .bind(format!("{prefix}\u{10FFFF}"))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(entry).collect()
    }

    /// Everything, with the revision it is current at.
    pub async fn snapshot(&self) -> Result<(i64, Vec<Entry>), StoreError> {
        let mut tx = self.db.begin().await?;
        let revision: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM gateway_history")
                .fetch_one(&mut *tx)
                .await?;
        let rows = sqlx::query(
            "SELECT key, value, created_index, modified_index FROM gateway_config ORDER BY key",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((revision, rows.iter().map(entry).collect::<Result<_, _>>()?))
    }

    /// Deletes keys whose time to live lapsed, every second until `shutdown`.
    pub async fn expire_lapsed(&self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.expire().await {
                tracing::warn!(error = %e, "gateway: deleting expired configuration failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Deletes the keys whose time to live has lapsed, as one change (so the history shows
    /// when); another process sharing the database doing it first is no error.
    async fn expire(&self) -> Result<(), StoreError> {
        let revision = self.revision().await?;
        let expired: Vec<String> =
            sqlx::query_scalar("SELECT key FROM gateway_config WHERE expires_at <= $1")
                .bind(chrono::Utc::now().timestamp())
                .fetch_all(self.db.pool())
                .await?;
        if expired.is_empty() {
            return Ok(());
        }
        let changes: Vec<_> = expired.into_iter().map(|key| (key, None)).collect();
        let guard = Guard {
            revision,
            present: Vec::new(),
        };
        match self.commit(&guard, &changes, None).await {
            Ok(_) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Applies `changes` in one transaction, one revision each, if `guard` holds: no revision
    /// after `guard.revision` (which also keeps every key read as present); the keys written
    /// live `ttl` seconds when given. Writers in this process take turns; a writer in another
    /// process sharing the database that took the same revision makes one of the two fail on
    /// the history's key, which is a conflict too.
    pub(super) async fn commit(
        &self,
        guard: &Guard,
        changes: &[(String, Option<Value>)],
        ttl: Option<u64>,
    ) -> Result<Vec<Written>, StoreError> {
        let _writing = self.writer.lock().await;
        let applied = self.apply(guard, changes, ttl).await.map_err(|e| match e {
            StoreError::Db(e) if is_write_race(&e) => StoreError::Conflict,
            e => e,
        })?;
        if let Some(last) = applied.last() {
            self.revision.send_replace(last.revision);
        }
        Ok(applied)
    }

    async fn apply(
        &self,
        guard: &Guard,
        changes: &[(String, Option<Value>)],
        ttl: Option<u64>,
    ) -> Result<Vec<Written>, StoreError> {
        let mut tx = self.db.begin().await?;
        let mut revision: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM gateway_history")
                .fetch_one(&mut *tx)
                .await?;
        if revision != guard.revision {
            return Err(StoreError::Conflict);
        }
        let now = axle_core::time::now_text();
        let expires_at = ttl.map(|ttl| chrono::Utc::now().timestamp().saturating_add_unsigned(ttl));
        let mut applied = Vec::new();
        for (key, value) in changes {
            revision += 1;
            let text = value.as_ref().map(Value::to_string);
            sqlx::query(
                "INSERT INTO gateway_history (revision, key, value, changed_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(revision)
            .bind(key)
            .bind(&text)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            let written = match text {
                Some(text) => {
                    // The key's created_index: this revision when the key is new.
                    let created_index: i64 = sqlx::query_scalar(
                        "INSERT INTO gateway_config \
                         (key, value, created_index, modified_index, expires_at) \
                         VALUES ($1, $2, $3, $3, $4) ON CONFLICT (key) DO UPDATE \
                         SET value = excluded.value, modified_index = excluded.modified_index, \
                         expires_at = excluded.expires_at \
                         RETURNING created_index",
                    )
                    .bind(key)
                    .bind(&text)
                    .bind(revision)
                    .bind(expires_at)
                    .fetch_one(&mut *tx)
                    .await?;
                    Written {
                        revision,
                        created_index,
                        existed: created_index != revision,
                    }
                }
                None => {
                    let deleted = sqlx::query("DELETE FROM gateway_config WHERE key = $1")
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                    Written {
                        revision,
                        created_index: revision,
                        existed: deleted.rows_affected() > 0,
                    }
                }
            };
            applied.push(written);
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// Changes after `revision`, oldest first (at most `limit`).
    pub async fn changes_since(
        &self,
        revision: i64,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            "SELECT revision, key, value, changed_at FROM gateway_history \
             WHERE revision > $1 ORDER BY revision LIMIT $2",
        )
        .bind(revision)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(change).collect()
    }

    /// Changes before `before` (or the newest), newest first.
    pub async fn history(
        &self,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            "SELECT revision, key, value, changed_at FROM gateway_history \
             WHERE revision < $1 ORDER BY revision DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(change).collect()
    }

    /// Every key's document as of `revision`.
    pub async fn state_at(&self, revision: i64) -> Result<BTreeMap<String, Value>, StoreError> {
        let rows = sqlx::query(
            "SELECT h.key, h.value FROM gateway_history h \
             WHERE h.revision = (SELECT MAX(revision) FROM gateway_history \
                                 WHERE key = h.key AND revision <= $1)",
        )
        .bind(revision)
        .fetch_all(self.db.pool())
        .await?;
        let mut state = BTreeMap::new();
        for row in rows {
            let key: String = row.get(0);
            if let Some(text) = row.get::<Option<String>, _>(1) {
                state.insert(key.clone(), parse(&key, &text)?);
            }
        }
        Ok(state)
    }
}

fn parse(key: &str, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt {
        key: key.to_string(),
        error,
    })
}

fn entry(row: &sqlx::any::AnyRow) -> Result<Entry, StoreError> {
    let key: String = row.get(0);
    let value = parse(&key, &row.get::<String, _>(1))?;
    Ok(Entry {
        key,
        value,
        created_index: row.get(2),
        modified_index: row.get(3),
    })
}

fn change(row: &sqlx::any::AnyRow) -> Result<Change, StoreError> {
    let key: String = row.get(1);
    let value = row
        .get::<Option<String>, _>(2)
        .map(|text| parse(&key, &text))
        .transpose()?;
    Ok(Change {
        revision: row.get(0),
        key,
        value,
        changed_at: Some(row.get(3)),
    })
}

/// Another process wrote the same revision first (PostgreSQL: the history's key; SQLite: the
/// database was written since this transaction read it).
fn is_write_race(e: &sqlx::Error) -> bool {
    axle_core::db::is_unique_violation(e)
        || matches!(e, sqlx::Error::Database(db) if db.message().contains("database is locked"))
}
