//! The market's side of the gateway: its state written as gateway configuration.
//!
//! [`config`] works out what the gateway should hold (pure); [`GatewaySync`] makes it so
//! through the gateway's [`admin`] API, after every change and every few seconds: it writes
//! what differs from what it last wrote (or what the gateway lost), deletes the market's
//! routes that no longer belong, and takes lapsed API keys out. Keys themselves are written
//! when they are made (the market keeps only their hash), by [`GatewaySync::add_key`].
//!
//! A change the API makes waits for the sync that follows it ([`GatewaySync::flush`]), so
//! when an approval or a revocation is answered, the gateway has it. With the gateway
//! unreachable the change is kept and written when it is back; the gateway meanwhile goes on
//! with what it last had.

pub mod admin;
pub mod config;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::application::consumer_name;
use crate::store::{MarketStore, StoreError};
use admin::{AdminApi, AdminError};

/// How often the gateway is checked when nothing changed.
const EVERY: Duration = Duration::from_secs(10);
/// How soon a failed sync is tried again.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct GatewaySync {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: MarketStore,
    admin: AdminApi,
    settings: config::Settings,
    wake: Notify,
    /// Syncs asked for, and the last one finished.
    asked: AtomicU64,
    done: watch::Sender<u64>,
}

impl GatewaySync {
    pub fn new(store: MarketStore, admin: AdminApi, settings: config::Settings) -> GatewaySync {
        GatewaySync {
            inner: Arc::new(Inner {
                store,
                admin,
                settings,
                wake: Notify::new(),
                asked: AtomicU64::new(0),
                done: watch::channel(0).0,
            }),
        }
    }

    /// Syncs until `shutdown`.
    pub fn spawn(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut written = HashMap::new();
            let mut failing = false;
            loop {
                let asked = inner.asked.load(Ordering::Acquire);
                match inner.sync(&mut written).await {
                    Ok(()) => {
                        if failing {
                            tracing::info!("the gateway has the market's configuration again");
                        }
                        failing = false;
                        inner.done.send_replace(asked);
                    }
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "the market's gateway configuration is not written yet; retrying");
                        failing = true;
                    }
                    Err(_) => {}
                }
                let pause = if failing { RETRY } else { EVERY };
                tokio::select! {
                    _ = inner.wake.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        })
    }

    /// Asks for a sync and waits (up to `within`) until one that started after the ask has
    /// finished; false when none did in time (the gateway is unreachable: it will be
    /// written when it is back).
    pub async fn flush(&self, within: Duration) -> bool {
        let ticket = self.inner.asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.inner.wake.notify_one();
        let mut done = self.inner.done.subscribe();
        tokio::time::timeout(within, done.wait_for(|d| *d >= ticket))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The gateway's Admin API.
    pub fn admin(&self) -> &AdminApi {
        &self.inner.admin
    }

    /// Gives the gateway a new key of `application` (its consumer first, should it not have
    /// it yet).
    pub async fn add_key(
        &self,
        application: &crate::store::Record<crate::domain::application::Application>,
        key_id: Uuid,
        key: &str,
    ) -> Result<(), AdminError> {
        let admin = &self.inner.admin;
        let username = consumer_name(application.id);
        let consumer = format!("/apisix/admin/consumers/{username}");
        if admin.get(&consumer).await?.is_none() {
            admin.put(&consumer, &config::consumer(application)).await?;
        }
        let credential = json!({
            "desc": format!("API market key {}", key_id),
            "plugins": {"key-auth": {"key": key}},
        });
        admin
            .put(&credential_path(&username, key_id), &credential)
            .await
    }
}

impl GatewaySync {
    /// Takes `key` out of the gateway.
    pub async fn remove_key(
        &self,
        key: &crate::store::Record<crate::domain::application::ApiKey>,
    ) -> Result<(), AdminError> {
        let username = consumer_name(key.item.application_id);
        self.inner
            .admin
            .delete(&credential_path(&username, key.id))
            .await
    }
}

fn credential_path(username: &str, key_id: Uuid) -> String {
    format!(
        "/apisix/admin/consumers/{username}/credentials/{}",
        key_id.simple()
    )
}

impl Inner {
    /// One pass: consumers, routes, lapsed keys.
    async fn sync(&self, written: &mut HashMap<String, Value>) -> Result<(), SyncError> {
        let desired = self.desired().await?;
        let mut present = HashSet::new();
        for (kind, prefix) in [("consumers", "market_"), ("routes", "market-")] {
            for id in self.admin.ids(kind, prefix).await? {
                present.insert(format!("/apisix/admin/{kind}/{id}"));
            }
        }
        // Consumers come first in `desired` (their paths sort before routes').
        for (path, document) in &desired {
            let current = present.contains(path) && written.get(path) == Some(document);
            if !current {
                self.admin.put(path, document).await?;
                written.insert(path.clone(), document.clone());
            }
        }
        for path in present.iter().filter(|p| p.contains("/routes/")) {
            if !desired.contains_key(path) {
                self.admin.delete(path).await?;
                written.remove(path);
            }
        }
        for key in self.store.lapsed_keys(axle_core::time::now()).await? {
            let username = consumer_name(key.item.application_id);
            self.admin
                .delete(&credential_path(&username, key.id))
                .await?;
            self.store.key_removed(key.id).await?;
        }
        Ok(())
    }

    /// What the gateway should hold, by Admin API path.
    async fn desired(&self) -> Result<BTreeMap<String, Value>, StoreError> {
        let mut desired = BTreeMap::new();
        for app in self.store.applications().await? {
            let path = format!("/apisix/admin/consumers/{}", consumer_name(app.id));
            desired.insert(path, config::consumer(&app));
        }
        let mut after = None;
        loop {
            let products = self.store.products(after, 100).await?;
            let Some(last) = products.last() else { break };
            after = Some(last.id);
            for product in &products {
                let versions = self.store.versions_of(product.id).await?;
                if versions.is_empty() {
                    continue;
                }
                let plans = self.store.plans_of(product.id).await?;
                let subscriptions = self.store.subscriptions_to(product.id).await?;
                let state = config::ProductState {
                    product,
                    versions: &versions,
                    plans: &plans,
                    subscriptions: &subscriptions,
                };
                for (id, route) in config::routes(&state, &self.settings) {
                    desired.insert(format!("/apisix/admin/routes/{id}"), route);
                }
            }
        }
        Ok(desired)
    }
}
