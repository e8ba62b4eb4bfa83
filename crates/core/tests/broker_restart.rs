//! RabbitMQ restarted while events flow: nothing acknowledged is lost, nothing applied twice.
//!
//! A test binary of its own: `cargo test` runs test binaries one after another, so no other
//! test sees the broker go down.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

#[path = "it/helpers.rs"]
mod helpers;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axle_core::events::{CloudEvent, EventBus, Outbox, Subscription};
use axle_core::testing::{Backends, TestPlatform, eventually};
use helpers::*;
use prometheus::Registry;

const EVENTS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_mid_stream() {
    let Some(backends) = Backends::scaled_out() else {
        return;
    };
    let tp = TestPlatform::start(backends).await;
    let bus = tp.platform.bus.clone();
    let shutdown = tp.platform.shutdown.clone();
    let producer = tp.platform.open_db("producer", &core_only()).await.unwrap();
    let consumer = consumer_db(&tp).await;
    let queue = format!("{}.restart", tp.tag);

    let applied = Arc::new(AtomicUsize::new(0));
    let (db, fresh) = (consumer.clone(), applied.clone());
    bus.subscribe(
        Subscription::new(&queue, &["axle.test.#"]),
        move |event: CloudEvent| {
            let (db, fresh) = (db.clone(), fresh.clone());
            async move {
                if apply_once(&db, &event).await? {
                    fresh.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let outbox = Outbox::new(producer.clone(), &Registry::new()).unwrap();
    let relay = outbox.spawn_relay(bus.clone(), shutdown.clone());

    // Every commit below is an acknowledged write: it must reach the consumer exactly once.
    let (db, ob) = (producer.clone(), outbox.clone());
    let writer = tokio::spawn(async move {
        for n in 0..EVENTS {
            commit_event(&db, &ob, &event(n)).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    eventually(30, "the stream to be flowing", || async {
        (count(&consumer, "effects").await >= 50).then_some(())
    })
    .await;
    axle_core::testing::restart_rabbitmq(Duration::from_secs(2)).await;

    writer.await.unwrap();
    eventually(90, "every committed event applied", || async {
        (count(&consumer, "effects").await == EVENTS as i64).then_some(())
    })
    .await;
    eventually(10, "the outbox drained", || async {
        (outbox.pending().await.unwrap() == 0).then_some(())
    })
    .await;
    assert_eq!(
        applied.load(Ordering::SeqCst),
        EVENTS,
        "no event applied twice"
    );
    let processed = count(&consumer, "axle_processed_events").await;
    assert_eq!(processed, EVENTS as i64);

    shutdown.cancel();
    relay.await.unwrap();
    if let EventBus::RabbitMq(rabbit) = &bus {
        rabbit.delete_queue(&queue).await.unwrap();
    }
}
