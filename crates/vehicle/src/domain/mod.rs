//! The vehicle domain: pure types and rules, no I/O.
//!
//! [`Vehicle`] is the aggregate. It is built only by [`Vehicle::receive`] (which validates a new
//! vehicle) or [`Vehicle::restore`] (from storage), and changes only through
//! [`Vehicle::apply`], the one transition function of the lifecycle.

mod lifecycle;
mod vin;

use axle_core::money::Money;
use axle_vehicle_api::{InspectionReport, Pricing, VehicleState, VehicleView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use lifecycle::{Command, Outcome};
pub use vin::{Vin, VinError, check_digit};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("invalid VIN: {0}")]
    Vin(#[from] VinError),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot {action} a vehicle that is {from}")]
    IllegalTransition {
        from: &'static str,
        action: &'static str,
    },
    #[error("the vehicle is reserved for auction {0}")]
    Reserved(String),
    #[error("the vehicle was sold in sale {0}")]
    AlreadySold(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Free text of 1 to `max` characters, trimmed.
fn text(field: &'static str, value: &str, max: usize) -> Result<String, DomainError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max {
        return Err(invalid(field, format!("must be 1 to {max} characters")));
    }
    Ok(value.to_string())
}

fn optional_text(
    field: &'static str,
    value: Option<String>,
) -> Result<Option<String>, DomainError> {
    value.map(|v| text(field, &v, 200)).transpose()
}

fn mileage(value: i64) -> Result<i64, DomainError> {
    if (0..=10_000_000).contains(&value) {
        Ok(value)
    } else {
        Err(invalid("mileage_km", "must be 0 to 10,000,000"))
    }
}

fn photos(urls: Vec<String>) -> Result<Vec<String>, DomainError> {
    if urls.len() > 50 {
        return Err(invalid("photos", "at most 50 photos"));
    }
    for url in &urls {
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2000 {
            return Err(invalid("photos", format!("not an http(s) URL: {url}")));
        }
    }
    Ok(urls)
}

fn positive(field: &'static str, money: &Money) -> Result<(), DomainError> {
    if money.amount > 0 {
        Ok(())
    } else {
        Err(invalid(field, "must be more than zero"))
    }
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
    pub trim: Option<String>,
    #[schema(example = 2003)]
    pub year: i32,
    #[serde(default)]
    pub mileage_km: i64,
    pub colour: Option<String>,
    pub location: Option<String>,
    #[serde(default)]
    pub photos: Vec<String>,
    /// The selling dealer organisation's id.
    pub seller_org: Option<String>,
}

/// Attribute changes; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributeChanges {
    pub trim: Option<String>,
    pub mileage_km: Option<i64>,
    pub colour: Option<String>,
    pub location: Option<String>,
    pub photos: Option<Vec<String>>,
    pub seller_org: Option<String>,
}

/// The vehicle aggregate; serialises as the published [`VehicleView`].
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(transparent)]
pub struct Vehicle(VehicleView);

impl Vehicle {
    /// Validates `new` into a freshly received vehicle.
    pub fn receive(new: NewVehicle, id: Uuid, now: DateTime<Utc>) -> Result<Self, DomainError> {
        let vin = Vin::parse(&new.vin)?;
        // Model years run one ahead of the calendar.
        let latest = now.format("%Y").to_string().parse::<i32>().unwrap_or(9999) + 1;
        if !(1886..=latest).contains(&new.year) {
            return Err(invalid("year", format!("must be 1886 to {latest}")));
        }
        Ok(Vehicle(VehicleView {
            id,
            vin: vin.to_string(),
            make: text("make", &new.make, 100)?,
            model: text("model", &new.model, 100)?,
            trim: optional_text("trim", new.trim)?,
            year: new.year,
            mileage_km: mileage(new.mileage_km)?,
            colour: optional_text("colour", new.colour)?,
            location: optional_text("location", new.location)?,
            photos: photos(new.photos)?,
            seller_org: optional_text("seller_org", new.seller_org)?,
            state: VehicleState::Received,
            inspection: None,
            pricing: None,
            reserved_for: None,
            sale: None,
            version: 1,
            created_at: now,
            updated_at: now,
        }))
    }

    /// A vehicle read back from storage, re-checked so a bad row cannot enter the domain.
    pub fn restore(view: VehicleView) -> Result<Self, DomainError> {
        Vin::parse(&view.vin)?;
        Ok(Vehicle(view))
    }

    pub fn view(&self) -> &VehicleView {
        &self.0
    }

    pub fn into_view(self) -> VehicleView {
        self.0
    }

    pub fn id(&self) -> Uuid {
        self.0.id
    }

    pub fn version(&self) -> i64 {
        self.0.version
    }

    pub fn state(&self) -> VehicleState {
        self.0.state
    }
}

/// Validates an inspection report.
pub fn check_report(report: &InspectionReport) -> Result<(), DomainError> {
    text("inspector", &report.inspector, 100)?;
    if report.items.is_empty() {
        return Err(invalid("items", "an inspection checks at least one item"));
    }
    for item in &report.items {
        text("items.name", &item.name, 100)?;
    }
    Ok(())
}

/// Validates a pricing: positive amounts in one currency, reserve not above the guide price.
pub fn check_pricing(pricing: &Pricing) -> Result<(), DomainError> {
    positive("guide_price", &pricing.guide_price)?;
    positive("reserve_suggestion", &pricing.reserve_suggestion)?;
    if pricing.guide_price.currency != pricing.reserve_suggestion.currency {
        return Err(invalid(
            "reserve_suggestion",
            "must be in the guide price's currency",
        ));
    }
    if pricing.reserve_suggestion.amount > pricing.guide_price.amount {
        return Err(invalid(
            "reserve_suggestion",
            "must not exceed the guide price",
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn new(vin: &str, year: i32) -> NewVehicle {
        NewVehicle {
            vin: vin.into(),
            make: "Honda".into(),
            model: "Accord".into(),
            trim: None,
            year,
            mileage_km: 1000,
            colour: Some("silver".into()),
            location: None,
            photos: vec![],
            seller_org: Some("dealer-1".into()),
        }
    }

    #[test]
    fn receiving_validates_every_field() {
        let now = Utc::now();
        let v = Vehicle::receive(new("1hgcm82633a004352", 2003), Uuid::nil(), now).unwrap();
        assert_eq!(v.view().vin, "1HGCM82633A004352");
        assert_eq!((v.state(), v.version()), (VehicleState::Received, 1));
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
        let mut bad_photo = new("1HGCM82633A004352", 2003);
        bad_photo.photos = vec!["ftp://x".into()];
        assert!(matches!(
            Vehicle::receive(bad_photo, Uuid::nil(), now),
            Err(DomainError::Invalid {
                field: "photos",
                ..
            })
        ));
    }
}
