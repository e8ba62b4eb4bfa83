//! `/pools`: inventory pools that settled vehicles are deducted from.
//!
//! Deducting and restoring are idempotent per (pool, vehicle), so the settlement saga can retry
//! both the step and its compensation.

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json, Path};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{post, put};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::vehicles::STAFF;
use crate::store::{Deduction, Pool};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/pools", post(create))
        .route("/pools/{id}", axum::routing::get(fetch))
        .route(
            "/pools/{id}/deductions/{vehicle_id}",
            put(deduct).delete(restore),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPool {
    pub name: String,
    /// Units the pool holds.
    pub capacity: i64,
}

/// Create a pool.
#[utoipa::path(post, path = "/pools", tag = "pools", operation_id = "create_pool", request_body = NewPool,
    responses((status = 201, body = Pool), (status = 409, description = "POOL_NAME_EXISTS", body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewPool>,
) -> ApiResult<(StatusCode, Json<Pool>)> {
    caller.require(STAFF)?;
    let name = new.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::unprocessable(
            "POOL_INVALID",
            "name: must be 1 to 100 characters",
        ));
    }
    if !(0..=1_000_000_000).contains(&new.capacity) {
        return Err(ApiError::unprocessable(
            "POOL_INVALID",
            "capacity: must be 0 to 1,000,000,000",
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(state.store.create_pool(name, new.capacity).await?),
    ))
}

/// Fetch a pool with its use.
#[utoipa::path(get, path = "/pools/{id}", tag = "pools", operation_id = "fetch_pool", params(("id" = Uuid, Path)),
    responses((status = 200, body = Pool), (status = 404, description = "POOL_NOT_FOUND", body = ErrorBody)))]
pub async fn fetch(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Pool>> {
    pool(&state, id).await
}

async fn pool(state: &AppState, id: Uuid) -> ApiResult<Json<Pool>> {
    state
        .store
        .get_pool(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("POOL_NOT_FOUND", format!("no pool {id}")))
}

/// Deduct one unit for a vehicle (idempotent).
#[utoipa::path(put, path = "/pools/{id}/deductions/{vehicle_id}", tag = "pools",
    params(("id" = Uuid, Path), ("vehicle_id" = Uuid, Path)),
    responses((status = 200, body = Pool), (status = 404, body = ErrorBody), (status = 409, description = "POOL_EXHAUSTED", body = ErrorBody)))]
pub async fn deduct(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, vehicle)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<Pool>> {
    caller.require(STAFF)?;
    match state.store.deduct(id, vehicle).await? {
        Deduction::Deducted | Deduction::AlreadyDeducted => pool(&state, id).await,
        Deduction::Refused => match state.store.get_pool(id).await? {
            None => Err(ApiError::not_found(
                "POOL_NOT_FOUND",
                format!("no pool {id}"),
            )),
            Some(_) => Err(ApiError::conflict(
                "POOL_EXHAUSTED",
                "the pool has no capacity left",
            )),
        },
    }
}

/// Give back a vehicle's unit (the compensation of a deduction; idempotent).
#[utoipa::path(delete, path = "/pools/{id}/deductions/{vehicle_id}", tag = "pools",
    params(("id" = Uuid, Path), ("vehicle_id" = Uuid, Path)),
    responses((status = 200, body = Pool), (status = 404, body = ErrorBody)))]
pub async fn restore(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, vehicle)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<Pool>> {
    caller.require(STAFF)?;
    state.store.restore(id, vehicle).await?;
    pool(&state, id).await
}
