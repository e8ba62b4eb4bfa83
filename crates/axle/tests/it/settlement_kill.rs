//! `kill -9` in the middle of 500 settlements: the binary is killed with settlements in
//! flight and started again on the same data; every saga reaches a terminal state, and the
//! vehicle, order, inventory and receivable of every lot agree with it.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;

const LOTS: usize = 500;

struct Ports {
    vehicle: u16,
    order: u16,
    finance: u16,
    saga: u16,
    gateway: u16,
    identity: u16,
}

async fn serve(dir: &Path, p: &Ports, extra: &[(&str, String)]) -> Server {
    let mut env = vec![
        (
            "AXLE__SERVICES__ORDER__LISTEN",
            format!("127.0.0.1:{}", p.order),
        ),
        (
            "AXLE__SERVICES__FINANCE__LISTEN",
            format!("127.0.0.1:{}", p.finance),
        ),
        (
            "AXLE__SERVICES__SAGA__LISTEN",
            format!("127.0.0.1:{}", p.saga),
        ),
        (
            "AXLE__SERVICES__GATEWAY__LISTEN",
            format!("127.0.0.1:{}", p.gateway),
        ),
        (
            "AXLE__SERVICES__IDENTITY__LISTEN",
            format!("127.0.0.1:{}", p.identity),
        ),
        // Thousands of requests: no need for a log line each.
        ("AXLE__LOG__LEVEL", "warn".into()),
    ];
    env.extend(extra.iter().cloned());
    let mut server = Server::serve(dir, p.vehicle, &env).await;
    server.gateway_port = p.gateway;
    server.identity_port = p.identity;
    server
        .wait_ready(&format!("http://127.0.0.1:{}/healthz", p.saga))
        .await;
    server
        .wait_ready(&format!(
            "http://127.0.0.1:{}/api/identity/.well-known/openid-configuration",
            p.gateway
        ))
        .await;
    server
}

struct Client {
    http: reqwest::Client,
    token: String,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> (u16, Value) {
        for _ in 0..50 {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    return (status, r.json().await.unwrap_or(Value::Null));
                }
                // The server is starting or stopping: try again.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("{url} never answered");
    }

    async fn ok(&self, method: reqwest::Method, url: String, body: Value) -> Value {
        let (status, answer) = self.send(method, url.clone(), Some(body)).await;
        assert!((200..300).contains(&status), "{url}: {status} {answer}");
        answer
    }
}

fn cny(amount: i64) -> Value {
    json!({"amount": amount, "currency": "CNY"})
}

fn vin(n: u32) -> String {
    let mut chars: Vec<char> = format!("3HGCM8260{:08}", n).chars().collect();
    let arr: [char; 17] = chars.clone().try_into().unwrap();
    chars[8] = axle_vehicle::domain::check_digit(&arr).unwrap();
    chars.into_iter().collect()
}

/// A listed vehicle, ready to be sold.
async fn listed(c: &Client, vehicle: u16, n: u32) -> String {
    use reqwest::Method;
    let v = |path: String| format!("http://127.0.0.1:{vehicle}{path}");
    let created = c
        .ok(
            Method::POST,
            v("/vehicles".into()),
            json!({"vin": vin(n), "make": "Honda", "model": "Fit", "year": 2018, "mileage_km": 60_000}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    c.ok(
        Method::POST,
        v(format!("/vehicles/{id}/inspection/start")),
        json!({}),
    )
    .await;
    c.ok(
        Method::POST,
        v(format!("/vehicles/{id}/inspection")),
        json!({"inspector": "i", "grade": "A", "completed_at": "2026-12-01T10:00:00Z",
               "items": [{"name": "engine", "result": "ok"}]}),
    )
    .await;
    c.ok(
        Method::PUT,
        v(format!("/vehicles/{id}/pricing")),
        json!({"guide_price": cny(5_000_000), "reserve_suggestion": cny(4_000_000)}),
    )
    .await;
    c.ok(Method::POST, v(format!("/vehicles/{id}/list")), json!({}))
        .await;
    id
}

async fn stats(c: &Client, saga: u16) -> (i64, i64) {
    let (_, stats) = c
        .send(
            reqwest::Method::GET,
            format!("http://127.0.0.1:{saga}/sagas/stats"),
            None,
        )
        .await;
    let mut done = 0;
    let mut open = 0;
    for s in stats["by_status"].as_array().into_iter().flatten() {
        let n = s["count"].as_i64().unwrap();
        match s["status"].as_str().unwrap() {
            "completed" | "compensated" => done += n,
            _ => open += n,
        }
    }
    (done, open)
}

pub async fn five_hundred_settlements_survive_kill_9(extra: &[(&str, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let p = Ports {
        vehicle: free_port(),
        order: free_port(),
        finance: free_port(),
        saga: free_port(),
        gateway: free_port(),
        identity: free_port(),
    };
    let mut server = serve(dir.path(), &p, extra).await;
    let c = Client {
        http: reqwest::Client::new(),
        token: server.token(dir.path()),
    };
    let pool = c
        .ok(
            reqwest::Method::POST,
            format!("http://127.0.0.1:{}/pools", p.vehicle),
            json!({"name": "yard", "capacity": 10_000}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let vehicles: Vec<String> = futures::stream::iter(0..LOTS as u32)
        .map(|n| listed(&c, p.vehicle, n))
        .buffered(16)
        .collect()
        .await;

    // 500 settlements asked for at once; the process dies while they run.
    let settle_url = format!("http://127.0.0.1:{}/settlements", p.saga);
    let started: Vec<(u16, Value)> = futures::stream::iter(vehicles.iter().enumerate())
        .map(|(n, vehicle)| {
            c.send(
                reqwest::Method::POST,
                settle_url.clone(),
                Some(
                    json!({"lot_id": format!("lot-{n}"), "vehicle_id": vehicle, "pool_id": pool,
                            "buyer_org": format!("dealer-{}", n % 7), "seller_org": "seller",
                            "price": cny(4_500_000)}),
                ),
            )
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        started.iter().all(|(s, _)| *s == 201),
        "every settlement started"
    );
    let (done_before, open_before) = stats(&c, p.saga).await;
    let mut child = server.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    eprintln!("killed with {open_before} settlements in flight ({done_before} finished)");

    let server = serve(dir.path(), &p, extra).await;
    let c = Client {
        http: c.http,
        token: server.token(dir.path()),
    };
    // The requests the participants were serving when killed gave their idempotency keys
    // back when the process started again; the settlements carry on at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (done, open) = stats(&c, p.saga).await;
        if done == LOTS as i64 && open == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{done} finished, {open} open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every lot's four records agree with its saga: no fault was injected, so all completed.
    let mut sagas = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = c
            .send(
                reqwest::Method::GET,
                format!("http://127.0.0.1:{}/sagas?limit=200{cursor}", p.saga),
                None,
            )
            .await;
        sagas.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(sagas.len(), LOTS);
    let checks = futures::stream::iter(sagas.iter())
        .map(|saga| {
            let c = &c;
            let p = &p;
            async move {
                assert_eq!(saga["status"], "completed", "{saga}");
                let input = &saga["input"];
                let get = |url: String| c.send(reqwest::Method::GET, url, None);
                let (_, v) = get(format!(
                    "http://127.0.0.1:{}/vehicles/{}",
                    p.vehicle,
                    input["vehicle_id"].as_str().unwrap()
                ))
                .await;
                assert_eq!(
                    (v["state"].as_str(), v["sale"]["sale_id"].as_str()),
                    (Some("sold"), input["lot_id"].as_str())
                );
                let (_, o) = get(format!(
                    "http://127.0.0.1:{}/orders/{}",
                    p.order,
                    input["order_id"].as_str().unwrap()
                ))
                .await;
                assert_eq!(o["status"], "awaiting_payment", "{o}");
                let (_, r) = get(format!(
                    "http://127.0.0.1:{}/receivables/{}",
                    p.finance,
                    input["receivable_id"].as_str().unwrap()
                ))
                .await;
                assert_eq!(
                    (r["status"].as_str(), &r["amount"]),
                    (Some("open"), &cny(4_500_000))
                );
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();
    checks.await;
    let (_, pool) = c
        .send(
            reqwest::Method::GET,
            format!("http://127.0.0.1:{}/pools/{pool}", p.vehicle),
            None,
        )
        .await;
    assert_eq!(pool["used"], LOTS, "inventory deducted once per lot");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_settlements_survive_kill_9_on_sqlite() {
    five_hundred_settlements_survive_kill_9(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_settlements_survive_kill_9_on_postgres() {
    let Some(url) = axle_core::testing::postgres_url() else {
        return;
    };
    // Schema prefixes are lowercase letters: the process id spelled in letters.
    let tag: String = std::process::id()
        .to_string()
        .bytes()
        .map(|d| char::from(b'a' + (d - b'0')))
        .collect();
    let prefix = format!("kill_{tag}_");
    five_hundred_settlements_survive_kill_9(&[
        ("AXLE__DATABASE__URL", url.clone()),
        ("AXLE__DATABASE__SCHEMA_PREFIX", prefix.clone()),
    ])
    .await;
    use sqlx::{Connection, Executor};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT schema_name::text FROM information_schema.schemata WHERE schema_name LIKE $1",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for schema in schemas {
        conn.execute(format!("DROP SCHEMA \"{schema}\" CASCADE").as_str())
            .await
            .unwrap();
    }
}
