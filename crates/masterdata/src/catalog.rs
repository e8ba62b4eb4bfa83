//! Model configuration: the catalog of makes, models, trims, colours and guide prices, pulled
//! incrementally from the upstream catalog service on a schedule and served from a local copy.
//!
//! Upstream contract: `GET {catalog_url}/models?updated_since=<RFC 3339>` answers
//! `{"models": [CatalogModel...], "as_of": "<RFC 3339>"}` with the models changed since then
//! (all of them without the parameter); a model with `"retired": true` is removed. The next
//! sync asks from `as_of`. When the upstream fails, the local copy keeps being served, marked
//! `stale`, and the `axle_masterdata_catalog_stale` gauge turns 1 so an alert can fire.

use std::time::Duration;

use axle_core::db::Db;
use axle_core::money::Money;
use axle_core::time::{from_text, now_text, to_text};
use chrono::{DateTime, Utc};
use prometheus::{IntCounter, IntGauge, Registry};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CatalogModel {
    /// The upstream's unique code for this configuration.
    pub code: String,
    pub make: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trim: Option<String>,
    pub year: i32,
    #[serde(default)]
    pub colours: Vec<String>,
    pub guide_price: Money,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retired: bool,
}

#[derive(Debug, Deserialize)]
struct UpstreamPage {
    models: Vec<CatalogModel>,
    as_of: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("no catalog_url is configured")]
    NotConfigured,
    #[error("upstream catalog: {0}")]
    Upstream(String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// How fresh the local copy is.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SyncStatus {
    /// True when the last sync failed, or none succeeded within two intervals.
    pub stale: bool,
    pub synced_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone)]
pub struct Catalog {
    db: Db,
    upstream: Option<String>,
    interval: Duration,
    client: reqwest::Client,
    stale: IntGauge,
    failures: IntCounter,
}

impl Catalog {
    pub fn new(
        db: Db,
        upstream: Option<String>,
        interval: Duration,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let stale = IntGauge::new(
            "axle_masterdata_catalog_stale",
            "1 while the model catalog is served from a stale copy",
        )?;
        let failures = IntCounter::new(
            "axle_masterdata_catalog_sync_failures_total",
            "Failed model catalog syncs",
        )?;
        registry.register(Box::new(stale.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Ok(Self {
            db,
            upstream: upstream.map(|u| u.trim_end_matches('/').to_string()),
            interval,
            client,
            stale,
            failures,
        })
    }

    /// Pulls what changed upstream since the last sync; returns how many models changed.
    pub async fn sync_once(&self) -> Result<usize, SyncError> {
        let Some(upstream) = &self.upstream else {
            return Err(SyncError::NotConfigured);
        };
        sqlx::query("UPDATE catalog_sync SET last_attempt = $1 WHERE id = 1")
            .bind(now_text())
            .execute(self.db.pool())
            .await?;
        let result = self.pull(upstream).await;
        match &result {
            Ok(_) => self.stale.set(0),
            Err(e) => {
                self.failures.inc();
                self.stale.set(1);
                tracing::warn!(error = %e, "model catalog sync failed; serving the cached copy as stale");
                sqlx::query("UPDATE catalog_sync SET last_error = $1 WHERE id = 1")
                    .bind(e.to_string())
                    .execute(self.db.pool())
                    .await?;
            }
        }
        result
    }

    async fn pull(&self, upstream: &str) -> Result<usize, SyncError> {
        let cursor: Option<String> =
            sqlx::query_scalar("SELECT cursor FROM catalog_sync WHERE id = 1")
                .fetch_one(self.db.pool())
                .await?;
        let mut url = reqwest::Url::parse(&format!("{upstream}/models"))
            .map_err(|e| SyncError::Upstream(e.to_string()))?;
        if let Some(cursor) = &cursor {
            url.query_pairs_mut().append_pair("updated_since", cursor);
        }
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| SyncError::Upstream(e.to_string()))?;
        if !response.status().is_success() {
            return Err(SyncError::Upstream(format!(
                "answered {}",
                response.status()
            )));
        }
        let page: UpstreamPage = response
            .json()
            .await
            .map_err(|e| SyncError::Upstream(format!("unreadable answer: {e}")))?;
        let mut tx = self.db.begin().await?;
        for model in &page.models {
            if model.retired {
                sqlx::query("DELETE FROM catalog_models WHERE code = $1")
                    .bind(&model.code)
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            sqlx::query(
                "INSERT INTO catalog_models (code, make, doc, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (code) DO UPDATE SET make = excluded.make, doc = excluded.doc, updated_at = excluded.updated_at",
            )
            .bind(&model.code)
            .bind(&model.make)
            .bind(serde_json::to_string(model).unwrap_or_default())
            .bind(to_text(model.updated_at))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE catalog_sync SET cursor = $1, last_success = $2, last_error = NULL WHERE id = 1")
            .bind(to_text(page.as_of))
            .bind(now_text())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(page.models.len())
    }

    pub async fn status(&self) -> Result<SyncStatus, sqlx::Error> {
        let row = sqlx::query("SELECT last_success, last_error FROM catalog_sync WHERE id = 1")
            .fetch_one(self.db.pool())
            .await?;
        let synced_at = row.get::<Option<String>, _>(0).and_then(|t| from_text(&t));
        let last_error: Option<String> = row.get(1);
        let fresh_until = synced_at
            .map(|t| t + chrono::Duration::from_std(self.interval * 2).unwrap_or_default());
        let stale = self.upstream.is_some()
            && (last_error.is_some() || fresh_until.is_none_or(|t| t < Utc::now()));
        Ok(SyncStatus {
            stale,
            synced_at,
            last_error,
        })
    }

    /// Cached models, optionally of one make, in code order.
    pub async fn models(&self, make: Option<&str>) -> Result<Vec<CatalogModel>, sqlx::Error> {
        let docs: Vec<String> = sqlx::query_scalar(
            "SELECT doc FROM catalog_models WHERE ($1 IS NULL OR make = $1) ORDER BY code",
        )
        .bind(make)
        .fetch_all(self.db.pool())
        .await?;
        Ok(docs
            .iter()
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect())
    }

    /// Syncs at start and then every interval until `shutdown` (nothing when unconfigured).
    pub fn spawn_scheduler(&self, shutdown: CancellationToken) -> Option<JoinHandle<()>> {
        self.upstream.as_ref()?;
        let catalog = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(catalog.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => { let _ = catalog.sync_once().await; }
                    _ = shutdown.cancelled() => return,
                }
            }
        }))
    }
}
