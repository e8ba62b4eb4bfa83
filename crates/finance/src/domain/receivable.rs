//! Receivables: what a debtor organisation owes for an order, due by a date. Raised by the
//! settlement saga, cancelled by its compensation; payments settle them in a later issue.

use axle_core::money::Money;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{DomainError, invalid, text};

pub const CREATED: &str = "axle.finance.receivable_created.v1";
pub const CANCELLED: &str = "axle.finance.receivable_cancelled.v1";

/// Days a receivable is due in unless it says.
pub const DEFAULT_DUE_DAYS: i64 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceivableStatus {
    Open,
    Cancelled,
}

impl ReceivableStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceivableStatus::Open => "open",
            ReceivableStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReceivable {
    /// The caller's id for it (a saga chooses it up front, so raising it is idempotent).
    pub id: Option<Uuid>,
    pub order_id: Uuid,
    pub debtor_org: String,
    pub amount: Money,
    /// Default: seven days from today.
    pub due_date: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Receivable {
    pub id: Uuid,
    pub order_id: Uuid,
    pub debtor_org: String,
    pub amount: Money,
    pub due_date: NaiveDate,
    pub status: ReceivableStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Receivable {
    pub fn raise(new: NewReceivable, id: Uuid, now: DateTime<Utc>) -> Result<Self, DomainError> {
        if new.amount.amount <= 0 {
            return Err(invalid("amount", "must be positive"));
        }
        let today = now.date_naive();
        let due_date = new
            .due_date
            .unwrap_or(today + chrono::Duration::days(DEFAULT_DUE_DAYS));
        if due_date < today {
            return Err(invalid("due_date", "must not be in the past"));
        }
        Ok(Receivable {
            id,
            order_id: new.order_id,
            debtor_org: text("debtor_org", &new.debtor_org, 100)?,
            amount: new.amount,
            due_date,
            status: ReceivableStatus::Open,
            cancel_reason: None,
            version: 1,
            created_at: now,
            updated_at: now,
        })
    }

    /// The same receivable asked for again (a retried raise).
    pub fn same_as(&self, other: &Receivable) -> bool {
        self.order_id == other.order_id
            && self.debtor_org == other.debtor_org
            && self.amount == other.amount
    }

    /// Cancels it; `None` when it already was.
    pub fn cancel(&self, reason: &str, now: DateTime<Utc>) -> Result<Option<Self>, DomainError> {
        match self.status {
            ReceivableStatus::Cancelled => Ok(None),
            ReceivableStatus::Open => Ok(Some(Receivable {
                status: ReceivableStatus::Cancelled,
                cancel_reason: Some(text("reason", reason, 500)?),
                version: self.version + 1,
                updated_at: now,
                ..self.clone()
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axle_core::money::Currency;

    fn new(amount: i64) -> NewReceivable {
        NewReceivable {
            id: None,
            order_id: Uuid::nil(),
            debtor_org: "dealer-1".into(),
            amount: Money::new(amount, Currency::parse("CNY").unwrap()),
            due_date: None,
        }
    }

    #[test]
    fn a_receivable_is_due_in_seven_days_and_cancels_once() {
        let now = Utc::now();
        let r = Receivable::raise(new(100), Uuid::nil(), now).unwrap();
        assert_eq!(r.due_date, now.date_naive() + chrono::Duration::days(7));
        let cancelled = r.cancel("settlement failed", now).unwrap().unwrap();
        assert_eq!(cancelled.status, ReceivableStatus::Cancelled);
        assert_eq!(cancelled.version, 2);
        assert_eq!(cancelled.cancel("again", now), Ok(None));
    }

    #[test]
    fn bad_receivables_are_refused() {
        let now = Utc::now();
        assert!(Receivable::raise(new(0), Uuid::nil(), now).is_err());
        let mut past = new(1);
        past.due_date = Some(now.date_naive() - chrono::Duration::days(1));
        assert!(Receivable::raise(past, Uuid::nil(), now).is_err());
    }
}
