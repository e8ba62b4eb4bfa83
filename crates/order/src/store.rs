//! Persistence of orders (one SQL for SQLite and PostgreSQL, see `axle_core::db`).
//!
//! A row holds the whole order as JSON (`doc`) plus the columns lists and the deadline job
//! filter on. Every change is saved with its event in one transaction, guarded by the version
//! it was read at: a concurrent change makes the save fail with `Conflict`.

use axle_core::db::{Db, is_unique_violation};
use axle_core::events::{CloudEvent, Outbox};
use axle_core::time::to_text;
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use crate::domain::{Order, OrderStatus};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("an order {0} already exists")]
    Exists(Uuid),
    #[error("the order changed concurrently")]
    Conflict,
    #[error("stored order {0} is unreadable: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Which orders a list returns.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub buyer_org: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OrderStore {
    db: Db,
}

impl OrderStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Inserts a new order and its event in one transaction.
    pub async fn create(&self, order: &Order, event: &CloudEvent) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO orders (id, status, buyer_org, seller_org, source_kind, source_ref, \
             payment_deadline, version, created_at, updated_at, doc) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(order.id.to_string())
        .bind(order.status.as_str())
        .bind(&order.buyer_org)
        .bind(&order.seller_org)
        .bind(order.source.kind.as_str())
        .bind(&order.source.reference)
        .bind(order.payment_deadline.map(to_text))
        .bind(order.version)
        .bind(to_text(order.created_at))
        .bind(to_text(order.updated_at))
        .bind(doc(order));
        match Outbox::commit(&self.db, insert, event).await {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Exists(order.id)),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    /// Saves `order` and its event if the stored order is still at `read_version`.
    pub async fn save(
        &self,
        order: &Order,
        read_version: i64,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let update = sqlx::query(
            "UPDATE orders SET status = $1, payment_deadline = $2, version = $3, updated_at = $4, \
             doc = $5 WHERE id = $6 AND version = $7",
        )
        .bind(order.status.as_str())
        .bind(order.payment_deadline.map(to_text))
        .bind(order.version)
        .bind(to_text(order.updated_at))
        .bind(doc(order))
        .bind(order.id.to_string())
        .bind(read_version);
        match Outbox::commit(&self.db, update, event).await? {
            1 => Ok(()),
            _ => Err(StoreError::Conflict),
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Order>, StoreError> {
        let row = sqlx::query("SELECT id, doc FROM orders WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| read(r.get(0), r.get(1))).transpose()
    }

    /// Up to `limit` orders matching `filter`, newest first, before the order `before`.
    pub async fn list(
        &self,
        filter: &OrderFilter,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError> {
        // UUIDv7 text sorts by creation time; "~" sorts after every id.
        let rows = sqlx::query(
            "SELECT id, doc FROM orders WHERE id < $1 \
             AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR buyer_org = $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(before.map_or_else(|| "~".to_string(), |b| b.to_string()))
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.buyer_org.as_deref())
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter().map(|r| read(r.get(0), r.get(1))).collect()
    }

    /// Orders awaiting payment whose deadline passed by `now`, oldest deadline first.
    pub async fn overdue(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Order>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, doc FROM orders WHERE status = $1 AND payment_deadline < $2 \
             ORDER BY payment_deadline LIMIT $3",
        )
        .bind(OrderStatus::AwaitingPayment.as_str())
        .bind(to_text(now))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter().map(|r| read(r.get(0), r.get(1))).collect()
    }
}

fn doc(order: &Order) -> String {
    // Strings, numbers, times and nested structs always serialise.
    serde_json::to_string(order).unwrap_or_default()
}

fn read(id: String, doc: String) -> Result<Order, StoreError> {
    serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(id, e.to_string()))
}
