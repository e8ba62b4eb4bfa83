//! Events the orchestrator publishes (through its outbox, in the transaction that finishes an
//! instance): its definition's completed or compensated event, e.g. `axle.auction.settled.v1`
//! and `axle.auction.settlement_failed.v1`. The subject is the business key (the lot).

use axle_core::events::{CloudEvent, EventError};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::{Instance, Status};

#[derive(Serialize)]
struct Finished<'a> {
    saga_id: Uuid,
    saga: &'a str,
    status: Status,
    input: &'a Value,
    results: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

pub fn finished(instance: &Instance, ty: &str) -> Result<CloudEvent, EventError> {
    let data = Finished {
        saga_id: instance.id,
        saga: &instance.saga,
        status: instance.status,
        input: &instance.input,
        results: &instance.results,
        error: instance.last_error.as_deref(),
    };
    CloudEvent::new(crate::NAME, ty, &instance.key, instance.version, &data)
}
