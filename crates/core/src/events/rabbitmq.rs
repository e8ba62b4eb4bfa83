//! The RabbitMQ event bus, for running Axle on several machines.
//!
//! Topology, all durable:
//! - `<exchange>` (topic): every event, routed by its type;
//! - one quorum queue per subscription, `<exchange>.<queue>` (so deployments sharing a broker
//!   under different exchanges never share queues), bound with the subscription's patterns,
//!   whose dead letters go to `<exchange>.dead` (direct) with the queue's name as routing key;
//! - `<exchange>.<queue>.dlq` (quorum): its dead letters.
//!
//! Publishing waits for publisher confirms, so [`RabbitBus::publish`] returns only once the
//! broker has the events; until then the outbox keeps them. Consumers handle up to the prefetch
//! at once (one at a time per aggregate) and ack manually after the handler succeeded; a failed delivery is retried after a backoff and dead-lettered once the
//! quorum queue's delivery count (which also counts consumer crashes) reaches `max_attempts`.
//! Connections that break (a broker restart) are re-opened with backoff, publisher and consumer
//! alike.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BusError, CloudEvent, Handler, Subscription, retry_backoff};
use crate::config::EventsConfig;

/// Messages a consumer may hold unacknowledged.
const PREFETCH: u16 = 64;
/// Events a consumer hands its handler in one round, at most.
const ROUND_EVENTS: usize = 1024;
/// Events one message carries at most, and the body size after which no more join it.
const MESSAGE_EVENTS: usize = 256;
const MESSAGE_BYTES: usize = 128 * 1024;
/// How long connecting to the broker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a consumer stopping at shutdown waits for the round it is handling.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// The content types of a message holding one event, and of one holding several (CloudEvents'
/// JSON batch format: an array of events).
const ONE_EVENT: &str = "application/cloudevents+json";
const EVENT_BATCH: &str = "application/cloudevents-batch+json";

/// One message to publish: events of one type, in their publishing order.
struct Message<'a> {
    ty: &'a str,
    first_id: &'a str,
    events: Vec<String>,
    bytes: usize,
}

impl Message<'_> {
    fn body(&self) -> Vec<u8> {
        match self.events.as_slice() {
            [one] => one.as_bytes().to_vec(),
            many => format!("[{}]", many.join(",")).into_bytes(),
        }
    }

    fn properties(&self) -> BasicProperties {
        let content_type = if self.events.len() == 1 {
            ONE_EVENT
        } else {
            EVENT_BATCH
        };
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(content_type.into())
            .with_message_id(self.first_id.into())
            .with_type(self.ty.into())
    }
}

/// Packs `events` into as few messages as routing and order allow: a message carries events of
/// one type (its routing key), and an event joins its type's open message only if no later
/// message already holds an event of its aggregate — so, messages being published in order,
/// each aggregate's events arrive in the order they were committed.
fn pack(events: &[CloudEvent]) -> Vec<Message<'_>> {
    let mut messages: Vec<Message> = Vec::new();
    let mut open: HashMap<&str, usize> = HashMap::new();
    let mut last_of_subject: HashMap<&str, usize> = HashMap::new();
    for event in events {
        let json = event.to_json();
        let joinable = open.get(event.ty.as_str()).copied().filter(|&m| {
            last_of_subject
                .get(event.subject.as_str())
                .is_none_or(|&last| last <= m)
                && messages[m].events.len() < MESSAGE_EVENTS
                && messages[m].bytes < MESSAGE_BYTES
        });
        let m = joinable.unwrap_or_else(|| {
            messages.push(Message {
                ty: &event.ty,
                first_id: &event.id,
                events: Vec::new(),
                bytes: 0,
            });
            open.insert(&event.ty, messages.len() - 1);
            messages.len() - 1
        });
        messages[m].bytes += json.len() + 1;
        messages[m].events.push(json);
        last_of_subject.insert(&event.subject, m);
    }
    messages
}

/// A delivery being handled: how many events it carries, and how often it was delivered.
struct Received {
    delivery: Delivery,
    events: usize,
    attempts: u32,
}

#[derive(Clone)]
pub struct RabbitBus {
    inner: Arc<Inner>,
}

struct Inner {
    url: SecretString,
    exchange: String,
    max_attempts: u32,
    /// `x-expires` of the queues declared, in milliseconds.
    queue_expires_ms: Option<i64>,
    /// The publishing channel (confirm mode), re-opened after a connection loss.
    publisher: Mutex<Option<(Connection, Channel)>>,
}

impl RabbitBus {
    /// Connects and declares the exchanges; fails if the broker is unreachable.
    pub async fn connect(url: SecretString, config: &EventsConfig) -> Result<Self, BusError> {
        let bus = RabbitBus {
            inner: Arc::new(Inner {
                url,
                exchange: config.exchange.clone(),
                max_attempts: config.max_attempts,
                queue_expires_ms: config
                    .queue_expires_secs
                    .map(|s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)),
                publisher: Mutex::new(None),
            }),
        };
        let mut publisher = bus.inner.publisher.lock().await;
        *publisher = Some(bus.open_publisher().await?);
        drop(publisher);
        Ok(bus)
    }

    /// The broker-side name of a subscription's queue.
    fn queue_name(&self, queue: &str) -> String {
        format!("{}.{queue}", self.inner.exchange)
    }

    fn dead_exchange(&self) -> String {
        format!("{}.dead", self.inner.exchange)
    }

    /// Connects, within [`CONNECT_TIMEOUT`]: a broker that is still starting accepts the TCP
    /// connection long before it answers.
    async fn open_connection(&self) -> Result<Connection, BusError> {
        let connecting = Connection::connect(
            self.inner.url.expose_secret(),
            ConnectionProperties::default().with_connection_name("axle".into()),
        );
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(connected) => Ok(connected?),
            Err(_) => Err(BusError::Unanswered(CONNECT_TIMEOUT)),
        }
    }

    async fn open_publisher(&self) -> Result<(Connection, Channel), BusError> {
        let conn = self.open_connection().await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.inner.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_exchange().as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        Ok((conn, channel))
    }

    /// Runs `f` on the publishing channel, re-opening it first if the connection was lost, and
    /// dropping it if `f` fails so the next call starts afresh.
    async fn with_publisher<T>(
        &self,
        f: impl AsyncFnOnce(&Channel) -> Result<T, BusError>,
    ) -> Result<T, BusError> {
        let mut guard = self.inner.publisher.lock().await;
        let publisher = match guard.take() {
            Some((conn, ch)) if conn.status().connected() && ch.status().connected() => (conn, ch),
            _ => self.open_publisher().await?,
        };
        let result = f(&publisher.1).await;
        if result.is_ok() {
            *guard = Some(publisher);
        }
        result
    }

    /// Publishes `events` in as few messages as [`pack`] allows, and waits for the broker to
    /// confirm every one.
    pub async fn publish(&self, events: &[CloudEvent]) -> Result<(), BusError> {
        let messages = pack(events);
        let exchange = self.inner.exchange.as_str();
        self.with_publisher(async |channel| {
            let mut confirms = Vec::with_capacity(messages.len());
            for message in &messages {
                let confirm = channel
                    .basic_publish(
                        exchange.into(),
                        message.ty.into(),
                        BasicPublishOptions::default(),
                        &message.body(),
                        message.properties(),
                    )
                    .await?;
                confirms.push((message.first_id, confirm));
            }
            for (id, confirm) in confirms {
                match confirm.await? {
                    Confirmation::Ack(_) => {}
                    _ => return Err(BusError::NotConfirmed(id.to_string())),
                }
            }
            Ok(())
        })
        .await
    }

    /// Declares the queue, its dead-letter queue and bindings on `channel`.
    async fn declare(
        &self,
        channel: &Channel,
        subscription: &Subscription,
    ) -> Result<(), BusError> {
        let queue = &self.queue_name(&subscription.queue);
        let queue = queue.as_str();
        let dlq = format!("{queue}.dlq");
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let queue_args = || {
            let mut args = quorum();
            if let Some(ms) = self.inner.queue_expires_ms {
                args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
            }
            args
        };
        let mut args = queue_args();
        args.insert(
            "x-dead-letter-exchange".into(),
            string(&self.dead_exchange()),
        );
        args.insert("x-dead-letter-routing-key".into(), string(queue));
        channel.queue_declare(queue.into(), durable, args).await?;
        channel
            .queue_declare(dlq.as_str().into(), durable, queue_args())
            .await?;
        channel
            .queue_bind(
                dlq.as_str().into(),
                self.dead_exchange().as_str().into(),
                queue.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for pattern in &subscription.patterns {
            channel
                .queue_bind(
                    queue.into(),
                    self.inner.exchange.as_str().into(),
                    pattern.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    pub(super) async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Handler,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        self.with_publisher(async |channel| self.declare(channel, &subscription).await)
            .await?;
        let bus = self.clone();
        Ok(tokio::spawn(async move {
            let mut failures = 0;
            while !shutdown.is_cancelled() {
                match bus.consume(&subscription, &handler, &shutdown).await {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(queue = subscription.queue, error = %e,
                            "RabbitMQ consumer lost its connection, reconnecting");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry_backoff(failures).min(Duration::from_secs(5))) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }))
    }

    /// Consumes until shutdown (Ok) or until the connection breaks (Err).
    ///
    /// Works in rounds: the deliveries that are there (up to [`ROUND_EVENTS`] events) are
    /// handled together, in delivery order, then each is settled. A delivery whose events all
    /// succeeded is acknowledged; one with a failure is returned to the queue after a backoff,
    /// without holding up the next round, or, on its last attempt, dead-lettered.
    async fn consume(
        &self,
        subscription: &Subscription,
        handler: &Handler,
        shutdown: &CancellationToken,
    ) -> Result<(), BusError> {
        let conn = self.open_connection().await?;
        let channel = conn.create_channel().await?;
        self.declare(&channel, subscription).await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                self.queue_name(&subscription.queue).as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        loop {
            let mut next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = conn.close(200, "shutdown".into()).await;
                    return Ok(());
                }
                next = consumer.next() => next,
            };
            let mut round = Vec::new();
            let mut events = Vec::new();
            loop {
                let delivery = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(BusError::ConsumerClosed),
                };
                if let Some((received, carried)) = self.receive(subscription, delivery).await? {
                    round.push(received);
                    events.extend(carried);
                }
                if events.len() >= ROUND_EVENTS {
                    break;
                }
                match consumer.next().now_or_never() {
                    Some(more) => next = more,
                    None => break,
                }
            }
            let handling = handler.run(events);
            tokio::pin!(handling);
            let outcomes = tokio::select! {
                outcomes = &mut handling => outcomes,
                _ = shutdown.cancelled() => {
                    // Let the round finish and be acknowledged, within a bound; what is not
                    // acknowledged is redelivered to the next consumer.
                    match tokio::time::timeout(SHUTDOWN_DRAIN, handling).await {
                        Ok(outcomes) => outcomes,
                        Err(_) => {
                            let _ = conn.close(200, "shutdown".into()).await;
                            return Ok(());
                        }
                    }
                }
            };
            let mut outcomes = outcomes.into_iter();
            for received in round {
                let failed: Vec<(usize, anyhow::Error)> = (0..received.events)
                    .filter_map(|k| match outcomes.next() {
                        Some(Err(error)) => Some((k, error)),
                        _ => None,
                    })
                    .collect();
                self.settle(subscription, received, failed).await?;
            }
        }
    }

    /// Reads a delivery's events, or dead-letters it at once when it is unreadable or has used
    /// up its attempts.
    async fn receive(
        &self,
        subscription: &Subscription,
        delivery: Delivery,
    ) -> Result<Option<(Received, Vec<CloudEvent>)>, BusError> {
        // Quorum queues count earlier failed deliveries, consumer crashes included.
        let attempts = delivery_count(&delivery.properties) + 1;
        match read(&delivery) {
            Ok(events) if attempts <= self.inner.max_attempts => {
                let received = Received {
                    delivery,
                    events: events.len(),
                    attempts,
                };
                Ok(Some((received, events)))
            }
            Ok(events) => {
                tracing::warn!(
                    queue = subscription.queue,
                    event = events.first().map(|e| e.id.as_str()),
                    events = events.len(),
                    attempts,
                    "message dead-lettered"
                );
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(queue = subscription.queue, error = %e, "unreadable message dead-lettered");
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                Ok(None)
            }
        }
    }

    /// Acknowledges a delivery whose events all succeeded; otherwise returns it to the queue
    /// after a backoff or, on its last attempt, dead-letters the events that failed (the whole
    /// message when none succeeded).
    async fn settle(
        &self,
        subscription: &Subscription,
        received: Received,
        failed: Vec<(usize, anyhow::Error)>,
    ) -> Result<(), BusError> {
        let Received {
            delivery,
            events,
            attempts,
        } = received;
        let Some((_, error)) = failed.first() else {
            delivery.ack(BasicAckOptions::default()).await?;
            return Ok(());
        };
        if attempts < self.inner.max_attempts {
            tracing::debug!(queue = subscription.queue, attempts, error = %format!("{error:#}"), "delivery failed, will retry");
            tokio::spawn(async move {
                tokio::time::sleep(retry_backoff(attempts)).await;
                // If the channel is gone by now, the broker returns the delivery itself.
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                let _ = delivery.nack(requeue).await;
            });
            return Ok(());
        }
        tracing::warn!(queue = subscription.queue, attempts, failed = failed.len(), error = %format!("{error:#}"), "events dead-lettered");
        if failed.len() == events {
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await?;
            return Ok(());
        }
        // Some events of the message succeeded: only the others go to the dead letters, each
        // as a message of its own, before the delivery is acknowledged.
        let carried = read(&delivery).unwrap_or_default();
        let dead: Vec<&CloudEvent> = failed.iter().filter_map(|(k, _)| carried.get(*k)).collect();
        let (exchange, queue) = (self.dead_exchange(), self.queue_name(&subscription.queue));
        self.with_publisher(async |channel| {
            for event in dead {
                let body = event.to_json();
                publish_one(
                    channel,
                    &exchange,
                    &queue,
                    body.as_bytes(),
                    ONE_EVENT.into(),
                )
                .await?;
            }
            Ok(())
        })
        .await?;
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    pub async fn dead_letter_count(&self, queue: &str) -> Result<u64, BusError> {
        let dlq = format!("{}.dlq", self.queue_name(queue));
        self.with_publisher(async |channel| {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let q = channel
                .queue_declare(dlq.as_str().into(), passive, FieldTable::default())
                .await?;
            Ok(u64::from(q.message_count()))
        })
        .await
    }

    pub async fn replay_dead_letters(&self, queue: &str) -> Result<u64, BusError> {
        let queue = &self.queue_name(queue);
        let dlq = format!("{queue}.dlq");
        self.with_publisher(async |channel| {
            let mut moved = 0;
            while let Some(message) = channel
                .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            {
                let delivery = message.delivery;
                // Straight back into the queue it died in, not to every binding of its type,
                // as a fresh message (no delivery count) of the same content type.
                let content_type = delivery
                    .properties
                    .content_type()
                    .clone()
                    .unwrap_or_else(|| ONE_EVENT.into());
                publish_one(channel, "", queue, &delivery.data, content_type).await?;
                delivery.ack(BasicAckOptions::default()).await?;
                moved += 1;
            }
            Ok(moved)
        })
        .await
    }

    /// Deletes a subscription's queue and dead-letter queue (tests and decommissioning).
    pub async fn delete_queue(&self, queue: &str) -> Result<(), BusError> {
        let queue = &self.queue_name(queue);
        let dlq = format!("{queue}.dlq");
        self.with_publisher(async |channel| {
            for q in [queue.as_str(), dlq.as_str()] {
                channel
                    .queue_delete(q.into(), QueueDeleteOptions::default())
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Deletes the exchanges this bus declared (tests and decommissioning).
    pub async fn delete_exchanges(&self) -> Result<(), BusError> {
        let names = [self.inner.exchange.clone(), self.dead_exchange()];
        self.with_publisher(async |channel| {
            for name in &names {
                channel
                    .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await?;
            }
            Ok(())
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), BusError> {
        self.with_publisher(async |_| Ok(())).await
    }
}

/// Publishes one persistent message and waits for the broker's confirm.
async fn publish_one(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    content_type: ShortString,
) -> Result<(), BusError> {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(content_type);
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(_) => Ok(()),
        _ => Err(BusError::NotConfirmed(format!(
            "a message to {routing_key}"
        ))),
    }
}

/// The events a delivery carries: one, or a batch, by its content type.
fn read(delivery: &Delivery) -> Result<Vec<CloudEvent>, super::EventError> {
    let content_type = delivery.properties.content_type().as_ref();
    if content_type.is_some_and(|t| t.as_str() == EVENT_BATCH) {
        CloudEvent::batch_from_json(&delivery.data)
    } else {
        CloudEvent::from_json(&delivery.data).map(|event| vec![event])
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// The `x-delivery-count` header quorum queues add to redeliveries (absent on the first).
fn delivery_count(properties: &BasicProperties) -> u32 {
    let key: ShortString = "x-delivery-count".into();
    let value = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(&key).cloned());
    match value {
        Some(AMQPValue::LongLongInt(n)) => n.max(0) as u32,
        Some(AMQPValue::LongInt(n)) => n.max(0) as u32,
        Some(AMQPValue::LongUInt(n)) => n,
        Some(AMQPValue::ShortInt(n)) => n.max(0) as u32,
        Some(AMQPValue::ShortUInt(n)) => u32::from(n),
        Some(AMQPValue::ShortShortInt(n)) => n.max(0) as u32,
        Some(AMQPValue::ShortShortUInt(n)) => u32::from(n),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: &str, subject: &str) -> CloudEvent {
        CloudEvent::new("test", ty, subject, 1, &serde_json::json!({})).unwrap()
    }

    /// Each message as (type, subjects in order).
    fn shape(messages: &[Message]) -> Vec<(String, Vec<String>)> {
        messages
            .iter()
            .map(|m| {
                let body = m.body();
                let events = if m.events.len() == 1 {
                    vec![CloudEvent::from_json(&body).unwrap()]
                } else {
                    CloudEvent::batch_from_json(&body).unwrap()
                };
                assert!(events.iter().all(|e| e.ty == m.ty));
                (
                    m.ty.to_string(),
                    events.into_iter().map(|e| e.subject).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn events_of_one_type_travel_together() {
        let events: Vec<CloudEvent> = (0..10).map(|n| event("a", &format!("s{n}"))).collect();
        let messages = pack(&events);
        assert_eq!(messages.len(), 1);
        assert_eq!(
            messages[0]
                .properties()
                .content_type()
                .as_ref()
                .unwrap()
                .as_str(),
            EVENT_BATCH
        );
        assert_eq!(shape(&messages)[0].1.len(), 10);
        let one = pack(&events[..1]);
        assert_eq!(
            one[0]
                .properties()
                .content_type()
                .as_ref()
                .unwrap()
                .as_str(),
            ONE_EVENT
        );
    }

    #[test]
    fn types_are_split_without_reordering_an_aggregate() {
        // s1 goes a → b → a: its second `a` may not join the first `a` message, which is
        // published before the `b` message.
        let events = [
            event("a", "s1"),
            event("a", "s2"),
            event("b", "s1"),
            event("a", "s3"),
            event("a", "s1"),
            event("b", "s2"),
        ];
        let got = shape(&pack(&events));
        let want: Vec<(String, Vec<String>)> = vec![
            ("a".into(), vec!["s1".into(), "s2".into(), "s3".into()]),
            ("b".into(), vec!["s1".into(), "s2".into()]),
            ("a".into(), vec!["s1".into()]),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn messages_are_bounded() {
        let events: Vec<CloudEvent> = (0..600).map(|n| event("a", &format!("s{n}"))).collect();
        let messages = pack(&events);
        assert!(messages.iter().all(|m| m.events.len() <= MESSAGE_EVENTS));
        assert_eq!(messages.iter().map(|m| m.events.len()).sum::<usize>(), 600);
        let big = CloudEvent::new("test", "a", "s", 1, &"x".repeat(100_000)).unwrap();
        assert_eq!(pack(&[big.clone(), big.clone(), big]).len(), 2);
    }
}
