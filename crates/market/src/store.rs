//! Persistence of products, their versions and their plans (one SQL dialect for SQLite and PostgreSQL, see
//! `axle_core::db`).
//!
//! A row holds its whole record as JSON (`doc`) beside the columns queries use; a version's
//! OpenAPI document is kept in its own column, read only when asked for. Every change is saved
//! with its event in one transaction; a change to a version is guarded by the version it was
//! read at (optimistic concurrency), so two publishers racing get one outcome and a `Conflict`.

use axle_core::db::{Db, violates};
use axle_core::events::{CloudEvent, Outbox};
use axle_core::time::to_text;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use crate::domain::plan::ProductPlan;
use crate::domain::product::Product;
use crate::domain::version::ApiVersion;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a product named {0:?} already exists")]
    SlugExists(String),
    #[error("the product already has a version {0}")]
    NumberExists(String),
    #[error("the product already has a plan named {0:?}")]
    PlanExists(String),
    #[error("the version changed concurrently")]
    Conflict,
    #[error("stored record {0} is unreadable: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// A stored item with its id, the version of its record and its times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record<T> {
    pub id: Uuid,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(flatten)]
    pub item: T,
}

impl<T> Record<T> {
    /// A new record of `item`, at version 1.
    pub fn new(item: T, id: Uuid, now: DateTime<Utc>) -> Record<T> {
        Record {
            id,
            version: 1,
            created_at: now,
            updated_at: now,
            item,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MarketStore {
    db: Db,
}

impl MarketStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Inserts a new product and its event in one transaction.
    pub async fn create_product(
        &self,
        product: &Record<Product>,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO products (id, slug, doc, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(product.id.to_string())
        .bind(&product.item.slug)
        .bind(doc(product))
        .bind(product.version)
        .bind(to_text(product.created_at))
        .bind(to_text(product.updated_at));
        let exists = StoreError::SlugExists(product.item.slug.clone());
        self.insert(
            insert,
            ["products_slug_key", "products.slug"],
            exists,
            event,
        )
        .await
    }

    pub async fn product(&self, id: Uuid) -> Result<Option<Record<Product>>, StoreError> {
        let row = sqlx::query("SELECT id, doc FROM products WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| read(&r)).transpose()
    }

    /// Products in id order (creation order), after `after`, at most `limit`.
    pub async fn products(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Record<Product>>, StoreError> {
        let rows = sqlx::query("SELECT id, doc FROM products WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after.map(|a| a.to_string()).unwrap_or_default())
            .bind(i64::from(limit))
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(read).collect()
    }

    /// Inserts a new version, its OpenAPI document and its event in one transaction.
    pub async fn create_version(
        &self,
        version: &Record<ApiVersion>,
        document: &Value,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO api_versions (id, product_id, number, status, doc, document, version, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(version.id.to_string())
        .bind(version.item.product_id.to_string())
        .bind(&version.item.number)
        .bind(version.item.status.name())
        .bind(doc(version))
        .bind(document.to_string())
        .bind(version.version)
        .bind(to_text(version.created_at))
        .bind(to_text(version.updated_at));
        let exists = StoreError::NumberExists(version.item.number.clone());
        let unique = [
            "api_versions_number_key",
            "api_versions.product_id, api_versions.number",
        ];
        self.insert(insert, unique, exists, event).await
    }

    pub async fn api_version(&self, id: Uuid) -> Result<Option<Record<ApiVersion>>, StoreError> {
        let row = sqlx::query("SELECT id, doc FROM api_versions WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| read(&r)).transpose()
    }

    /// The OpenAPI document version `id` was published with.
    pub async fn document(&self, id: Uuid) -> Result<Option<Value>, StoreError> {
        let row = sqlx::query("SELECT id, document FROM api_versions WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| {
            let text: String = r.try_get("document")?;
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string()))
        })
        .transpose()
    }

    /// A product's versions, oldest first.
    pub async fn versions_of(&self, product: Uuid) -> Result<Vec<Record<ApiVersion>>, StoreError> {
        let rows =
            sqlx::query("SELECT id, doc FROM api_versions WHERE product_id = $1 ORDER BY id")
                .bind(product.to_string())
                .fetch_all(self.db.pool())
                .await?;
        rows.iter().map(read).collect()
    }

    /// Saves `version` (at its new record version) and its event if the stored version is
    /// still at `read_version`; `Conflict` when another change came first.
    pub async fn save_version(
        &self,
        version: &Record<ApiVersion>,
        read_version: i64,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE api_versions SET status = $1, doc = $2, version = $3, updated_at = $4 \
             WHERE id = $5 AND version = $6",
        )
        .bind(version.item.status.name())
        .bind(doc(version))
        .bind(version.version)
        .bind(to_text(version.updated_at))
        .bind(version.id.to_string())
        .bind(read_version)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Conflict);
        }
        Outbox::enqueue(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Inserts a new plan and its event in one transaction.
    pub async fn create_plan(
        &self,
        plan: &Record<ProductPlan>,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO plans (id, product_id, name, doc, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(plan.id.to_string())
        .bind(plan.item.product_id.to_string())
        .bind(&plan.item.plan.name)
        .bind(doc(plan))
        .bind(plan.version)
        .bind(to_text(plan.created_at))
        .bind(to_text(plan.updated_at));
        let exists = StoreError::PlanExists(plan.item.plan.name.clone());
        let unique = ["plans_name_key", "plans.product_id, plans.name"];
        self.insert(insert, unique, exists, event).await
    }

    /// A product's plans, oldest first.
    pub async fn plans_of(&self, product: Uuid) -> Result<Vec<Record<ProductPlan>>, StoreError> {
        let rows = sqlx::query("SELECT id, doc FROM plans WHERE product_id = $1 ORDER BY id")
            .bind(product.to_string())
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(read).collect()
    }

    /// Runs `insert` and enqueues `event` in one transaction; `exists` when the insert breaks
    /// the unique constraint `unique` (named as PostgreSQL, then as SQLite names it).
    async fn insert<'q>(
        &self,
        insert: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        unique: [&str; 2],
        exists: StoreError,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        match insert.execute(&mut *tx).await {
            Err(e) if unique.iter().any(|name| violates(&e, name)) => return Err(exists),
            other => other?,
        };
        Outbox::enqueue(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }
}

fn doc<T: Serialize>(record: &Record<T>) -> String {
    serde_json::to_string(record).unwrap_or_default()
}

fn read<T: DeserializeOwned>(row: &sqlx::any::AnyRow) -> Result<Record<T>, StoreError> {
    let id: String = row.try_get("id")?;
    let text: String = row.try_get("doc")?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(id, e.to_string()))
}
