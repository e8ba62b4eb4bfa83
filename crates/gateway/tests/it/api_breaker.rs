//! api-breaker through the data plane: breaking after a run of failures, the break doubling up
//! to max_breaker_sec, healing, and the gateway's own 502s counting as the upstream's.

use std::time::Duration;

use axle_core::testing::Backends;
use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{get, spawn_gateway, spawn_node};

#[tokio::test]
async fn api_breaker_breaks_doubles_and_heals() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let (node, failing) = spawn_node("up", None, StatusCode::INTERNAL_SERVER_ERROR).await;
    // APISIX's example: broken after 3 answers of 500 or 503, healed by one 200.
    gw.put(
        "/apisix/admin/routes/fragile",
        json!({"uri": "/fragile", "plugins": {"api-breaker": {
            "break_response_code": 502,
            "break_response_body": "the service is resting",
            "break_response_headers": [{"key": "x-breaker", "value": "open for $remote_addr"}],
            "max_breaker_sec": 3,
            "unhealthy": {"http_statuses": [500, 503], "failures": 3},
            "healthy": {"http_statuses": [200], "successes": 1}}},
            "upstream": {"nodes": {node.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/fragile", 500).await;
    // The first run: two more failures (the wait was one), then 2 s of breaking.
    assert_eq!(get(&gw, "/fragile", &[]).await.0, 500);
    assert_eq!(get(&gw, "/fragile", &[]).await.0, 500);
    let (status, body, headers) = get(&gw, "/fragile", &[]).await;
    assert_eq!((status, body), (502, json!("the service is resting")));
    assert_eq!(headers["x-breaker"], "open for 127.0.0.1");

    // After the break, requests go through again; three more failures break for 4 s, capped at
    // max_breaker_sec (3 s).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for _ in 0..3 {
        assert_eq!(get(&gw, "/fragile", &[]).await.0, 500);
    }
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(
        get(&gw, "/fragile", &[]).await.0,
        502,
        "the second break is longer than the first"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // The upstream recovers: one success closes the breaker.
    failing.abort();
    let _ = failing.await;
    let (_, _healthy) = spawn_node("up", Some(node), StatusCode::OK).await;
    assert_eq!(get(&gw, "/fragile", &[]).await.0, 200);
    assert_eq!(get(&gw, "/fragile", &[]).await.0, 200);
}

#[tokio::test]
async fn api_breaker_counts_unreachable_upstreams_and_refuses_bad_configs() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    gw.put(
        "/apisix/admin/routes/gone",
        json!({"uri": "/gone", "plugins": {"api-breaker": {
            "break_response_code": 503,
            "unhealthy": {"http_statuses": [502], "failures": 2}}},
            "upstream": {"nodes": {closed.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/gone", 502).await;
    assert_eq!(get(&gw, "/gone", &[]).await.0, 502);
    let (status, body, _) = get(&gw, "/gone", &[]).await;
    assert_eq!(
        (status, body),
        (503, json!("")),
        "no body unless one is configured"
    );

    for (config, field) in [
        (json!({}), "break_response_code"),
        (json!({"break_response_code": 700}), "break_response_code"),
        (
            json!({"break_response_code": 502, "max_breaker_sec": 2}),
            "max_breaker_sec",
        ),
        (
            json!({"break_response_code": 502, "unhealthy": {"http_statuses": [404]}}),
            "unhealthy.http_statuses",
        ),
        (
            json!({"break_response_code": 502, "healthy": {"successes": 0}}),
            "healthy.successes",
        ),
    ] {
        let route = json!({"uri": "/bad", "plugins": {"api-breaker": config},
                           "upstream": {"nodes": {closed.to_string(): 1}}});
        gw.refused_naming("/apisix/admin/routes/bad", route, field)
            .await;
    }
}
