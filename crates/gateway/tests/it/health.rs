//! Upstream health checks: a dead node is ejected by active checks and restored when it comes
//! back; a node answering errors is ejected by passive checks. `retries: 0` throughout, so a
//! request sent to an ejected node would fail instead of being saved by a retry.

use axle_core::testing::{Backends, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Gateway, spawn_gateway, spawn_node, spawn_upstream};

/// Which upstream answered `n` requests, in order (None for a failed request).
async fn answers(gw: &Gateway, n: usize) -> Vec<Option<String>> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        let r = gw.client.get(gw.url("/h")).send().await.unwrap();
        let ok = r.status() == StatusCode::OK;
        let body: Value = r.json().await.unwrap_or_default();
        seen.push(ok.then(|| body["upstream"].as_str().unwrap_or("").to_string()));
    }
    seen
}

#[tokio::test]
async fn active_checks_eject_a_dead_node_and_restore_it() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let a = spawn_upstream("a").await;
    let (b, b_node) = spawn_node("b", None, StatusCode::OK).await;
    gw.put(
        "/apisix/admin/upstreams/1",
        json!({
            "nodes": {a.to_string(): 1, b.to_string(): 1},
            "retries": 0,
            "checks": {"active": {
                "http_path": "/status",
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "tcp_failures": 1, "http_failures": 1}
            }}
        }),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/h",
        json!({"uri": "/h", "upstream_id": 1}),
    )
    .await;
    gw.wait_for("/h", 200).await;
    let both = answers(&gw, 10).await;
    assert!(both.contains(&Some("b".into())) && both.contains(&Some("a".into())));

    b_node.abort();
    eventually(10, "the dead node to be ejected", || async {
        let seen = answers(&gw, 20).await;
        seen.iter().all(|s| s.as_deref() == Some("a")).then_some(())
    })
    .await;

    let (_, _b_again) = spawn_node("b", Some(b), StatusCode::OK).await;
    eventually(10, "the node to be restored", || async {
        answers(&gw, 10)
            .await
            .contains(&Some("b".into()))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn passive_checks_eject_a_node_answering_errors() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let a = spawn_upstream("a").await;
    let (c, _c_node) = spawn_node("c", None, StatusCode::INTERNAL_SERVER_ERROR).await;
    gw.put(
        "/apisix/admin/routes/h",
        json!({"uri": "/h", "upstream": {
            "nodes": {a.to_string(): 1, c.to_string(): 1},
            "retries": 0,
            "checks": {
                // Active checks never eject here (threshold 0) but would restore.
                "active": {"unhealthy": {"http_failures": 0}},
                "passive": {"unhealthy": {"http_statuses": [500], "http_failures": 2}}
            }
        }}),
    )
    .await;
    gw.wait_for("/h", 200).await;
    let first = answers(&gw, 4).await;
    let failed = first.iter().filter(|s| s.is_none()).count();
    assert!(failed <= 2, "two errors eject the node: {first:?}");
    let after = answers(&gw, 20).await;
    assert!(
        after.iter().all(|s| s.as_deref() == Some("a")),
        "only the healthy node serves: {after:?}"
    );
}

#[tokio::test]
async fn backup_nodes_serve_only_while_the_primaries_are_down() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let (primary, primary_node) = spawn_node("primary", None, StatusCode::OK).await;
    let backup = spawn_upstream("backup").await;
    gw.put(
        "/apisix/admin/upstreams/1",
        json!({
            "nodes": [
                {"host": "127.0.0.1", "port": primary.port(), "weight": 1, "priority": 1},
                {"host": "127.0.0.1", "port": backup.port(), "weight": 100, "priority": 0},
            ],
            "retries": 0,
            "checks": {"active": {
                "http_path": "/status",
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "tcp_failures": 1, "http_failures": 1}
            }}
        }),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/h",
        json!({"uri": "/h", "upstream_id": 1}),
    )
    .await;
    gw.wait_for("/h", 200).await;
    let seen = answers(&gw, 20).await;
    assert!(
        seen.iter().all(|s| s.as_deref() == Some("primary")),
        "the backup waits while the primary is up: {seen:?}"
    );

    primary_node.abort();
    eventually(10, "the backup to take over", || async {
        let seen = answers(&gw, 10).await;
        seen.iter()
            .all(|s| s.as_deref() == Some("backup"))
            .then_some(())
    })
    .await;

    let (_, _primary_again) = spawn_node("primary", Some(primary), StatusCode::OK).await;
    eventually(10, "the primary to be back", || async {
        let seen = answers(&gw, 10).await;
        seen.iter()
            .all(|s| s.as_deref() == Some("primary"))
            .then_some(())
    })
    .await;
}
