//! `axle-vehicle`: the vehicle service.
//!
//! Owns vehicles and their lifecycle; every change is an event published through the outbox.
//! Rooms: [`api`] (HTTP, thin) → [`domain`] (rules, no I/O) → [`store`] (SQL) and [`events`].
//! This is the first service on `axle-core` (issue F1); the full lifecycle, inspections,
//! pricing and inventory pools come with issue V1.

pub mod api;
pub mod domain;
pub mod events;
pub mod store;

pub use axle_vehicle_api as contract;

use axle_core::db::Migrations;
use axle_core::events::Outbox;
use axle_core::platform::{Platform, Service, ServiceParts, StartError};
use prometheus::Registry;
use utoipa::OpenApi;

pub const NAME: &str = "vehicle";

/// The service's migrations, embedded in the binary.
pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

/// Builds the vehicle service on `platform`: opens its database and starts its outbox relay.
pub async fn build(platform: &Platform) -> Result<Service, StartError> {
    let db = platform.open_db(NAME, &migrations()).await?;
    let registry = Registry::new();
    let outbox = Outbox::new(db.clone(), &registry)?;
    let api = api::router(api::AppState {
        store: store::VehicleStore::new(db.clone()),
        outbox: outbox.clone(),
    });
    platform.assemble(ServiceParts {
        name: NAME,
        db,
        outbox: Some(outbox),
        registry,
        api,
        openapi: serde_json::to_value(api::ApiDoc::openapi()).unwrap_or_default(),
    })
}
