//! `/subscriptions`: the approvals queue, and what publishers (or, to revoke, the
//! application's owner) decide. A decision is saved against the subscription as it was read,
//! so of two publishers deciding at once one wins and the other gets 409
//! `MARKET_CONCURRENT_UPDATE`; the gateway has the outcome when the call is answered.

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json, Path, Query};
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{AppState, PUBLISHERS, not_found};
use crate::domain::subscription::{Command, Status, Subscription};
use crate::events;
use crate::store::Record;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/subscriptions", get(queue))
        .route("/subscriptions/{id}/{decision}", post(decide))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QueueQuery {
    /// `requested` (the default: what waits for a decision), `approved`, `suspended`…
    pub status: Option<Status>,
}

/// Subscriptions by status, oldest first: by default the approvals queue.
#[utoipa::path(get, path = "/subscriptions", tag = "subscriptions", operation_id = "list_subscriptions",
    params(QueueQuery), responses((status = 200, body = [Record<Subscription>]), (status = 403, body = ErrorBody)))]
pub async fn queue(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<QueueQuery>,
) -> ApiResult<Json<Vec<Record<Subscription>>>> {
    caller.require(PUBLISHERS)?;
    let status = q.status.unwrap_or(Status::Requested);
    Ok(Json(state.store.subscriptions_in(status).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Why: required to reject, suspend or revoke.
    pub reason: Option<String>,
}

/// Decide on a subscription: `approve`, `reject`, `suspend`, `resume` or `revoke`. Emits
/// `axle.market.subscription_<status>.v1`.
#[utoipa::path(post, path = "/subscriptions/{id}/{decision}", tag = "subscriptions", operation_id = "decide_subscription",
    params(("id" = Uuid, Path), ("decision" = String, Path, description = "approve, reject, suspend, resume or revoke")),
    request_body = Decision,
    responses((status = 200, body = Record<Subscription>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "MARKET_ILLEGAL_TRANSITION, MARKET_CONCURRENT_UPDATE", body = ErrorBody),
        (status = 422, description = "MARKET_INVALID (a reason is missing)", body = ErrorBody)))]
pub async fn decide(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, decision)): Path<(Uuid, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Record<Subscription>>> {
    // Approving and resuming need no body.
    let Decision { reason } = super::products::optional_body(&body)?;
    let reason = reason.unwrap_or_default();
    let command = match decision.as_str() {
        "approve" => Command::Approve,
        "reject" => Command::Reject { reason },
        "suspend" => Command::Suspend { reason },
        "resume" => Command::Resume,
        "revoke" => Command::Revoke { reason },
        _ => return Err(not_found("decision", decision)),
    };
    let sub = state
        .store
        .subscription(id)
        .await?
        .ok_or_else(|| not_found("subscription", id))?;
    let own = matches!(command, Command::Revoke { .. })
        && super::applications::owned(&state, &caller, sub.item.application_id)
            .await
            .is_ok();
    if !own {
        caller.require(PUBLISHERS)?;
    }
    let (status, reason) = sub.item.status.apply(&command)?;
    let now = axle_core::time::now();
    let mut moved = sub.clone();
    moved.item.status = status;
    moved.item.reason = reason;
    moved.item.decided_by = Some(caller.name.clone());
    moved.version += 1;
    moved.updated_at = now;
    let event = events::changed(&moved, events::subscription(status), &caller.name)
        .map_err(ApiError::internal)?;
    state
        .store
        .save_subscription(&moved, sub.version, &event)
        .await?;
    state.changed().await;
    Ok(Json(moved))
}
