//! `axle-finance`: the finance service (first part).
//!
//! Receivables raised for orders (by the settlement saga) and dealers' deposit accounts on a
//! double-entry ledger, which auctions hold against. Payments through a bank provider,
//! reconciliation and refunds come later.
//! Rooms: [`api`] (HTTP, thin) → [`domain`] (rules, no I/O) → [`store`] (SQL) and [`events`].

pub mod api;
pub mod domain;
pub mod events;
pub mod store;

use axle_core::db::Migrations;
use axle_core::events::Outbox;
use axle_core::platform::{Platform, Service, ServiceParts, StartError};
use prometheus::Registry;
use utoipa::OpenApi;

pub const NAME: &str = "finance";

/// The service's migrations: one portable SQL for both engines.
pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations"),
        postgres: sqlx::migrate!("./migrations"),
    }
}

/// Builds the finance service on `platform`: its database and outbox relay.
pub async fn build(platform: &Platform) -> Result<Service, StartError> {
    let db = platform.open_db(NAME, &migrations()).await?;
    let registry = Registry::new();
    let outbox = Outbox::new(db.clone(), &registry)?;
    let api = api::router(api::AppState {
        store: store::FinanceStore::new(db.clone()),
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
