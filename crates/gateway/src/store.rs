//! Config stores: where the gateway's resources live, with etcd's model: keys
//! (`/apisix/routes/1`) holding JSON documents, a revision counter bumped by every change, and
//! a way to follow changes from a revision on.
//!
//! The embedded store (the default) keeps them in the gateway's database (SQLite, or
//! PostgreSQL when configured), with the whole history: every change is a row, so any revision
//! can be shown, compared with another and rolled back to.

use std::collections::BTreeMap;

use axle_core::db::Db;
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use tokio::sync::{Mutex, watch};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("config store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("config store: key {key} holds invalid JSON: {error}")]
    Corrupt {
        key: String,
        error: serde_json::Error,
    },
}

/// A key's current document and the revisions that created and last changed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    #[serde(rename = "createdIndex")]
    pub created_index: i64,
    #[serde(rename = "modifiedIndex")]
    pub modified_index: i64,
}

/// One change: the key's document after `revision`, or `None` when it was deleted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub revision: i64,
    pub key: String,
    pub value: Option<Value>,
    pub changed_at: String,
}

/// A key whose document differs between two revisions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub key: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// The embedded store.
#[derive(Debug)]
pub struct ConfigStore {
    db: Db,
    /// Writes are serialised in the process, so revisions are handed out without conflicts.
    writer: Mutex<()>,
    /// The latest revision written through this process.
    revision: watch::Sender<i64>,
}

impl ConfigStore {
    pub async fn open(db: Db) -> Result<Self, StoreError> {
        let store = ConfigStore {
            db,
            writer: Mutex::new(()),
            revision: watch::Sender::new(0),
        };
        let revision = store.revision().await?;
        store.revision.send_replace(revision);
        Ok(store)
    }

    /// Follows the revisions written through this process (other processes sharing the
    /// database are found by polling [`ConfigStore::changes_since`]).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
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

    /// Writes `value` at `key`; returns the entry and whether the key is new.
    pub async fn put(&self, key: &str, value: &Value) -> Result<(Entry, bool), StoreError> {
        let applied = self
            .apply(&[(key.to_string(), Some(value.clone()))])
            .await?;
        let (revision, created_index) = applied[0]; // one change in, one result out
        let entry = Entry {
            key: key.to_string(),
            value: value.clone(),
            created_index,
            modified_index: revision,
        };
        let created = created_index == revision;
        Ok((entry, created))
    }

    /// Deletes `key`; false when it did not exist.
    pub async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        if self.get(key).await?.is_none() {
            return Ok(false);
        }
        self.apply(&[(key.to_string(), None)]).await?;
        Ok(true)
    }

    /// Applies several changes in one transaction, one revision each; returns each change's
    /// revision and its key's created_index.
    async fn apply(
        &self,
        changes: &[(String, Option<Value>)],
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let _writing = self.writer.lock().await;
        let mut tx = self.db.begin().await?;
        let mut revision: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM gateway_history")
                .fetch_one(&mut *tx)
                .await?;
        let now = axle_core::time::now_text();
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
            // The key's created_index: this revision when the key is new.
            let created_index =
                match text {
                    Some(text) => sqlx::query_scalar(
                        "INSERT INTO gateway_config (key, value, created_index, modified_index) \
                         VALUES ($1, $2, $3, $3) ON CONFLICT (key) DO UPDATE \
                         SET value = excluded.value, modified_index = excluded.modified_index \
                         RETURNING created_index",
                    )
                    .bind(key)
                    .bind(&text)
                    .bind(revision)
                    .fetch_one(&mut *tx)
                    .await?,
                    None => {
                        sqlx::query("DELETE FROM gateway_config WHERE key = $1")
                            .bind(key)
                            .execute(&mut *tx)
                            .await?;
                        revision
                    }
                };
            applied.push((revision, created_index));
        }
        tx.commit().await?;
        self.revision.send_replace(revision);
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

    /// What changed between revisions `from` and `to`, by key.
    pub async fn diff(&self, from: i64, to: i64) -> Result<Vec<Difference>, StoreError> {
        let before = self.state_at(from).await?;
        let after = self.state_at(to).await?;
        Ok(differences(&before, &after))
    }

    /// Makes the configuration what it was at `revision`, as new revisions (so the rollback
    /// itself can be rolled back). Returns what changed.
    pub async fn rollback(&self, revision: i64) -> Result<Vec<Difference>, StoreError> {
        let current = self.state_at(i64::MAX).await?;
        let target = self.state_at(revision).await?;
        let diff = differences(&current, &target);
        let changes: Vec<(String, Option<Value>)> = diff
            .iter()
            .map(|d| (d.key.clone(), d.after.clone()))
            .collect();
        if !changes.is_empty() {
            self.apply(&changes).await?;
        }
        Ok(diff)
    }
}

fn differences(
    before: &BTreeMap<String, Value>,
    after: &BTreeMap<String, Value>,
) -> Vec<Difference> {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| Difference {
            key: k.clone(),
            before: before.get(k).cloned(),
            after: after.get(k).cloned(),
        })
        .collect()
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
        changed_at: row.get(3),
    })
}
