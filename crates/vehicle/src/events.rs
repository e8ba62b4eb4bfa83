//! Events the vehicle service publishes (through its outbox). Types and payload are the
//! published contract in `axle-vehicle-api`.

use axle_core::events::{CloudEvent, EventError};
use axle_vehicle_api::VehicleChanged;

use crate::domain::Vehicle;

/// The event of `vehicle`'s latest change, made by `actor`.
pub fn changed(vehicle: &Vehicle, event_type: &str, actor: &str) -> Result<CloudEvent, EventError> {
    let data = VehicleChanged {
        vehicle: vehicle.view().clone(),
        actor: actor.to_string(),
    };
    CloudEvent::new(
        crate::NAME,
        event_type,
        vehicle.id(),
        vehicle.version(),
        &data,
    )
}
