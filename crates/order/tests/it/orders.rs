//! Orders through their states, idempotent creation, the payment deadline, bad input.

use axle_core::events::{CloudEvent, Subscription};
use axle_core::testing::{Backends, TestPlatform, TestServer, eventually};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

struct App {
    server: TestServer,
    events: Arc<Mutex<Vec<CloudEvent>>>,
    _service: axle_core::platform::Service,
    _platform: TestPlatform,
}

async fn spawn(backends: Backends) -> App {
    let platform =
        TestPlatform::start_with(backends, |c| c.services.order.expiry_check_secs = 1).await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    platform
        .platform
        .bus
        .subscribe(
            Subscription::new(format!("{}.watcher", platform.tag), &["axle.order.#"]),
            move |event: CloudEvent| {
                sink.lock().unwrap().push(event);
                async { Ok(()) }
            },
            platform.platform.shutdown.clone(),
        )
        .await
        .unwrap();
    let service = axle_order::build(&platform.platform).await.unwrap();
    App {
        server: TestServer::spawn(&service).await,
        events,
        _service: service,
        _platform: platform,
    }
}

impl App {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .server
            .client
            .post(self.server.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .server
            .client
            .get(self.server.url(path))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

fn new_order(id: &str, deadline: Option<u64>) -> Value {
    json!({
        "id": id, "buyer_org": "dealer-1", "seller_org": "seller-1",
        "source": {"kind": "auction", "reference": "lot-9"},
        "lines": [{"description": "2019 Accord", "quantity": 1,
                   "unit_price": {"amount": 9_500_000, "currency": "CNY"}}],
        "payment_deadline_secs": deadline,
    })
}

axle_core::on_every_backend!(orders_move_through_their_states);

async fn orders_move_through_their_states(backends: Backends) {
    let app = spawn(backends).await;
    let id = axle_core::id::new_id().to_string();
    let (status, order) = app.post("/orders", new_order(&id, None)).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["status"], "awaiting_payment");
    assert_eq!(
        order["amount"],
        json!({"amount": 9_500_000, "currency": "CNY"})
    );
    // Created again (a retried saga step): the same order, not a second one.
    let (status, again) = app.post("/orders", new_order(&id, None)).await;
    assert_eq!((status, &again["version"]), (200, &json!(1)));
    // A different order under that id: refused.
    let mut other = new_order(&id, None);
    other["buyer_org"] = json!("dealer-2");
    let (status, refused) = app.post("/orders", other).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("ORDER_EXISTS"))
    );

    for (verb, body, to) in [
        ("pay", json!({"reference": "pay-1"}), "paid"),
        ("pay", json!({"reference": "pay-1"}), "paid"),
        ("fulfil", json!({}), "fulfilling"),
        ("deliver", json!({}), "delivered"),
        ("complete", json!({}), "completed"),
    ] {
        let (status, order) = app.post(&format!("/orders/{id}/{verb}"), body).await;
        assert_eq!(
            (status, order["status"].as_str()),
            (200, Some(to)),
            "{verb}: {order}"
        );
    }
    let (status, refused) = app
        .post(
            &format!("/orders/{id}/cancel"),
            json!({"reason": "too late"}),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("ORDER_ILLEGAL_TRANSITION"))
    );
    let (_, order) = app.get(&format!("/orders/{id}")).await;
    let history: Vec<&str> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        [
            "created",
            "awaiting_payment",
            "paid",
            "fulfilling",
            "delivered",
            "completed"
        ]
    );
    let types = eventually(10, "the order's events", || async {
        let types: Vec<String> = app
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.ty.clone())
            .collect();
        (types.len() >= 5).then_some(types)
    })
    .await;
    assert_eq!(
        types,
        [
            "axle.order.created.v1",
            "axle.order.paid.v1",
            "axle.order.fulfilling.v1",
            "axle.order.delivered.v1",
            "axle.order.completed.v1"
        ]
    );

    // Not paid in time: cancelled by the deadline job.
    let late = axle_core::id::new_id().to_string();
    let (status, _) = app.post("/orders", new_order(&late, Some(1))).await;
    assert_eq!(status, 201);
    let cancelled = eventually(10, "the deadline to cancel the order", || async {
        let (_, order) = app.get(&format!("/orders/{late}")).await;
        (order["status"] == "cancelled").then_some(order)
    })
    .await;
    assert_eq!(
        cancelled["history"].as_array().unwrap().last().unwrap()["reason"],
        "the payment deadline passed"
    );
    let (status, still) = app
        .post(&format!("/orders/{late}/pay"), json!({"reference": "p"}))
        .await;
    assert_eq!(
        (status, still["code"].as_str()),
        (409, Some("ORDER_ILLEGAL_TRANSITION"))
    );

    // Lists: newest first, by status.
    let (_, page) = app.get("/orders?status=cancelled").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (_, page) = app.get("/orders?limit=1").await;
    assert_eq!(page["items"][0]["id"], late.as_str());
    assert!(page["next_cursor"].is_string());

    // Bad input: clear 4xx.
    let mut bad = new_order(&axle_core::id::new_id().to_string(), None);
    bad["lines"] = json!([]);
    let (status, body) = app.post("/orders", bad).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("ORDER_INVALID"))
    );
    let mut bad = new_order(&axle_core::id::new_id().to_string(), Some(0));
    bad["source"]["kind"] = json!("auction");
    let (status, _) = app.post("/orders", bad).await;
    assert_eq!(status, 422);
    let (status, _) = app.post("/orders", json!({"buyer_org": 5})).await;
    assert_eq!(status, 422);
    let (status, body) = app
        .get(&format!("/orders/{}", axle_core::id::new_id()))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("ORDER_NOT_FOUND"))
    );
    let (status, _) = app.get("/orders?status=lost").await;
    assert_eq!(status, 400);
}
