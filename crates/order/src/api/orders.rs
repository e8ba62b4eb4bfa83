//! `/orders`: create orders and move them through their states.
//!
//! Creating is idempotent on the order id the caller chooses: the same order again answers 200
//! with the stored one, a different order under that id 409 `ORDER_EXISTS`. Every transition
//! answers 200 with the order as it now is, also when it had already taken effect, and 409
//! `ORDER_ILLEGAL_TRANSITION` when the order's status does not allow it. Staff see every
//! order; a dealer sees its organisation's.

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json, Page, PageQuery, Path, Query};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use crate::domain::{Command, NewOrder, Order, OrderStatus, Outcome, types};
use crate::events;
use crate::store::{OrderFilter, StoreError};

/// Who may create orders and cancel them (platform admins too; the settlement saga's client
/// is an operator).
const SALES: &[&str] = &["operator", "auctioneer"];
/// Who may record a payment.
const FINANCE: &[&str] = &["finance", "operator"];
/// Who may see every organisation's orders.
const STAFF: &[&str] = &["operator", "auctioneer", "finance"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", get(list).post(create))
        .route("/orders/{id}", get(fetch))
        .route("/orders/{id}/submit", post(submit))
        .route("/orders/{id}/pay", post(pay))
        .route("/orders/{id}/fulfil", post(fulfil))
        .route("/orders/{id}/deliver", post(deliver))
        .route("/orders/{id}/complete", post(complete))
        .route("/orders/{id}/cancel", post(cancel))
}

/// Create an order (awaiting payment unless `submit` is false). Emits `axle.order.created.v1`.
#[utoipa::path(
    post, path = "/orders", tag = "orders", operation_id = "create_order", request_body = NewOrder,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")),
    responses(
        (status = 201, body = Order),
        (status = 200, description = "The same order existed already", body = Order),
        (status = 409, description = "ORDER_EXISTS", body = ErrorBody),
        (status = 422, description = "ORDER_INVALID", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewOrder>,
) -> ApiResult<(StatusCode, Json<Order>)> {
    caller.require(SALES)?;
    let id = new.id.unwrap_or_else(axle_core::id::new_id);
    let now = axle_core::time::now();
    let order = Order::create(new, id, &caller.name, now, state.payment_deadline)?;
    let event =
        events::changed(&order, types::CREATED, &caller.name).map_err(ApiError::internal)?;
    match state.store.create(&order, &event).await {
        Ok(()) => {
            state.outbox.wake();
            Ok((StatusCode::CREATED, Json(order)))
        }
        Err(StoreError::Exists(_)) => {
            let stored = load(&state, id).await?;
            if same_order(&stored, &order) {
                Ok((StatusCode::OK, Json(stored)))
            } else {
                Err(StoreError::Exists(id).into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a repeated create asks for the order that is stored.
fn same_order(stored: &Order, asked: &Order) -> bool {
    stored.buyer_org == asked.buyer_org
        && stored.seller_org == asked.seller_org
        && stored.source == asked.source
        && stored.lines == asked.lines
}

/// Fetch one order.
#[utoipa::path(
    get, path = "/orders/{id}", tag = "orders", operation_id = "fetch_order",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 404, description = "ORDER_NOT_FOUND", body = ErrorBody))
)]
pub async fn fetch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Order>> {
    let order = load(&state, id).await?;
    if !sees_all(&caller) && caller.org.as_deref() != Some(order.buyer_org.as_str()) {
        return Err(not_found(id));
    }
    Ok(Json(order))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub status: Option<OrderStatus>,
    pub buyer_org: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// List orders, newest first, by status and buyer.
#[utoipa::path(
    get, path = "/orders", tag = "orders", operation_id = "list_orders", params(ListQuery),
    responses((status = 200, body = Page<Order>), (status = 400, body = ErrorBody))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Order>>> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let buyer_org = if sees_all(&caller) {
        q.buyer_org
    } else {
        // A dealer sees its own organisation's orders, whatever it asks for.
        Some(caller.org.clone().unwrap_or_default())
    };
    let filter = OrderFilter {
        status: q.status,
        buyer_org,
    };
    let items = state.store.list(&filter, page.after()?, limit + 1).await?;
    Ok(Json(Page::from_overfetch(items, limit, |o| {
        o.id.to_string()
    })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// Seconds the order may await payment (default: the service's, 30 minutes).
    pub payment_deadline_secs: Option<u64>,
}

/// created → awaiting_payment.
#[utoipa::path(post, path = "/orders/{id}/submit", tag = "orders", operation_id = "submit_order",
    params(("id" = Uuid, Path)), request_body = Submission,
    responses((status = 200, body = Order), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<Submission>,
) -> ApiResult<Json<Order>> {
    caller.require(SALES)?;
    let deadline = match body.payment_deadline_secs {
        Some(secs) if !(1..=crate::domain::MAX_DEADLINE_SECS).contains(&secs) => {
            return Err(ApiError::unprocessable(
                "ORDER_INVALID",
                "payment_deadline_secs: must be 1 to 604800",
            ));
        }
        Some(secs) => chrono::Duration::seconds(secs as i64),
        None => state.payment_deadline,
    };
    mutate(&state, id, &caller, Command::Submit { deadline }).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    /// The payment that paid the order; paying again with it changes nothing.
    pub reference: String,
}

/// awaiting_payment → paid. Emits `axle.order.paid.v1`.
#[utoipa::path(post, path = "/orders/{id}/pay", tag = "orders", operation_id = "pay_order",
    params(("id" = Uuid, Path)), request_body = Payment,
    responses((status = 200, body = Order), (status = 409, description = "ORDER_ILLEGAL_TRANSITION, ORDER_PAID_OTHERWISE", body = ErrorBody)))]
pub async fn pay(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<Payment>,
) -> ApiResult<Json<Order>> {
    caller.require(FINANCE)?;
    let command = Command::Pay {
        reference: body.reference,
    };
    mutate(&state, id, &caller, command).await
}

/// paid → fulfilling.
#[utoipa::path(post, path = "/orders/{id}/fulfil", tag = "orders", operation_id = "fulfil_order",
    params(("id" = Uuid, Path)), responses((status = 200, body = Order), (status = 409, body = ErrorBody)))]
pub async fn fulfil(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Order>> {
    caller.require(SALES)?;
    mutate(&state, id, &caller, Command::Fulfil).await
}

/// fulfilling → delivered.
#[utoipa::path(post, path = "/orders/{id}/deliver", tag = "orders", operation_id = "deliver_order",
    params(("id" = Uuid, Path)), responses((status = 200, body = Order), (status = 409, body = ErrorBody)))]
pub async fn deliver(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Order>> {
    caller.require(SALES)?;
    mutate(&state, id, &caller, Command::Deliver).await
}

/// delivered → completed. Emits `axle.order.completed.v1` (rebates are calculated on it).
#[utoipa::path(post, path = "/orders/{id}/complete", tag = "orders", operation_id = "complete_order",
    params(("id" = Uuid, Path)), responses((status = 200, body = Order), (status = 409, body = ErrorBody)))]
pub async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Order>> {
    caller.require(SALES)?;
    mutate(&state, id, &caller, Command::Complete).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancellation {
    pub reason: String,
}

/// created or awaiting_payment → cancelled (the settlement's compensation). Emits
/// `axle.order.cancelled.v1`.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", operation_id = "cancel_order",
    params(("id" = Uuid, Path)), request_body = Cancellation,
    responses((status = 200, body = Order), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<Cancellation>,
) -> ApiResult<Json<Order>> {
    caller.require(SALES)?;
    let command = Command::Cancel {
        reason: body.reason,
    };
    mutate(&state, id, &caller, command).await
}

fn sees_all(caller: &Caller) -> bool {
    caller.require(STAFF).is_ok()
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::not_found("ORDER_NOT_FOUND", format!("no order {id}"))
}

async fn load(state: &AppState, id: Uuid) -> ApiResult<Order> {
    state.store.get(id).await?.ok_or_else(|| not_found(id))
}

/// Read, apply, save with its event; retried when another change won the race.
async fn mutate(
    state: &AppState,
    id: Uuid,
    caller: &Caller,
    command: Command,
) -> ApiResult<Json<Order>> {
    const ATTEMPTS: usize = 3;
    for _ in 0..ATTEMPTS {
        let order = load(state, id).await?;
        let now = axle_core::time::now();
        let (next, event_type) = match order.apply(command.clone(), &caller.name, now)? {
            Outcome::Unchanged => return Ok(Json(order)),
            Outcome::Changed {
                order: next,
                event_type,
            } => (next, event_type),
        };
        let event = events::changed(&next, event_type, &caller.name).map_err(ApiError::internal)?;
        match state.store.save(&next, order.version, &event).await {
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
