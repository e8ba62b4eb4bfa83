//! Master data down while 1,000 vehicles change, the broker restarted meanwhile: once master
//! data is back, the consistency check finds zero drift.
//!
//! A test binary of its own, because it restarts RabbitMQ (`cargo test` runs test binaries one
//! after another, so no other test sees the broker down).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

#[path = "it/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::sync::Arc;
use std::time::Duration;

use axle_core::platform::Platform;
use axle_core::testing::{Backends, TestPlatform, TestServer, eventually};
use futures::StreamExt;
use helpers::{pointed_at, vin};
use serde_json::{Value, json};

const VEHICLES: u32 = 1_000;

/// Master data on its own stop switch, serving until that is pulled.
async fn start_masterdata(
    platform: &Platform,
    vehicle_url: &str,
) -> (axle_core::platform::Service, TestServer, Platform) {
    let mut own = pointed_at(platform, vehicle_url);
    own.shutdown = platform.shutdown.child_token();
    let service = axle_masterdata::build(&own).await.unwrap();
    let server = TestServer::spawn(&service).await;
    (service, server, own)
}

async fn check(client: &reqwest::Client, server: &TestServer) -> Value {
    client
        .post(server.url("/consistency-check"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn converges_after_outage(backends: Backends, restart_broker: bool) {
    let tp = TestPlatform::start(backends).await;
    let client = reqwest::Client::new();
    let vehicle_service = axle_vehicle::build(&tp.platform).await.unwrap();
    let vehicle = Arc::new(TestServer::spawn(&vehicle_service).await);

    // Master data runs once (declaring its durable queue), then stops.
    let (md_service, md_server, md_platform) =
        start_masterdata(&tp.platform, &vehicle.url("")).await;
    md_platform.shutdown.cancel();
    drop(md_server);
    md_service.stop().await;

    // 1,000 vehicles are received and half of them move on, while master data is down.
    let ids: Vec<String> = futures::stream::iter(0..VEHICLES)
        .map(|n| {
            let (client, vehicle) = (client.clone(), vehicle.clone());
            async move {
                let body = json!({"vin": vin(n), "make": "SAIC", "model": "MG5", "year": 2020, "seller_org": format!("dealer-{}", n % 7)});
                let created: Value = client.post(vehicle.url("/vehicles")).json(&body).send().await.unwrap().json().await.unwrap();
                let id = created["id"].as_str().expect("created").to_string();
                if n % 2 == 0 {
                    let r = client.post(vehicle.url(&format!("/vehicles/{id}/inspection/start"))).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                }
                id
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(ids.len(), VEHICLES as usize);

    if restart_broker {
        axle_core::testing::restart_rabbitmq(Duration::from_secs(1)).await;
    }

    let (_md_service, md_server, _md_platform) =
        start_masterdata(&tp.platform, &vehicle.url("")).await;
    let report = eventually(180, "master data to converge", || async {
        let report = check(&client, &md_server).await;
        (report["in_sync"] == true).then_some(report)
    })
    .await;
    assert_eq!(report["checked"], VEHICLES);
    assert_eq!(report["drifting"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masterdata_outage_embedded() {
    converges_after_outage(Backends::embedded(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masterdata_outage_and_broker_restart_postgres_rabbitmq() {
    let Some(backends) = Backends::scaled_out() else {
        return;
    };
    converges_after_outage(backends, true).await;
}
