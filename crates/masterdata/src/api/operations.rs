//! Operations on master data as a whole: consistency check, rebuild, dead letters.

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json};
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::consistency::{self, DriftReport};
use crate::events::QUEUE;

/// Who may run operations on master data as a whole.
pub const OPERATORS: &[&str] = &["operator"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/consistency-check", post(check))
        .route("/replay", post(replay))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/replay", post(replay_dead_letters))
}

/// Compare every golden record with the vehicle service and report drift.
#[utoipa::path(post, path = "/consistency-check", tag = "operations",
    responses((status = 200, body = DriftReport), (status = 502, description = "SOURCE_UNAVAILABLE", body = ErrorBody)))]
pub async fn check(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<DriftReport>> {
    caller.require(OPERATORS)?;
    Ok(Json(
        consistency::check(&state.store, &state.source, caller.bearer()).await?,
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Rebuilt {
    pub rebuilt: u64,
}

/// Rebuild every golden record from the event log (the timeline).
#[utoipa::path(post, path = "/replay", tag = "operations", responses((status = 200, body = Rebuilt)))]
pub async fn replay(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Rebuilt>> {
    caller.require(OPERATORS)?;
    Ok(Json(Rebuilt {
        rebuilt: state.store.replay().await?,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetters {
    pub queue: String,
    pub count: u64,
}

/// Events that failed every delivery attempt.
#[utoipa::path(get, path = "/dead-letters", tag = "operations", responses((status = 200, body = DeadLetters)))]
pub async fn dead_letters(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<DeadLetters>> {
    caller.require(OPERATORS)?;
    let count = state
        .bus
        .dead_letter_count(QUEUE)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(DeadLetters {
        queue: QUEUE.into(),
        count,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub replayed: u64,
}

/// Put dead-lettered events back in the queue (after fixing what made them fail).
#[utoipa::path(post, path = "/dead-letters/replay", tag = "operations", responses((status = 200, body = Replayed)))]
pub async fn replay_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Replayed>> {
    caller.require(OPERATORS)?;
    let replayed = state
        .bus
        .replay_dead_letters(QUEUE)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(Replayed { replayed }))
}
