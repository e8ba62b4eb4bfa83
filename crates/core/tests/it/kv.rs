//! Counters and locks with fencing tokens, in memory and on Redis.

use std::time::Duration;

use axle_core::config::KvConfig;
use axle_core::kv::Kv;
use axle_core::testing::{eventually, redis_url};
use secrecy::SecretString;

async fn kv(redis: Option<String>) -> Kv {
    let config = KvConfig {
        redis_url: redis.map(SecretString::from),
        key_prefix: format!("t{}:", axle_core::id::new_id().simple()),
    };
    Kv::connect(&config).await.unwrap()
}

async fn lock_with_fencing(kv: Kv) {
    let first = kv
        .lock("resource", Duration::from_millis(300))
        .await
        .unwrap()
        .expect("free lock");
    assert!(
        kv.lock("resource", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none(),
        "held lock"
    );
    assert!(
        kv.fenced_set("resource:data", "first", first.fence)
            .await
            .unwrap()
    );

    // The first holder stalls past its TTL; a second holder takes over with a newer fence.
    let second = eventually(5, "the lock to expire", || async {
        kv.lock("resource", Duration::from_secs(5)).await.unwrap()
    })
    .await;
    assert!(second.fence > first.fence);
    assert!(
        kv.fenced_set("resource:data", "second", second.fence)
            .await
            .unwrap()
    );

    // The stalled first holder wakes up: its writes and its unlock are refused.
    assert!(
        !kv.fenced_set("resource:data", "first, late", first.fence)
            .await
            .unwrap()
    );
    assert!(!kv.unlock(&first).await.unwrap());
    assert_eq!(
        kv.get("resource:data").await.unwrap().as_deref(),
        Some("second")
    );

    assert!(kv.unlock(&second).await.unwrap());
    let third = kv
        .lock("resource", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("released lock");
    assert!(third.fence > second.fence);
}

async fn counters_and_values(kv: Kv) {
    assert_eq!(
        kv.incr_by("hits", 2, Some(Duration::from_millis(200)))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        kv.incr_by("hits", 3, Some(Duration::from_millis(200)))
            .await
            .unwrap(),
        5
    );
    eventually(5, "the counter window to expire", || async {
        (kv.get("hits").await.unwrap().is_none()).then_some(())
    })
    .await;
    assert_eq!(
        kv.incr_by("hits", 1, None).await.unwrap(),
        1,
        "a new window starts at zero"
    );

    kv.set("k", "v", None).await.unwrap();
    assert_eq!(kv.get("k").await.unwrap().as_deref(), Some("v"));
    assert!(kv.delete("k").await.unwrap());
    assert!(!kv.delete("k").await.unwrap());
    assert_eq!(kv.get("k").await.unwrap(), None);
}

/// The three limits: events per window, a leaky bucket, places held at once.
async fn limits(kv: Kv) {
    let hour = Duration::from_secs(3600);
    for expected in 1..=3 {
        let counted = kv.count_in_window("window", hour).await.unwrap();
        assert_eq!((counted.count, counted.previous), (expected, 0));
        assert!(counted.elapsed_ms < 60_000);
    }
    // Windows follow on: the count of the one just before is kept.
    let short = Duration::from_millis(300);
    kv.count_in_window("short", short).await.unwrap();
    kv.count_in_window("short", short).await.unwrap();
    tokio::time::sleep(short).await; // the window itself has to pass
    let next = kv.count_in_window("short", short).await.unwrap();
    assert_eq!(next.count, 1, "{next:?}");
    // Two, unless the machine stalled for a whole window more.
    assert!(next.previous == 2 || next.previous == 0, "{next:?}");

    // One a second, one more may wait: the first goes at once, the second waits about a
    // second, the third is refused (and not added).
    assert_eq!(kv.leak("bucket", 1.0, 1.0).await.unwrap(), Some(0.0));
    let second = kv.leak("bucket", 1.0, 1.0).await.unwrap().unwrap();
    assert!((0.9..=1.0).contains(&second), "{second}");
    assert_eq!(kv.leak("bucket", 1.0, 1.0).await.unwrap(), None);
    assert_eq!(kv.leak("other", 1.0, 1.0).await.unwrap(), Some(0.0));

    // Two places: taken, refused, given back; and a holder's place lapses.
    assert_eq!(kv.enter("places", "a", 2, hour).await.unwrap(), Some(1));
    assert_eq!(kv.enter("places", "b", 2, hour).await.unwrap(), Some(2));
    assert_eq!(kv.enter("places", "c", 2, hour).await.unwrap(), None);
    kv.leave("places", "a").await.unwrap();
    assert_eq!(kv.enter("places", "c", 2, hour).await.unwrap(), Some(2));
    let brief = Duration::from_millis(200);
    assert_eq!(
        kv.enter("lapsing", "gone", 1, brief).await.unwrap(),
        Some(1)
    );
    assert_eq!(kv.enter("lapsing", "next", 1, hour).await.unwrap(), None);
    eventually(5, "a dead holder's place to come back", || async {
        kv.enter("lapsing", "next", 1, hour).await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn memory_limits() {
    limits(kv(None).await).await;
}

#[tokio::test]
async fn redis_limits() {
    let Some(url) = redis_url() else { return };
    limits(kv(Some(url)).await).await;
}

#[tokio::test]
async fn memory_lock_with_fencing() {
    lock_with_fencing(kv(None).await).await;
}

#[tokio::test]
async fn redis_lock_with_fencing() {
    let Some(url) = redis_url() else { return };
    lock_with_fencing(kv(Some(url)).await).await;
}

#[tokio::test]
async fn memory_counters() {
    counters_and_values(kv(None).await).await;
}

#[tokio::test]
async fn redis_counters() {
    let Some(url) = redis_url() else { return };
    counters_and_values(kv(Some(url)).await).await;
}

#[tokio::test]
async fn unreachable_redis_fails_at_connect() {
    let config = KvConfig {
        redis_url: Some(SecretString::from("redis://127.0.0.1:1")),
        key_prefix: "x:".into(),
    };
    assert!(Kv::connect(&config).await.is_err());
}
