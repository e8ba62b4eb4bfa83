//! Events: the CloudEvents 1.0 envelope, the bus that carries it, and the two halves of reliable
//! delivery around the bus.
//!
//! ```text
//! service tx ──► outbox table ──relay──► EventBus ──► queue ──► consumer ──► inbox::claim + effect
//!   (same transaction as         (deleted only after      (durable; retried,      (same transaction:
//!    the state change)            the bus confirmed)       dead-lettered)          processed once)
//! ```
//!
//! The bus is embedded (a SQLite file in the data directory) unless `events.amqp_url` is set,
//! then RabbitMQ. Both have the same semantics: a topic exchange (`*` one word, `#` any number),
//! durable queues that exist from the first `subscribe` on, at-least-once delivery with retries
//! and backoff, and a dead-letter queue per queue after `events.max_attempts` failed deliveries,
//! from which messages can be replayed.

mod embedded;
pub mod inbox;
pub mod outbox;
mod rabbitmq;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use embedded::EmbeddedBus;
pub use outbox::Outbox;
pub use rabbitmq::RabbitBus;

use crate::config::EventsConfig;

/// A CloudEvents 1.0 event in its JSON format, with Axle's two extension attributes:
/// `traceparent` (W3C trace context) and `aggregateversion` (the version of the aggregate named
/// by `subject` after the change, so consumers can order events per aggregate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    /// Unique per event (UUIDv7); consumers deduplicate on it.
    pub id: String,
    /// The publishing service, e.g. `/axle/vehicle`.
    pub source: String,
    /// `axle.<service>.<what_happened>.v<N>`.
    #[serde(rename = "type")]
    pub ty: String,
    pub time: DateTime<Utc>,
    /// The aggregate's id.
    pub subject: String,
    pub datacontenttype: String,
    pub data: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub aggregateversion: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("not a CloudEvents 1.0 JSON event: {0}")]
    Malformed(String),
    #[error("event data: {0}")]
    Data(#[from] serde_json::Error),
}

impl CloudEvent {
    /// A new event from `service` about `subject` at `version`, carrying the current trace.
    pub fn new(
        service: &str,
        ty: &str,
        subject: impl ToString,
        version: i64,
        data: &impl Serialize,
    ) -> Result<Self, EventError> {
        Ok(CloudEvent {
            specversion: "1.0".into(),
            id: crate::id::new_id().to_string(),
            source: format!("/axle/{service}"),
            ty: ty.into(),
            time: crate::time::now(),
            subject: subject.to_string(),
            datacontenttype: "application/json".into(),
            data: serde_json::to_value(data)?,
            traceparent: crate::telemetry::current_traceparent(),
            aggregateversion: version,
        })
    }

    /// Reads an event from its JSON form, checking the required attributes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EventError> {
        let event: CloudEvent =
            serde_json::from_slice(bytes).map_err(|e| EventError::Malformed(e.to_string()))?;
        event.checked()
    }

    /// Reads a batch in the JSON batch format (an array of events), checking each.
    pub fn batch_from_json(bytes: &[u8]) -> Result<Vec<Self>, EventError> {
        let events: Vec<CloudEvent> =
            serde_json::from_slice(bytes).map_err(|e| EventError::Malformed(e.to_string()))?;
        events.into_iter().map(CloudEvent::checked).collect()
    }

    fn checked(self) -> Result<Self, EventError> {
        if self.specversion != "1.0" {
            return Err(EventError::Malformed(format!(
                "specversion {}",
                self.specversion
            )));
        }
        if self.id.is_empty() || self.source.is_empty() || self.ty.is_empty() {
            return Err(EventError::Malformed(
                "id, source and type must not be empty".into(),
            ));
        }
        Ok(self)
    }

    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and a JSON value always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The payload as the publisher's type.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, EventError> {
        Ok(serde_json::from_value(self.data.clone())?)
    }
}

/// A durable queue and the event types (topic patterns) it receives.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Conventionally `<consuming service>.<purpose>`, e.g. `masterdata.vehicles`.
    pub queue: String,
    /// Topic patterns over event types, e.g. `axle.vehicle.#`.
    pub patterns: Vec<String>,
}

impl Subscription {
    pub fn new(queue: impl Into<String>, patterns: &[&str]) -> Self {
        Self {
            queue: queue.into(),
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
        }
    }
}

/// What a consumer does with one event. An error means "try again later"; after
/// `events.max_attempts` failures the event goes to the queue's dead-letter queue.
pub trait EventHandler: Send + Sync + 'static {
    fn handle(&self, event: CloudEvent) -> BoxFuture<'static, anyhow::Result<()>>;
}

impl<F, Fut> EventHandler for F
where
    F: Fn(CloudEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    fn handle(&self, event: CloudEvent) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(self(event))
    }
}

/// What a consumer does with several events at once, in their delivery order and all or
/// nothing — typically one database transaction for the lot, which is what makes a consumer
/// fast. An error fails the whole batch; the bus then hands each of its events over alone, so
/// one bad event is retried and dead-lettered by itself.
pub trait BatchHandler: Send + Sync + 'static {
    fn handle_batch(&self, events: Vec<CloudEvent>) -> BoxFuture<'static, anyhow::Result<()>>;
}

impl<F, Fut> BatchHandler for F
where
    F: Fn(Vec<CloudEvent>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    fn handle_batch(&self, events: Vec<CloudEvent>) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(self(events))
    }
}

/// A subscription's handler, as the buses call it.
#[derive(Clone)]
pub(crate) enum Handler {
    Each(Arc<dyn EventHandler>),
    Batch(Arc<dyn BatchHandler>),
}

/// Events of different aggregates one handler works on at once.
const CONCURRENT_AGGREGATES: usize = 64;

impl Handler {
    /// Handles `events` (in delivery order) and tells how each one ended.
    ///
    /// One at a time per aggregate (`subject`), in order: a per-event handler works on up to
    /// [`CONCURRENT_AGGREGATES`] aggregates at once; a batch handler gets them all in one
    /// call, and after a failure each one alone.
    pub(crate) async fn run(&self, events: Vec<CloudEvent>) -> Vec<anyhow::Result<()>> {
        match self {
            Handler::Batch(handler) => {
                if events.len() > 1 && handler.handle_batch(events.clone()).await.is_ok() {
                    return events.iter().map(|_| Ok(())).collect();
                }
                let mut outcomes = Vec::with_capacity(events.len());
                for event in events {
                    outcomes.push(handler.handle_batch(vec![event]).await);
                }
                outcomes
            }
            Handler::Each(handler) => {
                let mut lanes: Vec<Vec<(usize, CloudEvent)>> = Vec::new();
                let mut lane_of: HashMap<String, usize> = HashMap::new();
                for (i, event) in events.into_iter().enumerate() {
                    let lane = *lane_of.entry(event.subject.clone()).or_insert_with(|| {
                        lanes.push(Vec::new());
                        lanes.len() - 1
                    });
                    lanes[lane].push((i, event));
                }
                let mut outcomes: Vec<(usize, anyhow::Result<()>)> = stream::iter(lanes)
                    .map(|lane| async move {
                        let mut done = Vec::with_capacity(lane.len());
                        for (i, event) in lane {
                            done.push((i, handler.handle(event).await));
                        }
                        done
                    })
                    .buffer_unordered(CONCURRENT_AGGREGATES)
                    .flat_map(stream::iter)
                    .collect()
                    .await;
                outcomes.sort_by_key(|(i, _)| *i);
                outcomes.into_iter().map(|(_, outcome)| outcome).collect()
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus storage: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("event bus storage: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not answer within {0:?}")]
    Unanswered(Duration),
    #[error("RabbitMQ closed the consumer")]
    ConsumerClosed,
    #[error("RabbitMQ did not confirm the publish of event {0}")]
    NotConfirmed(String),
}

/// The event bus of one process: embedded or RabbitMQ, the same operations on both.
#[derive(Clone)]
pub enum EventBus {
    Embedded(EmbeddedBus),
    RabbitMq(RabbitBus),
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventBus::Embedded(_) => "EventBus::Embedded",
            EventBus::RabbitMq(_) => "EventBus::RabbitMq",
        })
    }
}

impl EventBus {
    /// Opens the bus the configuration names; fails if a configured broker is unreachable.
    pub async fn connect(config: &EventsConfig, data_dir: &Path) -> Result<Self, BusError> {
        Ok(match &config.amqp_url {
            Some(url) => EventBus::RabbitMq(RabbitBus::connect(url.clone(), config).await?),
            None => EventBus::Embedded(
                EmbeddedBus::open(&data_dir.join("events.sqlite"), config.max_attempts).await?,
            ),
        })
    }

    /// Publishes `events` durably: returns only once the bus has stored every one of them.
    pub async fn publish(&self, events: &[CloudEvent]) -> Result<(), BusError> {
        match self {
            EventBus::Embedded(bus) => bus.publish(events).await,
            EventBus::RabbitMq(bus) => bus.publish(events).await,
        }
    }

    /// Declares the subscription's queue and bindings (durable from now on) and consumes it in
    /// a background task until `shutdown`, at least once, one event at a time per aggregate.
    pub async fn subscribe(
        &self,
        subscription: Subscription,
        handler: impl EventHandler,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        self.consume(subscription, Handler::Each(Arc::new(handler)), shutdown)
            .await
    }

    /// As [`EventBus::subscribe`], handing the handler every event waiting at once.
    pub async fn subscribe_batch(
        &self,
        subscription: Subscription,
        handler: impl BatchHandler,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        self.consume(subscription, Handler::Batch(Arc::new(handler)), shutdown)
            .await
    }

    async fn consume(
        &self,
        subscription: Subscription,
        handler: Handler,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        match self {
            EventBus::Embedded(bus) => bus.subscribe(subscription, handler, shutdown).await,
            EventBus::RabbitMq(bus) => bus.subscribe(subscription, handler, shutdown).await,
        }
    }

    /// Messages waiting in the dead-letter queue of `queue`.
    pub async fn dead_letter_count(&self, queue: &str) -> Result<u64, BusError> {
        match self {
            EventBus::Embedded(bus) => bus.dead_letter_count(queue).await,
            EventBus::RabbitMq(bus) => bus.dead_letter_count(queue).await,
        }
    }

    /// Moves every dead letter of `queue` back into it, returning how many were moved.
    pub async fn replay_dead_letters(&self, queue: &str) -> Result<u64, BusError> {
        match self {
            EventBus::Embedded(bus) => bus.replay_dead_letters(queue).await,
            EventBus::RabbitMq(bus) => bus.replay_dead_letters(queue).await,
        }
    }

    /// A round trip to the bus's storage, for readiness checks.
    pub async fn ping(&self) -> Result<(), BusError> {
        match self {
            EventBus::Embedded(bus) => bus.ping().await,
            EventBus::RabbitMq(bus) => bus.ping().await,
        }
    }
}

/// AMQP topic matching: words are separated by `.`, `*` matches exactly one word and `#` zero or
/// more words.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(pw), Some(kw)) if pw == kw => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

/// Delay before redelivering a message that failed `attempts` times: 100 ms doubling to 30 s.
pub(crate) fn retry_backoff(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(9);
    Duration::from_millis(100u64 << exp).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("axle.vehicle.#", "axle.vehicle.received.v1"));
        assert!(topic_matches("axle.#", "axle"));
        assert!(topic_matches("#", "anything.at.all"));
        assert!(topic_matches(
            "axle.*.received.v1",
            "axle.vehicle.received.v1"
        ));
        assert!(!topic_matches("axle.*.received.v1", "axle.vehicle.sold.v1"));
        assert!(!topic_matches("axle.*", "axle.vehicle.received"));
        assert!(topic_matches("axle.#.v1", "axle.vehicle.received.v1"));
        assert!(!topic_matches(
            "axle.vehicle.received.v1",
            "axle.vehicle.received.v2"
        ));
        assert!(topic_matches(
            "axle.vehicle.received.v1",
            "axle.vehicle.received.v1"
        ));
    }

    #[test]
    fn envelope_round_trips_and_is_checked() {
        let e = CloudEvent::new(
            "vehicle",
            "axle.vehicle.received.v1",
            "v-1",
            1,
            &serde_json::json!({"vin": "X"}),
        )
        .unwrap();
        let json = e.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "axle.vehicle.received.v1");
        assert_eq!(v["source"], "/axle/vehicle");
        assert_eq!(v["aggregateversion"], 1);
        assert_eq!(CloudEvent::from_json(json.as_bytes()).unwrap(), e);
        assert!(CloudEvent::from_json(b"{\"specversion\":\"0.3\"}").is_err());
        assert!(CloudEvent::from_json(b"not json").is_err());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(retry_backoff(1), Duration::from_millis(100));
        assert_eq!(retry_backoff(2), Duration::from_millis(200));
        assert_eq!(retry_backoff(50), Duration::from_secs(30));
    }
}
