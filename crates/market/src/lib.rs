//! `axle-market`: the API market — API products with their versions and OpenAPI documents,
//! plans with their limits, and applications' subscriptions, which become gateway
//! configuration when approved.
//!
//! Rooms: [`api`] (HTTP, thin) → [`domain`] (rules, no I/O) → [`store`] (SQL) and [`events`];
//! [`gateway`] writes the market's state into the gateway through its Admin API.

pub mod api;
pub mod domain;
pub mod events;
pub mod gateway;
pub mod store;

use axle_core::config::Config;
use axle_core::db::Migrations;
use axle_core::events::Outbox;
use axle_core::platform::{Platform, Service, ServiceParts, StartError};
use prometheus::Registry;
use secrecy::ExposeSecret;
use utoipa::OpenApi;

use crate::domain::plan::Counting;

pub const NAME: &str = "market";

/// The service's migrations, embedded in the binary: one SQL for both engines (portable types
/// only), so one directory.
pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations"),
        postgres: sqlx::migrate!("./migrations"),
    }
}

/// Builds the market on `platform`: opens its database, starts its outbox relay and the sync
/// of its gateway configuration.
pub async fn build(platform: &Platform) -> Result<Service, StartError> {
    let config = &platform.config;
    let fail = |message: String| StartError::Service {
        service: NAME,
        message,
    };
    let db = platform.open_db(NAME, &migrations()).await?;
    let registry = Registry::new();
    let outbox = Outbox::new(db.clone(), &registry)?;
    let store = store::MarketStore::new(db.clone());
    let key = config
        .gateway_admin_key()
        .map_err(|e| fail(format!("the gateway's Admin API key: {e}")))?;
    let admin = gateway::admin::AdminApi::new(config.gateway_admin_url(), key);
    let usage_token = usage_token(config).map_err(|e| fail(format!("the usage token: {e}")))?;
    let market = &config.services.market;
    let settings = gateway::config::Settings {
        counting: counting(config),
        metering: market.metering.then(|| gateway::config::Metering {
            url: market
                .usage_url
                .clone()
                .unwrap_or_else(|| format!("http://{}/usage/counts", market.listen)),
            token: usage_token.clone(),
        }),
    };
    let sync = gateway::GatewaySync::new(store.clone(), admin, settings);
    let task = sync.spawn(platform.shutdown.clone());
    let api = api::router(api::AppState {
        store,
        outbox: outbox.clone(),
        gateway: sync,
        usage_token: std::sync::Arc::from(usage_token),
    });
    let mut service = platform.assemble(ServiceParts {
        name: NAME,
        db,
        outbox: Some(outbox),
        registry,
        api,
        openapi: serde_json::to_value(api::ApiDoc::openapi()).unwrap_or_default(),
    })?;
    service.tasks.push(task);
    Ok(service)
}

/// The token the gateway reports usage with: kept in `<data_dir>/market/usage_token`, the same
/// for every market node sharing the data directory's copy.
fn usage_token(config: &Config) -> std::io::Result<String> {
    let path = config.data_dir.join(NAME).join("usage_token");
    axle_core::files::kept_secret(&path, || uuid::Uuid::new_v4().simple().to_string())
        .map(|(token, _)| token)
}

/// Where plans' limits count: in Redis when the platform has one (shared by every gateway,
/// kept across restarts), else in each gateway.
fn counting(config: &Config) -> Counting {
    let Some(url) = &config.kv.redis_url else {
        return Counting::Local;
    };
    let Ok(url) = url::Url::parse(url.expose_secret()) else {
        return Counting::Local;
    };
    Counting::Redis {
        host: url.host_str().unwrap_or("127.0.0.1").to_string(),
        port: url.port().unwrap_or(6379),
        password: url.password().map(str::to_string),
        database: url
            .path()
            .trim_start_matches('/')
            .parse()
            .unwrap_or_default(),
    }
}
