//! `spawn_stack`: the vehicle service and master data on one fresh platform.

use std::sync::Arc;

use axle_core::platform::{Platform, Service};
use axle_core::testing::{Backends, TestPlatform, TestServer, eventually};
use serde_json::{Value, json};

pub struct Stack {
    pub vehicle: TestServer,
    pub masterdata: TestServer,
    /// Kept alive for the test's duration, with the platform below.
    pub _services: (Service, Service),
    pub platform: TestPlatform,
    pub client: reqwest::Client,
}

/// `platform` with master data pointed at the vehicle service listening at `vehicle_url`.
pub fn pointed_at(platform: &Platform, vehicle_url: &str) -> Platform {
    let mut config = (*platform.config).clone();
    config.services.masterdata.vehicle_url = vehicle_url.to_string();
    Platform {
        config: Arc::new(config),
        ..platform.clone()
    }
}

pub async fn spawn_stack(backends: Backends) -> Stack {
    let platform = TestPlatform::start(backends).await;
    let vehicle_service = axle_vehicle::build(&platform.platform).await.unwrap();
    let vehicle = TestServer::spawn(&vehicle_service).await;
    let md_platform = pointed_at(&platform.platform, &vehicle.url(""));
    let masterdata_service = axle_masterdata::build(&md_platform).await.unwrap();
    let masterdata = TestServer::spawn(&masterdata_service).await;
    Stack {
        vehicle,
        masterdata,
        _services: (vehicle_service, masterdata_service),
        platform,
        client: reqwest::Client::new(),
    }
}

/// A VIN with a correct check digit, different for every `n`.
pub fn vin(n: u32) -> String {
    let mut chars: Vec<char> = format!("LSVAU2180{:08}", n).chars().collect();
    let arr: [char; 17] = chars.clone().try_into().unwrap();
    chars[8] = axle_vehicle::domain::check_digit(&arr).unwrap();
    chars.into_iter().collect()
}

pub fn cny(units: i64) -> Value {
    json!({"amount": units * 100, "currency": "CNY"})
}

impl Stack {
    /// Sends a request to a service as `actor` and returns the JSON answer, asserting `status`.
    pub async fn call(
        &self,
        server: &TestServer,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let mut request = self
            .client
            .request(method.clone(), server.url(path))
            .header("x-consumer-username", "ops-alice");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        response.json().await.unwrap()
    }

    pub async fn vehicle_post(&self, path: &str, body: Value) -> Value {
        self.call(&self.vehicle, reqwest::Method::POST, path, Some(body), 200)
            .await
    }

    pub async fn golden(&self, id: &str) -> Option<Value> {
        let response = self
            .client
            .get(self.masterdata.url(&format!("/vehicles/{id}")))
            .send()
            .await
            .unwrap();
        if response.status() != 200 {
            return None;
        }
        Some(response.json().await.unwrap())
    }

    /// Waits until master data holds `id` at `version`.
    pub async fn golden_at(&self, id: &str, version: i64) -> Value {
        eventually(30, "the golden record to catch up", || async {
            self.golden(id).await.filter(|g| g["version"] == version)
        })
        .await
    }

    /// Registers a vehicle with the vehicle service; returns its id.
    pub async fn receive(&self, vehicle: Value) -> String {
        let created = self
            .call(
                &self.vehicle,
                reqwest::Method::POST,
                "/vehicles",
                Some(vehicle),
                201,
            )
            .await;
        created["id"].as_str().unwrap().to_string()
    }

    /// Events in master data's dead letters.
    pub async fn dead_letters(&self) -> Value {
        self.call(
            &self.masterdata,
            reqwest::Method::GET,
            "/dead-letters",
            None,
            200,
        )
        .await["count"]
            .clone()
    }

    pub async fn check(&self) -> Value {
        self.call(
            &self.masterdata,
            reqwest::Method::POST,
            "/consistency-check",
            None,
            200,
        )
        .await
    }
}
