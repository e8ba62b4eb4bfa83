//! Idempotency claims left unfinished by a process that died are given back when it starts
//! again: a retry need not wait for them to be presumed abandoned.

use axle_core::platform::ServiceParts;
use axle_core::testing::{Backends, TestPlatform, eventually};

use crate::helpers::{core_only, count};

axle_core::on_every_backend!(a_restarted_node_gives_back_its_unfinished_claims);

async fn a_restarted_node_gives_back_its_unfinished_claims(backends: Backends) {
    let tp = TestPlatform::start_with(backends, |c| c.node = Some("node-a".into())).await;
    let db = tp.platform.open_db("claims", &core_only()).await.unwrap();
    let before = axle_core::time::now_text();
    for (key, node, status) in [
        ("died-with-node-a", "node-a", None),
        ("finished-on-node-a", "node-a", Some(200i64)),
        ("running-on-node-b", "node-b", None),
    ] {
        sqlx::query(
            "INSERT INTO axle_idempotency_keys (key, fingerprint, status, created_at, claimed_by) \
             VALUES ($1, 'f', $2, $3, $4)",
        )
        .bind(key)
        .bind(status)
        .bind(&before)
        .bind(node)
        .execute(db.pool())
        .await
        .unwrap();
    }
    // node-a starts again: its service gives back what it claimed and never finished.
    let service = tp
        .platform
        .assemble(ServiceParts {
            name: "claims",
            db: db.clone(),
            outbox: None,
            registry: prometheus::Registry::new(),
            api: axum::Router::new(),
            openapi: serde_json::json!({}),
        })
        .unwrap();
    eventually(10, "the dead claim to be given back", || async {
        (count(&db, "axle_idempotency_keys").await == 2).then_some(())
    })
    .await;
    let left: Vec<String> =
        sqlx::query_scalar("SELECT key FROM axle_idempotency_keys ORDER BY key")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(left, ["finished-on-node-a", "running-on-node-b"]);
    drop(service);
}
