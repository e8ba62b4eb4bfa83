//! Config stores: where the gateway's resources live, with etcd's model: keys
//! (`/apisix/routes/1`) holding JSON documents, a revision counter bumped by every change, and
//! a way to follow changes from a revision on.
//!
//! Three stores, one interface ([`ConfigStore`]):
//! - [`embedded`]: the gateway's database, with full history (the default);
//! - [`etcd`]: etcd v3 in APISIX's key layout, so APISIX tooling and `etcdctl` work unchanged;
//! - [`yaml`]: a standalone `apisix.yaml`, re-read when it changes (read-only).
//!
//! Keys handed to and from every store start with `/apisix/`; a store with another prefix
//! (etcd's is configurable) translates at its edge.

pub mod embedded;
pub mod encryption;
pub mod etcd;
pub mod yaml;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("config store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("config store: key {key} holds invalid JSON: {error}")]
    Corrupt {
        key: String,
        error: serde_json::Error,
    },
    #[error("etcd: {0}")]
    Etcd(String),
    /// etcd no longer keeps the revision asked for.
    #[error("revision {0} has been compacted")]
    Compacted(i64),
    #[error("the configuration is the file {0}; edit it instead")]
    ReadOnly(String),
    /// A guarded write found the store changed since its checks read it.
    #[error("the configuration changed while this write was checked")]
    Conflict,
}

/// What a write's checks rest on: the store's revision when they began reading it, and the keys
/// they found present. [`ConfigStore::commit`] applies the write only if nothing under
/// `/apisix/` changed since `revision` and every `present` key is still there, so two writes
/// checked against each other's absence (a route naming an upstream, the upstream's delete)
/// cannot both land.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Guard {
    pub revision: i64,
    pub present: Vec<String>,
}

/// What one change of a commit did.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The revision the change made.
    pub revision: i64,
    /// The revision that created the key (this one, for a new key).
    pub created_index: i64,
    /// Whether the key existed before.
    pub existed: bool,
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
    /// When it happened, where the store records it (etcd does not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<String>,
}

/// A key whose document differs between two revisions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub key: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// What a store's follower reports to the runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The whole configuration: the first read, and every resync.
    Reset {
        revision: i64,
        config: BTreeMap<String, Value>,
    },
    /// Changes since the previous update, oldest first (`None`: deleted).
    Changes {
        revision: i64,
        changes: Vec<(String, Option<Value>)>,
    },
}

impl Update {
    pub fn revision(&self) -> i64 {
        match self {
            Update::Reset { revision, .. } | Update::Changes { revision, .. } => *revision,
        }
    }
}

/// The store the gateway was configured with.
#[derive(Debug)]
pub enum ConfigStore {
    Embedded(embedded::Embedded),
    Etcd(etcd::Etcd),
    Yaml(yaml::YamlFile),
}

/// Runs `$body` on the writable store, or fails with [`StoreError::ReadOnly`].
macro_rules! writable {
    ($self:expr, $store:ident => $body:expr) => {
        match $self {
            ConfigStore::Embedded($store) => $body,
            ConfigStore::Etcd($store) => $body,
            ConfigStore::Yaml(file) => Err(file.read_only()),
        }
    };
}

impl ConfigStore {
    /// Starts following the store: the returned receiver gets a [`Update::Reset`] first (once
    /// the store answers), then changes; the follower retries through outages until
    /// `shutdown`.
    pub fn follow(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> (mpsc::Receiver<Update>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(16);
        let store = self.clone();
        let task = tokio::spawn(async move {
            match &*store {
                ConfigStore::Embedded(s) => s.follow(tx, shutdown).await,
                ConfigStore::Etcd(s) => s.follow(tx, shutdown).await,
                ConfigStore::Yaml(s) => s.follow(tx, shutdown).await,
            }
        });
        (rx, task)
    }

    /// Deletes what was written with a time to live once it lapses, until `shutdown`: the
    /// embedded store's task (etcd's leases do it there; a YAML file has no ttl).
    pub fn expire_lapsed(self: &Arc<Self>, shutdown: CancellationToken) -> Option<JoinHandle<()>> {
        let ConfigStore::Embedded(_) = &**self else {
            return None;
        };
        let store = self.clone();
        Some(tokio::spawn(async move {
            if let ConfigStore::Embedded(s) = &*store {
                s.expire_lapsed(shutdown).await;
            }
        }))
    }

    pub async fn revision(&self) -> Result<i64, StoreError> {
        match self {
            ConfigStore::Embedded(s) => s.revision().await,
            ConfigStore::Etcd(s) => s.revision().await,
            ConfigStore::Yaml(s) => Ok(s.revision()),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        match self {
            ConfigStore::Embedded(s) => s.get(key).await,
            ConfigStore::Etcd(s) => s.get(key).await,
            ConfigStore::Yaml(s) => Ok(s.get(key)),
        }
    }

    /// Every entry under `prefix`, ordered by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        match self {
            ConfigStore::Embedded(s) => s.list(prefix).await,
            ConfigStore::Etcd(s) => s.list(prefix).await,
            ConfigStore::Yaml(s) => Ok(s.list(prefix)),
        }
    }

    /// Applies `changes` (`None`: delete) at once if `guard` still holds, else fails with
    /// [`StoreError::Conflict`] and changes nothing; returns what each change did. The keys put
    /// live `ttl` seconds when given (then are deleted, as a change of their own), else for good.
    pub async fn commit(
        &self,
        guard: &Guard,
        changes: &[(String, Option<Value>)],
        ttl: Option<u64>,
    ) -> Result<Vec<Written>, StoreError> {
        writable!(self, s => s.commit(guard, changes, ttl).await)
    }

    /// Changes before revision `before` (or the newest), newest first.
    pub async fn history(
        &self,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        writable!(self, s => s.history(before, limit).await)
    }

    /// What changed between revisions `from` and `to`, by key.
    pub async fn diff(&self, from: i64, to: i64) -> Result<Vec<Difference>, StoreError> {
        writable!(self, s => Ok(differences(&s.state_at(from).await?, &s.state_at(to).await?)))
    }

    /// Makes the configuration what it was at `revision`, as new revisions (so the rollback
    /// itself can be rolled back). Returns what changed; [`StoreError::Conflict`] when another
    /// write landed meanwhile.
    pub async fn rollback(&self, revision: i64) -> Result<Vec<Difference>, StoreError> {
        writable!(self, s => {
            let now = s.revision().await?;
            let current = s.state_at(now).await?;
            let diff = differences(&current, &s.state_at(revision).await?);
            let changes: Vec<(String, Option<Value>)> = diff
                .iter()
                .map(|d| (d.key.clone(), d.after.clone()))
                .collect();
            if !changes.is_empty() {
                let guard = Guard { revision: now, present: Vec::new() };
                s.commit(&guard, &changes, None).await?;
            }
            Ok(diff)
        })
    }
}

/// The keys whose documents differ between two states.
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
