//! The market's HTTP API: [`products`] (products, their versions and plans — the publishers'
//! side, and the catalog), [`applications`] (applications, their keys and subscriptions — the
//! consumers' side), [`subscriptions`] (the approvals queue and publishers' decisions),
//! [`usage`] (what the gateway reports, summed up) and [`audit`] (every change).
//! Domain, store and gateway errors become HTTP errors here, in one place.

mod applications;
mod audit;
mod products;
mod subscriptions;
mod usage;

use std::time::Duration;

use axle_core::events::Outbox;
use axle_core::http::{ApiError, Caller};
use axum::Router;
use axum::http::StatusCode;
use utoipa::OpenApi;

use crate::domain::DomainError;
use crate::domain::product::Viewer;
use crate::gateway::GatewaySync;
use crate::gateway::admin::AdminError;
use crate::store::{MarketStore, Record, StoreError};

/// Who publishes products and decides on subscriptions (platform admins too).
pub const PUBLISHERS: &[&str] = &["api-publisher"];

/// How long a change waits for the gateway to have it before it is answered anyway.
const GATEWAY_WAIT: Duration = Duration::from_secs(5);

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: MarketStore,
    pub outbox: Outbox,
    pub gateway: GatewaySync,
    /// What the gateway reports usage with (`Authorization: Bearer …`).
    pub usage_token: std::sync::Arc<str>,
}

impl AppState {
    /// After a change is saved: its event goes out, and the gateway gets it before the
    /// caller hears back (or, when the gateway is unreachable, as soon as it is back).
    async fn changed(&self) {
        self.outbox.wake();
        if !self.gateway.flush(GATEWAY_WAIT).await {
            tracing::warn!("a market change is saved but the gateway does not have it yet");
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(products::router())
        .merge(applications::router())
        .merge(subscriptions::router())
        .merge(usage::router())
        .merge(audit::router())
        .with_state(state)
}

/// What `caller` may see of products' visibility.
fn viewer(caller: &Caller) -> (bool, Vec<String>) {
    let staff = caller
        .roles
        .iter()
        .any(|r| r != "dealer" && r != "customer")
        || caller.has_role("platform-admin");
    (staff, caller.org.iter().cloned().collect())
}

fn sees(caller: &Caller, product: &Record<crate::domain::product::Product>) -> bool {
    let (staff, organisations) = viewer(caller);
    product.item.visibility.admits(Viewer {
        staff,
        organisations: &organisations,
    })
}

fn not_found(what: &str, id: impl std::fmt::Display) -> ApiError {
    ApiError::not_found("MARKET_NOT_FOUND", format!("no {what} {id}"))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Axle API market",
        description = "API products with their versions, OpenAPI documents and plans; \
            applications with their API keys and subscriptions, which the gateway enforces."
    ),
    paths(
        products::create,
        products::list,
        products::fetch,
        products::create_version,
        products::import_version,
        products::fetch_version,
        products::document,
        products::publish,
        products::set_weight,
        products::deprecate,
        products::retire,
        products::create_plan,
        applications::create,
        applications::list,
        applications::fetch,
        applications::create_key,
        applications::list_keys,
        applications::rotate_key,
        applications::revoke_key,
        applications::subscribe,
        applications::list_subscriptions,
        subscriptions::queue,
        subscriptions::decide,
        usage::ingest,
        usage::counts,
        usage::of_application,
        usage::of_product,
        audit::trail,
    ),
    components(schemas(axle_core::http::ErrorBody))
)]
pub struct ApiDoc;

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let (code, message) = (e.code(), e.to_string());
        match e {
            DomainError::Invalid { .. } => ApiError::unprocessable(code, message),
            DomainError::IllegalTransition { .. } | DomainError::Retired(_) => {
                ApiError::conflict(code, message)
            }
            DomainError::PlanNotAllowed => ApiError::new(StatusCode::FORBIDDEN, code, message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::SlugExists(_) => ApiError::conflict("MARKET_PRODUCT_EXISTS", message),
            StoreError::NumberExists(_) => ApiError::conflict("MARKET_VERSION_EXISTS", message),
            StoreError::PlanExists(_) => ApiError::conflict("MARKET_PLAN_EXISTS", message),
            StoreError::SubscriptionExists => {
                ApiError::conflict("MARKET_SUBSCRIPTION_EXISTS", message)
            }
            StoreError::Conflict => ApiError::conflict(
                "MARKET_CONCURRENT_UPDATE",
                "it changed concurrently; read it again and retry",
            ),
            StoreError::Corrupt(..) => ApiError::internal(e),
            StoreError::Sql(e) => e.into(),
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        tracing::warn!(error = %e, "the gateway's Admin API failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "MARKET_GATEWAY_UNAVAILABLE",
            "the gateway cannot take the change now; nothing was changed, retry later",
        )
    }
}
