//! `axle serve --demo`: sample data a newcomer can click through at once — two dealer
//! companies with staff and deposit accounts, an auctioneer, a finance clerk, an operator,
//! vehicles at several points of their lifecycle, one of them sold at auction and settled
//! (vehicle, order, inventory, receivable), and an API in the market (master data's model
//! catalog) — written through the public APIs, as any client would, once Axle answers.
//! Seeding again finds them there and adds nothing.

use anyhow::Context;
use axle_core::config::Config;
use serde_json::{Value, json};

/// The password of every demo user (printed with them).
pub const PASSWORD: &str = "axle demo passphrase";

/// (username, name, organisation index, roles)
const USERS: &[(&str, &str, Option<usize>, &[&str])] = &[
    ("li.wei", "Li Wei", Some(0), &["dealer"]),
    ("zhang.min", "Zhang Min", Some(1), &["dealer"]),
    ("chen.auction", "Chen Jie", None, &["auctioneer"]),
    ("wang.finance", "Wang Fang", None, &["finance"]),
    ("zhao.ops", "Zhao Lei", None, &["operator"]),
];

const ORGANISATIONS: &[(&str, &str)] = &[
    ("Shanghai Pudong Motors", "DEP-SH-001"),
    ("Beijing Chaoyang Auto Trading", "DEP-BJ-002"),
];

/// (make, model, year, km, lifecycle steps to take)
const VEHICLES: &[(&str, &str, u16, i64, usize)] = &[
    ("BYD", "Han EV", 2022, 31_000, 0),
    ("Toyota", "Camry", 2019, 86_500, 1),
    ("Volkswagen", "Passat", 2020, 64_200, 3),
    ("Honda", "Accord", 2018, 120_000, 4),
    ("Geely", "Xingyue L", 2023, 12_800, 4),
];

/// Seeds the demo data through the gateway once it answers.
pub async fn seed(config: Config) -> anyhow::Result<()> {
    let site = config.site();
    let http = reqwest::Client::new();
    wait_until_up(&http, &format!("{}/jwks", config.issuer())).await?;
    let token = crate::token::access_token(&config).await?;
    let post = |path: String, body: Value| {
        http.post(format!("{site}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };

    let mut org_ids = Vec::new();
    for (name, account) in ORGANISATIONS {
        let created = post(
            "/api/identity/organisations".into(),
            json!({"name": name, "deposit_account": account}),
        )
        .await?;
        let id = match created.status().as_u16() {
            201 => created.json::<Value>().await?["id"]
                .as_str()
                .map(String::from),
            _ => find_organisation(&http, &site, &token, name).await?,
        };
        org_ids.push(id);
    }
    for (username, name, org, roles) in USERS {
        let mut body = json!({"username": username, "display_name": name, "password": PASSWORD, "roles": roles,
            "email": format!("{username}@demo.axle.example")});
        if let Some(Some(org)) = org.map(|i| &org_ids[i]) {
            body["org_id"] = org.clone().into();
        }
        post("/api/identity/users".into(), body).await?; // 409 when seeded before
    }
    seed_market(&http, &site, &token, &config).await?;
    let existing: Value = http
        .get(format!("{site}/api/vehicle/vehicles?limit=1"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    if existing["items"]
        .as_array()
        .is_some_and(|items| !items.is_empty())
    {
        return Ok(());
    }
    let mut listed = Vec::new();
    for (n, (make, model, year, km, steps)) in VEHICLES.iter().enumerate() {
        let vin = vin(n);
        let created: Value = post(
            "/api/vehicle/vehicles".into(),
            json!({"vin": vin, "make": make, "model": model,
            "year": year, "mileage_km": km, "seller_org": org_ids[n % 2]}),
        )
        .await?
        .json()
        .await?;
        let Some(id) = created["id"].as_str() else {
            continue;
        };
        let price = 6_000_000 + 1_000_000 * i64::try_from(n).unwrap_or(0);
        let lifecycle = [
            ("inspection/start", json!(null)),
            (
                "inspection",
                json!({"inspector": "chen.auction", "grade": "B", "completed_at": axle_core::time::now_text(),
                "items": [{"name": "engine", "result": "ok"}, {"name": "body.front_left", "result": "attention", "note": "scratch"}]}),
            ),
            (
                "pricing",
                json!({"guide_price": {"amount": price, "currency": "CNY"},
                "reserve_suggestion": {"amount": price * 9 / 10, "currency": "CNY"}}),
            ),
            ("list", json!(null)),
        ];
        for (step, body) in lifecycle.iter().take(*steps) {
            let url = format!("{site}/api/vehicle/vehicles/{id}/{step}");
            let request = if *step == "pricing" {
                http.put(url)
            } else {
                http.post(url)
            };
            let request = request.bearer_auth(&token);
            let request = if body.is_null() {
                request
            } else {
                request.json(body)
            };
            request.send().await?;
        }
        if *steps == 4 {
            listed.push((id.to_string(), price));
        }
    }
    // Deposit accounts for both dealers, an inventory pool, and the first listed car sold at
    // auction to the second dealer: a settlement to look at in the sagas, orders and finance.
    for org in org_ids.iter().flatten() {
        let account: Value = post(
            "/api/finance/accounts".into(),
            json!({"org_id": org, "currency": "CNY"}),
        )
        .await?
        .json()
        .await?;
        if let Some(id) = account["id"].as_str() {
            post(
                format!("/api/finance/accounts/{id}/top-ups"),
                json!({"amount": {"amount": 20_000_000, "currency": "CNY"}, "reference": "demo deposit"}),
            )
            .await?;
        }
    }
    let pool: Value = post(
        "/api/vehicle/pools".into(),
        json!({"name": "Shanghai yard", "capacity": 50}),
    )
    .await?
    .json()
    .await?;
    if let (Some(pool), Some((vehicle, price)), [Some(seller), Some(buyer)]) =
        (pool["id"].as_str(), listed.first(), org_ids.as_slice())
    {
        post(
            "/api/saga/settlements".into(),
            json!({"lot_id": "demo-lot-1", "vehicle_id": vehicle, "pool_id": pool,
                "buyer_org": buyer, "seller_org": seller,
                "price": {"amount": price * 95 / 100, "currency": "CNY"}}),
        )
        .await?;
    }
    Ok(())
}

/// Master data's public model catalog as an API product of the market, with a plan anyone
/// may take at once (unless the market is not running, or it was seeded before).
async fn seed_market(
    http: &reqwest::Client,
    site: &str,
    token: &str,
    config: &Config,
) -> anyhow::Result<()> {
    let post = |path: String, body: Value| {
        http.post(format!("{site}/api/market{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let product = post(
        "/products".into(),
        json!({"slug": "vehicle-models", "title": "Vehicle models", "owner_team": "master data",
               "description": "The model catalog: makes, models and years.",
               "tags": ["vehicles", "catalog"]}),
    )
    .await?;
    if product.status() != reqwest::StatusCode::CREATED {
        return Ok(());
    }
    let product: Value = product.json().await?;
    let id = product["id"].as_str().unwrap_or_default();
    let document = json!({"openapi": "3.0.3",
        "info": {"title": "Vehicle models", "version": "1.0.0"},
        "paths": {"/models": {"get": {"operationId": "listModels", "summary": "The model catalog",
            "responses": {"200": {"description": "Makes and models"}}}}}});
    let backend = format!("http://{}", config.services.masterdata.listen);
    let version: Value = post(
        format!("/products/{id}/versions"),
        json!({"number": "1.0.0", "document": document, "backend": {"url": backend}}),
    )
    .await?
    .json()
    .await?;
    let version = version["id"].as_str().unwrap_or_default();
    post(format!("/versions/{version}/publish"), json!({})).await?;
    post(
        format!("/products/{id}/plans"),
        json!({"name": "Open", "approval": "auto", "limit": {"count": 1000, "period": "day"}}),
    )
    .await?;
    Ok(())
}

async fn find_organisation(
    http: &reqwest::Client,
    site: &str,
    token: &str,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let page: Value = http
        .get(format!("{site}/api/identity/organisations?limit=200"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    Ok(page["items"]
        .as_array()
        .and_then(|items| items.iter().find(|o| o["name"] == name))
        .and_then(|o| o["id"].as_str())
        .map(String::from))
}

async fn wait_until_up(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!("{url} did not answer")).context("demo data")
}

/// A VIN with a correct check digit, one per `n`.
fn vin(n: usize) -> String {
    let mut chars: Vec<char> = format!("LVSHCAMB{}{:08}", 0, n + 1).chars().collect();
    chars.truncate(17);
    if let Ok(array) = <[char; 17]>::try_from(chars.clone())
        && let Some(digit) = axle_vehicle::domain::check_digit(&array)
    {
        chars[8] = digit;
    }
    chars.into_iter().collect()
}
