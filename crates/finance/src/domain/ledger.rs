//! The deposit ledger: double entry in minor units.
//!
//! A dealer's account has two books, `available` and `held`; the platform has `cash` (money
//! paid in) and `captured` (held money taken for a sale). Every movement writes entries that
//! sum to zero, balances are sums of entries — never stored, never edited:
//!
//! | movement | entries |
//! | --- | --- |
//! | top-up *a* | available +a, platform:cash −a |
//! | hold *a* | available −a, held +a (only if available ≥ a) |
//! | release | held −a, available +a |
//! | capture | held −a, platform:captured +a |

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{DomainError, invalid};

pub const ACCOUNT_OPENED: &str = "axle.finance.account_opened.v1";
pub const TOPPED_UP: &str = "axle.finance.account_topped_up.v1";
pub const HOLD_PLACED: &str = "axle.finance.hold_placed.v1";
pub const HOLD_RELEASED: &str = "axle.finance.hold_released.v1";
pub const HOLD_CAPTURED: &str = "axle.finance.hold_captured.v1";

/// The largest single movement (10 billion in major units of a two-decimal currency), so no
/// sum of a realistic number of them overflows.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// Where an entry is booked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Book {
    Available,
    Held,
    /// The platform's: money paid in by top-ups.
    PlatformCash,
    /// The platform's: held money captured for a sale.
    PlatformCaptured,
}

impl Book {
    pub fn as_str(self) -> &'static str {
        match self {
            Book::Available => "available",
            Book::Held => "held",
            Book::PlatformCash => "platform_cash",
            Book::PlatformCaptured => "platform_captured",
        }
    }

    pub fn parse(text: &str) -> Option<Book> {
        [
            Book::Available,
            Book::Held,
            Book::PlatformCash,
            Book::PlatformCaptured,
        ]
        .into_iter()
        .find(|b| b.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MovementKind {
    TopUp,
    Hold,
    Release,
    Capture,
}

impl MovementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MovementKind::TopUp => "top_up",
            MovementKind::Hold => "hold",
            MovementKind::Release => "release",
            MovementKind::Capture => "capture",
        }
    }

    pub fn parse(text: &str) -> Option<MovementKind> {
        [
            MovementKind::TopUp,
            MovementKind::Hold,
            MovementKind::Release,
            MovementKind::Capture,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }

    /// The movement's entries for `amount` (> 0): two, summing to zero.
    pub fn entries(self, amount: i64) -> [(Book, i64); 2] {
        match self {
            MovementKind::TopUp => [(Book::Available, amount), (Book::PlatformCash, -amount)],
            MovementKind::Hold => [(Book::Available, -amount), (Book::Held, amount)],
            MovementKind::Release => [(Book::Held, -amount), (Book::Available, amount)],
            MovementKind::Capture => [(Book::Held, -amount), (Book::PlatformCaptured, amount)],
        }
    }
}

/// A movement amount: positive and at most [`MAX_AMOUNT`].
pub fn amount(field: &'static str, value: i64) -> Result<i64, DomainError> {
    if !(1..=MAX_AMOUNT).contains(&value) {
        return Err(invalid(
            field,
            format!("must be 1 to {MAX_AMOUNT} minor units"),
        ));
    }
    Ok(value)
}

/// A hold of `asked` against `available`: allowed only when it fits.
pub fn check_hold(available: i64, asked: i64) -> Result<(), DomainError> {
    if asked > available {
        return Err(DomainError::InsufficientFunds { available, asked });
    }
    Ok(())
}

/// An account's balances, summed from its entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Balances {
    pub available: i64,
    pub held: i64,
    /// available + held.
    pub total: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    Active,
    Released,
    Captured,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Active => "active",
            HoldStatus::Released => "released",
            HoldStatus::Captured => "captured",
        }
    }

    pub fn parse(text: &str) -> Option<HoldStatus> {
        [
            HoldStatus::Active,
            HoldStatus::Released,
            HoldStatus::Captured,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Ending an active hold as `to`: the movement to book, `None` when it already ended so,
    /// or why not (it ended the other way).
    pub fn end(self, to: HoldStatus) -> Result<Option<MovementKind>, DomainError> {
        match (self, to) {
            (HoldStatus::Active, HoldStatus::Released) => Ok(Some(MovementKind::Release)),
            (HoldStatus::Active, HoldStatus::Captured) => Ok(Some(MovementKind::Capture)),
            (a, b) if a == b => Ok(None),
            (done, _) => Err(DomainError::HoldSettled(done.as_str())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Hold {
    pub id: Uuid,
    pub account_id: Uuid,
    pub amount: i64,
    pub reason: String,
    /// What the hold is for (an auction lot, say).
    pub reference: String,
    pub status: HoldStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_movement_sums_to_zero() {
        for kind in [
            MovementKind::TopUp,
            MovementKind::Hold,
            MovementKind::Release,
            MovementKind::Capture,
        ] {
            let [a, b] = kind.entries(123);
            assert_eq!(a.1 + b.1, 0, "{kind:?}");
            assert_eq!(MovementKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn a_hold_must_fit_the_available_balance() {
        assert!(check_hold(100, 100).is_ok());
        assert_eq!(
            check_hold(100, 101),
            Err(DomainError::InsufficientFunds {
                available: 100,
                asked: 101
            })
        );
        assert!(amount("amount", 0).is_err());
        assert!(amount("amount", MAX_AMOUNT + 1).is_err());
    }

    #[test]
    fn a_hold_ends_once() {
        use HoldStatus::*;
        assert_eq!(Active.end(Released), Ok(Some(MovementKind::Release)));
        assert_eq!(Released.end(Released), Ok(None));
        assert!(Released.end(Captured).is_err());
        assert_eq!(Captured.end(Captured), Ok(None));
    }
}
