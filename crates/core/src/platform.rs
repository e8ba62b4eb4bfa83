//! The platform a service runs on, and the shape of a running service.
//!
//! `axle serve` starts one [`Platform`] (configuration, data directory, event bus, kv store)
//! and hands it to each service's `build`, which opens the service's own database and returns a
//! [`Service`]: its router and background tasks. Services never share a database; they share
//! the bus and the kv store, which is how they talk besides HTTP.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use prometheus::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::{Db, DbError, DbTarget, Migrations};
use crate::events::{BusError, EventBus, Outbox};
use crate::http::{self, Readiness, ServiceHttp};
use crate::kv::{Kv, KvError};

/// Why a process or service could not start. Each message is one line naming the culprit.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir { path: String, source: io::Error },
    #[error("event bus: {0}")]
    Bus(#[from] BusError),
    #[error("kv store: {0}")]
    Kv(#[from] KvError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A service-specific start-up failure.
    #[error("{service}: {message}")]
    Service {
        service: &'static str,
        message: String,
    },
}

/// Configuration and shared backends, built once per process.
#[derive(Clone, Debug)]
pub struct Platform {
    pub config: Arc<Config>,
    pub bus: EventBus,
    pub kv: Kv,
    /// Verifies callers' tokens for every service's operations.
    pub verifier: http::Verifier,
    /// Cancelled when the process is asked to stop.
    pub shutdown: CancellationToken,
}

impl Platform {
    /// Prepares the data directory and connects the configured backends.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        ensure_writable_dir(&config.data_dir)?;
        let bus = EventBus::connect(&config.events, &config.data_dir).await?;
        let kv = Kv::connect(&config.kv).await?;
        Ok(Self {
            verifier: http::Verifier::new(&config),
            config: Arc::new(config),
            bus,
            kv,
            shutdown,
        })
    }

    /// Opens (creating and migrating) the database `service` owns.
    pub async fn open_db(&self, service: &str, migrations: &Migrations) -> Result<Db, DbError> {
        let target = DbTarget::for_service(&self.config.database, &self.config.data_dir, service);
        Db::open(service, &target, &self.config.database, migrations).await
    }

    /// Completes a service from its parts: applies `Idempotency-Key` to its API, gives its
    /// handlers the token verifier (for [`Caller`](http::Caller)), adds the endpoints every
    /// service has, and starts its outbox relay and housekeeping.
    pub fn assemble(&self, parts: ServiceParts) -> Result<Service, StartError> {
        let ServiceParts {
            name,
            db,
            outbox,
            registry,
            api,
            openapi,
        } = parts;
        let node: Arc<str> = Arc::from(self.config.node_name());
        let keys = http::idempotency::Keys {
            db: db.clone(),
            node: node.clone(),
        };
        let api = api
            .layer(axum::middleware::from_fn_with_state(
                keys,
                http::idempotency::layer,
            ))
            .layer(axum::Extension(self.verifier.clone()));
        let router = http::service_router(
            api,
            ServiceHttp {
                openapi,
                registry,
                readiness: self.readiness(&db),
                body_limit_bytes: self.config.http.body_limit_bytes,
            },
        )?;
        let mut tasks = Vec::new();
        if let Some(outbox) = outbox {
            tasks.push(outbox.spawn_relay(self.bus.clone(), self.shutdown.clone()));
        }
        tasks.push(spawn_housekeeping(db.clone(), node, self.shutdown.clone()));
        Ok(Service {
            name,
            router,
            db,
            tasks,
        })
    }

    fn readiness(&self, db: &Db) -> Readiness {
        let (db, bus, kv) = (db.clone(), self.bus.clone(), self.kv.clone());
        Arc::new(move || {
            let (db, bus, kv) = (db.clone(), bus.clone(), kv.clone());
            Box::pin(async move {
                db.ping().await.map_err(|e| format!("database: {e}"))?;
                bus.ping().await.map_err(|e| format!("event bus: {e}"))?;
                kv.ping().await.map_err(|e| format!("kv store: {e}"))?;
                Ok(())
            })
        })
    }
}

/// What a service's `build` hands to [`Platform::assemble`].
pub struct ServiceParts {
    pub name: &'static str,
    pub db: Db,
    /// The service's outbox, if it publishes events.
    pub outbox: Option<Outbox>,
    /// Where the service's metrics are registered (its outbox's included).
    pub registry: Registry,
    /// The service's own routes.
    pub api: Router,
    /// The service's OpenAPI document (`serde_json::to_value(ApiDoc::openapi())` for one
    /// utoipa generates).
    pub openapi: serde_json::Value,
}

/// A built service, ready to be served.
pub struct Service {
    pub name: &'static str,
    pub router: Router,
    pub db: Db,
    /// Background work that ends after the platform's shutdown token is cancelled.
    pub tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Waits for the background tasks (the outbox relay flushes), then closes the database.
    pub async fn stop(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        self.db.close().await;
    }
}

/// Creates `path` if needed, private to this user (0700: it holds keys and credentials), and
/// proves it writable, so start-up fails early and clearly.
fn ensure_writable_dir(path: &Path) -> Result<(), StartError> {
    let fail = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    crate::files::private_dir(path).map_err(fail)?;
    let probe = path.join(".axle-write-test");
    std::fs::write(&probe, b"ok").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

/// At start: give back this node's idempotency claims that a crash left unfinished. Hourly:
/// forget expired idempotency keys.
fn spawn_housekeeping(db: Db, node: Arc<str>, shutdown: CancellationToken) -> JoinHandle<()> {
    let started = crate::time::now_text();
    tokio::spawn(async move {
        match http::idempotency::release_claims(&db, &node, &started).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                claims = n,
                "gave back idempotency keys claimed before a crash"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not give back this node's idempotency claims")
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = http::idempotency::purge_expired(&db).await {
                        tracing::warn!(error = %e, "could not purge expired idempotency keys");
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    })
}
