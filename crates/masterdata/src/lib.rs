//! `axle-masterdata`: the master data service.
//!
//! Keeps one golden record per vehicle, built from the vehicle service's events (never from its
//! tables), with the provenance of every attribute and the full timeline; answers queries over
//! them; checks them against the source and rebuilds them from the event log. Also keeps the
//! model catalog synced from the upstream catalog service ([`catalog`]).
//! Rooms: [`api`] → [`domain`] (folding, comparison) → [`store`]; [`events`] consumes;
//! [`consistency`] reads the source's API.

pub mod api;
pub mod catalog;
pub mod consistency;
pub mod domain;
pub mod events;
pub mod store;

use axle_core::db::Migrations;
use axle_core::platform::{Platform, Service, ServiceParts, StartError};
use prometheus::Registry;
use utoipa::OpenApi;

/// What anyone may read without signing in: the model catalog.
pub const PUBLIC_PATHS: &[&str] = &["/models"];

pub const NAME: &str = "masterdata";

pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

/// Builds master data on `platform`: its database, its event consumer, the catalog sync and
/// its API.
pub async fn build(platform: &Platform) -> Result<Service, StartError> {
    let config = &platform.config.services.masterdata;
    let db = platform.open_db(NAME, &migrations()).await?;
    let registry = Registry::new();
    let store = store::GoldenStore::new(db.clone());
    let catalog = catalog::Catalog::new(
        db.clone(),
        config.catalog_url.clone(),
        std::time::Duration::from_secs(config.catalog_interval_secs),
        &registry,
    )?;
    let consumer =
        events::subscribe(&platform.bus, store.clone(), platform.shutdown.clone()).await?;
    let scheduler = catalog.spawn_scheduler(platform.shutdown.clone());
    let state = api::AppState {
        store,
        source: consistency::VehicleSource::new(&config.vehicle_url),
        bus: platform.bus.clone(),
        catalog,
    };
    let mut service = platform.assemble(ServiceParts {
        name: NAME,
        db,
        outbox: None,
        registry,
        api: api::router(state),
        openapi: serde_json::to_value(api::ApiDoc::openapi()).unwrap_or_default(),
    })?;
    service.tasks.push(consumer);
    service.tasks.extend(scheduler);
    Ok(service)
}
