//! `/vehicles`: register, read and move vehicles through their lifecycle.
//!
//! Every action answers 200 with the vehicle as it now is, also when it had already taken
//! effect (idempotent settlement steps), and 409 `VEHICLE_ILLEGAL_TRANSITION` when the vehicle's
//! state does not allow it.

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json, Page, PageQuery, Path, Query};
use axle_vehicle_api::{InspectionReport, Pricing, Sale, VehicleState, types};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use crate::domain::{AttributeChanges, Command, NewVehicle, Outcome, Vehicle};
use crate::events;
use crate::store::{StoreError, VehicleFilter};

/// Who may register vehicles and move them through their lifecycle (platform admins too);
/// any signed-in caller may read them.
pub const STAFF: &[&str] = &["operator", "auctioneer"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/vehicles", get(list).post(create))
        .route("/vehicles/{id}", get(fetch).patch(update))
        .route("/vehicles/{id}/inspection/start", post(start_inspection))
        .route("/vehicles/{id}/inspection", post(complete_inspection))
        .route("/vehicles/{id}/pricing", put(price))
        .route("/vehicles/{id}/list", post(list_for_sale))
        .route("/vehicles/{id}/reserve", post(reserve))
        .route("/vehicles/{id}/sell", post(sell))
        .route("/vehicles/{id}/release", post(release))
        .route("/vehicles/{id}/deliver", post(deliver))
        .route("/vehicles/{id}/withdraw", post(withdraw))
}

/// Register a vehicle that entered the platform. Emits `axle.vehicle.received.v1`.
#[utoipa::path(
    post, path = "/vehicles", tag = "vehicles", operation_id = "create_vehicle",
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
    caller: Caller,
    Json(new): Json<NewVehicle>,
) -> ApiResult<(StatusCode, Json<Vehicle>)> {
    caller.require(STAFF)?;
    let actor = caller.name;
    let vehicle = Vehicle::receive(new, axle_core::id::new_id(), axle_core::time::now())?;
    let event = events::changed(&vehicle, types::RECEIVED, &actor).map_err(ApiError::internal)?;
    state.store.create(&vehicle, &event).await?;
    state.outbox.wake();
    Ok((StatusCode::CREATED, Json(vehicle)))
}

/// Fetch one vehicle.
#[utoipa::path(
    get, path = "/vehicles/{id}", tag = "vehicles", operation_id = "fetch_vehicle",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Vehicle), (status = 404, description = "VEHICLE_NOT_FOUND", body = ErrorBody))
)]
pub async fn fetch(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vehicle>> {
    Ok(Json(load(&state, id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub state: Option<VehicleState>,
    pub seller_org: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// List vehicles, oldest first, optionally by state and seller.
#[utoipa::path(
    get, path = "/vehicles", tag = "vehicles",
    params(ListQuery),
    responses((status = 200, body = Page<Vehicle>), (status = 400, body = ErrorBody))
)]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Vehicle>>> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let after = page.after()?;
    let filter = VehicleFilter {
        state: q.state,
        seller_org: q.seller_org,
    };
    let items = state.store.list(&filter, after, limit + 1).await?;
    Ok(Json(Page::from_overfetch(items, limit, |v| {
        v.id().to_string()
    })))
}

/// Change descriptive attributes. Emits `axle.vehicle.updated.v1` when something changed.
#[utoipa::path(
    patch, path = "/vehicles/{id}", tag = "vehicles", request_body = AttributeChanges,
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Vehicle), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody))
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(changes): Json<AttributeChanges>,
) -> ApiResult<Json<Vehicle>> {
    mutate(&state, id, caller, Command::Update(changes)).await
}

/// received → inspecting.
#[utoipa::path(post, path = "/vehicles/{id}/inspection/start", tag = "lifecycle", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vehicle), (status = 409, description = "VEHICLE_ILLEGAL_TRANSITION", body = ErrorBody)))]
pub async fn start_inspection(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vehicle>> {
    mutate(&state, id, caller, Command::StartInspection).await
}

/// inspecting → inspected, with the report (its grade becomes the condition grade).
#[utoipa::path(post, path = "/vehicles/{id}/inspection", tag = "lifecycle", params(("id" = Uuid, Path)), request_body = InspectionReport,
    responses((status = 200, body = Vehicle), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn complete_inspection(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(report): Json<InspectionReport>,
) -> ApiResult<Json<Vehicle>> {
    mutate(&state, id, caller, Command::CompleteInspection(report)).await
}

/// inspected → priced (or re-price while priced).
#[utoipa::path(put, path = "/vehicles/{id}/pricing", tag = "lifecycle", params(("id" = Uuid, Path)), request_body = Pricing,
    responses((status = 200, body = Vehicle), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn price(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(pricing): Json<Pricing>,
) -> ApiResult<Json<Vehicle>> {
    mutate(&state, id, caller, Command::Price(pricing)).await
}

/// priced → listed.
#[utoipa::path(post, path = "/vehicles/{id}/list", tag = "lifecycle", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vehicle), (status = 409, body = ErrorBody)))]
pub async fn list_for_sale(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vehicle>> {
    mutate(&state, id, caller, Command::List).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    pub auction_id: String,
}

/// Reserve a listed vehicle for an auction (idempotent per auction).
#[utoipa::path(post, path = "/vehicles/{id}/reserve", tag = "settlement", params(("id" = Uuid, Path)), request_body = Reservation,
    responses((status = 200, body = Vehicle), (status = 409, description = "VEHICLE_RESERVED, VEHICLE_ILLEGAL_TRANSITION", body = ErrorBody)))]
pub async fn reserve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(r): Json<Reservation>,
) -> ApiResult<Json<Vehicle>> {
    mutate(
        &state,
        id,
        caller,
        Command::Reserve {
            auction_id: r.auction_id,
        },
    )
    .await
}

/// listed → sold (idempotent per `sale_id`).
#[utoipa::path(post, path = "/vehicles/{id}/sell", tag = "settlement", params(("id" = Uuid, Path)), request_body = Sale,
    responses((status = 200, body = Vehicle), (status = 409, description = "VEHICLE_ALREADY_SOLD, VEHICLE_ILLEGAL_TRANSITION", body = ErrorBody)))]
pub async fn sell(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(sale): Json<Sale>,
) -> ApiResult<Json<Vehicle>> {
    mutate(&state, id, caller, Command::MarkSold(sale)).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub sale_id: String,
}

/// Compensation of `sell`: sold → listed. A no-op when that sale is not in effect.
#[utoipa::path(post, path = "/vehicles/{id}/release", tag = "settlement", params(("id" = Uuid, Path)), request_body = Release,
    responses((status = 200, body = Vehicle), (status = 409, body = ErrorBody)))]
pub async fn release(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(r): Json<Release>,
) -> ApiResult<Json<Vehicle>> {
    mutate(&state, id, caller, Command::Release { sale_id: r.sale_id }).await
}

/// sold → delivered.
#[utoipa::path(post, path = "/vehicles/{id}/deliver", tag = "lifecycle", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vehicle), (status = 409, body = ErrorBody)))]
pub async fn deliver(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vehicle>> {
    mutate(&state, id, caller, Command::Deliver).await
}

/// Any pre-sale state → withdrawn.
#[utoipa::path(post, path = "/vehicles/{id}/withdraw", tag = "lifecycle", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vehicle), (status = 409, body = ErrorBody)))]
pub async fn withdraw(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vehicle>> {
    mutate(&state, id, caller, Command::Withdraw).await
}

async fn load(state: &AppState, id: Uuid) -> ApiResult<Vehicle> {
    state
        .store
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found("VEHICLE_NOT_FOUND", format!("no vehicle {id}")))
}

/// Read, apply, save with its event; retried when another change won the race.
async fn mutate(
    state: &AppState,
    id: Uuid,
    caller: Caller,
    command: Command,
) -> ApiResult<Json<Vehicle>> {
    caller.require(STAFF)?;
    let actor = caller.name;
    const ATTEMPTS: usize = 3;
    for _ in 0..ATTEMPTS {
        let vehicle = load(state, id).await?;
        let (next, event_type) = match vehicle.apply(command.clone(), axle_core::time::now())? {
            Outcome::Unchanged => return Ok(Json(vehicle)),
            Outcome::Changed {
                vehicle: next,
                event_type,
            } => (next, event_type),
        };
        let event = events::changed(&next, event_type, &actor).map_err(ApiError::internal)?;
        match state.store.save(&next, vehicle.version(), &event).await {
            Ok(()) => {
                state.outbox.wake();
                return Ok(Json(next));
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict.into())
}
