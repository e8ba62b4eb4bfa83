//! The settlement saga across the real vehicle, order and finance services, with faults
//! injected between the orchestrator and each participant: refusals, failures, lost answers
//! (the call took effect, its answer never came), a crash of the orchestrator between steps.
//! Whatever happens, the four records end all done or all undone — never a mix — on SQLite
//! and on PostgreSQL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axle_core::platform::{Platform, Service};
use axle_core::testing::{Backends, TestPlatform, TestServer, eventually};
use axle_saga::domain::retry::RetryPolicy;
use axle_saga::settlement::Timing;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// What the proxy does to a request it matches.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Answer this status without passing the request on.
    Status(u16),
    /// Pass it on, then hold the answer past the orchestrator's timeout.
    LoseAnswer,
    /// Never answer, never pass on.
    Hang,
}

#[derive(Clone, Debug)]
struct Rule {
    method: &'static str,
    /// The request's path after the participant; `*suffix` matches any path ending so.
    path: String,
    fault: Fault,
    times: usize,
}

/// A proxy in front of the participants: `/<participant>/<path>` goes to that participant,
/// unless a rule injects a fault.
#[derive(Clone, Default)]
struct Proxy {
    targets: Arc<Mutex<HashMap<String, String>>>,
    rules: Arc<Mutex<Vec<Rule>>>,
    /// Calls seen per idempotency key (each step's action has its own).
    keys: Arc<Mutex<HashMap<String, usize>>>,
}

const TIMEOUT: Duration = Duration::from_millis(400);

impl Proxy {
    fn inject(&self, method: &'static str, path: impl Into<String>, fault: Fault, times: usize) {
        self.rules.lock().unwrap().push(Rule {
            method,
            path: path.into(),
            fault,
            times,
        });
    }

    fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    fn fault_for(&self, method: &str, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules.iter_mut().find(|r| {
            let hit = match r.path.strip_prefix('*') {
                Some(suffix) => path.ends_with(suffix),
                None => path == r.path,
            };
            r.times > 0 && r.method == method && hit
        })?;
        rule.times -= 1;
        Some(rule.fault)
    }
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let (participant, rest) = path[1..].split_once('/').unwrap();
    if let Some(key) = parts.headers.get("idempotency-key") {
        let key = key.to_str().unwrap().to_string();
        *proxy.keys.lock().unwrap().entry(key).or_default() += 1;
    }
    let fault = proxy.fault_for(parts.method.as_str(), rest);
    let status = |code: u16| {
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"code": "INJECTED", "message": "an injected fault"}).to_string(),
            ))
            .unwrap()
    };
    match fault {
        Some(Fault::Status(code)) => return status(code),
        Some(Fault::Hang) => std::future::pending::<()>().await,
        _ => {}
    }
    let target = proxy.targets.lock().unwrap()[participant].clone();
    let mut out = reqwest::Client::new().request(parts.method.clone(), format!("{target}/{rest}"));
    for name in ["authorization", "idempotency-key", "content-type"] {
        if let Some(v) = parts.headers.get(name) {
            out = out.header(name, v.clone());
        }
    }
    let body = to_bytes(body, usize::MAX).await.unwrap();
    let answer = out.body(body).send().await.unwrap();
    if let Some(Fault::LoseAnswer) = fault {
        tokio::time::sleep(TIMEOUT * 3).await;
    }
    let code = answer.status().as_u16();
    let bytes = answer.bytes().await.unwrap();
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(bytes))
        .unwrap()
}

/// The four services on one test platform, the orchestrator calling the others through the
/// proxy.
struct Stack {
    platform: TestPlatform,
    proxy: Proxy,
    vehicle: TestServer,
    order: TestServer,
    finance: TestServer,
    saga: Option<(Service, TestServer, Platform)>,
    _services: Vec<Service>,
    client: reqwest::Client,
    next_vin: u32,
}

fn timing() -> Timing {
    Timing {
        action: RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        compensation: RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_millis(50),
            max: Duration::from_secs(30),
        },
        timeout: TIMEOUT,
    }
}

impl Stack {
    async fn start(backends: Backends) -> Self {
        let proxy = Proxy::default();
        let listener = TestServer::reserve().await;
        let proxy_url = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new()
            .fallback(forward)
            .with_state(proxy.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let platform = TestPlatform::start_with(backends, |config| {
            let saga = &mut config.services.saga;
            saga.vehicle_url = Some(format!("{proxy_url}/vehicle"));
            saga.order_url = Some(format!("{proxy_url}/order"));
            saga.finance_url = Some(format!("{proxy_url}/finance"));
        })
        .await;
        let mut services = Vec::new();
        let mut servers = Vec::new();
        for name in ["vehicle", "order", "finance"] {
            let service = match name {
                "vehicle" => axle_vehicle::build(&platform.platform).await,
                "order" => axle_order::build(&platform.platform).await,
                _ => axle_finance::build(&platform.platform).await,
            }
            .unwrap();
            let server = TestServer::spawn(&service).await;
            proxy
                .targets
                .lock()
                .unwrap()
                .insert(name.into(), server.url(""));
            services.push(service);
            servers.push(server);
        }
        let finance = servers.pop().unwrap();
        let order = servers.pop().unwrap();
        let vehicle = servers.pop().unwrap();
        let mut stack = Stack {
            platform,
            proxy,
            vehicle,
            order,
            finance,
            saga: None,
            _services: services,
            client: reqwest::Client::new(),
            next_vin: 1,
        };
        stack.start_saga().await;
        stack
    }

    /// Starts the orchestrator (again) on the platform's storage, as a process of its own.
    async fn start_saga(&mut self) {
        self.saga = Some(self.orchestrator(None).await);
    }

    /// An orchestrator on the platform's storage, named `node` in leases.
    async fn orchestrator(&self, node: Option<&str>) -> (Service, TestServer, Platform) {
        let mut config = (*self.platform.platform.config).clone();
        config.node = node.map(String::from);
        let platform = Platform::start(config, CancellationToken::new())
            .await
            .unwrap();
        let service = axle_saga::build_with(&platform, timing()).await.unwrap();
        let server = TestServer::spawn(&service).await;
        (service, server, platform)
    }

    /// The orchestrator dies: its workers stop where they are, nothing is flushed.
    fn crash_saga(&mut self) {
        let (service, server, platform) = self.saga.take().unwrap();
        for task in &service.tasks {
            task.abort();
        }
        drop(server);
        std::mem::forget(platform); // no orderly shutdown
    }

    fn saga_url(&self, path: &str) -> String {
        self.saga.as_ref().unwrap().1.url(path)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, url: String, body: Value) -> Value {
        let (status, answer) = self
            .send(reqwest::Method::POST, url.clone(), Some(body))
            .await;
        assert!(
            (200..300).contains(&status),
            "POST {url}: {status} {answer}"
        );
        answer
    }

    async fn get(&self, url: String) -> (u16, Value) {
        self.send(reqwest::Method::GET, url, None).await
    }

    /// A listed vehicle and a pool of one, ready to be sold.
    async fn lot(&mut self) -> Lot {
        let n = self.next_vin;
        self.next_vin += 1;
        let v = |path: &str| self.vehicle.url(path);
        let vehicle = self
            .post(
                v("/vehicles"),
                json!({"vin": vin(n), "make": "Honda", "model": "Accord", "year": 2019, "mileage_km": 40_000}),
            )
            .await;
        let id = vehicle["id"].as_str().unwrap().to_string();
        self.post(v(&format!("/vehicles/{id}/inspection/start")), json!({}))
            .await;
        self.post(
            v(&format!("/vehicles/{id}/inspection")),
            json!({"inspector": "i-1", "grade": "B", "completed_at": "2026-12-01T10:00:00Z",
                   "items": [{"name": "engine", "result": "ok"}]}),
        )
        .await;
        let (status, _) = self
            .send(
                reqwest::Method::PUT,
                v(&format!("/vehicles/{id}/pricing")),
                Some(json!({"guide_price": cny(10_000_000), "reserve_suggestion": cny(9_000_000)})),
            )
            .await;
        assert_eq!(status, 200);
        self.post(v(&format!("/vehicles/{id}/list")), json!({}))
            .await;
        let pool = self
            .post(
                v("/pools"),
                json!({"name": format!("pool-{n}"), "capacity": 1}),
            )
            .await;
        Lot {
            lot_id: format!("lot-{n}-{}", self.platform.tag),
            vehicle_id: id,
            pool_id: pool["id"].as_str().unwrap().to_string(),
        }
    }

    async fn settle(&self, lot: &Lot) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            self.saga_url("/settlements"),
            Some(json!({
                "lot_id": lot.lot_id, "vehicle_id": lot.vehicle_id, "pool_id": lot.pool_id,
                "buyer_org": "dealer-1", "seller_org": "seller-1", "price": cny(9_500_000),
            })),
        )
        .await
    }

    /// Settles `lot` and waits for its saga to finish; its final state.
    async fn settled(&self, lot: &Lot) -> Value {
        let (status, started) = self.settle(lot).await;
        assert_eq!(status, 201, "{started}");
        self.finished(started["id"].as_str().unwrap()).await
    }

    async fn finished(&self, id: &str) -> Value {
        let url = self.saga_url(&format!("/sagas/{id}"));
        eventually(30, "the saga to finish", || async {
            let (_, detail) = self.get(url.clone()).await;
            matches!(detail["status"].as_str(), Some("completed" | "compensated")).then_some(detail)
        })
        .await
    }

    /// (vehicle state, order status, pool units used, receivable status) of a settled lot.
    async fn records(&self, saga: &Value, lot: &Lot) -> (String, String, i64, String) {
        let order_id = saga["input"]["order_id"].as_str().unwrap();
        let receivable_id = saga["input"]["receivable_id"].as_str().unwrap();
        let status_of = |(code, body): (u16, Value), field: &str| match code {
            404 => "absent".to_string(),
            200 => body[field].as_str().unwrap().to_string(),
            other => panic!("{other}: {body}"),
        };
        let vehicle = self
            .get(self.vehicle.url(&format!("/vehicles/{}", lot.vehicle_id)))
            .await;
        let order = self
            .get(self.order.url(&format!("/orders/{order_id}")))
            .await;
        let pool = self
            .get(self.vehicle.url(&format!("/pools/{}", lot.pool_id)))
            .await;
        let receivable = self
            .get(self.finance.url(&format!("/receivables/{receivable_id}")))
            .await;
        (
            status_of(vehicle, "state"),
            status_of(order, "status"),
            pool.1["used"].as_i64().unwrap(),
            status_of(receivable, "status"),
        )
    }

    /// Asserts the lot's four records agree with the saga's end.
    async fn assert_agree(&self, saga: &Value, lot: &Lot, case: &str) {
        let (vehicle, order, used, receivable) = self.records(saga, lot).await;
        match saga["status"].as_str().unwrap() {
            "completed" => assert_eq!(
                (vehicle.as_str(), order.as_str(), used, receivable.as_str()),
                ("sold", "awaiting_payment", 1, "open"),
                "{case}: all done"
            ),
            "compensated" => {
                assert_eq!(
                    (vehicle.as_str(), used),
                    ("listed", 0),
                    "{case}: all undone"
                );
                assert!(
                    matches!(order.as_str(), "absent" | "cancelled"),
                    "{case}: order {order}"
                );
                assert!(
                    matches!(receivable.as_str(), "absent" | "cancelled"),
                    "{case}: receivable {receivable}"
                );
            }
            other => panic!("{case}: {other}"),
        }
    }
}

struct Lot {
    lot_id: String,
    vehicle_id: String,
    pool_id: String,
}

fn cny(amount: i64) -> Value {
    json!({"amount": amount, "currency": "CNY"})
}

fn vin(n: u32) -> String {
    let mut chars: Vec<char> = format!("2HGCM8260{:08}", n).chars().collect();
    let arr: [char; 17] = chars.clone().try_into().unwrap();
    chars[8] = axle_vehicle::domain::check_digit(&arr).unwrap();
    chars.into_iter().collect()
}

/// Each step's action, as the proxy sees it: (method, path fragment).
fn actions(lot: &Lot) -> [(&'static str, String); 4] {
    [
        ("POST", format!("vehicles/{}/sell", lot.vehicle_id)),
        ("POST", "orders".to_string()),
        (
            "PUT",
            format!("pools/{}/deductions/{}", lot.pool_id, lot.vehicle_id),
        ),
        ("POST", "receivables".to_string()),
    ]
}

axle_core::on_every_backend!(settlement_ends_all_done_or_all_undone);

async fn settlement_ends_all_done_or_all_undone(backends: Backends) {
    let mut s = Stack::start(backends).await;

    let lot = s.lot().await;
    let saga = s.settled(&lot).await;
    assert_eq!(saga["status"], "completed", "{saga}");
    assert_eq!(saga["timeline"].as_array().unwrap().len(), 4);
    s.assert_agree(&saga, &lot, "no fault").await;
    // The same lot again: the same settlement, not a second one.
    let (status, again) = s.settle(&lot).await;
    assert_eq!((status, &again["id"]), (200, &saga["id"]));

    for step in 0..4 {
        // Refused (4xx): no retry; the steps before it are undone.
        let lot = s.lot().await;
        let (method, path) = actions(&lot)[step].clone();
        s.proxy.inject(method, path, Fault::Status(422), 1);
        let saga = s.settled(&lot).await;
        assert_eq!(saga["status"], "compensated", "refused at {step}: {saga}");
        let tries = saga["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["phase"] == "action" && a["step"] == step)
            .count();
        assert_eq!(tries, 1, "a refusal is not retried");
        s.assert_agree(&saga, &lot, &format!("refused at step {step}"))
            .await;

        // Failing (5xx) past its attempts: retried, then undone with its own step.
        let lot = s.lot().await;
        let (method, path) = actions(&lot)[step].clone();
        s.proxy.inject(method, path, Fault::Status(503), 100);
        let saga = s.settled(&lot).await;
        s.proxy.clear();
        assert_eq!(saga["status"], "compensated", "failing at {step}: {saga}");
        s.assert_agree(&saga, &lot, &format!("failing at step {step}"))
            .await;

        // The call took effect but its answer was lost, every time: undone all the same.
        let lot = s.lot().await;
        let (method, path) = actions(&lot)[step].clone();
        s.proxy.inject(method, path, Fault::LoseAnswer, 100);
        let saga = s.settled(&lot).await;
        s.proxy.clear();
        assert_eq!(
            saga["status"], "compensated",
            "answers lost at {step}: {saga}"
        );
        s.assert_agree(&saga, &lot, &format!("answers lost at step {step}"))
            .await;

        // Failing once, answered late once (three attempts allowed), then fine: retried
        // (idempotently) to the end.
        let lot = s.lot().await;
        let (method, path) = actions(&lot)[step].clone();
        s.proxy.inject(method, path.clone(), Fault::Status(503), 1);
        s.proxy.inject(method, path, Fault::LoseAnswer, 1);
        let saga = s.settled(&lot).await;
        s.proxy.clear();
        assert_eq!(saga["status"], "completed", "recovering at {step}: {saga}");
        s.assert_agree(&saga, &lot, &format!("recovering at step {step}"))
            .await;

        // The orchestrator dies during the step; another starts and carries on.
        let lot = s.lot().await;
        let (method, path) = actions(&lot)[step].clone();
        s.proxy.inject(method, path, Fault::Hang, 1);
        let (_, started) = s.settle(&lot).await;
        let id = started["id"].as_str().unwrap().to_string();
        let url = s.saga_url(&format!("/sagas/{id}"));
        eventually(10, "the orchestrator to reach the step", || async {
            let (_, detail) = s.get(url.clone()).await;
            (detail["step"] == step).then_some(())
        })
        .await;
        s.crash_saga();
        s.start_saga().await;
        let saga = s.finished(&id).await;
        assert_eq!(saga["status"], "completed", "crash at {step}: {saga}");
        s.assert_agree(&saga, &lot, &format!("crash at step {step}"))
            .await;
    }

    // A compensation that keeps failing: flagged for an operator, who retries it once the
    // participant is back.
    let lot = s.lot().await;
    s.proxy.inject("POST", "receivables", Fault::Status(409), 1);
    s.proxy.inject("POST", "*/cancel", Fault::Status(503), 1000);
    let (_, started) = s.settle(&lot).await;
    let id = started["id"].as_str().unwrap().to_string();
    let flagged = eventually(30, "the instance to be flagged", || async {
        let (_, page) = s.get(s.saga_url("/sagas?flagged=true")).await;
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id.as_str())
            .cloned()
    })
    .await;
    assert_eq!(flagged["status"], "compensating");
    assert!(
        flagged["last_error"].as_str().unwrap().contains("503"),
        "{flagged}"
    );
    s.proxy.clear();
    let retried = s
        .post(s.saga_url(&format!("/sagas/{id}/retry")), json!({}))
        .await;
    assert_eq!(retried["flagged"], false);
    let saga = s.finished(&id).await;
    assert_eq!(saga["status"], "compensated");
    s.assert_agree(&saga, &lot, "compensation flagged then retried")
        .await;

    // An operator aborts an instance stuck in a step whose calls take effect unanswered.
    let lot = s.lot().await;
    let (method, path) = actions(&lot)[2].clone();
    s.proxy.inject(method, path, Fault::LoseAnswer, 1000);
    let (_, started) = s.settle(&lot).await;
    let id = started["id"].as_str().unwrap().to_string();
    let url = s.saga_url(&format!("/sagas/{id}"));
    eventually(10, "the instance to retry step 2", || async {
        let (_, detail) = s.get(url.clone()).await;
        (detail["step"] == 2 && detail["attempt"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    let (status, aborted) = s
        .send(
            reqwest::Method::POST,
            s.saga_url(&format!("/sagas/{id}/abort")),
            None,
        )
        .await;
    // It may have given up on its own a moment before.
    assert!(
        status == 200 || aborted["code"] == "SAGA_ILLEGAL_TRANSITION",
        "{aborted}"
    );
    let saga = s.finished(&id).await;
    s.proxy.clear();
    assert_eq!(saga["status"], "compensated");
    s.assert_agree(&saga, &lot, "aborted").await;

    // Bad input: a clear 4xx, nothing started.
    let (status, body) = s
        .send(
            reqwest::Method::POST,
            s.saga_url("/settlements"),
            Some(
                json!({"lot_id": " ", "vehicle_id": lot.vehicle_id, "pool_id": lot.pool_id,
                        "buyer_org": "d", "seller_org": "s", "price": cny(1)}),
            ),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("SETTLEMENT_INVALID"))
    );
    let (status, body) = s
        .send(
            reqwest::Method::POST,
            s.saga_url("/settlements"),
            Some(json!({"lot_id": 1})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = s
        .get(s.saga_url(&format!("/sagas/{}", axle_core::id::new_id())))
        .await;
    assert_eq!(status, 404);
    let (_, stats) = s.get(s.saga_url("/sagas/stats")).await;
    assert!(stats["by_status"].as_array().unwrap().len() >= 2, "{stats}");

    // What the orchestrator counted since its last start (the crash case restarted it).
    let metrics = s
        .client
        .get(s.saga_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "axle_saga_finished_total{saga=\"settlement\",status=\"compensated\"}",
        "axle_saga_flagged_total{saga=\"settlement\"} 1",
        "axle_saga_step_duration_seconds_bucket{outcome=\"refused\",phase=\"action\",saga=\"settlement\",step=\"create_receivable\"",
        "axle_saga_in_flight 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

axle_core::on_every_backend!(two_orchestrators_share_the_work_and_never_run_a_step_twice);

/// Two orchestrators on one database: every settlement is driven by one of them at a time, so
/// each step's action is called once, and every lot ends settled.
async fn two_orchestrators_share_the_work_and_never_run_a_step_twice(backends: Backends) {
    let mut s = Stack::start(backends).await;
    let second = s.orchestrator(Some("second-node")).await;
    let mut lots = Vec::new();
    for _ in 0..30 {
        lots.push(s.lot().await);
    }
    let mut ids = Vec::new();
    for (n, lot) in lots.iter().enumerate() {
        // Half the settlements asked of each orchestrator.
        let url = if n % 2 == 0 {
            s.saga_url("/settlements")
        } else {
            second.1.url("/settlements")
        };
        let (status, started) = s
            .send(
                reqwest::Method::POST,
                url,
                Some(json!({
                    "lot_id": lot.lot_id, "vehicle_id": lot.vehicle_id, "pool_id": lot.pool_id,
                    "buyer_org": "dealer-1", "seller_org": "seller-1", "price": cny(9_500_000),
                })),
            )
            .await;
        assert_eq!(status, 201, "{started}");
        ids.push(started["id"].as_str().unwrap().to_string());
    }
    for (id, lot) in ids.iter().zip(&lots) {
        let saga = s.finished(id).await;
        assert_eq!(saga["status"], "completed", "{saga}");
        s.assert_agree(&saga, lot, "two orchestrators").await;
    }
    let keys = s.proxy.keys.lock().unwrap().clone();
    assert_eq!(
        keys.len(),
        4 * lots.len(),
        "one key per step of every settlement"
    );
    let twice: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "steps called more than once: {twice:?}");
    drop(second);
}
