//! Graceful shutdown of the HTTP scaffolding.

use std::sync::Arc;
use std::time::Duration;

use axle_core::http::{Json, ServiceHttp, serve, service_router};
use axum::Router;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn in_flight_requests_finish_after_shutdown_begins() {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let api = Router::new().route(
        "/slow",
        get(move || {
            let started = started_tx.lock().unwrap().take();
            async move {
                if let Some(tx) = started {
                    let _ = tx.send(());
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                Json(serde_json::json!({"done": true}))
            }
        }),
    );
    let router = service_router(
        api,
        ServiceHttp {
            openapi: serde_json::json!({}),
            registry: prometheus::Registry::new(),
            readiness: Arc::new(|| Box::pin(async { Ok(()) })),
            body_limit_bytes: 1024,
        },
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, router, shutdown.clone()));

    let request = tokio::spawn(async move { reqwest::get(format!("http://{addr}/slow")).await });
    started_rx.await.unwrap();
    shutdown.cancel();
    let response = request.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        200,
        "the request in flight when shutdown began completes"
    );
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["done"],
        true
    );
    server.await.unwrap().unwrap();
    assert!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err(),
        "no new connections after shutdown"
    );
}
