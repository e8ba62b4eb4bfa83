//! The vehicle service's HTTP API: one module per resource, merged here, and the one place
//! domain and store errors become HTTP errors.

mod pools;
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
    Router::new()
        .merge(vehicles::router())
        .merge(pools::router())
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Axle vehicle service",
        description = "Vehicles, VINs, their lifecycle and inventory pools."
    ),
    paths(
        vehicles::create,
        vehicles::fetch,
        vehicles::list,
        vehicles::update,
        vehicles::start_inspection,
        vehicles::complete_inspection,
        vehicles::price,
        vehicles::list_for_sale,
        vehicles::reserve,
        vehicles::sell,
        vehicles::release,
        vehicles::deliver,
        vehicles::withdraw,
        pools::create,
        pools::fetch,
        pools::deduct,
        pools::restore,
    ),
    components(schemas(axle_core::http::ErrorBody))
)]
pub struct ApiDoc;

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let message = e.to_string();
        match e {
            DomainError::Vin(_) => ApiError::unprocessable("VEHICLE_INVALID_VIN", message),
            DomainError::Invalid { .. } => ApiError::unprocessable("VEHICLE_INVALID", message),
            DomainError::IllegalTransition { .. } => {
                ApiError::conflict("VEHICLE_ILLEGAL_TRANSITION", message)
            }
            DomainError::Reserved(_) => ApiError::conflict("VEHICLE_RESERVED", message),
            DomainError::AlreadySold(_) => ApiError::conflict("VEHICLE_ALREADY_SOLD", message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::VinExists(_) => ApiError::conflict("VEHICLE_VIN_EXISTS", message),
            StoreError::PoolExists(_) => ApiError::conflict("POOL_NAME_EXISTS", message),
            StoreError::Conflict => ApiError::conflict(
                "VEHICLE_CONCURRENT_UPDATE",
                "the vehicle changed concurrently; retry",
            ),
            StoreError::Corrupt(..) => ApiError::internal(e),
            StoreError::Sql(e) => e.into(),
        }
    }
}
