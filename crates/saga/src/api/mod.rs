//! The orchestrator's HTTP API: `/sagas` (every instance, for operators) and `/settlements`
//! (starting one), merged here, and the one place errors become HTTP errors.

mod sagas;
mod settlements;

use axle_core::http::ApiError;
use axum::Router;
use utoipa::OpenApi;

use crate::domain::DomainError;
use crate::engine::Engine;
use crate::store::StoreError;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub outbox: axle_core::events::Outbox,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(sagas::router())
        .merge(settlements::router())
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Axle saga orchestrator",
        description = "Durable sagas across services, and the auction settlement."
    ),
    paths(
        sagas::list,
        sagas::fetch,
        sagas::stats,
        sagas::retry,
        sagas::abort,
        settlements::start,
    ),
    components(schemas(axle_core::http::ErrorBody))
)]
pub struct ApiDoc;

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        ApiError::conflict("SAGA_ILLEGAL_TRANSITION", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => ApiError::conflict(
                "SAGA_CONCURRENT_UPDATE",
                "the instance changed meanwhile; retry",
            ),
            StoreError::Corrupt(..) => ApiError::internal(e),
            StoreError::Sql(e) => e.into(),
        }
    }
}
