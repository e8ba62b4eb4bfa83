//! `/receivables`: what debtors owe for orders. Raising is idempotent on the id the caller
//! chooses (the same receivable again answers 200); cancelling a cancelled one changes nothing.

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json, Page, PageQuery, Path, Query};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{AppState, STAFF, may_see};
use crate::domain::receivable::{self, NewReceivable, Receivable, ReceivableStatus};
use crate::events;
use crate::store::{ReceivableFilter, StoreError};

/// Who may raise and cancel receivables (the settlement saga's client is an operator).
const RAISE: &[&str] = &["finance", "operator"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/receivables", get(list).post(create))
        .route("/receivables/{id}", get(fetch))
        .route("/receivables/{id}/cancel", post(cancel))
}

/// Raise a receivable. Emits `axle.finance.receivable_created.v1`.
#[utoipa::path(post, path = "/receivables", tag = "receivables", operation_id = "create_receivable",
    request_body = NewReceivable,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")),
    responses((status = 201, body = Receivable), (status = 200, description = "The same receivable existed already", body = Receivable),
        (status = 409, description = "FINANCE_EXISTS", body = ErrorBody), (status = 422, description = "FINANCE_INVALID", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewReceivable>,
) -> ApiResult<(StatusCode, Json<Receivable>)> {
    caller.require(RAISE)?;
    let id = new.id.unwrap_or_else(axle_core::id::new_id);
    let r = Receivable::raise(new, id, axle_core::time::now())?;
    let event =
        events::receivable(&r, receivable::CREATED, &caller.name).map_err(ApiError::internal)?;
    match state.store.create_receivable(&r, &event).await {
        Ok(()) => {
            state.outbox.wake();
            Ok((StatusCode::CREATED, Json(r)))
        }
        Err(StoreError::Exists(what)) => match state.store.receivable(id).await? {
            Some(stored) if stored.same_as(&r) => Ok((StatusCode::OK, Json(stored))),
            _ => Err(StoreError::Exists(what).into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// Fetch one receivable.
#[utoipa::path(get, path = "/receivables/{id}", tag = "receivables", operation_id = "fetch_receivable",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Receivable), (status = 404, description = "RECEIVABLE_NOT_FOUND", body = ErrorBody)))]
pub async fn fetch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Receivable>> {
    match state.store.receivable(id).await? {
        Some(r) if may_see(&caller, &r.debtor_org) => Ok(Json(r)),
        _ => Err(not_found(id)),
    }
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::not_found("RECEIVABLE_NOT_FOUND", format!("no receivable {id}"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub status: Option<ReceivableStatus>,
    pub debtor_org: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// List receivables, newest first (a dealer sees its organisation's).
#[utoipa::path(get, path = "/receivables", tag = "receivables", operation_id = "list_receivables",
    params(ListQuery), responses((status = 200, body = Page<Receivable>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Receivable>>> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let debtor_org = if caller.require(STAFF).is_ok() {
        q.debtor_org
    } else {
        Some(caller.org.clone().unwrap_or_default())
    };
    let filter = ReceivableFilter {
        status: q.status,
        debtor_org,
    };
    let items = state
        .store
        .receivables(&filter, page.after()?, limit + 1)
        .await?;
    Ok(Json(Page::from_overfetch(items, limit, |r| {
        r.id.to_string()
    })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancellation {
    pub reason: String,
}

/// Cancel a receivable (the settlement's compensation). Emits
/// `axle.finance.receivable_cancelled.v1`.
#[utoipa::path(post, path = "/receivables/{id}/cancel", tag = "receivables", operation_id = "cancel_receivable",
    params(("id" = Uuid, Path)), request_body = Cancellation,
    responses((status = 200, body = Receivable), (status = 404, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<Cancellation>,
) -> ApiResult<Json<Receivable>> {
    caller.require(RAISE)?;
    for _ in 0..3 {
        let r = state
            .store
            .receivable(id)
            .await?
            .ok_or_else(|| not_found(id))?;
        let Some(next) = r.cancel(&body.reason, axle_core::time::now())? else {
            return Ok(Json(r));
        };
        let event = events::receivable(&next, receivable::CANCELLED, &caller.name)
            .map_err(ApiError::internal)?;
        match state.store.save_receivable(&next, r.version, &event).await {
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
