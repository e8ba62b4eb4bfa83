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

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
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

use super::{BusError, CloudEvent, EventHandler, Subscription, retry_backoff};
use crate::config::EventsConfig;

/// Messages a consumer may hold unacknowledged, and handle at once.
const PREFETCH: u16 = 64;
/// How long a consumer stopping at shutdown waits for the deliveries it is handling.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// A readable delivery, not yet handled.
struct Received {
    delivery: Delivery,
    event: CloudEvent,
    attempts: u32,
}

impl Received {
    /// Runs the handler; after a failure, sleeps out the retry backoff before reporting it.
    fn handle(
        self,
        handler: &dyn EventHandler,
        max_attempts: u32,
    ) -> impl Future<Output = (String, Delivery, Handled)> + use<> {
        let Received {
            delivery,
            event,
            attempts,
        } = self;
        let (id, subject) = (event.id.clone(), event.subject.clone());
        let handling = handler.handle(event);
        async move {
            let outcome = match handling.await {
                Ok(()) => Handled::Done,
                Err(error) if attempts >= max_attempts => Handled::Dead {
                    id,
                    attempts,
                    error,
                },
                Err(error) => {
                    tracing::debug!(event = id, attempts, error = %format!("{error:#}"), "delivery failed, will retry");
                    tokio::time::sleep(retry_backoff(attempts)).await;
                    Handled::Retry
                }
            };
            (subject, delivery, outcome)
        }
    }
}

/// How handling a delivery ended.
enum Handled {
    Done,
    Retry,
    Dead {
        id: String,
        attempts: u32,
        error: anyhow::Error,
    },
}

#[derive(Clone)]
pub struct RabbitBus {
    inner: Arc<Inner>,
}

struct Inner {
    url: SecretString,
    exchange: String,
    max_attempts: u32,
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

    async fn open_connection(&self) -> Result<Connection, lapin::Error> {
        Connection::connect(
            self.inner.url.expose_secret(),
            ConnectionProperties::default().with_connection_name("axle".into()),
        )
        .await
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

    pub async fn publish(&self, events: &[CloudEvent]) -> Result<(), BusError> {
        let exchange = self.inner.exchange.clone();
        self.with_publisher(async |channel| {
            let mut confirms = Vec::with_capacity(events.len());
            for event in events {
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/cloudevents+json".into())
                    .with_message_id(event.id.as_str().into())
                    .with_type(event.ty.as_str().into());
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        event.ty.as_str().into(),
                        BasicPublishOptions::default(),
                        event.to_json().as_bytes(),
                        properties,
                    )
                    .await?;
                confirms.push((event, confirm));
            }
            for (event, confirm) in confirms {
                match confirm.await? {
                    Confirmation::Ack(_) => {}
                    _ => return Err(BusError::NotConfirmed(event.id.clone())),
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
        let mut args = quorum();
        args.insert(
            "x-dead-letter-exchange".into(),
            string(&self.dead_exchange()),
        );
        args.insert("x-dead-letter-routing-key".into(), string(queue));
        channel.queue_declare(queue.into(), durable, args).await?;
        channel
            .queue_declare(dlq.as_str().into(), durable, quorum())
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

    pub async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn EventHandler>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        self.with_publisher(async |channel| self.declare(channel, &subscription).await)
            .await?;
        let bus = self.clone();
        Ok(tokio::spawn(async move {
            let mut failures = 0;
            while !shutdown.is_cancelled() {
                match bus
                    .consume(&subscription, handler.as_ref(), &shutdown)
                    .await
                {
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
    async fn consume(
        &self,
        subscription: &Subscription,
        handler: &dyn EventHandler,
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
        // Deliveries are handled concurrently up to the prefetch, but one at a time per
        // aggregate (`subject`) and in delivery order, so each aggregate's events apply in the
        // order they were published whenever the broker keeps that order.
        let mut handling = FuturesUnordered::new();
        let mut waiting: HashMap<String, VecDeque<Received>> = HashMap::new();
        loop {
            tokio::select! {
                next = consumer.next() => {
                    let delivery = match next {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(e)) => return Err(e.into()),
                        None => return Err(BusError::ConsumerClosed),
                    };
                    let Some(received) = self.receive(subscription, delivery).await? else {
                        continue;
                    };
                    match waiting.get_mut(&received.event.subject) {
                        Some(lane) => lane.push_back(received),
                        None => {
                            waiting.insert(received.event.subject.clone(), VecDeque::new());
                            handling.push(received.handle(handler, self.inner.max_attempts));
                        }
                    }
                }
                Some((subject, delivery, outcome)) = handling.next() => {
                    self.settle(subscription, delivery, outcome).await?;
                    match waiting.get_mut(&subject).and_then(VecDeque::pop_front) {
                        Some(next) => handling.push(next.handle(handler, self.inner.max_attempts)),
                        None => {
                            waiting.remove(&subject);
                        }
                    }
                }
                _ = shutdown.cancelled() => {
                    // Let what is being handled finish and be acknowledged, within a bound;
                    // what waits behind it is redelivered to the next consumer.
                    let drain = async {
                        while let Some((_, delivery, outcome)) = handling.next().await {
                            self.settle(subscription, delivery, outcome).await?;
                        }
                        Ok::<_, BusError>(())
                    };
                    let _ = tokio::time::timeout(SHUTDOWN_DRAIN, drain).await;
                    let _ = conn.close(200, "shutdown".into()).await;
                    return Ok(());
                }
            }
        }
    }

    /// Reads a delivery, or dead-letters it at once when it is unreadable or has used up its
    /// attempts.
    async fn receive(
        &self,
        subscription: &Subscription,
        delivery: Delivery,
    ) -> Result<Option<Received>, BusError> {
        // Quorum queues count earlier failed deliveries, consumer crashes included.
        let attempts = delivery_count(&delivery.properties) + 1;
        match CloudEvent::from_json(&delivery.data) {
            Ok(event) if attempts <= self.inner.max_attempts => Ok(Some(Received {
                delivery,
                event,
                attempts,
            })),
            Ok(event) => {
                tracing::warn!(
                    queue = subscription.queue,
                    event = event.id,
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

    async fn settle(
        &self,
        subscription: &Subscription,
        delivery: Delivery,
        outcome: Handled,
    ) -> Result<(), BusError> {
        match outcome {
            Handled::Done => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Handled::Dead {
                id,
                attempts,
                error,
            } => {
                tracing::warn!(queue = subscription.queue, event = id, attempts, error = %format!("{error:#}"), "message dead-lettered");
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
            Handled::Retry => {
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await?;
            }
        }
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
                // Straight back into the queue it died in, not to every binding of its type.
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &delivery.data,
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_content_type("application/cloudevents+json".into()),
                    )
                    .await?
                    .await?;
                if !matches!(confirm, Confirmation::Ack(_)) {
                    return Err(BusError::NotConfirmed("dead letter replay".into()));
                }
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
