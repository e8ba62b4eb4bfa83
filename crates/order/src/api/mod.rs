//! The order service's HTTP API, and the one place domain and store errors become HTTP errors.

mod orders;

use axle_core::events::Outbox;
use axle_core::http::ApiError;
use axum::Router;
use utoipa::OpenApi;

use crate::domain::DomainError;
use crate::store::{OrderStore, StoreError};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: OrderStore,
    pub outbox: Outbox,
    /// How long a new order awaits payment unless it says.
    pub payment_deadline: chrono::Duration,
}

pub fn router(state: AppState) -> Router {
    Router::new().merge(orders::router()).with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Axle order service",
        description = "Orders from auctions and the mall, their state machine and payment deadline."
    ),
    paths(
        orders::create,
        orders::fetch,
        orders::list,
        orders::submit,
        orders::pay,
        orders::fulfil,
        orders::deliver,
        orders::complete,
        orders::cancel,
    ),
    components(schemas(axle_core::http::ErrorBody))
)]
pub struct ApiDoc;

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let message = e.to_string();
        match e {
            DomainError::Invalid { .. } => ApiError::unprocessable("ORDER_INVALID", message),
            DomainError::IllegalTransition { .. } => {
                ApiError::conflict("ORDER_ILLEGAL_TRANSITION", message)
            }
            DomainError::PaidOtherwise(_) => ApiError::conflict("ORDER_PAID_OTHERWISE", message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::Exists(_) => ApiError::conflict("ORDER_EXISTS", message),
            StoreError::Conflict => ApiError::conflict(
                "ORDER_CONCURRENT_UPDATE",
                "the order changed concurrently; retry",
            ),
            StoreError::Corrupt(..) => ApiError::internal(e),
            StoreError::Sql(e) => e.into(),
        }
    }
}
