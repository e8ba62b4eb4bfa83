//! Events the market publishes (through its outbox): one per change, carrying the record as
//! it now is and who made the change.

use axle_core::events::{CloudEvent, EventError};
use serde::Serialize;

use crate::store::Record;

pub const PRODUCT_CREATED: &str = "axle.market.product_created.v1";
pub const PLAN_CREATED: &str = "axle.market.plan_created.v1";
pub const VERSION_CREATED: &str = "axle.market.version_created.v1";
pub const VERSION_PUBLISHED: &str = "axle.market.version_published.v1";
pub const VERSION_DEPRECATED: &str = "axle.market.version_deprecated.v1";
pub const VERSION_RETIRED: &str = "axle.market.version_retired.v1";
pub const VERSION_WEIGHTED: &str = "axle.market.version_weighted.v1";
pub const APPLICATION_CREATED: &str = "axle.market.application_created.v1";
pub const KEY_CREATED: &str = "axle.market.key_created.v1";
pub const KEY_ROTATED: &str = "axle.market.key_rotated.v1";
pub const KEY_REVOKED: &str = "axle.market.key_revoked.v1";

/// The event of a subscription reaching `status`: `axle.market.subscription_requested.v1`,
/// `…_approved`, `…_rejected`, `…_suspended`, `…_revoked`.
pub fn subscription(status: crate::domain::subscription::Status) -> &'static str {
    use crate::domain::subscription::Status;
    match status {
        Status::Requested => "axle.market.subscription_requested.v1",
        Status::Approved => "axle.market.subscription_approved.v1",
        Status::Rejected => "axle.market.subscription_rejected.v1",
        Status::Suspended => "axle.market.subscription_suspended.v1",
        Status::Revoked => "axle.market.subscription_revoked.v1",
    }
}

#[derive(Serialize)]
struct Changed<'a, T> {
    #[serde(flatten)]
    record: &'a Record<T>,
    actor: &'a str,
}

/// The event of `record`'s latest change, made by `actor`.
pub fn changed<T: Serialize>(
    record: &Record<T>,
    event_type: &str,
    actor: &str,
) -> Result<CloudEvent, EventError> {
    let data = Changed { record, actor };
    CloudEvent::new(crate::NAME, event_type, record.id, record.version, &data)
}
