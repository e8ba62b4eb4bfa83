//! The vehicle domain: pure types and rules, no I/O.

mod vin;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use vin::{Vin, VinError, check_digit};

/// Where a vehicle is in its life. The full lifecycle arrives with issue V1; a new vehicle is
/// `received`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VehicleState {
    Received,
}

impl VehicleState {
    pub fn as_str(&self) -> &'static str {
        match self {
            VehicleState::Received => "received",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "received" => Some(VehicleState::Received),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("invalid VIN: {0}")]
    Vin(#[from] VinError),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// What a caller supplies to register a vehicle, before validation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVehicle {
    /// 17 characters, check digit validated.
    #[schema(example = "1HGCM82633A004352")]
    pub vin: String,
    #[schema(example = "Honda")]
    pub make: String,
    #[schema(example = "Accord")]
    pub model: String,
    #[schema(example = 2003)]
    pub year: i32,
    #[serde(default)]
    pub mileage_km: i64,
}

/// A vehicle as the service keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Vehicle {
    pub id: Uuid,
    #[schema(value_type = String)]
    pub vin: Vin,
    pub make: String,
    pub model: String,
    pub year: i32,
    pub mileage_km: i64,
    pub state: VehicleState,
    /// Grows by one with every change; events carry it as `aggregateversion`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Vehicle {
    /// Validates `new` into a freshly received vehicle.
    pub fn receive(new: NewVehicle, id: Uuid, now: DateTime<Utc>) -> Result<Self, DomainError> {
        let vin = Vin::parse(&new.vin)?;
        let text = |field: &'static str, value: String| {
            let value = value.trim().to_string();
            if value.is_empty() || value.chars().count() > 100 {
                Err(DomainError::Invalid {
                    field,
                    reason: "must be 1 to 100 characters".into(),
                })
            } else {
                Ok(value)
            }
        };
        let make = text("make", new.make)?;
        let model = text("model", new.model)?;
        // Model years run one ahead of the calendar.
        let latest = now.format("%Y").to_string().parse::<i32>().unwrap_or(9999) + 1;
        if !(1886..=latest).contains(&new.year) {
            return Err(DomainError::Invalid {
                field: "year",
                reason: format!("must be 1886 to {latest}"),
            });
        }
        if !(0..=10_000_000).contains(&new.mileage_km) {
            return Err(DomainError::Invalid {
                field: "mileage_km",
                reason: "must be 0 to 10,000,000".into(),
            });
        }
        Ok(Vehicle {
            id,
            vin,
            make,
            model,
            year: new.year,
            mileage_km: new.mileage_km,
            state: VehicleState::Received,
            version: 1,
            created_at: now,
            updated_at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(vin: &str, year: i32) -> NewVehicle {
        NewVehicle {
            vin: vin.into(),
            make: "Honda".into(),
            model: "Accord".into(),
            year,
            mileage_km: 1000,
        }
    }

    #[test]
    fn receiving_validates_every_field() {
        let now = Utc::now();
        let v = Vehicle::receive(new("1hgcm82633a004352", 2003), Uuid::nil(), now).unwrap();
        assert_eq!(v.vin.as_str(), "1HGCM82633A004352");
        assert_eq!((v.state, v.version), (VehicleState::Received, 1));
        assert!(matches!(
            Vehicle::receive(new("bad", 2003), Uuid::nil(), now),
            Err(DomainError::Vin(_))
        ));
        assert!(matches!(
            Vehicle::receive(new("1HGCM82633A004352", 1700), Uuid::nil(), now),
            Err(DomainError::Invalid { field: "year", .. })
        ));
        let mut blank = new("1HGCM82633A004352", 2003);
        blank.make = "  ".into();
        assert!(matches!(
            Vehicle::receive(blank, Uuid::nil(), now),
            Err(DomainError::Invalid { field: "make", .. })
        ));
    }
}
