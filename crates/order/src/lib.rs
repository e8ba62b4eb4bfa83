//! `axle-order`: the order service.
//!
//! Orders from auctions (created by the settlement saga) and the mall, their state machine
//! (created → awaiting payment → paid → fulfilling → delivered → completed, or cancelled), and
//! the payment deadline: an order not paid in time is cancelled by [`expiry`].
//! Rooms: [`api`] (HTTP, thin) → [`domain`] (rules, no I/O) → [`store`] (SQL) and [`events`].

pub mod api;
pub mod domain;
pub mod events;
pub mod expiry;
pub mod store;

use std::time::Duration;

use axle_core::db::Migrations;
use axle_core::events::Outbox;
use axle_core::platform::{Platform, Service, ServiceParts, StartError};
use prometheus::Registry;
use utoipa::OpenApi;

pub const NAME: &str = "order";

/// The service's migrations: one portable SQL for both engines.
pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations"),
        postgres: sqlx::migrate!("./migrations"),
    }
}

/// Builds the order service on `platform`: its database, outbox relay and deadline job.
pub async fn build(platform: &Platform) -> Result<Service, StartError> {
    let settings = &platform.config.services.order;
    let db = platform.open_db(NAME, &migrations()).await?;
    let registry = Registry::new();
    let outbox = Outbox::new(db.clone(), &registry)?;
    let store = store::OrderStore::new(db.clone());
    let expiry = expiry::spawn(
        store.clone(),
        outbox.clone(),
        Duration::from_secs(settings.expiry_check_secs),
        platform.shutdown.clone(),
    );
    let api = api::router(api::AppState {
        store,
        outbox: outbox.clone(),
        payment_deadline: chrono::Duration::seconds(
            i64::try_from(settings.payment_deadline_secs).unwrap_or(i64::MAX / 1000),
        ),
    });
    let mut service = platform.assemble(ServiceParts {
        name: NAME,
        db,
        outbox: Some(outbox),
        registry,
        api,
        openapi: serde_json::to_value(api::ApiDoc::openapi()).unwrap_or_default(),
    })?;
    service.tasks.push(expiry);
    Ok(service)
}
