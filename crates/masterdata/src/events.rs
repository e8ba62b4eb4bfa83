//! What master data consumes: every vehicle event, into the golden records and the timeline.

use axle_core::events::{CloudEvent, EventBus, Subscription};
use axle_vehicle_api::{VehicleChanged, types};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{CONSUMER, GoldenStore};

/// The durable queue master data reads vehicle events from.
pub const QUEUE: &str = CONSUMER;

/// Subscribes to vehicle events until `shutdown`, recording each round of them in one
/// transaction. A payload that is not a vehicle change fails
/// every attempt and ends in the queue's dead letters, from where it can be replayed.
pub async fn subscribe(
    bus: &EventBus,
    store: GoldenStore,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, axle_core::events::BusError> {
    bus.subscribe_batch(
        Subscription::new(QUEUE, &[types::ALL]),
        move |events: Vec<CloudEvent>| {
            let store = store.clone();
            async move {
                let mut changes = Vec::with_capacity(events.len());
                for event in events {
                    let change: VehicleChanged = event.data_as()?;
                    if change.vehicle.id.to_string() != event.subject
                        || change.vehicle.version != event.aggregateversion
                    {
                        anyhow::bail!("event {} contradicts itself (subject or version)", event.id);
                    }
                    changes.push((event, change));
                }
                store.record(&changes).await?;
                Ok(())
            }
        },
        shutdown,
    )
    .await
}
