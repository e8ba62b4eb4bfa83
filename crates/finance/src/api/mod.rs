//! Finance's HTTP API: one module per resource, merged here, and the one place domain and
//! store errors become HTTP errors.

mod accounts;
mod receivables;

use axle_core::events::Outbox;
use axle_core::http::{ApiError, Caller};
use axum::Router;
use utoipa::OpenApi;

use crate::domain::DomainError;
use crate::store::{FinanceStore, StoreError};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: FinanceStore,
    pub outbox: Outbox,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(receivables::router())
        .merge(accounts::router())
        .with_state(state)
}

/// Who may see every organisation's money.
const STAFF: &[&str] = &["finance", "operator", "auctioneer"];

/// Whether `caller` may see `org`'s records: staff, or the organisation's own users.
fn may_see(caller: &Caller, org: &str) -> bool {
    caller.require(STAFF).is_ok() || caller.org.as_deref() == Some(org)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Axle finance service",
        description = "Receivables, and dealers' deposit accounts on a double-entry ledger."
    ),
    paths(
        receivables::create,
        receivables::fetch,
        receivables::list,
        receivables::cancel,
        accounts::open,
        accounts::fetch,
        accounts::list,
        accounts::top_up,
        accounts::statement,
        accounts::holds,
        accounts::place_hold,
        accounts::release,
        accounts::capture,
    ),
    components(schemas(axle_core::http::ErrorBody))
)]
pub struct ApiDoc;

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let message = e.to_string();
        match e {
            DomainError::Invalid { .. } => ApiError::unprocessable("FINANCE_INVALID", message),
            DomainError::IllegalTransition { .. } => {
                ApiError::conflict("RECEIVABLE_ILLEGAL_TRANSITION", message)
            }
            DomainError::InsufficientFunds { .. } => {
                ApiError::conflict("ACCOUNT_INSUFFICIENT_FUNDS", message)
            }
            DomainError::HoldSettled(_) => ApiError::conflict("HOLD_SETTLED", message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::Exists(_) => ApiError::conflict("FINANCE_EXISTS", message),
            StoreError::NotFound(_) => ApiError::not_found("FINANCE_NOT_FOUND", message),
            StoreError::Conflict => ApiError::conflict(
                "FINANCE_CONCURRENT_UPDATE",
                "the record changed concurrently; retry",
            ),
            StoreError::Domain(e) => e.into(),
            StoreError::Corrupt(..) => ApiError::internal(e),
            StoreError::Sql(e) => e.into(),
        }
    }
}
