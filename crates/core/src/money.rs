//! Money: integer minor units (fen for CNY) with an ISO 4217 currency. Never floats.
//!
//! Arithmetic is checked: mixing currencies or overflowing is an error, not a wrong number.
//! JSON form: `{"amount": 100000, "currency": "CNY"}` (amount in minor units).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency must be three upper-case letters (ISO 4217), got {0:?}")]
    BadCurrency(String),
    #[error("cannot combine {0} and {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount out of range")]
    Overflow,
}

/// An ISO 4217 currency code such as `CNY`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ToSchema)]
#[schema(value_type = String, example = "CNY")]
pub struct Currency([u8; 3]);

impl Currency {
    pub const CNY: Currency = Currency(*b"CNY");

    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Currency([a, b, c])),
            _ => Err(MoneyError::BadCurrency(code.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from three ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Digits after the decimal point (ISO 4217 minor unit exponent).
    pub fn exponent(&self) -> u32 {
        match self.as_str() {
            "JPY" | "KRW" | "VND" | "CLP" | "ISK" => 0,
            "BHD" | "KWD" | "OMR" | "JOD" | "TND" => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Currency::parse(&code).map_err(serde::de::Error::custom)
    }
}

/// An amount of money in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct Money {
    /// Minor units (fen for CNY): 100000 is 1,000.00 CNY.
    pub amount: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount: i64, currency: Currency) -> Self {
        Self { amount, currency }
    }

    /// `units` whole currency units, e.g. `Money::major(1_000, Currency::CNY)` is 1,000.00 CNY.
    pub fn major(units: i64, currency: Currency) -> Result<Self, MoneyError> {
        let scale = 10i64.pow(currency.exponent());
        units
            .checked_mul(scale)
            .map(|amount| Self { amount, currency })
            .ok_or(MoneyError::Overflow)
    }

    pub fn zero(currency: Currency) -> Self {
        Self {
            amount: 0,
            currency,
        }
    }

    fn same(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same(&other)?;
        let amount = self
            .amount
            .checked_add(other.amount)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { amount, ..self })
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same(&other)?;
        let amount = self
            .amount
            .checked_sub(other.amount)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { amount, ..self })
    }

    /// `basis_points` / 10,000 of this amount (200 bp = 2 %), rounded half away from zero.
    pub fn percent_bps(self, basis_points: i64) -> Result<Money, MoneyError> {
        let product = i128::from(self.amount) * i128::from(basis_points);
        let rounded = (product + product.signum() * 5_000) / 10_000;
        let amount = i64::try_from(rounded).map_err(|_| MoneyError::Overflow)?;
        Ok(Money { amount, ..self })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exp = self.currency.exponent();
        let scale = 10u64.pow(exp);
        let abs = self.amount.unsigned_abs();
        let sign = if self.amount < 0 { "-" } else { "" };
        if exp == 0 {
            write!(f, "{sign}{abs} {}", self.currency)
        } else {
            let (units, minor) = (abs / scale, abs % scale);
            write!(
                f,
                "{sign}{units}.{minor:0width$} {}",
                self.currency,
                width = exp as usize
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_exact_and_checked() {
        let price = Money::major(300_000, Currency::CNY).unwrap();
        assert_eq!(price.amount, 30_000_000);
        let two_percent = price.percent_bps(200).unwrap();
        assert_eq!(two_percent, Money::major(6_000, Currency::CNY).unwrap());
        let total = two_percent
            .checked_add(Money::major(5_000, Currency::CNY).unwrap())
            .unwrap();
        assert_eq!(total.to_string(), "11000.00 CNY");
        let usd = Money::new(1, Currency::parse("USD").unwrap());
        assert!(matches!(
            total.checked_add(usd),
            Err(MoneyError::CurrencyMismatch(..))
        ));
        assert_eq!(
            Money::new(i64::MAX, Currency::CNY).checked_add(Money::new(1, Currency::CNY)),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(
            Money::new(25, Currency::CNY)
                .percent_bps(2_000)
                .unwrap()
                .amount,
            5
        );
        assert_eq!(
            Money::new(5, Currency::CNY)
                .percent_bps(5_000)
                .unwrap()
                .amount,
            3
        );
        assert_eq!(
            Money::new(-5, Currency::CNY)
                .percent_bps(5_000)
                .unwrap()
                .amount,
            -3
        );
    }

    #[test]
    fn json_form_and_currency_validation() {
        let m: Money = serde_json::from_str(r#"{"amount": 150, "currency": "CNY"}"#).unwrap();
        assert_eq!(m.to_string(), "1.50 CNY");
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"amount":150,"currency":"CNY"}"#
        );
        assert!(serde_json::from_str::<Money>(r#"{"amount": 1, "currency": "yuan"}"#).is_err());
        assert!(serde_json::from_str::<Money>(r#"{"amount": 1.5, "currency": "CNY"}"#).is_err());
        assert_eq!(
            Money::new(-7, Currency::parse("JPY").unwrap()).to_string(),
            "-7 JPY"
        );
    }
}
