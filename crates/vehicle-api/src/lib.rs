//! The vehicle service's published contract, for the services that consume its events or call
//! its API (master data, auctions, the settlement saga) without depending on its crate.
//!
//! Every vehicle event (`axle.vehicle.<what>.v1`) carries the same payload, [`VehicleChanged`]:
//! the vehicle as it is after the change, who changed it, and the event's `aggregateversion`
//! equals `vehicle.version`. Consumers can therefore rebuild the vehicle from any one event and
//! ignore an event older than what they hold.

use axle_core::money::Money;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Event types, one per lifecycle step.
pub mod types {
    pub const RECEIVED: &str = "axle.vehicle.received.v1";
    pub const INSPECTION_STARTED: &str = "axle.vehicle.inspection_started.v1";
    pub const INSPECTION_COMPLETED: &str = "axle.vehicle.inspection_completed.v1";
    pub const PRICED: &str = "axle.vehicle.priced.v1";
    pub const LISTED: &str = "axle.vehicle.listed.v1";
    pub const RESERVED: &str = "axle.vehicle.reserved.v1";
    pub const SOLD: &str = "axle.vehicle.sold.v1";
    pub const RELEASED: &str = "axle.vehicle.released.v1";
    pub const DELIVERED: &str = "axle.vehicle.delivered.v1";
    pub const WITHDRAWN: &str = "axle.vehicle.withdrawn.v1";
    pub const UPDATED: &str = "axle.vehicle.updated.v1";
    /// Topic pattern matching every vehicle event.
    pub const ALL: &str = "axle.vehicle.#";
}

/// Where a vehicle is in its life.
///
/// ```text
/// received → inspecting → inspected → priced → listed → sold → delivered
///     └──────────┴────────────┴──────────┴────────┴──→ withdrawn
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VehicleState {
    Received,
    Inspecting,
    Inspected,
    Priced,
    Listed,
    Sold,
    Delivered,
    Withdrawn,
}

impl VehicleState {
    pub const ALL: [VehicleState; 8] = [
        VehicleState::Received,
        VehicleState::Inspecting,
        VehicleState::Inspected,
        VehicleState::Priced,
        VehicleState::Listed,
        VehicleState::Sold,
        VehicleState::Delivered,
        VehicleState::Withdrawn,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            VehicleState::Received => "received",
            VehicleState::Inspecting => "inspecting",
            VehicleState::Inspected => "inspected",
            VehicleState::Priced => "priced",
            VehicleState::Listed => "listed",
            VehicleState::Sold => "sold",
            VehicleState::Delivered => "delivered",
            VehicleState::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// Condition grade from an inspection, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Grade {
    A,
    B,
    C,
    D,
    E,
}

/// One checked item of an inspection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InspectionItem {
    /// e.g. `engine`, `brakes`, `body.front_left`.
    pub name: String,
    pub result: ItemResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemResult {
    Ok,
    Attention,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InspectionReport {
    pub inspector: String,
    pub grade: Grade,
    pub items: Vec<InspectionItem>,
    #[serde(default)]
    pub defects: Vec<String>,
    pub completed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pricing {
    pub guide_price: Money,
    /// Suggested auction reserve.
    pub reserve_suggestion: Money,
}

/// The sale a vehicle was marked sold for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sale {
    /// The caller's reference (auction lot, order); repeating it makes `mark sold` idempotent.
    pub sale_id: String,
    pub price: Money,
}

/// A vehicle as the vehicle service publishes it: its API's JSON and every event's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VehicleView {
    pub id: Uuid,
    pub vin: String,
    pub make: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trim: Option<String>,
    pub year: i32,
    pub mileage_km: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colour: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Photo URLs.
    #[serde(default)]
    pub photos: Vec<String>,
    /// The selling dealer organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seller_org: Option<String>,
    pub state: VehicleState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspection: Option<InspectionReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// The auction the vehicle is reserved for, while listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sale: Option<Sale>,
    /// Grows by one with every change; events carry it as `aggregateversion`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The payload of every vehicle event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleChanged {
    /// The vehicle after the change.
    pub vehicle: VehicleView,
    /// Who made the change (the authenticated consumer or user, or `system`).
    pub actor: String,
}
