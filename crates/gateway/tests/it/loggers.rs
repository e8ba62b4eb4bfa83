//! What the data plane reports of its requests: `http-logger` (entries in APISIX's shape,
//! batched by size and by time, retried, what could not be sent counted for the receiver) and
//! `usage-counter` (counts per route, consumer, status class and minute, kept until taken).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axle_core::testing::Backends;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::{get, spawn_gateway, spawn_upstream};

/// A log server: each batch it takes as (X-Axle-Dropped, entries); it refuses the first
/// `refuse` batches with a 500.
async fn collector(refuse: usize) -> (String, mpsc::UnboundedReceiver<(u64, Vec<Value>)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let refused = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/logs",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(batch): axum::Json<Vec<Value>>| {
                let (tx, refused) = (tx.clone(), refused.clone());
                async move {
                    assert_eq!(headers["authorization"], "Bearer log-token");
                    if refused.fetch_add(1, Ordering::SeqCst) < refuse {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let dropped = headers["x-axle-dropped"].to_str().unwrap().parse().unwrap();
                    tx.send((dropped, batch)).unwrap();
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/logs"), rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(u64, Vec<Value>)>) -> (u64, Vec<Value>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a batch within 10 s")
        .unwrap()
}

#[tokio::test]
async fn http_logger_sends_apisix_entries_in_batches_and_counts_what_it_dropped() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    let (uri, mut batches) = collector(0).await;
    gw.put(
        "/apisix/admin/consumers/jack",
        json!({"username": "jack",
        "plugins": {"key-auth": {"key": "jack-key"}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/logged",
        json!({"uri": "/logged/*", "plugins": {
                  "key-auth": {},
                  "http-logger": {"uri": uri, "auth_header": "Bearer log-token",
                                  "batch_max_size": 2, "inactive_timeout": 1}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/logged/x", 401).await;
    // A full batch goes at once; the rest after inactive_timeout.
    let key = [("apikey", "jack-key")];
    for path in ["/logged/a", "/logged/b", "/logged/c"] {
        assert_eq!(get(&gw, path, &key).await.0, 200);
    }
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let (dropped, batch) = next(&mut batches).await;
        assert_eq!(dropped, 0);
        assert!(batch.len() <= 2);
        seen.extend(batch);
    }
    let entry = seen
        .iter()
        .find(|e| e["request"]["uri"] == "/logged/a")
        .unwrap();
    assert_eq!(entry["route_id"], "logged");
    assert_eq!(entry["consumer"]["username"], "jack");
    assert_eq!(entry["response"]["status"], 200);
    assert_eq!(entry["upstream"], up.ip().to_string(), "the node's address");
    assert!(entry["latency"].as_f64().unwrap() >= 0.0);
    assert!(entry["start_time"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(entry["response"]["size"].as_u64().unwrap() > 0);
    let unauthenticated = seen
        .iter()
        .find(|e| e["request"]["uri"] == "/logged/x")
        .unwrap();
    assert_eq!(unauthenticated["response"]["status"], 401);
    assert!(unauthenticated.get("consumer").is_none());

    // A server refusing: retried, then dropped and counted; the next batch says how many.
    let (refusing, mut later) = collector(2).await;
    gw.put(
        "/apisix/admin/routes/refused",
        json!({"uri": "/refused", "plugins": {
                  "http-logger": {"uri": refusing, "auth_header": "Bearer log-token",
                                  "batch_max_size": 3, "inactive_timeout": 1,
                                  "max_retry_count": 1, "retry_delay": 1}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/refused", 200).await;
    for _ in 0..2 {
        assert_eq!(get(&gw, "/refused", &[]).await.0, 200);
    }
    // Both tries of the first batch (3 entries) are refused; then a new request goes through.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&gw, "/refused", &[]).await.0, 200);
    let (dropped, batch) = next(&mut later).await;
    assert_eq!((dropped, batch.len()), (3, 1));

    // Bad settings are refused naming the field.
    gw.refused_naming(
        "/apisix/admin/routes/bad",
        json!({"uri": "/bad", "plugins": {"http-logger": {"uri": "ftp://x"}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
        "uri",
    )
    .await;
    gw.refused_naming(
        "/apisix/admin/routes/bad",
        json!({"uri": "/bad", "plugins": {"http-logger": {"uri": uri, "inactive_timeout": 0}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
        "inactive_timeout",
    )
    .await;
}

#[tokio::test]
async fn usage_counter_posts_counts_per_route_consumer_status_and_minute_and_keeps_refused_ones() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    // The first post is refused: its counts go with the next.
    let (uri, mut posts) = collector(1).await;
    gw.put(
        "/apisix/admin/consumers/jack",
        json!({"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/counted",
        json!({"uri": "/counted/*", "plugins": {
                  "key-auth": {},
                  "usage-counter": {"uri": uri, "auth_header": "Bearer log-token", "interval": 1,
                                    "latency_buckets_ms": [1, 10, 100]}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/counted/x", 401).await;
    let key = [("apikey", "jack-key")];
    for _ in 0..5 {
        assert_eq!(get(&gw, "/counted/a", &key).await.0, 200);
    }
    // Counted: 5 of jack's 200s, and the 401 (or two, with wait_for's) of nobody.
    let mut jack = 0;
    let mut anonymous = 0;
    while jack < 5 || anonymous == 0 {
        let (dropped, counts) = next(&mut posts).await;
        assert_eq!(dropped, 0);
        for c in counts {
            assert_eq!(c["route_id"], "counted");
            assert_eq!(c["minute"].as_u64().unwrap() % 60, 0);
            let buckets: u64 = c["latency_buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap())
                .sum();
            assert_eq!(buckets, c["requests"].as_u64().unwrap(), "{c}");
            assert_eq!(c["latency_buckets"].as_array().unwrap().len(), 4);
            match (c["consumer"].as_str(), c["status_class"].as_u64()) {
                (Some("jack"), Some(2)) => jack += c["requests"].as_u64().unwrap(),
                (None, Some(4)) => anonymous += c["requests"].as_u64().unwrap(),
                other => panic!("{other:?}: {c}"),
            }
        }
    }
    assert_eq!(jack, 5);
    gw.refused_naming(
        "/apisix/admin/routes/bad",
        json!({"uri": "/bad", "plugins": {"usage-counter": {"uri": uri, "latency_buckets_ms": [5, 1]}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
        "latency_buckets_ms",
    )
    .await;
}
