//! The vehicle service's HTTP API: one module per resource, merged here.

mod vehicles;

use axle_core::events::Outbox;
use axle_core::http::ApiError;
use axum::Router;
use utoipa::OpenApi;

use crate::domain::DomainError;
use crate::store::{StoreError, VehicleStore};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: VehicleStore,
    pub outbox: Outbox,
}

pub fn router(state: AppState) -> Router {
    Router::new().merge(vehicles::router()).with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Axle vehicle service",
        description = "Vehicles, VINs and their lifecycle."
    ),
    paths(vehicles::create, vehicles::fetch, vehicles::list),
    components(schemas(axle_core::http::ErrorBody))
)]
pub struct ApiDoc;

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Vin(_) => ApiError::unprocessable("VEHICLE_INVALID_VIN", e.to_string()),
            DomainError::Invalid { .. } => {
                ApiError::unprocessable("VEHICLE_INVALID", e.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VinExists(_) => ApiError::conflict("VEHICLE_VIN_EXISTS", e.to_string()),
            StoreError::Corrupt(..) => ApiError::internal(e),
            StoreError::Sql(e) => e.into(),
        }
    }
}
