//! Golden records: pure folding of vehicle events, and comparison with the source. No I/O.
//!
//! A golden record is the vehicle as the latest event described it, plus, for every attribute,
//! where its current value came from (source service, time, version). Events carry the whole
//! vehicle, so one event is enough to build a record; an event older than the record
//! (`aggregateversion` not above its version) changes nothing, which makes duplicated and
//! reordered deliveries harmless.

use std::collections::BTreeMap;

use axle_vehicle_api::{VehicleState, VehicleView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// Fields that describe the record itself rather than the vehicle.
const BOOKKEEPING: [&str; 4] = ["id", "version", "created_at", "updated_at"];

/// An attribute's value and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attribute {
    pub value: Value,
    /// The publishing service, e.g. `/axle/vehicle`.
    pub source: String,
    /// When the source changed it (the event's time).
    pub at: DateTime<Utc>,
    /// The aggregate version that set it.
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GoldenVehicle {
    pub id: Uuid,
    pub vin: String,
    pub state: VehicleState,
    pub version: i64,
    /// Every vehicle attribute (make, model, state, pricing, ...) with its provenance.
    pub attributes: BTreeMap<String, Attribute>,
    pub updated_at: DateTime<Utc>,
}

/// What one event says: the vehicle after the change, and the event's envelope facts.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub vehicle: &'a VehicleView,
    pub source: &'a str,
    pub time: DateTime<Utc>,
    pub version: i64,
}

impl GoldenVehicle {
    /// The record after `seen`, or `None` when `seen` is not newer than `current`.
    pub fn fold(current: Option<&GoldenVehicle>, seen: &Observation<'_>) -> Option<GoldenVehicle> {
        if current.is_some_and(|c| c.version >= seen.version) {
            return None;
        }
        let mut attributes = BTreeMap::new();
        for (name, value) in vehicle_fields(seen.vehicle) {
            let kept = current
                .and_then(|c| c.attributes.get(&name))
                .filter(|a| a.value == value)
                .cloned();
            let attribute = kept.unwrap_or_else(|| Attribute {
                value,
                source: seen.source.to_string(),
                at: seen.time,
                version: seen.version,
            });
            attributes.insert(name, attribute);
        }
        Some(GoldenVehicle {
            id: seen.vehicle.id,
            vin: seen.vehicle.vin.clone(),
            state: seen.vehicle.state,
            version: seen.version,
            attributes,
            updated_at: seen.time,
        })
    }

    pub fn attribute(&self, name: &str) -> Option<&Value> {
        self.attributes.get(name).map(|a| &a.value)
    }

    /// Where this record and the source's view of the vehicle disagree.
    pub fn differences(&self, source: &VehicleView) -> Vec<FieldDrift> {
        let mut drift = Vec::new();
        if self.version != source.version {
            drift.push(FieldDrift::new(
                "version",
                Value::from(self.version),
                Value::from(source.version),
            ));
        }
        let theirs: BTreeMap<String, Value> = vehicle_fields(source).collect();
        let names: std::collections::BTreeSet<&String> =
            theirs.keys().chain(self.attributes.keys()).collect();
        for name in names {
            let ours = self.attribute(name).cloned().unwrap_or(Value::Null);
            let other = theirs.get(name).cloned().unwrap_or(Value::Null);
            if ours != other {
                drift.push(FieldDrift::new(name, ours, other));
            }
        }
        drift
    }
}

/// One field on which master data and the source disagree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FieldDrift {
    pub field: String,
    pub golden: Value,
    pub source: Value,
}

impl FieldDrift {
    fn new(field: &str, golden: Value, source: Value) -> Self {
        Self {
            field: field.to_string(),
            golden,
            source,
        }
    }
}

/// The vehicle's attributes as (name, JSON value), absent and null ones left out.
fn vehicle_fields(vehicle: &VehicleView) -> impl Iterator<Item = (String, Value)> {
    let object = match serde_json::to_value(vehicle) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    object
        .into_iter()
        .filter(|(name, value)| !BOOKKEEPING.contains(&name.as_str()) && !value.is_null())
        .filter(|(_, value)| !matches!(value, Value::Array(a) if a.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(version: i64, state: VehicleState, location: Option<&str>) -> VehicleView {
        VehicleView {
            id: Uuid::nil(),
            vin: "1HGCM82633A004352".into(),
            make: "Honda".into(),
            model: "Accord".into(),
            trim: None,
            year: 2003,
            mileage_km: 1000,
            colour: None,
            location: location.map(String::from),
            photos: vec![],
            seller_org: Some("dealer-1".into()),
            state,
            inspection: None,
            pricing: None,
            reserved_for: None,
            sale: None,
            version,
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
        }
    }

    fn seen(v: &VehicleView, secs: i64) -> Observation<'_> {
        Observation {
            vehicle: v,
            source: "/axle/vehicle",
            time: DateTime::from_timestamp(secs, 0).unwrap(),
            version: v.version,
        }
    }

    #[test]
    fn provenance_follows_the_change_that_set_each_value() {
        let v1 = view(1, VehicleState::Received, None);
        let g1 = GoldenVehicle::fold(None, &seen(&v1, 10)).unwrap();
        let v2 = view(2, VehicleState::Inspecting, Some("Shanghai"));
        let g2 = GoldenVehicle::fold(Some(&g1), &seen(&v2, 20)).unwrap();
        assert_eq!(g2.state, VehicleState::Inspecting);
        assert_eq!(
            g2.attributes["make"].version, 1,
            "unchanged values keep their origin"
        );
        assert_eq!(g2.attributes["state"].version, 2);
        assert_eq!(g2.attributes["location"].at.timestamp(), 20);
        assert!(
            !g2.attributes.contains_key("photos"),
            "empty values are absent"
        );
    }

    #[test]
    fn older_and_repeated_events_change_nothing() {
        let v2 = view(2, VehicleState::Inspecting, None);
        let g = GoldenVehicle::fold(None, &seen(&v2, 20)).unwrap();
        let v1 = view(1, VehicleState::Received, None);
        assert_eq!(GoldenVehicle::fold(Some(&g), &seen(&v1, 10)), None);
        assert_eq!(GoldenVehicle::fold(Some(&g), &seen(&v2, 20)), None);
    }

    #[test]
    fn differences_name_each_field() {
        let v = view(3, VehicleState::Priced, Some("Beijing"));
        let g = GoldenVehicle::fold(None, &seen(&v, 1)).unwrap();
        assert!(g.differences(&v).is_empty());
        let moved = view(4, VehicleState::Listed, None);
        let fields: Vec<String> = g.differences(&moved).into_iter().map(|d| d.field).collect();
        assert_eq!(fields, ["version", "location", "state"]);
    }
}
