//! Persistence of saga instances and their timelines (one SQL for SQLite and PostgreSQL).
//!
//! Workers claim due instances by taking a lease (`lease_owner`, `lease_until`): on
//! PostgreSQL with `FOR UPDATE SKIP LOCKED`, so claimers on several nodes never wait on or
//! take each other's rows; on SQLite the claim is one write under the database's lock. Every
//! save is guarded by the version the worker read, so an operator's retry or abort, or a
//! worker whose lease ran out, makes a stale save fail with `Conflict` instead of overwriting.

use axle_core::db::{Db, Engine, is_unique_violation};
use axle_core::events::{CloudEvent, Outbox};
use axle_core::time::{from_text, to_text};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{Instance, Phase, Status};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the instance changed meanwhile")]
    Conflict,
    #[error("stored instance {0} is unreadable: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// One call made for an instance.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Attempt {
    pub step: i64,
    pub step_name: String,
    pub phase: Phase,
    /// 1 for the first call of this step in this direction.
    pub attempt: u32,
    /// done, failed or refused.
    pub outcome: String,
    /// The participant's HTTP status, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i64,
}

/// Which instances a list returns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub saga: Option<String>,
    pub status: Option<Status>,
    pub flagged: Option<bool>,
    /// Only those created before this.
    pub created_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct SagaStore {
    db: Db,
}

const COLUMNS: &str = "id, saga, key, status, step, attempt, input, results, due_at, flagged, \
                       last_error, version, created_at, updated_at";

impl SagaStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Saves a new instance; when one exists for its saga and key, answers that one and false.
    pub async fn start(&self, instance: &Instance) -> Result<(Instance, bool), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO saga_instances (id, saga, key, status, step, attempt, input, results, \
             due_at, flagged, last_error, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(instance.id.to_string())
        .bind(&instance.saga)
        .bind(&instance.key)
        .bind(instance.status.as_str())
        .bind(instance.step)
        .bind(i64::from(instance.attempt))
        .bind(instance.input.to_string())
        .bind(serde_json::Value::Object(instance.results.clone()).to_string())
        .bind(to_text(instance.due_at))
        .bind(i64::from(instance.flagged))
        .bind(instance.last_error.as_deref())
        .bind(instance.version)
        .bind(to_text(instance.created_at))
        .bind(to_text(instance.updated_at))
        .execute(self.db.pool())
        .await;
        match inserted {
            Ok(_) => Ok((instance.clone(), true)),
            Err(e) if is_unique_violation(&e) => {
                let row = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM saga_instances WHERE saga = $1 AND key = $2"
                ))
                .bind(&instance.saga)
                .bind(&instance.key)
                .fetch_one(self.db.pool())
                .await?;
                Ok((read(&row)?, false))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Leases up to `limit` due, unfinished instances to `owner` until `lease_until`.
    pub async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Instance>, StoreError> {
        let lock = match self.db.engine() {
            Engine::Postgres => "FOR UPDATE SKIP LOCKED",
            Engine::Sqlite => "",
        };
        let rows = sqlx::query(&format!(
            "UPDATE saga_instances SET lease_owner = $1, lease_until = $2 WHERE id IN (\
               SELECT id FROM saga_instances WHERE status IN ('running', 'compensating') \
               AND due_at <= $3 AND (lease_until IS NULL OR lease_until < $3) \
               ORDER BY due_at LIMIT $4 {lock}) \
             RETURNING {COLUMNS}"
        ))
        .bind(owner)
        .bind(to_text(lease_until))
        .bind(to_text(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(read).collect()
    }

    /// Gives up the leases `owner` holds (at start: a restarted node takes its instances back
    /// at once instead of waiting for their leases to run out).
    pub async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE saga_instances SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(self.db.pool())
        .await?
        .rows_affected())
    }

    /// Saves `next` (read at `read_version`) with the attempt that led to it and, when it
    /// finished, its event. The lease is kept until `lease_until`, or dropped when `None`.
    pub async fn advance(
        &self,
        next: &Instance,
        read_version: i64,
        attempt: &Attempt,
        lease_until: Option<DateTime<Utc>>,
        event: Option<&CloudEvent>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE saga_instances SET status = $1, step = $2, attempt = $3, results = $4, \
             due_at = $5, flagged = $6, last_error = $7, version = $8, updated_at = $9, \
             lease_until = $10, lease_owner = CASE WHEN $10 IS NULL THEN NULL ELSE lease_owner END \
             WHERE id = $11 AND version = $12",
        )
        .bind(next.status.as_str())
        .bind(next.step)
        .bind(i64::from(next.attempt))
        .bind(serde_json::Value::Object(next.results.clone()).to_string())
        .bind(to_text(next.due_at))
        .bind(i64::from(next.flagged))
        .bind(next.last_error.as_deref())
        .bind(next.version)
        .bind(to_text(next.updated_at))
        .bind(lease_until.map(to_text))
        .bind(next.id.to_string())
        .bind(read_version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            return Err(StoreError::Conflict);
        }
        sqlx::query(
            "INSERT INTO saga_attempts (id, instance_id, step, step_name, phase, attempt, outcome, \
             status_code, error, started_at, duration_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(axle_core::id::new_id().to_string())
        .bind(next.id.to_string())
        .bind(attempt.step)
        .bind(&attempt.step_name)
        .bind(attempt.phase.as_str())
        .bind(i64::from(attempt.attempt))
        .bind(&attempt.outcome)
        .bind(attempt.status_code.map(i64::from))
        .bind(attempt.error.as_deref())
        .bind(to_text(attempt.started_at))
        .bind(attempt.duration_ms)
        .execute(&mut *tx)
        .await?;
        if let Some(event) = event {
            Outbox::enqueue(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Saves an operator's change (retry, abort), dropping any lease so a worker picks the
    /// instance up at once; a worker still busy with it fails its own save.
    pub async fn operate(
        &self,
        next: &Instance,
        read_version: i64,
        event: Option<&CloudEvent>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE saga_instances SET status = $1, step = $2, attempt = $3, due_at = $4, \
             flagged = $5, last_error = $6, version = $7, updated_at = $8, lease_owner = NULL, \
             lease_until = NULL WHERE id = $9 AND version = $10",
        )
        .bind(next.status.as_str())
        .bind(next.step)
        .bind(i64::from(next.attempt))
        .bind(to_text(next.due_at))
        .bind(i64::from(next.flagged))
        .bind(next.last_error.as_deref())
        .bind(next.version)
        .bind(to_text(next.updated_at))
        .bind(next.id.to_string())
        .bind(read_version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            return Err(StoreError::Conflict);
        }
        if let Some(event) = event {
            Outbox::enqueue(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Instance>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM saga_instances WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(read).transpose()
    }

    /// Newest first, before the instance `before`.
    pub async fn list(
        &self,
        filter: &Filter,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Instance>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM saga_instances WHERE id < $1 \
             AND ($2 IS NULL OR saga = $2) AND ($3 IS NULL OR status = $3) \
             AND ($4 IS NULL OR flagged = $4) AND ($5 IS NULL OR created_at < $5) \
             ORDER BY id DESC LIMIT $6"
        ))
        .bind(before.map_or_else(|| "~".to_string(), |b| b.to_string()))
        .bind(filter.saga.as_deref())
        .bind(filter.status.map(Status::as_str))
        .bind(filter.flagged.map(i64::from))
        .bind(filter.created_before.map(to_text))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(read).collect()
    }

    /// How many instances are in each status, and how many are flagged.
    pub async fn counts(&self) -> Result<(Vec<(Status, i64)>, i64), StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM saga_instances GROUP BY status")
            .fetch_all(self.db.pool())
            .await?;
        let mut counts = Vec::new();
        for row in rows {
            let status: String = row.get(0);
            if let Some(s) = Status::parse(&status) {
                counts.push((s, row.get::<i64, _>(1)));
            }
        }
        let flagged: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM saga_instances WHERE flagged = 1")
                .fetch_one(self.db.pool())
                .await?;
        Ok((counts, flagged))
    }

    /// The instance's timeline, oldest first.
    pub async fn attempts(&self, id: Uuid) -> Result<Vec<Attempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT step, step_name, phase, attempt, outcome, status_code, error, started_at, \
             duration_ms FROM saga_attempts WHERE instance_id = $1 ORDER BY id",
        )
        .bind(id.to_string())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let phase: String = r.get(2);
                Ok(Attempt {
                    step: r.get(0),
                    step_name: r.get(1),
                    phase: if phase == "compensation" {
                        Phase::Compensation
                    } else {
                        Phase::Action
                    },
                    attempt: u32::try_from(r.get::<i64, _>(3)).unwrap_or(0),
                    outcome: r.get(4),
                    status_code: r
                        .get::<Option<i64>, _>(5)
                        .and_then(|c| u16::try_from(c).ok()),
                    error: r.get(6),
                    started_at: time(&id.to_string(), r.get(7))?,
                    duration_ms: r.get(8),
                })
            })
            .collect()
    }
}

fn time(id: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    from_text(text).ok_or_else(|| StoreError::Corrupt(id.into(), format!("time {text:?}")))
}

fn read(row: &AnyRow) -> Result<Instance, StoreError> {
    let id: String = row.get(0);
    let corrupt = |what: String| StoreError::Corrupt(id.clone(), what);
    let status: String = row.get(3);
    let results: serde_json::Value =
        serde_json::from_str(row.get(7)).map_err(|e| corrupt(e.to_string()))?;
    Ok(Instance {
        id: Uuid::parse_str(&id).map_err(|e| corrupt(e.to_string()))?,
        saga: row.get(1),
        key: row.get(2),
        status: Status::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?,
        step: row.get(4),
        attempt: u32::try_from(row.get::<i64, _>(5)).unwrap_or(u32::MAX),
        input: serde_json::from_str(row.get(6)).map_err(|e| corrupt(e.to_string()))?,
        results: match results {
            serde_json::Value::Object(map) => map,
            _ => return Err(corrupt("results are not an object".into())),
        },
        due_at: time(&id, row.get(8))?,
        flagged: row.get::<i64, _>(9) != 0,
        last_error: row.get(10),
        version: row.get(11),
        created_at: time(&id, row.get(12))?,
        updated_at: time(&id, row.get(13))?,
    })
}
