//! The auction settlement: when a lot is sold, four services must agree.
//!
//! | step | action | compensation |
//! | --- | --- | --- |
//! | `mark_vehicle_sold` | vehicle `POST /vehicles/{id}/sell` | `POST /vehicles/{id}/release` |
//! | `create_order` | order `POST /orders` (the saga's order id) | `POST /orders/{id}/cancel` |
//! | `deduct_inventory` | vehicle `PUT /pools/{pool}/deductions/{vehicle}` | `DELETE` the same |
//! | `create_receivable` | finance `POST /receivables` (the saga's id) | `POST /receivables/{id}/cancel` |
//!
//! The order and receivable ids are chosen when the settlement starts, so each create is
//! idempotent and each cancellation knows what to cancel even if the create's answer was lost.
//! Completed: `axle.auction.settled.v1`; undone: `axle.auction.settlement_failed.v1`.

use std::time::Duration;

use axle_core::money::Money;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::definition::{Call, Definition, Step, summary};
use crate::domain::retry::RetryPolicy;

pub const SAGA: &str = "settlement";
pub const SETTLED: &str = "axle.auction.settled.v1";
pub const FAILED: &str = "axle.auction.settlement_failed.v1";

/// The participants' names, as the engine's participant URLs are keyed.
pub const VEHICLE: &str = "vehicle";
pub const ORDER: &str = "order";
pub const FINANCE: &str = "finance";

/// What closing a lot asks to settle.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettlementRequest {
    /// The auction lot: one settlement per lot, however often it is asked for.
    pub lot_id: String,
    pub vehicle_id: Uuid,
    /// The inventory pool the vehicle is deducted from.
    pub pool_id: Uuid,
    /// The winning dealer's organisation.
    pub buyer_org: String,
    pub seller_org: String,
    /// The hammer price.
    pub price: Money,
}

/// A settlement's input as the saga keeps it: the request and the ids chosen up front.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Settlement {
    pub lot_id: String,
    pub vehicle_id: Uuid,
    pub pool_id: Uuid,
    pub buyer_org: String,
    pub seller_org: String,
    pub price: Money,
    pub order_id: Uuid,
    pub receivable_id: Uuid,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Settlement {
    pub fn new(request: SettlementRequest) -> Result<Self, Invalid> {
        let text = |field: &str, value: &str| {
            let value = value.trim();
            if value.is_empty() || value.chars().count() > 100 {
                return Err(Invalid(format!("{field}: must be 1 to 100 characters")));
            }
            Ok(value.to_string())
        };
        if request.price.amount <= 0 {
            return Err(Invalid("price: must be positive".into()));
        }
        Ok(Settlement {
            lot_id: text("lot_id", &request.lot_id)?,
            vehicle_id: request.vehicle_id,
            pool_id: request.pool_id,
            buyer_org: text("buyer_org", &request.buyer_org)?,
            seller_org: text("seller_org", &request.seller_org)?,
            price: request.price,
            order_id: axle_core::id::new_id(),
            receivable_id: axle_core::id::new_id(),
        })
    }
}

fn input(value: &Value) -> Result<Settlement, String> {
    serde_json::from_value(value.clone()).map_err(|e| e.to_string())
}

type Results = Map<String, Value>;

fn sell(v: &Value, _: &Results) -> Result<Call, String> {
    let s = input(v)?;
    Ok(Call::post(
        format!("/vehicles/{}/sell", s.vehicle_id),
        json!({"sale_id": s.lot_id, "price": s.price}),
    ))
}

fn release(v: &Value, _: &Results) -> Result<Call, String> {
    let s = input(v)?;
    Ok(Call::post(
        format!("/vehicles/{}/release", s.vehicle_id),
        json!({"sale_id": s.lot_id}),
    )
    .absent_is_done())
}

fn create_order(v: &Value, _: &Results) -> Result<Call, String> {
    let s = input(v)?;
    Ok(Call::post(
        "/orders".into(),
        json!({
            "id": s.order_id,
            "buyer_org": s.buyer_org,
            "seller_org": s.seller_org,
            "source": {"kind": "auction", "reference": s.lot_id},
            "lines": [{
                "description": format!("Vehicle {} (lot {})", s.vehicle_id, s.lot_id),
                "vehicle_id": s.vehicle_id,
                "quantity": 1,
                "unit_price": s.price,
            }],
        }),
    ))
}

fn cancel_order(v: &Value, _: &Results) -> Result<Call, String> {
    let s = input(v)?;
    Ok(Call::post(
        format!("/orders/{}/cancel", s.order_id),
        json!({"reason": "the settlement failed"}),
    )
    .absent_is_done())
}

fn deduct(v: &Value, _: &Results) -> Result<Call, String> {
    let s = input(v)?;
    Ok(Call::put(format!(
        "/pools/{}/deductions/{}",
        s.pool_id, s.vehicle_id
    )))
}

fn restore(v: &Value, _: &Results) -> Result<Call, String> {
    let s = input(v)?;
    Ok(Call::delete(format!("/pools/{}/deductions/{}", s.pool_id, s.vehicle_id)).absent_is_done())
}

fn create_receivable(v: &Value, _: &Results) -> Result<Call, String> {
    let s = input(v)?;
    Ok(Call::post(
        "/receivables".into(),
        json!({
            "id": s.receivable_id,
            "order_id": s.order_id,
            "debtor_org": s.buyer_org,
            "amount": s.price,
        }),
    ))
}

fn cancel_receivable(v: &Value, _: &Results) -> Result<Call, String> {
    let s = input(v)?;
    Ok(Call::post(
        format!("/receivables/{}/cancel", s.receivable_id),
        json!({"reason": "the settlement failed"}),
    )
    .absent_is_done())
}

/// How the settlement's calls are retried and timed.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub action: RetryPolicy,
    pub compensation: RetryPolicy,
    pub timeout: Duration,
}

impl Default for Timing {
    /// Undoing a sale is expensive, so an action is retried for about two minutes before the
    /// settlement gives up: long enough for a participant to restart, and for the claim on an
    /// idempotency key that a crashed participant left behind to lapse (a minute, unless the
    /// same node starts again and gives it back at once).
    fn default() -> Self {
        Self {
            action: RetryPolicy {
                max_attempts: 12,
                initial: Duration::from_millis(200),
                max: Duration::from_secs(30),
            },
            compensation: RetryPolicy {
                max_attempts: 10,
                initial: Duration::from_millis(500),
                max: Duration::from_secs(60),
            },
            timeout: Duration::from_secs(5),
        }
    }
}

pub fn definition(timing: Timing) -> Definition {
    let step = |name, participant, action, compensation| Step {
        name,
        participant,
        action,
        compensation: Some(compensation),
        keep: summary,
        retry: timing.action,
        compensation_retry: timing.compensation,
        timeout: timing.timeout,
    };
    let steps = vec![
        step("mark_vehicle_sold", VEHICLE, sell as _, release as _),
        step("create_order", ORDER, create_order as _, cancel_order as _),
        step("deduct_inventory", VEHICLE, deduct as _, restore as _),
        step(
            "create_receivable",
            FINANCE,
            create_receivable as _,
            cancel_receivable as _,
        ),
    ];
    Definition {
        name: SAGA,
        steps,
        completed_event: SETTLED,
        compensated_event: FAILED,
    }
}
