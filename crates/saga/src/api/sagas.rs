//! `/sagas`: every instance with its timeline; operators retry a waiting or flagged instance
//! now, or abort a stuck one (its completed steps are undone).

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json, Page, PageQuery, Path, Query};
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use crate::domain::{Instance, Status};
use crate::store::{Attempt, Filter, StoreError};

/// Who may see and operate sagas.
const OPERATORS: &[&str] = &["operator"];
/// Who may look.
const WATCHERS: &[&str] = &["operator", "auctioneer", "finance"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sagas", get(list))
        .route("/sagas/stats", get(stats))
        .route("/sagas/{id}", get(fetch))
        .route("/sagas/{id}/retry", post(retry))
        .route("/sagas/{id}/abort", post(abort))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The saga type, e.g. `settlement`.
    pub saga: Option<String>,
    pub status: Option<Status>,
    /// Only instances flagged for an operator (true) or not (false).
    pub flagged: Option<bool>,
    /// Only instances at least this many seconds old.
    pub older_than_secs: Option<u64>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// List instances, newest first.
#[utoipa::path(get, path = "/sagas", tag = "sagas", operation_id = "list_sagas", params(ListQuery),
    responses((status = 200, body = Page<Instance>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Instance>>> {
    caller.require(WATCHERS)?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let created_before = q
        .older_than_secs
        .map(|s| {
            i64::try_from(s)
                .ok()
                .and_then(chrono::Duration::try_seconds)
                .map(|d| axle_core::time::now() - d)
                .ok_or_else(|| {
                    ApiError::bad_request("INVALID_QUERY", "older_than_secs is too large")
                })
        })
        .transpose()?;
    let filter = Filter {
        saga: q.saga,
        status: q.status,
        flagged: q.flagged,
        created_before,
    };
    let items = state
        .engine
        .store()
        .list(&filter, page.after()?, limit + 1)
        .await?;
    Ok(Json(Page::from_overfetch(items, limit, |i| {
        i.id.to_string()
    })))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusCount {
    pub status: Status,
    pub count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub by_status: Vec<StatusCount>,
    /// Instances whose compensation keeps failing.
    pub flagged: i64,
}

/// How many instances are in each status.
#[utoipa::path(get, path = "/sagas/stats", tag = "sagas", operation_id = "saga_stats",
    responses((status = 200, body = Stats)))]
pub async fn stats(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Stats>> {
    caller.require(WATCHERS)?;
    let (counts, flagged) = state.engine.store().counts().await?;
    Ok(Json(Stats {
        by_status: counts
            .into_iter()
            .map(|(status, count)| StatusCount { status, count })
            .collect(),
        flagged,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Detail {
    #[serde(flatten)]
    pub instance: Instance,
    /// The steps of its saga, in order.
    pub steps: Vec<String>,
    /// Every call made, oldest first.
    pub timeline: Vec<Attempt>,
}

/// One instance with its timeline.
#[utoipa::path(get, path = "/sagas/{id}", tag = "sagas", operation_id = "fetch_saga", params(("id" = Uuid, Path)),
    responses((status = 200, body = Detail), (status = 404, description = "SAGA_NOT_FOUND", body = ErrorBody)))]
pub async fn fetch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Detail>> {
    caller.require(WATCHERS)?;
    let instance = load(&state, id).await?;
    let steps = state
        .engine
        .definition(&instance.saga)
        .map(|d| d.steps.iter().map(|s| s.name.to_string()).collect())
        .unwrap_or_default();
    let timeline = state.engine.store().attempts(id).await?;
    Ok(Json(Detail {
        instance,
        steps,
        timeline,
    }))
}

async fn load(state: &AppState, id: Uuid) -> ApiResult<Instance> {
    state
        .engine
        .store()
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found("SAGA_NOT_FOUND", format!("no saga instance {id}")))
}

/// Make the next call now, with a fresh count of attempts (a waiting or flagged instance).
#[utoipa::path(post, path = "/sagas/{id}/retry", tag = "sagas", operation_id = "retry_saga", params(("id" = Uuid, Path)),
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody), (status = 409, description = "SAGA_ILLEGAL_TRANSITION", body = ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Instance>> {
    caller.require(OPERATORS)?;
    // A worker may save the instance between our read and write: read again then.
    for _ in 0..3 {
        let instance = load(&state, id).await?;
        let next = instance.retry(axle_core::time::now())?;
        match state
            .engine
            .store()
            .operate(&next, instance.version, None)
            .await
        {
            Ok(()) => {
                state.engine.wake();
                tracing::info!(id = %id, operator = %caller.name, "saga instance retried");
                return Ok(Json(next));
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict.into())
}

/// Give up on a running instance: undo its completed steps, last first.
#[utoipa::path(post, path = "/sagas/{id}/abort", tag = "sagas", operation_id = "abort_saga", params(("id" = Uuid, Path)),
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody), (status = 409, description = "SAGA_ILLEGAL_TRANSITION", body = ErrorBody)))]
pub async fn abort(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Instance>> {
    caller.require(OPERATORS)?;
    for _ in 0..3 {
        let instance = load(&state, id).await?;
        let Some(definition) = state.engine.definition(&instance.saga) else {
            return Err(ApiError::internal(format!("no saga {}", instance.saga)));
        };
        let next = instance.abort(definition, axle_core::time::now())?;
        // With nothing to undo it finishes here, with its event.
        let event = match next.status {
            Status::Compensated => Some(
                crate::events::finished(&next, definition.compensated_event)
                    .map_err(ApiError::internal)?,
            ),
            _ => None,
        };
        match state
            .engine
            .store()
            .operate(&next, instance.version, event.as_ref())
            .await
        {
            Ok(()) => {
                if event.is_some() {
                    state.outbox.wake();
                }
                state.engine.wake();
                tracing::info!(id = %id, operator = %caller.name, "saga instance aborted");
                return Ok(Json(next));
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict.into())
}
