//! `axle-saga`: the saga orchestrator.
//!
//! A saga is a transaction across services: steps, each an action on a participant's HTTP API
//! and a compensation that undoes it; when a step fails for good, the completed ones are undone
//! in reverse. Instances are kept in the orchestrator's own database (SQLite or PostgreSQL),
//! driven by the [`engine`]'s workers, resumed after a crash, and visible and operable through
//! `/sagas`. The one saga today is the auction [`settlement`], started at `/settlements`.
//! Rooms: [`api`] (HTTP, thin) → [`domain`] (instances and their moves, no I/O) → [`store`]
//! (SQL), [`engine`] (claiming and calling), [`events`].

pub mod api;
pub mod domain;
pub mod engine;
pub mod events;
pub mod settlement;
pub mod store;

use std::collections::HashMap;

use axle_core::config::Config;
use axle_core::db::Migrations;
use axle_core::events::Outbox;
use axle_core::http::client::{ClientSecret, ClientToken};
use axle_core::platform::{Platform, Service, ServiceParts, StartError};
use prometheus::Registry;
use utoipa::OpenApi;

pub const NAME: &str = "saga";

/// The service's migrations: one portable SQL for both engines.
pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations"),
        postgres: sqlx::migrate!("./migrations"),
    }
}

/// Builds the orchestrator on `platform`: its database, outbox relay and workers.
pub async fn build(platform: &Platform) -> Result<Service, StartError> {
    build_with(platform, settlement::Timing::default()).await
}

/// [`build`] with the settlement's retries and timeouts given (tests shorten them).
pub async fn build_with(
    platform: &Platform,
    timing: settlement::Timing,
) -> Result<Service, StartError> {
    let config = &platform.config;
    let db = platform.open_db(NAME, &migrations()).await?;
    let registry = Registry::new();
    let outbox = Outbox::new(db.clone(), &registry)?;
    let settings = config.services.saga.clone();
    let secret = match settings.client_secret {
        Some(secret) => ClientSecret::Given(secret),
        None => ClientSecret::File(config.saga_secret_path()),
    };
    let engine = engine::Engine::new(
        store::SagaStore::new(db.clone()),
        outbox.clone(),
        engine::Settings {
            definitions: vec![settlement::definition(timing)],
            participants: participants(config),
            token: ClientToken::new(config, &settings.client_id, secret),
            owner: config.node_name(),
            concurrency: settings.concurrency,
        },
        &registry,
    )?;
    let workers = engine.clone().spawn(platform.shutdown.clone());
    let api = api::router(api::AppState {
        engine,
        outbox: outbox.clone(),
    });
    let mut service = platform.assemble(ServiceParts {
        name: NAME,
        db,
        outbox: Some(outbox),
        registry,
        api,
        openapi: serde_json::to_value(api::ApiDoc::openapi()).unwrap_or_default(),
    })?;
    service.tasks.push(workers);
    Ok(service)
}

/// Where the participants are: configured, else this process's own services.
fn participants(config: &Config) -> HashMap<&'static str, String> {
    let s = &config.services;
    let url = |given: &Option<String>, listen| {
        given
            .clone()
            .unwrap_or_else(|| Config::local_url(listen))
            .trim_end_matches('/')
            .to_string()
    };
    HashMap::from([
        (
            settlement::VEHICLE,
            url(&s.saga.vehicle_url, s.vehicle.listen),
        ),
        (settlement::ORDER, url(&s.saga.order_url, s.order.listen)),
        (
            settlement::FINANCE,
            url(&s.saga.finance_url, s.finance.listen),
        ),
    ])
}
