//! `/vehicles` and the scaffolding every service shares, on SQLite and on PostgreSQL.

use axle_core::testing::eventually;
use serde_json::{Value, json};

use axle_core::on_every_backend;

use crate::helpers::*;

on_every_backend!(create_get_and_event);
async fn create_get_and_event(backends: axle_core::testing::Backends) {
    let app = spawn_app(backends).await;
    let created = app.post("/vehicles", &new_vehicle(1)).await;
    assert_eq!(created.status(), 201);
    assert!(created.headers().contains_key("x-request-id"));
    let vehicle: Value = created.json().await.unwrap();
    assert_eq!(vehicle["vin"], vin(1));
    assert_eq!(vehicle["state"], "received");
    assert_eq!(vehicle["version"], 1);

    let id = vehicle["id"].as_str().unwrap();
    let fetched: Value = app
        .get(&format!("/vehicles/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, vehicle, "what was returned is what was stored");

    let event = eventually(20, "the received event", || async {
        app.events.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(event.ty, "axle.vehicle.received.v1");
    assert_eq!(event.source, "/axle/vehicle");
    assert_eq!(event.subject, id);
    assert_eq!(event.aggregateversion, 1);
    let data: axle_vehicle_api::VehicleChanged = event.data_as().unwrap();
    assert_eq!(data.vehicle.vin, vin(1));
    assert_eq!(data.vehicle.id.to_string(), id);
    assert_eq!(data.actor, "anonymous");
}

on_every_backend!(bad_input_gets_clear_errors);
async fn bad_input_gets_clear_errors(backends: axle_core::testing::Backends) {
    let app = spawn_app(backends).await;
    let mut bad_vin = new_vehicle(2);
    bad_vin["vin"] = json!("1HGCM82643A004352");
    let cases: Vec<(reqwest::Response, u16, &str)> = vec![
        (
            app.post("/vehicles", &bad_vin).await,
            422,
            "VEHICLE_INVALID_VIN",
        ),
        (
            app.post(
                "/vehicles",
                &json!({"vin": vin(3), "make": "X", "model": "Y", "year": 1700}),
            )
            .await,
            422,
            "VEHICLE_INVALID",
        ),
        (
            app.post("/vehicles", &json!({"vin": vin(3)})).await,
            422,
            "INVALID_BODY",
        ),
        (
            app.post(
                "/vehicles",
                &json!({"vin": vin(3), "make": "X", "model": "Y", "year": 2020, "paint": "red"}),
            )
            .await,
            422,
            "INVALID_BODY",
        ),
        (
            app.server
                .client
                .post(app.server.url("/vehicles"))
                .header("content-type", "application/json")
                .body("{\"vin\":")
                .send()
                .await
                .unwrap(),
            400,
            "MALFORMED_JSON",
        ),
        (
            app.server
                .client
                .post(app.server.url("/vehicles"))
                .body("vin=1")
                .send()
                .await
                .unwrap(),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            app.server
                .client
                .post(app.server.url("/vehicles"))
                .header("content-type", "application/json")
                .body(vec![b' '; 2 * 1024 * 1024])
                .send()
                .await
                .unwrap(),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (app.get("/vehicles/not-a-uuid").await, 400, "INVALID_PATH"),
        (
            app.get(&format!("/vehicles/{}", axle_core::id::new_id()))
                .await,
            404,
            "VEHICLE_NOT_FOUND",
        ),
        (app.get("/vehicles?limit=0").await, 400, "INVALID_QUERY"),
        // NUL cannot be stored in PostgreSQL's text: refused at the edge, on every backend.
        (
            app.post(
                "/vehicles",
                &json!({"vin": vin(4), "make": "Hon\u{0}da", "model": "Y", "year": 2020}),
            )
            .await,
            422,
            "NUL_CHARACTER",
        ),
        (
            app.get("/vehicles?seller_org=dealer%00one").await,
            400,
            "NUL_CHARACTER",
        ),
        (app.get("/vehicles/%00").await, 400, "NUL_CHARACTER"),
        (app.get("/vehicles?cursor=zzz").await, 400, "INVALID_QUERY"),
        (app.get("/nowhere").await, 404, "NOT_FOUND"),
        (
            app.server
                .client
                .delete(app.server.url("/vehicles"))
                .send()
                .await
                .unwrap(),
            405,
            "METHOD_NOT_ALLOWED",
        ),
    ];
    for (response, status, code) in cases {
        assert_eq!(response.status(), status, "{code}");
        if status == 413 {
            // The unread rest of the body spoils the connection: it must not be reused.
            assert_eq!(response.headers()["connection"], "close");
        }
        let body: Value = response.json().await.expect(code);
        assert_eq!(body["code"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(body["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    }

    assert_eq!(app.post("/vehicles", &new_vehicle(4)).await.status(), 201);
    let duplicate = app.post("/vehicles", &new_vehicle(4)).await;
    assert_eq!(duplicate.status(), 409);
    assert_eq!(
        duplicate.json::<Value>().await.unwrap()["code"],
        "VEHICLE_VIN_EXISTS"
    );
    let all: Value = app.get("/vehicles").await.json().await.unwrap();
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        1,
        "rejected input stored nothing"
    );
}

on_every_backend!(idempotency_key_replays_and_guards);
async fn idempotency_key_replays_and_guards(backends: axle_core::testing::Backends) {
    let app = spawn_app(backends).await;
    let send = |body: Value, key: &'static str| {
        let req = app
            .server
            .client
            .post(app.server.url("/vehicles"))
            .header("idempotency-key", key)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let first = send(new_vehicle(5), "key-1").await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();

    let retry = send(new_vehicle(5), "key-1").await;
    assert_eq!(
        retry.status(),
        201,
        "a retry gets the original answer, not a 409"
    );
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), first);

    let reused = send(new_vehicle(6), "key-1").await;
    assert_eq!(reused.status(), 422);
    assert_eq!(
        reused.json::<Value>().await.unwrap()["code"],
        "IDEMPOTENCY_KEY_REUSED"
    );

    // Client errors are stored too: the same bad request with the same key gets the same 422.
    let mut bad = new_vehicle(7);
    bad["vin"] = json!("nope");
    assert_eq!(send(bad.clone(), "key-2").await.status(), 422);
    let again = send(bad, "key-2").await;
    assert_eq!(again.status(), 422);
    assert_eq!(again.headers()["idempotent-replayed"], "true");

    let all: Value = app.get("/vehicles").await.json().await.unwrap();
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        1,
        "the retried create ran once"
    );
    eventually(20, "one event", || async {
        (app.events.lock().unwrap().len() == 1).then_some(())
    })
    .await;
}

on_every_backend!(lists_page_by_cursor);
async fn lists_page_by_cursor(backends: axle_core::testing::Backends) {
    let app = spawn_app(backends).await;
    for n in 10..15 {
        assert_eq!(app.post("/vehicles", &new_vehicle(n)).await.status(), 201);
    }
    let mut vins = Vec::new();
    let mut path = "/vehicles?limit=2".to_string();
    loop {
        let page: Value = app.get(&path).await.json().await.unwrap();
        for v in page["items"].as_array().unwrap() {
            vins.push(v["vin"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/vehicles?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<String> = (10..15).map(vin).collect();
    assert_eq!(vins, expected, "every vehicle once, oldest first");
}

on_every_backend!(shared_endpoints);
async fn shared_endpoints(backends: axle_core::testing::Backends) {
    let app = spawn_app(backends).await;
    assert_eq!(
        app.get("/healthz").await.json::<Value>().await.unwrap()["status"],
        "ok"
    );
    assert_eq!(
        app.get("/readyz").await.json::<Value>().await.unwrap()["status"],
        "ready"
    );

    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/vehicles"]["post"].is_object());
    assert!(doc["paths"]["/vehicles/{id}"]["get"].is_object());

    // A request id sent by the caller (the gateway) is kept and echoed.
    let response = app
        .server
        .client
        .get(app.server.url("/vehicles"))
        .header("x-request-id", "from-gateway")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "from-gateway");

    assert_eq!(app.post("/vehicles", &new_vehicle(20)).await.status(), 201);
    eventually(20, "the event relayed", || async {
        (!app.events.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            r#"axle_http_requests_total{method="POST",route="/vehicles",status="201"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("axle_outbox_published_total 1"),
        "{metrics}"
    );

    // Closing the database makes the service unready, not dead.
    app.service.db.close().await;
    let not_ready = app.get("/readyz").await;
    assert_eq!(not_ready.status(), 503);
    assert_eq!(
        not_ready.json::<Value>().await.unwrap()["code"],
        "NOT_READY"
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
}
