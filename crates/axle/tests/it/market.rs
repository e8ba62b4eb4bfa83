//! The API market end to end through the binary and its gateway: a publisher publishes a
//! product with two versions and plans; a dealer signs in, makes an application and a key,
//! subscribes (automatic and manual approval), calls within its quota (200), beyond it (429
//! with APISIX's headers), and is refused on the very next request after a revocation;
//! deprecated versions say so in headers, retired ones answer 410.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// A backend that answers `{"backend": name, "path": …}`.
async fn backend(name: &'static str) -> String {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| async move {
        axum::Json(json!({"backend": name, "path": uri.path()}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/api")
}

const DOCUMENT: &str = r#"openapi: 3.0.3
info:
  title: Fleet data
  version: 1.0.0
paths:
  /cars/{vin}:
    get:
      operationId: car
      parameters:
        - {name: vin, in: path, required: true, schema: {type: string}}
      responses:
        "200": {description: the car}
"#;

struct Market<'a> {
    axle: &'a Axle,
}

impl Market<'_> {
    /// POSTs `body` to the market's API as `token`; (status, body).
    async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, token, path, body).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let r = self
            .axle
            .client
            .request(method, format!("{}/api/market{path}", self.axle.site))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// POSTs and expects `status`; the body.
    async fn made(&self, token: &str, path: &str, body: Value, status: u16) -> Value {
        let (got, answer) = self.post(token, path, body).await;
        assert_eq!(got, status, "POST {path}: {answer}");
        answer
    }

    async fn get(&self, token: &str, path: &str) -> Value {
        let r = self
            .axle
            .client
            .get(format!("{}/api/market{path}", self.axle.site))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    /// Calls a market API through the gateway with `key`.
    async fn call(&self, path: &str, key: &str) -> reqwest::Response {
        self.axle
            .client
            .get(format!("{}{path}", self.axle.site))
            .header("apikey", key)
            .send()
            .await
            .unwrap()
    }
}

async fn user(axle: &Axle, admin: &str, name: &str, roles: &[&str]) -> String {
    let password = "a long and private passphrase".to_string();
    let created = axle
        .client
        .post(format!("{}/api/identity/users", axle.site))
        .bearer_auth(admin)
        .json(&json!({"username": name, "password": password, "roles": roles}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    axle.sign_in(name, &password).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_call_within_and_beyond_quota_and_revoke() {
    let axle = start().await;
    let market = Market { axle: &axle };
    let admin = axle.server.token(axle.dir.path());
    let publisher = user(&axle, &admin, "pat.publisher", &["api-publisher"]).await;
    let dealer = user(&axle, &admin, "dan.dealer", &["dealer"]).await;
    let (v1_url, v2_url) = (backend("v1").await, backend("v2").await);

    // The publisher's side: a product, two versions, two plans.
    let product = market
        .made(
            &publisher,
            "/products",
            json!({"slug": "fleet-data", "title": "Fleet data", "owner_team": "platform",
                   "description": "Cars by VIN", "tags": ["vehicles"]}),
            201,
        )
        .await;
    let pid = product["id"].as_str().unwrap().to_string();
    let (status, refused) = market
        .post(
            &dealer,
            "/products",
            json!({"slug": "mine", "title": "x", "owner_team": "x"}),
        )
        .await;
    assert_eq!((status, refused["code"].as_str()), (403, Some("FORBIDDEN")));
    let bad = DOCUMENT.replace("in: path", "in: query");
    let (status, refused) = market
        .post(
            &publisher,
            &format!("/products/{pid}/versions"),
            json!({"number": "1.0.0", "document": bad, "backend": {"url": v1_url}}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["code"], "MARKET_INVALID_DOCUMENT");
    assert!(
        refused["message"].as_str().unwrap().starts_with("line 7:"),
        "{refused}"
    );
    let mut versions = Vec::new();
    for (number, url) in [("1.0.0", &v1_url), ("2.0.0", &v2_url)] {
        let v = market
            .made(
                &publisher,
                &format!("/products/{pid}/versions"),
                json!({"number": number, "document": DOCUMENT, "backend": {"url": url}}),
                201,
            )
            .await;
        assert_eq!(v["status"], "draft");
        let vid = v["id"].as_str().unwrap().to_string();
        let published = market
            .made(
                &publisher,
                &format!("/versions/{vid}/publish"),
                json!({}),
                200,
            )
            .await;
        assert_eq!(published["status"], "published");
        versions.push(vid);
    }
    let free = market
        .made(
            &publisher,
            &format!("/products/{pid}/plans"),
            json!({"name": "Free", "limit": {"count": 5, "period": "minute"}, "approval": "auto"}),
            201,
        )
        .await;
    let gold = market
        .made(
            &publisher,
            &format!("/products/{pid}/plans"),
            json!({"name": "Gold", "limit": {"count": 1000, "period": "day"}, "approval": "manual"}),
            201,
        )
        .await;
    let partners = market
        .made(
            &publisher,
            &format!("/products/{pid}/plans"),
            json!({"name": "Partners", "approval": "auto", "organisations": ["org-partner"]}),
            201,
        )
        .await;
    // An unreachable backend is refused publication, saying why.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let v3 = market
        .made(
            &publisher,
            &format!("/products/{pid}/versions"),
            json!({"number": "3.0.0", "document": DOCUMENT, "backend": {"url": closed}}),
            201,
        )
        .await;
    let (status, refused) = market
        .post(
            &publisher,
            &format!("/versions/{}/publish", v3["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (422, Some("MARKET_BACKEND_UNREACHABLE"))
    );

    // An existing gateway route imports as a draft version: its upstream as the backend.
    let legacy = v1_url
        .trim_end_matches("/api")
        .trim_start_matches("http://");
    axle.put_route(
        "legacy-cars",
        &json!({"name": "Legacy cars", "uri": "/legacy/cars/*", "upstream": {"nodes": {legacy: 1}}}),
    )
    .await;
    let imported = market
        .made(
            &publisher,
            &format!("/products/{pid}/versions/import"),
            json!({"number": "0.9.0", "route_id": "legacy-cars"}),
            201,
        )
        .await;
    assert_eq!(imported["status"], "draft");
    assert_eq!(imported["backend"]["url"], format!("http://{legacy}"));
    assert_eq!(
        (imported["title"].as_str(), imported["operations"].as_u64()),
        (Some("Legacy cars"), Some(1))
    );
    let (status, _) = market
        .post(
            &publisher,
            &format!("/products/{pid}/versions/import"),
            json!({"number": "0.9.1", "route_id": "no-such-route"}),
        )
        .await;
    assert_eq!(status, 404);

    // The dealer's side: the catalog, an application and its key.
    let catalog = market.get(&dealer, "/products?q=fleet").await;
    assert_eq!(catalog.as_array().unwrap().len(), 1);
    let view = market.get(&dealer, &format!("/products/{pid}")).await;
    assert_eq!(
        view["versions"].as_array().unwrap().len(),
        2,
        "no drafts: {view}"
    );
    assert_eq!(
        view["base_paths"],
        json!(["/market/fleet-data/v1", "/market/fleet-data/v2"])
    );
    let app = market
        .made(
            &dealer,
            "/applications",
            json!({"name": "Dealer portal"}),
            201,
        )
        .await;
    let aid = app["id"].as_str().unwrap().to_string();
    let key = market
        .made(
            &dealer,
            &format!("/applications/{aid}/keys"),
            json!({}),
            201,
        )
        .await;
    let api_key = key["key"].as_str().unwrap().to_string();
    assert!(key.get("hash").is_some() && !key["hash"].as_str().unwrap().contains(&api_key));

    // No subscription yet: the key is known, the product refuses it; no key: 401.
    let car = "/market/fleet-data/v1/cars/WVWZZZ1JZXW000001";
    assert_eq!(market.call(car, &api_key).await.status(), 403);
    assert_eq!(market.call(car, "not-a-key").await.status(), 401);

    // Free is approved at once: 5 calls a minute, then 429 with APISIX's headers.
    let sub = market
        .made(
            &dealer,
            &format!("/applications/{aid}/subscriptions"),
            json!({"plan_id": free["id"]}),
            201,
        )
        .await;
    assert_eq!(sub["status"], "approved");
    for left in ["4", "3", "2", "1", "0"] {
        let r = market.call(car, &api_key).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit"], "5");
        assert_eq!(r.headers()["x-ratelimit-remaining"], left);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body,
            json!({"backend": "v1", "path": "/api/cars/WVWZZZ1JZXW000001"})
        );
    }
    let over = market.call(car, &api_key).await;
    assert_eq!(over.status(), 429);
    assert_eq!(over.headers()["x-ratelimit-remaining"], "0");
    assert!(over.headers().contains_key("x-ratelimit-reset"));
    // Each major version counts on its own.
    assert_eq!(
        market
            .call("/market/fleet-data/v2/cars/1", &api_key)
            .await
            .status(),
        200
    );

    // A second application asks for Gold: it waits for a publisher.
    let other = market
        .made(
            &dealer,
            "/applications",
            json!({"name": "Back office"}),
            201,
        )
        .await;
    let oid = other["id"].as_str().unwrap().to_string();
    let other_key = market
        .made(
            &dealer,
            &format!("/applications/{oid}/keys"),
            json!({}),
            201,
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, refused) = market
        .post(
            &dealer,
            &format!("/applications/{oid}/subscriptions"),
            json!({"plan_id": partners["id"]}),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (403, Some("MARKET_PLAN_NOT_ALLOWED"))
    );
    let waiting = market
        .made(
            &dealer,
            &format!("/applications/{oid}/subscriptions"),
            json!({"plan_id": gold["id"]}),
            201,
        )
        .await;
    assert_eq!(waiting["status"], "requested");
    let (status, refused) = market
        .post(
            &dealer,
            &format!("/applications/{oid}/subscriptions"),
            json!({"plan_id": gold["id"]}),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("MARKET_SUBSCRIPTION_EXISTS"))
    );
    assert_eq!(market.call(car, &other_key).await.status(), 403);
    let queue = market.get(&publisher, "/subscriptions").await;
    assert_eq!(queue.as_array().unwrap().len(), 1);
    assert_eq!(queue[0]["id"], waiting["id"]);
    let wid = waiting["id"].as_str().unwrap();
    let (status, _) = market
        .post(&dealer, &format!("/subscriptions/{wid}/approve"), json!({}))
        .await;
    assert_eq!(status, 403, "a dealer approves nothing");
    let approved = market
        .made(
            &publisher,
            &format!("/subscriptions/{wid}/approve"),
            json!({}),
            200,
        )
        .await;
    assert_eq!(approved["decided_by"], "pat.publisher");
    let r = market.call(car, &other_key).await;
    assert_eq!(r.status(), 200, "the first request after the approval");
    assert_eq!(r.headers()["x-ratelimit-limit"], "1000");
    let (status, refused) = market
        .post(
            &publisher,
            &format!("/subscriptions/{wid}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("MARKET_ILLEGAL_TRANSITION"))
    );

    // Revoked: refused on the very next request; a reason is required.
    let (status, _) = market
        .post(
            &publisher,
            &format!("/subscriptions/{wid}/revoke"),
            json!({}),
        )
        .await;
    assert_eq!(status, 422);
    market
        .made(
            &publisher,
            &format!("/subscriptions/{wid}/revoke"),
            json!({"reason": "contract ended"}),
            200,
        )
        .await;
    assert_eq!(market.call(car, &other_key).await.status(), 403);
    // The audit trail says who did what to it.
    let trail = market
        .get(&publisher, &format!("/audit?target={wid}"))
        .await;
    let lines: Vec<(&str, &str)> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        lines,
        [
            ("axle.market.subscription_requested.v1", "dan.dealer"),
            ("axle.market.subscription_approved.v1", "pat.publisher"),
            ("axle.market.subscription_revoked.v1", "pat.publisher"),
        ]
    );

    // Rotation: both keys work through the overlap; a revoked key is refused at once.
    let kid = key["id"].as_str().unwrap();
    let rotated = market
        .made(
            &dealer,
            &format!("/applications/{aid}/keys/{kid}/rotate"),
            json!({"overlap_secs": 3600}),
            201,
        )
        .await;
    let new_key = rotated["key"].as_str().unwrap().to_string();
    let v2 = "/market/fleet-data/v2/cars/1";
    assert_eq!(market.call(v2, &new_key).await.status(), 200);
    assert_eq!(market.call(v2, &api_key).await.status(), 200);
    let revoked = axle
        .client
        .delete(format!(
            "{}/api/market/applications/{aid}/keys/{kid}",
            axle.site
        ))
        .bearer_auth(&dealer)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(market.call(v2, &api_key).await.status(), 401);
    assert_eq!(market.call(v2, &new_key).await.status(), 200);

    // Deprecated: said in headers; retired: 410, and no new subscriptions.
    let sunset = "2030-01-01T00:00:00Z";
    market
        .made(
            &publisher,
            &format!("/versions/{}/deprecate", versions[1]),
            json!({"sunset": sunset}),
            200,
        )
        .await;
    let r = market.call(v2, &new_key).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["sunset"], "Tue, 01 Jan 2030 00:00:00 GMT");
    assert!(
        r.headers()["deprecation"]
            .to_str()
            .unwrap()
            .starts_with('@')
    );
    for v in &versions {
        market
            .made(&publisher, &format!("/versions/{v}/retire"), json!({}), 200)
            .await;
    }
    let gone = market.call(v2, &new_key).await;
    assert_eq!(gone.status(), 410);
    assert_eq!(
        gone.json::<Value>().await.unwrap()["code"],
        "MARKET_VERSION_RETIRED"
    );
    let (status, refused) = market
        .post(
            &dealer,
            &format!("/applications/{oid}/subscriptions"),
            json!({"plan_id": free["id"]}),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("MARKET_VERSION_RETIRED"))
    );

    // Usage, as the gateway reported it: every request of each application, counted exactly
    // (the retired route is not metered).
    let mut usage = Value::Null;
    for _ in 0..100 {
        usage = market
            .get(&dealer, &format!("/applications/{aid}/usage"))
            .await;
        if usage["requests"] == 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(usage["requests"], 12, "{usage}");
    assert_eq!(
        usage["statuses"],
        json!({"2xx": 10, "4xx": 2}),
        "403 before subscribing, 429 over the quota"
    );
    assert_eq!(usage["errors"], 2);
    assert!(usage["p99_ms"].as_u64().is_some());
    assert_eq!(usage["products"][&pid]["requests"], 12);
    let product_usage = market
        .get(&publisher, &format!("/products/{pid}/usage"))
        .await;
    assert_eq!(product_usage["applications"][&aid]["requests"], 12);
    assert_eq!(product_usage["applications"][&oid]["requests"], 3);
    assert_eq!(
        product_usage["applications"]["anonymous"]["requests"], 2,
        "no key, then the revoked key: {product_usage}"
    );
    assert_eq!(product_usage["dropped"], 0);

    // The market's OpenAPI document is served through the gateway.
    let doc: Value = axle
        .client
        .get(format!("{}/api/market/openapi.json", axle.site))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["info"]["title"], "Axle API market");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(axle.server.terminate().status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_its_weight_of_five_thousand_requests_then_all_of_them() {
    let axle = start().await;
    let market = Market { axle: &axle };
    let admin = axle.server.token(axle.dir.path());
    let (stable_url, canary_url) = (backend("stable").await, backend("canary").await);
    let pid = market
        .made(
            &admin,
            "/products",
            json!({"slug": "canary-data", "title": "Canary data", "owner_team": "platform"}),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ids = Vec::new();
    for (number, url, weight) in [
        ("1.0.0", &stable_url, json!({})),
        ("1.1.0", &canary_url, json!({"weight": 20})),
    ] {
        let v = market
            .made(
                &admin,
                &format!("/products/{pid}/versions"),
                json!({"number": number, "document": DOCUMENT, "backend": {"url": url}}),
                201,
            )
            .await;
        let vid = v["id"].as_str().unwrap().to_string();
        market
            .made(&admin, &format!("/versions/{vid}/publish"), weight, 200)
            .await;
        ids.push(vid);
    }
    // A canary on another path cannot share the route.
    let elsewhere = market
        .made(
            &admin,
            &format!("/products/{pid}/versions"),
            json!({"number": "1.2.0", "document": DOCUMENT,
                   "backend": {"url": stable_url.replace("/api", "/other")}}),
            201,
        )
        .await;
    let (status, refused) = market
        .post(
            &admin,
            &format!("/versions/{}/publish", elsewhere["id"].as_str().unwrap()),
            json!({"weight": 5}),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (422, Some("MARKET_INVALID")),
        "{refused}"
    );

    let plan = market
        .made(
            &admin,
            &format!("/products/{pid}/plans"),
            json!({"name": "Internal", "approval": "auto"}),
            201,
        )
        .await;
    let aid = market
        .made(&admin, "/applications", json!({"name": "Load"}), 201)
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = market
        .made(&admin, &format!("/applications/{aid}/keys"), json!({}), 201)
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    market
        .made(
            &admin,
            &format!("/applications/{aid}/subscriptions"),
            json!({"plan_id": plan["id"]}),
            201,
        )
        .await;

    let path = "/market/canary-data/v1/cars/1";
    let (total, mut canary) = (5_000, 0);
    for _ in 0..total {
        let r = market.call(path, &key).await;
        assert_eq!(r.status(), 200);
        if r.json::<Value>().await.unwrap()["backend"] == "canary" {
            canary += 1;
        }
    }
    let share = f64::from(canary) / f64::from(total);
    assert!((0.18..=0.22).contains(&share), "the canary took {share}");

    // Promoted: without a weight, the newest version takes every request.
    let (status, promoted) = market
        .send(
            reqwest::Method::PUT,
            &admin,
            &format!("/versions/{}/weight", ids[1]),
            json!({"weight": null}),
        )
        .await;
    assert_eq!(status, 200, "{promoted}");
    for _ in 0..20 {
        let body: Value = market.call(path, &key).await.json().await.unwrap();
        assert_eq!(body["backend"], "canary");
    }
    assert!(axle.server.terminate().status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_market_down_the_gateway_keeps_enforcing_and_usage_catches_up() {
    // The gateway (with identity) in one process, the market in another writing to it through
    // its Admin API.
    let (gateway_dir, market_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (admin_port, market_port) = (free_port(), free_port());
    let key = "split-admin-key";
    let gateway = Server::serve_with(
        gateway_dir.path(),
        free_port(),
        &["--only", "identity,web,vehicle,masterdata,gateway"],
        &[
            (
                "AXLE__SERVICES__GATEWAY__ADMIN_LISTEN",
                format!("127.0.0.1:{admin_port}"),
            ),
            ("AXLE_ADMIN_KEY", key.into()),
        ],
    )
    .await;
    let site = format!("http://127.0.0.1:{}", gateway.gateway_port);
    let start_market = || async {
        let mut cmd = axle(market_dir.path());
        cmd.args(["serve", "--only", "market"])
            .env(
                "AXLE__SERVICES__MARKET__LISTEN",
                format!("127.0.0.1:{market_port}"),
            )
            .env(
                "AXLE__SERVICES__MARKET__GATEWAY_ADMIN_URL",
                format!("http://127.0.0.1:{admin_port}"),
            )
            .env("AXLE_ADMIN_KEY", key)
            // Its callers' tokens are the gateway's identity's.
            .env(
                "AXLE__SERVICES__GATEWAY__LISTEN",
                format!("127.0.0.1:{}", gateway.gateway_port),
            );
        let mut server = Server::start(cmd);
        server
            .wait_ready(&format!("http://127.0.0.1:{market_port}/healthz"))
            .await;
        server
    };
    let market_server = start_market().await;
    let token = gateway.token(gateway_dir.path());
    let http = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{market_port}");
    let post = |path: &str, body: Value| {
        let request = http
            .post(format!("{api}{path}"))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let r = request.send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    let pid = post(
        "/products",
        json!({"slug": "split", "title": "Split", "owner_team": "platform"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let vid = post(
        &format!("/products/{pid}/versions"),
        json!({"number": "1.0.0", "document": DOCUMENT, "backend": {"url": backend("split").await}}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    post(&format!("/versions/{vid}/publish"), json!({})).await;
    let plan = post(
        &format!("/products/{pid}/plans"),
        json!({"name": "Open", "approval": "auto"}),
    )
    .await;
    let aid = post("/applications", json!({"name": "Split app"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let api_key = post(&format!("/applications/{aid}/keys"), json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_string();
    post(
        &format!("/applications/{aid}/subscriptions"),
        json!({"plan_id": plan["id"]}),
    )
    .await;
    let call = |key: &str| {
        http.get(format!("{site}/market/split/v1/cars/1"))
            .header("apikey", key)
            .send()
    };
    assert_eq!(call(&api_key).await.unwrap().status(), 200);

    // The market crashes: the gateway goes on with what it has, and keeps the usage.
    drop(market_server);
    for _ in 0..10 {
        assert_eq!(call(&api_key).await.unwrap().status(), 200);
    }
    assert_eq!(call("unknown-key").await.unwrap().status(), 401);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Back: every request is counted, none dropped.
    let _market_server = start_market().await;
    let mut usage = Value::Null;
    for _ in 0..100 {
        usage = http
            .get(format!("{api}/applications/{aid}/usage"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if usage["requests"] == 11 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(usage["requests"], 11, "{usage}");
    assert_eq!(usage["dropped"], 0);
    assert!(gateway.terminate().status.success());
}
