//! The model catalog sync against a simulated upstream catalog service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axle_core::platform::Platform;
use axle_core::testing::{Backends, TestPlatform, TestServer, eventually};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// The upstream catalog service: answers what changed since `updated_since`, or fails while down.
#[derive(Clone, Default)]
struct Upstream {
    models: Arc<Mutex<Vec<Value>>>,
    down: Arc<AtomicBool>,
    /// The `updated_since` of every request, to check the sync is incremental.
    asked: Arc<Mutex<Vec<Option<String>>>>,
}

impl Upstream {
    fn put(&self, code: &str, price: i64, retired: bool) {
        let model = json!({
            "code": code, "make": "Volkswagen", "model": "Lavida", "trim": "1.5L", "year": 2024,
            "colours": ["white", "black"], "guide_price": {"amount": price * 100, "currency": "CNY"},
            "updated_at": axle_core::time::to_text(axle_core::time::now()), "retired": retired
        });
        let mut models = self.models.lock().unwrap();
        models.retain(|m| m["code"] != code);
        models.push(model);
    }

    async fn serve(self) -> String {
        async fn models(
            State(up): State<Upstream>,
            Query(q): Query<std::collections::HashMap<String, String>>,
        ) -> Response {
            let since = q.get("updated_since").cloned();
            up.asked.lock().unwrap().push(since.clone());
            if up.down.load(Ordering::SeqCst) {
                return (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response();
            }
            let since: Option<DateTime<Utc>> = since.map(|s| s.parse().unwrap());
            let as_of = axle_core::time::now();
            let changed: Vec<Value> = up
                .models
                .lock()
                .unwrap()
                .iter()
                .filter(|m| {
                    since.is_none_or(|s| {
                        m["updated_at"]
                            .as_str()
                            .unwrap()
                            .parse::<DateTime<Utc>>()
                            .unwrap()
                            > s
                    })
                })
                .cloned()
                .collect();
            axum::Json(json!({"models": changed, "as_of": axle_core::time::to_text(as_of)}))
                .into_response()
        }
        let app = axum::Router::new()
            .route("/models", axum::routing::get(models))
            .with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
}

async fn masterdata_with_catalog(
    tp: &TestPlatform,
    url: &str,
    interval_secs: u64,
) -> (axle_core::platform::Service, TestServer) {
    let mut config = (*tp.platform.config).clone();
    config.services.masterdata.catalog_url = Some(url.to_string());
    config.services.masterdata.catalog_interval_secs = interval_secs;
    let platform = Platform {
        config: Arc::new(config),
        ..tp.platform.clone()
    };
    let service = axle_masterdata::build(&platform).await.unwrap();
    let server = TestServer::spawn(&service).await;
    (service, server)
}

async fn get(server: &TestServer, path: &str) -> Value {
    reqwest::get(server.url(path))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn sync(server: &TestServer) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url("/models/sync"))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_incrementally_and_serves_stale_copies_when_upstream_is_down() {
    let upstream = Upstream::default();
    upstream.put("VW-LAVIDA-2024-15", 98_000, false);
    upstream.put("VW-LAVIDA-2024-15T", 112_000, false);
    let url = upstream.clone().serve().await;
    let tp = TestPlatform::start(Backends::embedded()).await;
    // A long interval: this test drives the syncs itself (the first runs at start).
    let (_service, md) = masterdata_with_catalog(&tp, &url, 3600).await;

    let first = eventually(10, "the start-up sync", || async {
        let m = get(&md, "/models").await;
        (m["models"].as_array().unwrap().len() == 2).then_some(m)
    })
    .await;
    assert_eq!(first["stale"], false);
    assert!(first["synced_at"].is_string());

    // A price change, a new model and a retirement upstream: the next sync asks only for changes.
    upstream.put("VW-LAVIDA-2024-15", 95_000, false);
    upstream.put("VW-SAGITAR-2024-14T", 139_000, false);
    upstream.put("VW-LAVIDA-2024-15T", 112_000, true);
    assert_eq!(sync(&md).await.status(), 200);
    assert!(
        upstream.asked.lock().unwrap().last().unwrap().is_some(),
        "incremental: updated_since is sent"
    );
    let models = get(&md, "/models").await;
    let codes: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["VW-LAVIDA-2024-15", "VW-SAGITAR-2024-14T"]);
    assert_eq!(models["models"][0]["guide_price"]["amount"], 9_500_000);

    // Upstream down: the cached catalog is still served, flagged stale, and the gauge says so.
    upstream.down.store(true, Ordering::SeqCst);
    let failed = sync(&md).await;
    assert_eq!(failed.status(), 502);
    assert_eq!(
        failed.json::<Value>().await.unwrap()["code"],
        "CATALOG_UPSTREAM_UNAVAILABLE"
    );
    let stale = get(&md, "/models?make=Volkswagen").await;
    assert_eq!(stale["stale"], true);
    assert_eq!(stale["models"].as_array().unwrap().len(), 2);
    assert!(stale["last_error"].as_str().unwrap().contains("503"));
    let metrics = reqwest::get(md.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("axle_masterdata_catalog_stale 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("axle_masterdata_catalog_sync_failures_total 1"),
        "{metrics}"
    );

    // Back up: fresh again.
    upstream.down.store(false, Ordering::SeqCst);
    assert_eq!(sync(&md).await.status(), 200);
    assert_eq!(get(&md, "/models").await["stale"], false);
    let metrics = reqwest::get(md.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("axle_masterdata_catalog_stale 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_on_schedule() {
    let upstream = Upstream::default();
    upstream.put("BYD-HAN-2024", 210_000, false);
    let url = upstream.clone().serve().await;
    let tp = TestPlatform::start(Backends::embedded()).await;
    let (_service, md) = masterdata_with_catalog(&tp, &url, 1).await;
    eventually(10, "the start-up sync", || async {
        (get(&md, "/models").await["models"]
            .as_array()
            .unwrap()
            .len()
            == 1)
            .then_some(())
    })
    .await;
    upstream.put("BYD-SEAL-2024", 180_000, false);
    eventually(10, "a scheduled sync to pick up the new model", || async {
        (get(&md, "/models").await["models"]
            .as_array()
            .unwrap()
            .len()
            == 2)
            .then_some(())
    })
    .await;
    assert!(upstream.asked.lock().unwrap().len() >= 2);
}

#[tokio::test]
async fn without_an_upstream_the_catalog_is_empty_and_not_stale() {
    let tp = TestPlatform::start(Backends::embedded()).await;
    let service = axle_masterdata::build(&tp.platform).await.unwrap();
    let md = TestServer::spawn(&service).await;
    let models = get(&md, "/models").await;
    assert_eq!(models["stale"], false);
    assert!(models["models"].as_array().unwrap().is_empty());
    let r = sync(&md).await;
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "CATALOG_NOT_CONFIGURED"
    );
}
