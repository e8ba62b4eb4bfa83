//! Events the vehicle service publishes (through its outbox).

use axle_core::events::{CloudEvent, EventError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Vehicle;

pub const RECEIVED: &str = "axle.vehicle.received.v1";

/// Data of `axle.vehicle.received.v1`: a vehicle entered the platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleReceived {
    pub vehicle_id: Uuid,
    pub vin: String,
    pub make: String,
    pub model: String,
    pub year: i32,
    pub mileage_km: i64,
}

pub fn received(vehicle: &Vehicle) -> Result<CloudEvent, EventError> {
    let data = VehicleReceived {
        vehicle_id: vehicle.id,
        vin: vehicle.vin.to_string(),
        make: vehicle.make.clone(),
        model: vehicle.model.clone(),
        year: vehicle.year,
        mileage_km: vehicle.mileage_km,
    };
    CloudEvent::new(crate::NAME, RECEIVED, vehicle.id, vehicle.version, &data)
}
