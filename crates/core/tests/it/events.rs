//! Outbox → bus → idempotent consumer, and dead letters, on both buses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axle_core::events::{CloudEvent, EventBus, Outbox, Subscription};
use axle_core::testing::{Backends, TestPlatform, eventually};
use prometheus::Registry;

use crate::helpers::*;

async fn outbox_reaches_consumer_once(backends: Backends) {
    let tp = TestPlatform::start(backends).await;
    let bus = tp.platform.bus.clone();
    let shutdown = tp.platform.shutdown.clone();
    let producer = tp.platform.open_db("producer", &core_only()).await.unwrap();
    let consumer = consumer_db(&tp).await;

    let handled = Arc::new(AtomicUsize::new(0));
    let (db, seen) = (consumer.clone(), handled.clone());
    bus.subscribe(
        Subscription::new(format!("{}.consumer", tp.tag), &["axle.test.#"]),
        move |event: CloudEvent| {
            let (db, seen) = (db.clone(), seen.clone());
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                apply_once(&db, &event).await.map(|_| ())
            }
        },
        shutdown.clone(),
    )
    .await
    .unwrap();

    let outbox = Outbox::new(producer.clone(), &Registry::new()).unwrap();
    let relay = outbox.spawn_relay(bus.clone(), shutdown.clone());
    let events: Vec<CloudEvent> = (0..40).map(event).collect();
    for e in &events {
        commit_event(&producer, &outbox, e).await;
    }
    // An event whose transaction rolls back must never leave.
    let mut tx = producer.begin().await.unwrap();
    Outbox::enqueue(&mut tx, &event(999)).await.unwrap();
    tx.rollback().await.unwrap();

    eventually(20, "all events applied", || async {
        (count(&consumer, "effects").await == 40).then_some(())
    })
    .await;
    eventually(5, "outbox drained", || async {
        (outbox.pending().await.unwrap() == 0).then_some(())
    })
    .await;

    // Redeliveries (a relay crash between publish and delete) are absorbed by the inbox.
    bus.publish(&events[..10]).await.unwrap();
    eventually(20, "duplicates delivered", || async {
        (handled.load(Ordering::SeqCst) >= 50).then_some(())
    })
    .await;
    assert_eq!(
        count(&consumer, "effects").await,
        40,
        "each event applied exactly once"
    );
    let rolled_back: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM effects WHERE subject = 'agg-999'")
            .fetch_one(consumer.pool())
            .await
            .unwrap();
    assert_eq!(rolled_back, 0);

    shutdown.cancel();
    relay.await.unwrap();
    cleanup(&bus, &format!("{}.consumer", tp.tag)).await;
}

async fn poison_goes_to_dead_letters_and_replays(backends: Backends) {
    let tp = TestPlatform::start(backends).await;
    let bus = tp.platform.bus.clone();
    let consumer = consumer_db(&tp).await;
    let queue = format!("{}.poison", tp.tag);
    let cured = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (db, cure, tries) = (consumer.clone(), cured.clone(), attempts.clone());
    bus.subscribe(
        Subscription::new(&queue, &["axle.test.*.v1"]),
        move |event: CloudEvent| {
            let (db, cure, tries) = (db.clone(), cure.clone(), tries.clone());
            async move {
                if event.subject == "agg-13" && !cure.load(Ordering::SeqCst) {
                    tries.fetch_add(1, Ordering::SeqCst);
                    anyhow::bail!("cannot handle agg-13 yet");
                }
                apply_once(&db, &event).await.map(|_| ())
            }
        },
        tp.platform.shutdown.clone(),
    )
    .await
    .unwrap();

    bus.publish(&[event(12), event(13), event(14)])
        .await
        .unwrap();
    eventually(30, "poison dead-lettered", || async {
        (bus.dead_letter_count(&queue).await.unwrap() == 1).then_some(())
    })
    .await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "max_attempts deliveries before dead-lettering"
    );
    eventually(10, "healthy events applied", || async {
        (count(&consumer, "effects").await == 2).then_some(())
    })
    .await;

    cured.store(true, Ordering::SeqCst);
    assert_eq!(bus.replay_dead_letters(&queue).await.unwrap(), 1);
    eventually(20, "replayed event applied", || async {
        (count(&consumer, "effects").await == 3).then_some(())
    })
    .await;
    assert_eq!(bus.dead_letter_count(&queue).await.unwrap(), 0);
    cleanup(&bus, &queue).await;
}

async fn cleanup(bus: &EventBus, queue: &str) {
    if let EventBus::RabbitMq(rabbit) = bus {
        rabbit.delete_queue(queue).await.unwrap();
    }
}

#[tokio::test]
async fn outbox_to_consumer_embedded() {
    outbox_reaches_consumer_once(Backends::embedded()).await;
}

#[tokio::test]
async fn outbox_to_consumer_postgres_rabbitmq() {
    let Some(backends) = scaled_out() else { return };
    outbox_reaches_consumer_once(backends).await;
}

#[tokio::test]
async fn poison_embedded() {
    poison_goes_to_dead_letters_and_replays(Backends::embedded()).await;
}

#[tokio::test]
async fn poison_rabbitmq() {
    let Some(backends) = scaled_out() else { return };
    poison_goes_to_dead_letters_and_replays(backends).await;
}

#[tokio::test]
async fn embedded_queues_survive_a_restart() {
    // Subscribed queues are durable: events published while no consumer runs wait for it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.sqlite");
    let bus = EventBus::Embedded(
        axle_core::events::EmbeddedBus::open(&path, 3)
            .await
            .unwrap(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let task = bus
        .subscribe(
            Subscription::new("q", &["axle.#"]),
            |_: CloudEvent| async { Ok(()) },
            stop.clone(),
        )
        .await
        .unwrap();
    stop.cancel();
    task.await.unwrap();
    bus.publish(&[event(1), event(2)]).await.unwrap();
    drop(bus);

    let reopened = EventBus::Embedded(
        axle_core::events::EmbeddedBus::open(&path, 3)
            .await
            .unwrap(),
    );
    let got = Arc::new(AtomicUsize::new(0));
    let seen = got.clone();
    let _task = reopened
        .subscribe(
            Subscription::new("q", &["axle.#"]),
            move |_: CloudEvent| {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    eventually(10, "both events delivered after reopening", || async {
        (got.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
}
