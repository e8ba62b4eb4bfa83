//! Outbox → bus → idempotent consumer, and dead letters, on both buses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axle_core::events::{CloudEvent, EventBus, Outbox, Subscription};
use axle_core::on_every_backend;
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

/// A batch handler gets many events in one call and one transaction; an event that fails
/// is retried and dead-lettered alone, and the others of its batch are applied.
async fn batches_apply_together_and_fail_alone(backends: Backends) {
    let tp = TestPlatform::start(backends).await;
    let bus = tp.platform.bus.clone();
    let consumer = consumer_db(&tp).await;
    let queue = format!("{}.batch", tp.tag);
    let largest = Arc::new(AtomicUsize::new(0));
    let (db, largest_seen) = (consumer.clone(), largest.clone());
    bus.subscribe_batch(
        Subscription::new(&queue, &["axle.test.#"]),
        move |events: Vec<CloudEvent>| {
            let (db, largest_seen) = (db.clone(), largest_seen.clone());
            async move {
                largest_seen.fetch_max(events.len(), Ordering::SeqCst);
                let mut tx = db.begin().await?;
                for event in &events {
                    if event.subject == "agg-13" {
                        anyhow::bail!("agg-13 is poison");
                    }
                    apply_in(&mut tx, event).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        },
        tp.platform.shutdown.clone(),
    )
    .await
    .unwrap();

    let events: Vec<CloudEvent> = (0..100).map(event).collect();
    bus.publish(&events).await.unwrap();
    eventually(30, "all but the poison applied", || async {
        (count(&consumer, "effects").await == 99).then_some(())
    })
    .await;
    eventually(30, "the poison alone dead-lettered", || async {
        (bus.dead_letter_count(&queue).await.unwrap() == 1).then_some(())
    })
    .await;
    if matches!(bus, EventBus::RabbitMq(_)) {
        // One message carried the hundred events, and the handler had them in one call.
        assert_eq!(largest.load(Ordering::SeqCst), 100);
    }
    cleanup(&bus, &queue).await;
}

/// Events of several types, interleaved across aggregates, reach a consumer in each
/// aggregate's order although the bus packs them by type.
async fn each_aggregate_keeps_its_order(backends: Backends) {
    let tp = TestPlatform::start(backends).await;
    let bus = tp.platform.bus.clone();
    let queue = format!("{}.order", tp.tag);
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, i64)>::new()));
    let log = seen.clone();
    bus.subscribe(
        Subscription::new(&queue, &["axle.test.#"]),
        move |event: CloudEvent| {
            let log = log.clone();
            async move {
                log.lock()
                    .unwrap()
                    .push((event.subject.clone(), event.aggregateversion));
                Ok(())
            }
        },
        tp.platform.shutdown.clone(),
    )
    .await
    .unwrap();
    let types = [
        "axle.test.created.v1",
        "axle.test.changed.v1",
        "axle.test.closed.v1",
    ];
    let mut events = Vec::new();
    for version in 1..=30_i64 {
        for aggregate in 0..5 {
            let ty = types[(version as usize * 7 + aggregate) % 3];
            let e = CloudEvent::new("test", ty, format!("agg-{aggregate}"), version, &version);
            events.push(e.unwrap());
        }
    }
    bus.publish(&events).await.unwrap();
    eventually(30, "every event delivered", || async {
        (seen.lock().unwrap().len() == events.len()).then_some(())
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    for aggregate in 0..5 {
        let subject = format!("agg-{aggregate}");
        let versions: Vec<i64> = seen
            .iter()
            .filter(|(s, _)| *s == subject)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(versions, (1..=30).collect::<Vec<_>>(), "{subject} in order");
    }
    cleanup(&bus, &queue).await;
}

on_every_backend!(batches, batches_apply_together_and_fail_alone);

on_every_backend!(order_per_aggregate, each_aggregate_keeps_its_order);

async fn cleanup(bus: &EventBus, queue: &str) {
    if let EventBus::RabbitMq(rabbit) = bus {
        rabbit.delete_queue(queue).await.unwrap();
    }
}

on_every_backend!(outbox_to_consumer, outbox_reaches_consumer_once);

on_every_backend!(poison, poison_goes_to_dead_letters_and_replays);

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
