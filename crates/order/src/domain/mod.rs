//! Orders and their state machine: pure rules, no I/O.
//!
//! ```text
//! created → awaiting_payment → paid → fulfilling → delivered → completed
//!    └──────────┴──→ cancelled   (by a caller, a settlement's compensation, or the deadline)
//! ```
//!
//! An order's amount is the sum of its lines, in one currency. Once awaiting payment it has a
//! deadline; past it the order is cancelled (`expire`). Repeating a transition that already
//! took effect (cancel a cancelled order, pay a paid one with the same payment) changes nothing,
//! so callers that retry (a saga) need no special cases.

use axle_core::money::Money;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub mod types {
    pub const CREATED: &str = "axle.order.created.v1";
    pub const AWAITING_PAYMENT: &str = "axle.order.awaiting_payment.v1";
    pub const PAID: &str = "axle.order.paid.v1";
    pub const FULFILLING: &str = "axle.order.fulfilling.v1";
    pub const DELIVERED: &str = "axle.order.delivered.v1";
    pub const COMPLETED: &str = "axle.order.completed.v1";
    pub const CANCELLED: &str = "axle.order.cancelled.v1";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Created,
    AwaitingPayment,
    Paid,
    Fulfilling,
    Delivered,
    Completed,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 7] = [
        OrderStatus::Created,
        OrderStatus::AwaitingPayment,
        OrderStatus::Paid,
        OrderStatus::Fulfilling,
        OrderStatus::Delivered,
        OrderStatus::Completed,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "created",
            OrderStatus::AwaitingPayment => "awaiting_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Fulfilling => "fulfilling",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Completed => "completed",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

/// Where an order comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Auction,
    Mall,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Auction => "auction",
            SourceKind::Mall => "mall",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub kind: SourceKind,
    /// The auction lot or mall cart the order comes from.
    pub reference: String,
}

/// One thing bought: a vehicle, or a quantity of an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    pub quantity: i64,
    pub unit_price: Money,
}

/// What a caller asks to create.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// The caller's id for the order (a saga chooses it up front, so creating is idempotent);
    /// unset: a new one.
    pub id: Option<Uuid>,
    pub buyer_org: String,
    pub seller_org: String,
    pub source: Source,
    pub lines: Vec<Line>,
    /// Await payment at once (default), with this deadline in seconds (default: the service's,
    /// 30 minutes); `false` leaves the order `created` until submitted.
    #[serde(default)]
    pub submit: Option<bool>,
    pub payment_deadline_secs: Option<u64>,
}

/// One change of status, kept in the order's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Transition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
    pub at: DateTime<Utc>,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub status: OrderStatus,
    pub buyer_org: String,
    pub seller_org: String,
    pub source: Source,
    pub lines: Vec<Line>,
    /// The sum of the lines.
    pub amount: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_deadline: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_reference: Option<String>,
    pub history: Vec<Transition>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("an order that is {from} cannot be {action}")]
    IllegalTransition {
        from: &'static str,
        action: &'static str,
    },
    #[error("the order was paid by {0}")]
    PaidOtherwise(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn text(field: &'static str, value: &str, max: usize) -> Result<String, DomainError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max {
        return Err(invalid(field, format!("must be 1 to {max} characters")));
    }
    Ok(value.to_string())
}

/// Something a caller asks of an order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// created → awaiting_payment, due within the deadline.
    Submit {
        deadline: Duration,
    },
    Pay {
        reference: String,
    },
    Fulfil,
    Deliver,
    Complete,
    Cancel {
        reason: String,
    },
    /// The payment deadline passed.
    Expire,
}

impl Command {
    fn action(&self) -> &'static str {
        match self {
            Command::Submit { .. } => "submitted",
            Command::Pay { .. } => "paid",
            Command::Fulfil => "fulfilled",
            Command::Deliver => "delivered",
            Command::Complete => "completed",
            Command::Cancel { .. } => "cancelled",
            Command::Expire => "expired",
        }
    }
}

/// What an allowed command did.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // returned once per command, never stored in bulk
pub enum Outcome {
    Changed {
        order: Order,
        event_type: &'static str,
    },
    /// It had already taken effect.
    Unchanged,
}

/// The longest deadline an order may be given (a week).
pub const MAX_DEADLINE_SECS: u64 = 7 * 24 * 3600;

impl Order {
    /// A new order from `new`, checked, at `now` by `actor`; submitted (awaiting payment) unless
    /// `new.submit` is false, with `default_deadline` unless the order names its own.
    pub fn create(
        new: NewOrder,
        id: Uuid,
        actor: &str,
        now: DateTime<Utc>,
        default_deadline: Duration,
    ) -> Result<Order, DomainError> {
        let buyer_org = text("buyer_org", &new.buyer_org, 100)?;
        let seller_org = text("seller_org", &new.seller_org, 100)?;
        let reference = text("source.reference", &new.source.reference, 200)?;
        if new.lines.is_empty() || new.lines.len() > 500 {
            return Err(invalid("lines", "must hold 1 to 500 lines"));
        }
        let currency = new.lines[0].unit_price.currency;
        let mut amount = Money::zero(currency);
        let mut lines = Vec::with_capacity(new.lines.len());
        for line in new.lines {
            if !(1..=1_000_000).contains(&line.quantity) {
                return Err(invalid("lines.quantity", "must be 1 to 1,000,000"));
            }
            if line.unit_price.amount < 0 {
                return Err(invalid("lines.unit_price", "must not be negative"));
            }
            if line.unit_price.currency != currency {
                return Err(invalid(
                    "lines.unit_price",
                    "every line must be in one currency",
                ));
            }
            let total = line
                .unit_price
                .amount
                .checked_mul(line.quantity)
                .map(|a| Money::new(a, currency));
            amount = total
                .and_then(|t| amount.checked_add(t).ok())
                .ok_or_else(|| invalid("lines", "the amount is too large"))?;
            lines.push(Line {
                description: text("lines.description", &line.description, 200)?,
                sku: line.sku.map(|s| text("lines.sku", &s, 100)).transpose()?,
                ..line
            });
        }
        let deadline = match new.payment_deadline_secs {
            Some(secs) if !(1..=MAX_DEADLINE_SECS).contains(&secs) => {
                return Err(invalid(
                    "payment_deadline_secs",
                    format!("must be 1 to {MAX_DEADLINE_SECS}"),
                ));
            }
            Some(secs) => Duration::seconds(secs as i64),
            None => default_deadline,
        };
        let order = Order {
            id,
            status: OrderStatus::Created,
            buyer_org,
            seller_org,
            source: Source {
                kind: new.source.kind,
                reference,
            },
            lines,
            amount,
            payment_deadline: None,
            payment_reference: None,
            history: vec![Transition {
                from: None,
                to: OrderStatus::Created,
                at: now,
                actor: actor.into(),
                reason: None,
            }],
            version: 1,
            created_at: now,
            updated_at: now,
        };
        if new.submit == Some(false) {
            return Ok(order);
        }
        match order.apply(Command::Submit { deadline }, actor, now)? {
            Outcome::Changed { order, .. } => Ok(Order {
                // One creation, one version: the submission is part of it.
                version: 1,
                ..order
            }),
            Outcome::Unchanged => Ok(order),
        }
    }

    /// Applies `command` by `actor` at `now`: the next order and its event, `Unchanged` when it
    /// had already taken effect, or why it is not allowed.
    pub fn apply(
        &self,
        command: Command,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Outcome, DomainError> {
        use OrderStatus::*;
        let mut next = self.clone();
        let mut reason = None;
        let (to, event_type) = match (self.status, &command) {
            (Created, Command::Submit { deadline }) => {
                next.payment_deadline = Some(now + *deadline);
                (AwaitingPayment, types::AWAITING_PAYMENT)
            }
            (AwaitingPayment, Command::Pay { reference }) => {
                next.payment_reference = Some(text("reference", reference, 200)?);
                (Paid, types::PAID)
            }
            (Paid | Fulfilling | Delivered | Completed, Command::Pay { reference }) => {
                return match &self.payment_reference {
                    Some(r) if r == reference.trim() => Ok(Outcome::Unchanged),
                    Some(r) => Err(DomainError::PaidOtherwise(r.clone())),
                    None => Err(self.illegal(&command)),
                };
            }
            (Paid, Command::Fulfil) => (Fulfilling, types::FULFILLING),
            (Fulfilling, Command::Deliver) => (Delivered, types::DELIVERED),
            (Delivered, Command::Complete) => (Completed, types::COMPLETED),
            (Fulfilling, Command::Fulfil)
            | (Delivered, Command::Deliver)
            | (Completed, Command::Complete)
            | (Cancelled, Command::Cancel { .. } | Command::Expire) => {
                return Ok(Outcome::Unchanged);
            }
            (Created | AwaitingPayment, Command::Cancel { reason: why }) => {
                reason = Some(text("reason", why, 500)?);
                (Cancelled, types::CANCELLED)
            }
            (AwaitingPayment, Command::Expire) => {
                if self.payment_deadline.is_some_and(|d| d > now) {
                    return Ok(Outcome::Unchanged);
                }
                reason = Some("the payment deadline passed".into());
                (Cancelled, types::CANCELLED)
            }
            _ => return Err(self.illegal(&command)),
        };
        next.history.push(Transition {
            from: Some(self.status),
            to,
            at: now,
            actor: actor.into(),
            reason,
        });
        next.status = to;
        next.version += 1;
        next.updated_at = now;
        Ok(Outcome::Changed {
            order: next,
            event_type,
        })
    }

    fn illegal(&self, command: &Command) -> DomainError {
        DomainError::IllegalTransition {
            from: self.status.as_str(),
            action: command.action(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axle_core::money::Currency;

    fn cny(amount: i64) -> Money {
        Money::new(amount, Currency::parse("CNY").unwrap())
    }

    fn new_order() -> NewOrder {
        NewOrder {
            id: None,
            buyer_org: "dealer-1".into(),
            seller_org: "seller-1".into(),
            source: Source {
                kind: SourceKind::Auction,
                reference: "lot-1".into(),
            },
            lines: vec![
                Line {
                    description: "2019 Accord".into(),
                    vehicle_id: Some(Uuid::nil()),
                    sku: None,
                    quantity: 1,
                    unit_price: cny(12_000_000),
                },
                Line {
                    description: "Transfer fee".into(),
                    vehicle_id: None,
                    sku: Some("fee".into()),
                    quantity: 2,
                    unit_price: cny(50_000),
                },
            ],
            submit: None,
            payment_deadline_secs: None,
        }
    }

    fn created(now: DateTime<Utc>) -> Order {
        Order::create(new_order(), Uuid::nil(), "t", now, Duration::minutes(30)).unwrap()
    }

    fn step(order: &Order, command: Command, now: DateTime<Utc>) -> Order {
        match order.apply(command, "t", now).unwrap() {
            Outcome::Changed { order, .. } => order,
            Outcome::Unchanged => panic!("expected a change"),
        }
    }

    #[test]
    fn an_order_is_created_awaiting_payment_with_the_sum_of_its_lines() {
        let now = Utc::now();
        let order = created(now);
        assert_eq!(order.status, OrderStatus::AwaitingPayment);
        assert_eq!(order.amount, cny(12_100_000));
        assert_eq!(order.payment_deadline, Some(now + Duration::minutes(30)));
        assert_eq!(order.version, 1);
        assert_eq!(order.history.len(), 2);
    }

    #[test]
    fn the_happy_path_runs_to_completed_and_repeats_change_nothing() {
        let now = Utc::now();
        let mut order = created(now);
        for command in [
            Command::Pay {
                reference: "pay-1".into(),
            },
            Command::Fulfil,
            Command::Deliver,
            Command::Complete,
        ] {
            order = step(&order, command.clone(), now);
            assert_eq!(order.apply(command, "t", now), Ok(Outcome::Unchanged));
        }
        assert_eq!(order.status, OrderStatus::Completed);
        assert_eq!(order.version, 5);
        assert!(matches!(
            order.apply(
                Command::Pay {
                    reference: "pay-2".into()
                },
                "t",
                now
            ),
            Err(DomainError::PaidOtherwise(_))
        ));
        assert!(matches!(
            order.apply(Command::Cancel { reason: "x".into() }, "t", now),
            Err(DomainError::IllegalTransition { .. })
        ));
    }

    #[test]
    fn cancelling_is_idempotent_and_a_paid_order_cannot_be_cancelled() {
        let now = Utc::now();
        let order = created(now);
        let cancelled = step(
            &order,
            Command::Cancel {
                reason: "settlement failed".into(),
            },
            now,
        );
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        assert_eq!(
            cancelled.apply(
                Command::Cancel {
                    reason: "again".into()
                },
                "t",
                now
            ),
            Ok(Outcome::Unchanged)
        );
        let paid = step(
            &order,
            Command::Pay {
                reference: "p".into(),
            },
            now,
        );
        assert!(
            paid.apply(Command::Cancel { reason: "x".into() }, "t", now)
                .is_err()
        );
    }

    #[test]
    fn an_order_expires_only_after_its_deadline() {
        let now = Utc::now();
        let order = created(now);
        assert_eq!(
            order.apply(Command::Expire, "t", now),
            Ok(Outcome::Unchanged)
        );
        let late = now + Duration::minutes(31);
        let expired = step(&order, Command::Expire, late);
        assert_eq!(expired.status, OrderStatus::Cancelled);
        assert_eq!(
            expired.history.last().unwrap().reason.as_deref(),
            Some("the payment deadline passed")
        );
    }

    #[test]
    fn bad_orders_are_refused_with_the_field_named() {
        let now = Utc::now();
        let mut bad = new_order();
        bad.lines[1].unit_price = Money::new(1, Currency::parse("USD").unwrap());
        let err = Order::create(bad, Uuid::nil(), "t", now, Duration::minutes(1)).unwrap_err();
        assert!(err.to_string().starts_with("lines.unit_price"), "{err}");
        let mut bad = new_order();
        bad.lines.clear();
        assert!(Order::create(bad, Uuid::nil(), "t", now, Duration::minutes(1)).is_err());
        let mut bad = new_order();
        bad.lines[0].quantity = 0;
        assert!(Order::create(bad, Uuid::nil(), "t", now, Duration::minutes(1)).is_err());
        let mut bad = new_order();
        bad.lines[0].unit_price.amount = i64::MAX;
        assert!(Order::create(bad, Uuid::nil(), "t", now, Duration::minutes(1)).is_err());
        let mut bad = new_order();
        bad.buyer_org = " ".into();
        assert!(Order::create(bad, Uuid::nil(), "t", now, Duration::minutes(1)).is_err());
    }
}
