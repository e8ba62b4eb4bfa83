//! `spawn_app`: the vehicle service on fresh storage, plus a consumer of its events.

use std::sync::{Arc, Mutex};

use axle_core::events::{CloudEvent, Subscription};
use axle_core::platform::Service;
use axle_core::testing::{Backends, TestPlatform, TestServer};
use serde_json::{Value, json};

pub struct TestApp {
    pub server: TestServer,
    /// Every event the test consumer received, in order.
    pub events: Arc<Mutex<Vec<CloudEvent>>>,
    pub service: Service,
    /// Kept alive for the test's duration: dropping it removes the test's schemas.
    pub _platform: TestPlatform,
}

pub async fn spawn_app(backends: Backends) -> TestApp {
    let platform = TestPlatform::start(backends).await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    platform
        .platform
        .bus
        .subscribe(
            Subscription::new(format!("{}.watcher", platform.tag), &["axle.vehicle.#"]),
            move |event: CloudEvent| {
                sink.lock().unwrap().push(event);
                async { Ok(()) }
            },
            platform.platform.shutdown.clone(),
        )
        .await
        .unwrap();
    let service = axle_vehicle::build(&platform.platform)
        .await
        .expect("vehicle service builds");
    let server = TestServer::spawn(&service).await;
    TestApp {
        server,
        events,
        service,
        _platform: platform,
    }
}

/// A VIN with a correct check digit, different for every `n`.
pub fn vin(n: u32) -> String {
    let mut chars: Vec<char> = format!("1HGCM8260{:08}", n).chars().collect();
    let arr: [char; 17] = chars.clone().try_into().unwrap();
    chars[8] = axle_vehicle::domain::check_digit(&arr).unwrap();
    chars.into_iter().collect()
}

pub fn new_vehicle(n: u32) -> Value {
    json!({"vin": vin(n), "make": "Honda", "model": "Accord", "year": 2003, "mileage_km": 120_000})
}

impl TestApp {
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.server
            .client
            .post(self.server.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.server
            .client
            .get(self.server.url(path))
            .send()
            .await
            .unwrap()
    }
}
