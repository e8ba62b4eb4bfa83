//! `/settlements`: settle a sold lot. One settlement per lot: asking again answers the first
//! (200) instead of starting another (201).

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

use super::AppState;
use crate::domain::Instance;
use crate::settlement::{SAGA, Settlement, SettlementRequest};

/// Who may settle a lot (the auction service's client is an auctioneer).
const SETTLERS: &[&str] = &["auctioneer", "operator"];

pub fn router() -> Router<AppState> {
    Router::new().route("/settlements", post(start))
}

/// Start settling a sold lot: mark the vehicle sold, create the order, deduct inventory,
/// raise the receivable — or undo them all.
#[utoipa::path(post, path = "/settlements", tag = "settlements", operation_id = "start_settlement",
    request_body = SettlementRequest,
    responses((status = 201, body = Instance), (status = 200, description = "This lot's settlement, started before", body = Instance),
        (status = 422, description = "SETTLEMENT_INVALID", body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<SettlementRequest>,
) -> ApiResult<(StatusCode, Json<Instance>)> {
    caller.require(SETTLERS)?;
    let settlement = Settlement::new(request)
        .map_err(|e| ApiError::unprocessable("SETTLEMENT_INVALID", e.to_string()))?;
    let key = settlement.lot_id.clone();
    let input = serde_json::to_value(&settlement).map_err(ApiError::internal)?;
    let (instance, created) = state.engine.start(SAGA, key, input).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(instance)))
}
