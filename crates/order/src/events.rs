//! Events the order service publishes (through its outbox): one per transition, carrying the
//! order as it now is and who moved it. Types are in [`crate::domain::types`].

use axle_core::events::{CloudEvent, EventError};
use serde::Serialize;

use crate::domain::Order;

#[derive(Serialize)]
struct Changed<'a> {
    order: &'a Order,
    actor: &'a str,
}

/// The event of `order`'s latest change, made by `actor`.
pub fn changed(order: &Order, event_type: &str, actor: &str) -> Result<CloudEvent, EventError> {
    CloudEvent::new(
        crate::NAME,
        event_type,
        order.id,
        order.version,
        &Changed { order, actor },
    )
}
