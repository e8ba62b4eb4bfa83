//! `/accounts` and `/holds`: dealers' deposit accounts on the double-entry ledger.
//!
//! Finance opens an account per organisation and currency and records top-ups (money the
//! dealer paid in); holds take part of the available balance for a reason and a reference (a
//! lot the dealer leads) and end released (given back) or captured (taken for a sale). A hold
//! larger than the available balance is refused with 409 `ACCOUNT_INSUFFICIENT_FUNDS`.
//! Statements list every movement with its entries.

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json, Page, PageQuery, Path, Query};
use axle_core::money::{Currency, Money};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{AppState, STAFF, may_see};
use crate::domain::ledger::{self, Hold, HoldStatus, MovementKind};
use crate::domain::text;
use crate::events;
use crate::store::{Account, Booking, Movement, StoreError};

/// Who may open accounts and record top-ups.
const FINANCE: &[&str] = &["finance"];
/// Who may place and end holds (the auction service's client is an auctioneer).
const HOLDERS: &[&str] = &["finance", "operator", "auctioneer"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/accounts", get(list).post(open))
        .route("/accounts/{id}", get(fetch))
        .route("/accounts/{id}/top-ups", post(top_up))
        .route("/accounts/{id}/statement", get(statement))
        .route("/accounts/{id}/holds", get(holds).post(place_hold))
        .route("/holds/{id}/release", post(release))
        .route("/holds/{id}/capture", post(capture))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    pub org_id: String,
    /// ISO 4217, e.g. CNY.
    pub currency: Currency,
}

/// Open an organisation's deposit account in a currency. Emits `axle.finance.account_opened.v1`.
#[utoipa::path(post, path = "/accounts", tag = "accounts", operation_id = "open_account", request_body = NewAccount,
    responses((status = 201, body = Account), (status = 409, description = "FINANCE_EXISTS", body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn open(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewAccount>,
) -> ApiResult<(StatusCode, Json<Account>)> {
    caller.require(FINANCE)?;
    let org = text("org_id", &new.org_id, 100)?;
    let account = state
        .store
        .open_account(&org, new.currency, |a| {
            events::account_opened(a, &caller.name)
                .map_err(|e| StoreError::Corrupt(a.id.to_string(), e.to_string()))
        })
        .await?;
    state.outbox.wake();
    Ok((StatusCode::CREATED, Json(account)))
}

/// One account with its balances.
#[utoipa::path(get, path = "/accounts/{id}", tag = "accounts", operation_id = "fetch_account", params(("id" = Uuid, Path)),
    responses((status = 200, body = Account), (status = 404, description = "ACCOUNT_NOT_FOUND", body = ErrorBody)))]
pub async fn fetch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Account>> {
    Ok(Json(visible(&state, &caller, id).await?))
}

async fn visible(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<Account> {
    match state.store.account(id).await? {
        Some(a) if may_see(caller, &a.org_id) => Ok(a),
        _ => Err(ApiError::not_found(
            "ACCOUNT_NOT_FOUND",
            format!("no account {id}"),
        )),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub org_id: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// List accounts (a dealer sees its organisation's).
#[utoipa::path(get, path = "/accounts", tag = "accounts", operation_id = "list_accounts", params(ListQuery),
    responses((status = 200, body = Page<Account>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Account>>> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let org = if caller.require(STAFF).is_ok() {
        q.org_id
    } else {
        Some(caller.org.clone().unwrap_or_default())
    };
    let items = state
        .store
        .accounts(org.as_deref(), page.after()?, limit + 1)
        .await?;
    Ok(Json(Page::from_overfetch(items, limit, |a| {
        a.id.to_string()
    })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    pub amount: Money,
    /// The bank transfer or receipt it came with.
    pub reference: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Booked {
    pub movement_id: Uuid,
    pub account: Account,
}

/// Record money the dealer paid in. Emits `axle.finance.account_topped_up.v1`.
#[utoipa::path(post, path = "/accounts/{id}/top-ups", tag = "accounts", operation_id = "top_up_account",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")), request_body = TopUp,
    responses((status = 201, body = Booked), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn top_up(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<TopUp>,
) -> ApiResult<(StatusCode, Json<Booked>)> {
    caller.require(FINANCE)?;
    let account = visible(&state, &caller, id).await?;
    let amount = in_currency(&account, body.amount)?;
    let reference = text("reference", &body.reference, 200)?;
    let booking = Booking {
        kind: MovementKind::TopUp,
        amount,
        reference: &reference,
        actor: &caller.name,
    };
    let movement_id = state
        .store
        .top_up(id, booking, |version| {
            events::topped_up(id, version, amount, &reference, &caller.name)
                .map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string()))
        })
        .await?;
    state.outbox.wake();
    let account = visible(&state, &caller, id).await?;
    Ok((
        StatusCode::CREATED,
        Json(Booked {
            movement_id,
            account,
        }),
    ))
}

fn in_currency(account: &Account, money: Money) -> ApiResult<i64> {
    if money.currency != account.currency {
        return Err(ApiError::unprocessable(
            "FINANCE_INVALID",
            format!("amount: the account is in {}", account.currency),
        ));
    }
    Ok(ledger::amount("amount", money.amount)?)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatementQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The account's movements with their entries, newest first.
#[utoipa::path(get, path = "/accounts/{id}/statement", tag = "accounts", operation_id = "account_statement",
    params(("id" = Uuid, Path), StatementQuery),
    responses((status = 200, body = Page<Movement>), (status = 404, body = ErrorBody)))]
pub async fn statement(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(q): Query<StatementQuery>,
) -> ApiResult<Json<Page<Movement>>> {
    visible(&state, &caller, id).await?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let items = state.store.statement(id, page.after()?, limit + 1).await?;
    Ok(Json(Page::from_overfetch(items, limit, |m| {
        m.id.to_string()
    })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HoldsQuery {
    pub status: Option<HoldStatus>,
}

/// The account's holds, newest first (up to 200).
#[utoipa::path(get, path = "/accounts/{id}/holds", tag = "accounts", operation_id = "list_holds",
    params(("id" = Uuid, Path), HoldsQuery), responses((status = 200, body = Vec<Hold>), (status = 404, body = ErrorBody)))]
pub async fn holds(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(q): Query<HoldsQuery>,
) -> ApiResult<Json<Vec<Hold>>> {
    visible(&state, &caller, id).await?;
    Ok(Json(state.store.holds(id, q.status, 200).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewHold {
    pub amount: Money,
    pub reason: String,
    /// What it is for (an auction lot, say).
    pub reference: String,
}

/// Hold part of the available balance. Emits `axle.finance.hold_placed.v1`.
#[utoipa::path(post, path = "/accounts/{id}/holds", tag = "accounts", operation_id = "place_hold",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")), request_body = NewHold,
    responses((status = 201, body = Hold), (status = 404, body = ErrorBody),
        (status = 409, description = "ACCOUNT_INSUFFICIENT_FUNDS", body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn place_hold(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<NewHold>,
) -> ApiResult<(StatusCode, Json<Hold>)> {
    caller.require(HOLDERS)?;
    let account = visible(&state, &caller, id).await?;
    let amount = in_currency(&account, body.amount)?;
    let reason = text("reason", &body.reason, 200)?;
    let reference = text("reference", &body.reference, 200)?;
    let booking = Booking {
        kind: MovementKind::Hold,
        amount,
        reference: &reference,
        actor: &caller.name,
    };
    let hold = state
        .store
        .place_hold(id, &reason, booking, |hold, version| {
            events::hold(hold, ledger::HOLD_PLACED, version, &caller.name)
                .map_err(|e| StoreError::Corrupt(hold.id.to_string(), e.to_string()))
        })
        .await?;
    state.outbox.wake();
    Ok((StatusCode::CREATED, Json(hold)))
}

/// Give a hold back to the available balance (idempotent). Emits `axle.finance.hold_released.v1`.
#[utoipa::path(post, path = "/holds/{id}/release", tag = "accounts", operation_id = "release_hold", params(("id" = Uuid, Path)),
    responses((status = 200, body = Hold), (status = 404, body = ErrorBody), (status = 409, description = "HOLD_SETTLED", body = ErrorBody)))]
pub async fn release(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Hold>> {
    end(
        state,
        caller,
        id,
        HoldStatus::Released,
        ledger::HOLD_RELEASED,
    )
    .await
}

/// Take a held amount for a sale (idempotent). Emits `axle.finance.hold_captured.v1`.
#[utoipa::path(post, path = "/holds/{id}/capture", tag = "accounts", operation_id = "capture_hold", params(("id" = Uuid, Path)),
    responses((status = 200, body = Hold), (status = 404, body = ErrorBody), (status = 409, description = "HOLD_SETTLED", body = ErrorBody)))]
pub async fn capture(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Hold>> {
    end(
        state,
        caller,
        id,
        HoldStatus::Captured,
        ledger::HOLD_CAPTURED,
    )
    .await
}

async fn end(
    state: AppState,
    caller: Caller,
    id: Uuid,
    to: HoldStatus,
    event_type: &'static str,
) -> ApiResult<Json<Hold>> {
    caller.require(HOLDERS)?;
    let hold = state
        .store
        .end_hold(id, to, &caller.name, |hold, version| {
            events::hold(hold, event_type, version, &caller.name)
                .map_err(|e| StoreError::Corrupt(hold.id.to_string(), e.to_string()))
        })
        .await?;
    state.outbox.wake();
    Ok(Json(hold))
}
