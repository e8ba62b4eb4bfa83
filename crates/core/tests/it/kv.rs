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
