//! Master data's HTTP API: golden records and timelines, the consistency check and replays,
//! and the model catalog.

mod catalog;
mod operations;
mod records;

use axle_core::events::EventBus;
use axle_core::http::ApiError;
use axum::Router;
use utoipa::OpenApi;

use crate::consistency::{CheckError, VehicleSource};
use crate::store::{GoldenStore, StoreError};

#[derive(Clone)]
pub struct AppState {
    pub store: GoldenStore,
    pub source: VehicleSource,
    pub bus: EventBus,
    pub catalog: crate::catalog::Catalog,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(records::router())
        .merge(operations::router())
        .merge(catalog::router())
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Axle master data service",
        description = "Golden vehicle records and timelines built from events."
    ),
    paths(
        records::search,
        records::fetch,
        records::timeline,
        catalog::models,
        catalog::sync,
        operations::check,
        operations::replay,
        operations::dead_letters,
        operations::replay_dead_letters
    ),
    components(schemas(axle_core::http::ErrorBody))
)]
pub struct ApiDoc;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(..) => ApiError::internal(e),
            StoreError::Sql(e) => e.into(),
        }
    }
}

impl From<CheckError> for ApiError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Source(_) => ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "SOURCE_UNAVAILABLE",
                e.to_string(),
            ),
            CheckError::Store(e) => e.into(),
        }
    }
}
