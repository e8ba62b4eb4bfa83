//! Events benchmark: outbox → RabbitMQ → idempotent consumer, against the raw broker.
//!
//! Run through `bench/events.sh`. Measures, in one run:
//! - reference: a bare lapin publisher (publisher confirms, up to 1,024 unconfirmed) and a bare
//!   consumer (manual acks, every 128th with `multiple`) on a durable quorum queue with
//!   persistent messages, one message per event — the broker's own ceiling on this machine
//!   when every event is a message of its own;
//! - throughput: N events committed to a service's outbox (SQLite, as `axle serve` runs), then
//!   drained by the relay through RabbitMQ (events packed into messages by type) into a batch
//!   consumer that claims each round of events in one database transaction (the
//!   idempotent-consumer pattern, as master data consumes);
//! - lag: events committed one per transaction at a fixed rate; commit → consumed p50/p99.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axle_core::config::Config;
use axle_core::db::Migrations;
use axle_core::events::{CloudEvent, Outbox, Subscription, inbox};
use axle_core::platform::Platform;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use secrecy::SecretString;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

/// The reference's publisher keeps this many messages unconfirmed (and its consumer this many
/// unacknowledged), acknowledging every REFERENCE_ACK_EVERY-th with `multiple`: the settings
/// that gave the raw broker its best rate here.
const REFERENCE_WINDOW: usize = 1024;
const REFERENCE_ACK_EVERY: usize = 128;

fn event(n: usize) -> CloudEvent {
    CloudEvent::new(
        "bench",
        "axle.bench.happened.v1",
        format!("agg-{n}"),
        1,
        &serde_json::json!({"n": n, "pad": "x".repeat(200)}),
    )
    .unwrap()
}

async fn reference(url: &str, n: usize) -> f64 {
    let tag = axle_core::id::new_id().simple().to_string();
    let (exchange, queue) = (format!("bench.raw.{tag}"), format!("bench.raw.{tag}.q"));
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let publisher = conn.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    publisher
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let q = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    publisher
        .queue_declare(queue.as_str().into(), q, args)
        .await
        .unwrap();
    publisher
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "axle.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumer_channel = conn.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(REFERENCE_WINDOW as u16, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let payloads: Vec<String> = (0..n).map(|i| event(i).to_json()).collect();
    let started = Instant::now();
    let consuming = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            let delivery = consumer.next().await.unwrap().unwrap();
            got += 1;
            if got % REFERENCE_ACK_EVERY == 0 || got == n {
                let all = BasicAckOptions { multiple: true };
                delivery.ack(all).await.unwrap();
            }
        }
        consumer
    });
    let mut unconfirmed = std::collections::VecDeque::new();
    for p in &payloads {
        let props = BasicProperties::default().with_delivery_mode(2);
        let confirm = publisher
            .basic_publish(
                exchange.as_str().into(),
                "axle.bench.happened.v1".into(),
                BasicPublishOptions::default(),
                p.as_bytes(),
                props,
            )
            .await
            .unwrap();
        unconfirmed.push_back(confirm);
        if unconfirmed.len() > REFERENCE_WINDOW {
            unconfirmed.pop_front().unwrap().await.unwrap();
        }
    }
    for c in unconfirmed {
        c.await.unwrap();
    }
    let consumer = consuming.await.unwrap();
    let rate = n as f64 / started.elapsed().as_secs_f64();
    // Closed before the queue goes, so the broker's cancel meets no consumer of ours.
    consumer_channel.close(200, "done".into()).await.unwrap();
    drop(consumer);
    publisher
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    publisher
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    rate
}

struct Pipeline {
    platform: Platform,
    producer: axle_core::db::Db,
    outbox: Outbox,
    consumed: Arc<AtomicUsize>,
    latencies: Arc<std::sync::Mutex<Vec<f64>>>,
    _dir: tempfile::TempDir,
}

async fn pipeline(url: &str) -> Pipeline {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.events.amqp_url = Some(SecretString::from(url.to_string()));
    config.events.exchange = format!("bench.axle.{}", axle_core::id::new_id().simple());
    let platform = Platform::start(config, CancellationToken::new())
        .await
        .unwrap();
    let core_only = Migrations {
        sqlite: Migrator::DEFAULT,
        postgres: Migrator::DEFAULT,
    };
    let producer = platform.open_db("producer", &core_only).await.unwrap();
    let consumer = platform.open_db("consumer", &core_only).await.unwrap();
    let consumed = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, lat) = (consumed.clone(), latencies.clone());
    platform
        .bus
        .subscribe_batch(
            Subscription::new("bench.consumer", &["axle.bench.#"]),
            move |events: Vec<CloudEvent>| {
                let (db, count, lat) = (consumer.clone(), count.clone(), lat.clone());
                async move {
                    let mut tx = db.begin().await?;
                    for e in &events {
                        inbox::claim(&mut tx, "bench", &e.id).await?;
                    }
                    tx.commit().await?;
                    let now = chrono::Utc::now();
                    let mut lat = lat.lock().unwrap();
                    for e in &events {
                        let age = (now - e.time).num_microseconds().unwrap_or(0) as f64 / 1e3;
                        lat.push(age);
                    }
                    count.fetch_add(events.len(), Ordering::SeqCst);
                    Ok(())
                }
            },
            platform.shutdown.clone(),
        )
        .await
        .unwrap();
    let outbox = Outbox::new(producer.clone(), &prometheus::Registry::new()).unwrap();
    Pipeline {
        platform,
        producer,
        outbox,
        consumed,
        latencies,
        _dir: dir,
    }
}

async fn wait_for(count: &AtomicUsize, n: usize) {
    while count.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let url = std::env::var("AXLE_BENCH_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(50_000);
    let rate: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse().unwrap())
        .unwrap_or(2_000);

    let reference = reference(&url, n).await;

    // Throughput: fill the outbox, then time the drain to the consumer.
    let p = pipeline(&url).await;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut tx = p.producer.begin().await.unwrap();
        for i in chunk {
            Outbox::enqueue(&mut tx, &event(*i)).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let started = Instant::now();
    let relay = p
        .outbox
        .spawn_relay(p.platform.bus.clone(), p.platform.shutdown.clone());
    wait_for(&p.consumed, n).await;
    let throughput = n as f64 / started.elapsed().as_secs_f64();

    // Lag: one event per transaction at a fixed rate, commit → consumed.
    p.latencies.lock().unwrap().clear();
    let lag_events = rate * 5;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..lag_events {
        tick.tick().await;
        let mut tx = p.producer.begin().await.unwrap();
        Outbox::enqueue(&mut tx, &event(n + i)).await.unwrap();
        tx.commit().await.unwrap();
        p.outbox.wake();
    }
    wait_for(&p.consumed, n + lag_events).await;
    let mut lat = p.latencies.lock().unwrap().clone();
    lat.sort_by(|a, b| a.total_cmp(b));
    p.platform.shutdown.cancel();
    relay.await.unwrap();

    println!(
        "events benchmark ({n} events, {} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "  reference: raw RabbitMQ, a message per event (confirms, acks) {reference:>10.0} events/s"
    );
    println!(
        "  axle: outbox (SQLite) -> RabbitMQ -> idempotent consumer     {throughput:>10.0} events/s"
    );
    println!(
        "  ratio axle / reference                                       {:>10.2}",
        throughput / reference
    );
    println!(
        "  lag at {rate} events/s, commit -> consumed: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
}
