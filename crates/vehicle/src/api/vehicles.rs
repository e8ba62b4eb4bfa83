//! `/vehicles`: register, fetch and list vehicles.

use axle_core::http::{ApiError, ApiResult, ErrorBody, Json, Page, PageQuery, Path, Query};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use uuid::Uuid;

use super::AppState;
use crate::domain::{NewVehicle, Vehicle};
use crate::events;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/vehicles", get(list).post(create))
        .route("/vehicles/{id}", get(fetch))
}

/// Register a vehicle that entered the platform. Emits `axle.vehicle.received.v1`.
#[utoipa::path(
    post, path = "/vehicles", tag = "vehicles",
    request_body = NewVehicle,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")),
    responses(
        (status = 201, body = Vehicle),
        (status = 409, description = "VEHICLE_VIN_EXISTS", body = ErrorBody),
        (status = 422, description = "VEHICLE_INVALID_VIN, VEHICLE_INVALID", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Json(new): Json<NewVehicle>,
) -> ApiResult<(StatusCode, Json<Vehicle>)> {
    let vehicle = Vehicle::receive(new, axle_core::id::new_id(), axle_core::time::now())?;
    let event = events::received(&vehicle).map_err(ApiError::internal)?;
    state.store.create(&vehicle, &event).await?;
    state.outbox.wake();
    Ok((StatusCode::CREATED, Json(vehicle)))
}

/// Fetch one vehicle.
#[utoipa::path(
    get, path = "/vehicles/{id}", tag = "vehicles",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Vehicle), (status = 404, description = "VEHICLE_NOT_FOUND", body = ErrorBody))
)]
pub async fn fetch(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vehicle>> {
    state
        .store
        .get(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("VEHICLE_NOT_FOUND", format!("no vehicle {id}")))
}

/// List vehicles, oldest first.
#[utoipa::path(
    get, path = "/vehicles", tag = "vehicles",
    params(PageQuery),
    responses((status = 200, body = Page<Vehicle>), (status = 400, body = ErrorBody))
)]
pub async fn list(
    State(state): State<AppState>,
    Query(page): Query<PageQuery>,
) -> ApiResult<Json<Page<Vehicle>>> {
    let limit = page.limit()?;
    let after = match page.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            Uuid::parse_str(c).map_err(|_| ApiError::bad_request("INVALID_QUERY", "bad cursor"))?,
        ),
    };
    let items = state.store.list(after, limit + 1).await?;
    Ok(Json(Page::from_overfetch(items, limit, |v| {
        v.id.to_string()
    })))
}
