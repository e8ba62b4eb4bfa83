//! Persistence of products, their versions and plans, applications, their keys and their
//! subscriptions (one SQL dialect for SQLite and PostgreSQL, see `axle_core::db`).
//!
//! A row holds its whole record as JSON (`doc`) beside the columns queries use; a version's
//! OpenAPI document is kept in its own column, read only when asked for. Every change is saved
//! with its event in one transaction; a change to a version is guarded by the version it was
//! read at (optimistic concurrency), so two publishers racing get one outcome and a `Conflict`.
//! Every change also leaves its line in the audit trail (`axle_core::audit`).

use std::collections::BTreeMap;

use axle_core::db::{Db, violates};
use axle_core::events::{CloudEvent, Outbox};
use axle_core::time::to_text;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use crate::domain::application::{ApiKey, Application};
use crate::domain::plan::ProductPlan;
use crate::domain::product::Product;
use crate::domain::subscription::{Status as SubscriptionStatus, Subscription};
use crate::domain::usage;
use crate::domain::version::ApiVersion;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a product named {0:?} already exists")]
    SlugExists(String),
    #[error("the product already has a version {0}")]
    NumberExists(String),
    #[error("the product already has a plan named {0:?}")]
    PlanExists(String),
    #[error("the application already has a subscription to this product")]
    SubscriptionExists,
    #[error("the record changed concurrently")]
    Conflict,
    #[error("stored record {0} is unreadable: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// A stored item with its id, the version of its record and its times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
            &["products_slug_key", "products.slug"],
            exists,
            event,
        )
        .await
    }

    pub async fn product(&self, id: Uuid) -> Result<Option<Record<Product>>, StoreError> {
        self.get("products", id).await
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
        self.insert(insert, &unique, exists, event).await
    }

    pub async fn api_version(&self, id: Uuid) -> Result<Option<Record<ApiVersion>>, StoreError> {
        self.get("api_versions", id).await
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
        self.all_where("api_versions", "product_id", &product.to_string())
            .await
    }

    /// Saves `version` (at its new record version) and its event if the stored version is
    /// still at `read_version`; `Conflict` when another change came first.
    pub async fn save_version(
        &self,
        version: &Record<ApiVersion>,
        read_version: i64,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let status = version.item.status.name();
        self.save("api_versions", version, status, read_version, event)
            .await
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
        self.insert(insert, &unique, exists, event).await
    }

    pub async fn plan(&self, id: Uuid) -> Result<Option<Record<ProductPlan>>, StoreError> {
        self.get("plans", id).await
    }

    /// A product's plans, oldest first.
    pub async fn plans_of(&self, product: Uuid) -> Result<Vec<Record<ProductPlan>>, StoreError> {
        self.all_where("plans", "product_id", &product.to_string())
            .await
    }

    /// Inserts a new application and its event in one transaction.
    pub async fn create_application(
        &self,
        app: &Record<Application>,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO applications (id, owner, doc, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(app.id.to_string())
        .bind(&app.item.owner)
        .bind(doc(app))
        .bind(app.version)
        .bind(to_text(app.created_at))
        .bind(to_text(app.updated_at));
        self.insert(insert, &[], StoreError::Conflict, event).await
    }

    pub async fn application(&self, id: Uuid) -> Result<Option<Record<Application>>, StoreError> {
        self.get("applications", id).await
    }

    /// The applications `owner` (a subject) owns, oldest first.
    pub async fn applications_of(
        &self,
        owner: &str,
    ) -> Result<Vec<Record<Application>>, StoreError> {
        self.all_where("applications", "owner", owner).await
    }

    /// Every application, oldest first (the gateway's consumers).
    pub async fn applications(&self) -> Result<Vec<Record<Application>>, StoreError> {
        let rows = sqlx::query("SELECT id, doc FROM applications ORDER BY id")
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(read).collect()
    }

    /// Inserts a new key (what is kept of it) and its event in one transaction.
    pub async fn create_key(
        &self,
        key: &Record<ApiKey>,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO api_keys (id, application_id, hash, expires_at, doc, version, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(key.id.to_string())
        .bind(key.item.application_id.to_string())
        .bind(&key.item.hash)
        .bind(key.item.expires_at.map(to_text))
        .bind(doc(key))
        .bind(key.version)
        .bind(to_text(key.created_at))
        .bind(to_text(key.updated_at));
        self.insert(insert, &[], StoreError::Conflict, event).await
    }

    pub async fn key(&self, id: Uuid) -> Result<Option<Record<ApiKey>>, StoreError> {
        self.get("api_keys", id).await
    }

    /// An application's keys, oldest first, expired ones included.
    pub async fn keys_of(&self, application: Uuid) -> Result<Vec<Record<ApiKey>>, StoreError> {
        self.all_where("api_keys", "application_id", &application.to_string())
            .await
    }

    /// Saves a key's new end (rotation, revocation) and its event, guarded as versions are.
    pub async fn save_key(
        &self,
        key: &Record<ApiKey>,
        read_version: i64,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE api_keys SET expires_at = $1, doc = $2, version = $3, updated_at = $4 \
             WHERE id = $5 AND version = $6",
        )
        .bind(key.item.expires_at.map(to_text))
        .bind(doc(key))
        .bind(key.version)
        .bind(to_text(key.updated_at))
        .bind(key.id.to_string())
        .bind(read_version)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Conflict);
        }
        logged(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Keys that stopped working by `now` and that the gateway may still hold.
    pub async fn lapsed_keys(&self, now: DateTime<Utc>) -> Result<Vec<Record<ApiKey>>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, doc FROM api_keys WHERE removed = 0 AND expires_at IS NOT NULL \
             AND expires_at <= $1 ORDER BY id",
        )
        .bind(to_text(now))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(read).collect()
    }

    /// Notes that the gateway no longer holds key `id`.
    pub async fn key_removed(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET removed = 1 WHERE id = $1")
            .bind(id.to_string())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Inserts a new subscription and its event in one transaction;
    /// `SubscriptionExists` when the application has a live one to the product.
    pub async fn create_subscription(
        &self,
        sub: &Record<Subscription>,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO subscriptions (id, application_id, product_id, plan_id, status, doc, \
             version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(sub.id.to_string())
        .bind(sub.item.application_id.to_string())
        .bind(sub.item.product_id.to_string())
        .bind(sub.item.plan_id.to_string())
        .bind(sub.item.status.name())
        .bind(doc(sub))
        .bind(sub.version)
        .bind(to_text(sub.created_at))
        .bind(to_text(sub.updated_at));
        let unique = [
            "subscriptions_live_key",
            "subscriptions.application_id, subscriptions.product_id",
        ];
        self.insert(insert, &unique, StoreError::SubscriptionExists, event)
            .await
    }

    pub async fn subscription(&self, id: Uuid) -> Result<Option<Record<Subscription>>, StoreError> {
        self.get("subscriptions", id).await
    }

    /// An application's subscriptions, oldest first.
    pub async fn subscriptions_of(
        &self,
        application: Uuid,
    ) -> Result<Vec<Record<Subscription>>, StoreError> {
        self.all_where("subscriptions", "application_id", &application.to_string())
            .await
    }

    /// A product's subscriptions, oldest first.
    pub async fn subscriptions_to(
        &self,
        product: Uuid,
    ) -> Result<Vec<Record<Subscription>>, StoreError> {
        self.all_where("subscriptions", "product_id", &product.to_string())
            .await
    }

    /// Subscriptions in `status`, oldest first (the approvals queue: `requested`).
    pub async fn subscriptions_in(
        &self,
        status: SubscriptionStatus,
    ) -> Result<Vec<Record<Subscription>>, StoreError> {
        self.all_where("subscriptions", "status", status.name())
            .await
    }

    /// Saves a subscription's move and its event, guarded by the version it was read at, so
    /// of two publishers deciding at once one wins and the other gets `Conflict`.
    pub async fn save_subscription(
        &self,
        sub: &Record<Subscription>,
        read_version: i64,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let status = sub.item.status.name();
        self.save("subscriptions", sub, status, read_version, event)
            .await
    }

    /// The audit trail, oldest first (of one record, or of all).
    pub async fn audit_trail(
        &self,
        target: Option<&str>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<axle_core::audit::AuditEntry>, StoreError> {
        Ok(axle_core::audit::trail(&self.db, target, after, limit).await?)
    }

    /// Adds counted usage to what is stored, in one transaction.
    pub async fn add_usage(
        &self,
        counted: &BTreeMap<usage::Key, usage::Counts>,
    ) -> Result<(), StoreError> {
        let buckets: String = (0..usage::BUCKETS).map(|i| format!(", l{i}")).collect();
        let values: String = (0..usage::BUCKETS)
            .map(|i| format!(", ${}", 9 + i))
            .collect();
        let sums: String = (0..usage::BUCKETS)
            .map(|i| format!(", l{i} = usage_minutes.l{i} + excluded.l{i}"))
            .collect();
        let sql = format!(
            "INSERT INTO usage_minutes (minute, application_id, product_id, status, requests, \
             bytes, latency_ms, dropped{buckets}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8{values}) \
             ON CONFLICT (minute, application_id, product_id, status) DO UPDATE SET \
             requests = usage_minutes.requests + excluded.requests, \
             bytes = usage_minutes.bytes + excluded.bytes, \
             latency_ms = usage_minutes.latency_ms + excluded.latency_ms, \
             dropped = usage_minutes.dropped + excluded.dropped{sums}"
        );
        let mut tx = self.db.begin().await?;
        for (key, counts) in counted {
            let number = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            let mut query = sqlx::query(&sql)
                .bind(to_text(key.minute))
                .bind(key.application.map(|a| a.to_string()).unwrap_or_default())
                .bind(key.product.to_string())
                .bind(i64::from(key.status))
                .bind(number(counts.requests))
                .bind(number(counts.bytes))
                .bind(number(counts.latency_ms))
                .bind(number(counts.dropped));
            for n in counts.latency {
                query = query.bind(number(n));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The usage rows of an application (or, with `by_product`, of a product) since `from`.
    pub async fn usage(
        &self,
        id: Uuid,
        by_product: bool,
        from: DateTime<Utc>,
    ) -> Result<Vec<(usage::Key, usage::Counts)>, StoreError> {
        let column = if by_product {
            "product_id"
        } else {
            "application_id"
        };
        let buckets: String = (0..usage::BUCKETS).map(|i| format!(", l{i}")).collect();
        let sql = format!(
            "SELECT minute, application_id, product_id, status, requests, bytes, latency_ms, \
             dropped{buckets} FROM usage_minutes WHERE {column} = $1 AND minute >= $2 \
             ORDER BY minute"
        );
        let rows = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(to_text(from))
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(usage_row).collect()
    }

    async fn get<T: DeserializeOwned>(
        &self,
        table: &str,
        id: Uuid,
    ) -> Result<Option<Record<T>>, StoreError> {
        let row = sqlx::query(&format!("SELECT id, doc FROM {table} WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| read(&r)).transpose()
    }

    /// The records of `table` whose `column` is `value`, oldest first.
    async fn all_where<T: DeserializeOwned>(
        &self,
        table: &str,
        column: &str,
        value: &str,
    ) -> Result<Vec<Record<T>>, StoreError> {
        let sql = format!("SELECT id, doc FROM {table} WHERE {column} = $1 ORDER BY id");
        let rows = sqlx::query(&sql)
            .bind(value)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(read).collect()
    }

    /// Saves `record` (its doc, status and new record version) and its event in one
    /// transaction if `table`'s row is still at `read_version`; `Conflict` otherwise.
    async fn save<T: Serialize>(
        &self,
        table: &str,
        record: &Record<T>,
        status: &str,
        read_version: i64,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let sql = format!(
            "UPDATE {table} SET status = $1, doc = $2, version = $3, updated_at = $4 \
             WHERE id = $5 AND version = $6"
        );
        let updated = sqlx::query(&sql)
            .bind(status)
            .bind(doc(record))
            .bind(record.version)
            .bind(to_text(record.updated_at))
            .bind(record.id.to_string())
            .bind(read_version)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Conflict);
        }
        logged(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs `insert` and enqueues `event` in one transaction; `exists` when the insert breaks
    /// the unique constraint `unique` (named as PostgreSQL, then as SQLite names it).
    async fn insert<'q>(
        &self,
        insert: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        unique: &[&str],
        exists: StoreError,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        match insert.execute(&mut *tx).await {
            Err(e) if unique.iter().any(|name| violates(&e, name)) => return Err(exists),
            other => other?,
        };
        logged(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A change's event into the outbox, and its line into the audit trail, in its transaction.
async fn logged(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    event: &CloudEvent,
) -> Result<(), StoreError> {
    Outbox::enqueue(tx, event).await?;
    let actor = event.data["actor"].as_str().unwrap_or("unknown");
    axle_core::audit::record(tx, actor, &event.ty, &event.subject, &event.data).await?;
    Ok(())
}

fn usage_row(row: &sqlx::any::AnyRow) -> Result<(usage::Key, usage::Counts), StoreError> {
    let corrupt = |e: String| StoreError::Corrupt("usage_minutes".into(), e);
    let minute: String = row.try_get("minute")?;
    let application: String = row.try_get("application_id")?;
    let product: String = row.try_get("product_id")?;
    let number = |name: &str| -> Result<u64, StoreError> {
        let n: i64 = row.try_get(name)?;
        Ok(u64::try_from(n).unwrap_or_default())
    };
    let mut latency = [0; usage::BUCKETS];
    for (i, n) in latency.iter_mut().enumerate() {
        *n = number(&format!("l{i}"))?;
    }
    let key = usage::Key {
        minute: axle_core::time::from_text(&minute)
            .ok_or_else(|| corrupt(format!("minute {minute:?}")))?,
        application: match application.as_str() {
            "" => None,
            id => Some(Uuid::parse_str(id).map_err(|e| corrupt(e.to_string()))?),
        },
        product: Uuid::parse_str(&product).map_err(|e| corrupt(e.to_string()))?,
        status: u8::try_from(number("status")?).unwrap_or_default(),
    };
    let counts = usage::Counts {
        requests: number("requests")?,
        bytes: number("bytes")?,
        latency_ms: number("latency_ms")?,
        dropped: number("dropped")?,
        latency,
    };
    Ok((key, counts))
}

fn doc<T: Serialize>(record: &Record<T>) -> String {
    serde_json::to_string(record).unwrap_or_default()
}

fn read<T: DeserializeOwned>(row: &sqlx::any::AnyRow) -> Result<Record<T>, StoreError> {
    let id: String = row.try_get("id")?;
    let text: String = row.try_get("doc")?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(id, e.to_string()))
}
